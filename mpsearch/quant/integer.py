"""Quantized tensors as integers: what a deployment stores, and what export writes.

:meth:`~mpsearch.quant.quantizers.Quantizer.integer_form` gives the integer form of a
quantizer's output for one tensor: integer codes, each code's width, and the grid
that maps codes to values. Dequantizing the form gives the quantizer's forward
output bit for bit, because each grid's :meth:`IntegerForm.dequantize` does the
quantizer's own arithmetic in the same order (which is why a grid keeps its
parameters in the quantizer's units rather than folded into one scale).

Five grids cover every quantizer mpsearch ships; a third party's quantizer that
returns one of them exports without changes to mpsearch. ``b`` is a code's
width; a value whose width is 0 is 0 (pruned) and stores no bits.

==========  ======================================================  ==============================
grid        value of code ``c``                                      quantizers
==========  ======================================================  ==============================
uniform     ``(offset + span * (c / (2**b - 1))) * gain``,           min-max, DoReFa, PACT, SMOL-A
            ``c`` in ``0 .. 2**b - 1``
affine      ``(c - zero_point) * scale``, ``c`` a signed or          AdaPT's fixed point
            unsigned ``b``-bit integer                               (``scale = 2**-FL``)
odd         ``scale * ((c + 1/2) * 2**(2 - b))``, ``c`` a signed     SMOL's weights
            ``b``-bit integer: the odd multiples of ``2**(1 - b)``
binary      per group ``g``: ``sum_i B_gi * alpha_gi``, ``B_gi`` in  ALQ's weights
            ``{-1, +1}^n``; ``b`` = the group's number of bases
levels      ``levels[c]``, ``c`` in ``0 .. 2**b - 1``                ALQ's activations
==========  ======================================================  ==============================

A form without codes is a *template*: an activation quantizer's grid, whose
codes come with each input (:meth:`IntegerForm.encode`). A ``uniform`` grid may be
*dynamic*: its offset and span are the minimum and range of each tensor it
quantizes (min-max activations, per batch).

For storage (:mod:`mpsearch.export`), :meth:`IntegerForm.to_fields` splits a form
into a JSON-able description and arrays: float32 parameter tensors, and
:class:`Packed` bit streams of unsigned integers at their own widths.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from mpsearch.errors import MpsearchError

Param = torch.Tensor | float | None


@dataclass(frozen=True)
class Packed:
    """Unsigned integers stored at their own widths, as one little-endian bit stream.

    Attributes:
        values: uint64, flat.
        widths: int64, flat (one width per value), or one int for all.
    """

    values: np.ndarray
    widths: np.ndarray | int

    @property
    def total_bits(self) -> int:
        if isinstance(self.widths, (int, np.integer)):
            return int(self.widths) * int(self.values.size)
        return int(np.asarray(self.widths, dtype=np.int64).sum())


CHUNK = 1 << 20  # values per step of packing: bounds the index arrays of a large tensor


def _stream_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """One uint8 (0 or 1) per bit of ``values`` at ``widths``, least significant bits first."""
    if values.size and (widths == widths[0]).all():
        shifts = np.arange(int(widths[0]), dtype=np.uint64)
        return np.concatenate([((values[i:i + CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)
                               for i in range(0, values.size, CHUNK)] or [np.zeros(0, np.uint8)])
    parts = []
    for i in range(0, values.size, CHUNK):
        v, w = values[i:i + CHUNK], widths[i:i + CHUNK]
        total = int(w.sum())
        owner = np.repeat(np.arange(v.size), w)
        position = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(w) - w, w)
        parts.append(((v[owner] >> position.astype(np.uint64)) & np.uint64(1)).astype(np.uint8))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def pack_bits(packed: Packed) -> bytes:
    """The bit stream of ``packed``: each value's ``width`` low bits, least significant first."""
    values = np.asarray(packed.values, dtype=np.uint64).reshape(-1)
    widths = np.broadcast_to(np.asarray(packed.widths, dtype=np.int64), values.shape)
    return np.packbits(_stream_bits(values, widths), bitorder="little").tobytes()


def unpack_bits(data: bytes, widths: np.ndarray | int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values (uint64) at ``widths``."""
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), (count,))
    total = int(widths.sum())
    out = np.zeros(count, dtype=np.uint64)
    if total == 0:
        return out
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=total, bitorder="little")
    starts = np.cumsum(widths) - widths
    for i in range(0, count, CHUNK):
        w = widths[i:i + CHUNK]
        first, size = int(starts[i]), int(w.sum())
        chunk = bits[first:first + size].astype(np.uint64)
        if (w == w[0]).all():
            shifts = np.arange(int(w[0]), dtype=np.uint64)
            out[i:i + w.size] = (chunk.reshape(w.size, -1) << shifts).sum(1) if w[0] else 0
            continue
        owner = np.repeat(np.arange(w.size), w)
        position = np.arange(size, dtype=np.int64) - np.repeat(np.cumsum(w) - w, w)
        np.add.at(out[i:i + w.size], owner, chunk << position.astype(np.uint64))
    return out


def packed_bytes(total_bits: int) -> int:
    return (int(total_bits) + 7) // 8


def _as_tensor(value: Param, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _cpu(value: Param) -> Param:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _width_map(bits: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """``bits`` in the description: one int, or its distinct widths plus a packed index per entry."""
    if bits.numel() == 1:
        return {"bits": int(bits.reshape(()))}, {}
    distinct, index = torch.unique(bits.reshape(-1).cpu(), return_inverse=True)
    width = math.ceil(math.log2(distinct.numel())) if distinct.numel() > 1 else 0
    meta = {"bits": {"shape": list(bits.shape), "distinct": distinct.tolist()}}
    return meta, {"bits": Packed(index.numpy().astype(np.uint64), width)}


def _read_width_map(meta: dict[str, Any], arrays: dict[str, Any]) -> torch.Tensor:
    raw = meta["bits"]
    if isinstance(raw, int):
        return torch.tensor(raw, dtype=torch.int64)
    distinct = torch.tensor(raw["distinct"], dtype=torch.int64)
    count = math.prod(raw["shape"])
    width = math.ceil(math.log2(len(distinct))) if len(distinct) > 1 else 0
    index = unpack_bits(arrays.get("bits", b""), width, count)
    return distinct[torch.from_numpy(index.astype(np.int64))].reshape(raw["shape"])


def width_map_bits(meta: dict[str, Any]) -> int:
    """Bits of the packed width map a description refers to (0 for one width)."""
    raw = meta["bits"]
    if not isinstance(raw, dict) or len(raw["distinct"]) < 2:
        return 0
    return math.prod(raw["shape"]) * math.ceil(math.log2(len(raw["distinct"])))


def _signed_to_unsigned(codes: torch.Tensor, widths: torch.Tensor) -> np.ndarray:
    """Two's complement at each width (``c mod 2**b``)."""
    mod = torch.where(widths > 0, torch.bitwise_left_shift(torch.ones_like(widths), widths), 1)
    return torch.remainder(codes, mod).numpy().astype(np.uint64)


def _unsigned_to_signed(values: np.ndarray, widths: torch.Tensor) -> torch.Tensor:
    u = torch.from_numpy(values.astype(np.int64))
    half = torch.where(widths > 0, torch.bitwise_left_shift(torch.ones_like(widths), widths - 1), 1)
    return torch.where((widths > 0) & (u >= half), u - 2 * half, u)


@dataclass(frozen=True, eq=False, kw_only=True)
class IntegerForm(ABC):
    """A quantized tensor as integer codes on a grid (see the module docstring).

    Attributes:
        bits: int64, broadcastable onto the tensor: each code's width (0: pruned).
            It is the quantizer's :meth:`~mpsearch.quant.quantizers.Quantizer.integer_bits`.
        codes: int64 codes (a grid may shape them its own way), or None for a template.
    """

    grid: ClassVar[str]
    bits: torch.Tensor
    codes: torch.Tensor | None = None

    @property
    def is_template(self) -> bool:
        return self.codes is None

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The shape of the tensor the codes stand for."""

    @abstractmethod
    def dequantize(self) -> torch.Tensor:
        """The values, float32, computed as the quantizer computes them."""

    def encode(self, x: torch.Tensor) -> IntegerForm:
        """The form of ``x`` quantized on this grid (templates of activation quantizers)."""
        raise MpsearchError(f"the {self.grid} grid cannot encode new tensors; it describes stored weights.")

    def template(self) -> IntegerForm:
        """This grid without its codes."""
        return replace(self, codes=None)

    def code_bits(self) -> int:
        """Bits of the codes at their own widths."""
        return int(torch.broadcast_to(self.bits, self.shape).sum()) if self.codes is not None else 0

    @abstractmethod
    def parameters(self) -> dict[str, Param]:
        """The grid's parameters: tensors are stored (float32); numbers are part of its definition."""

    @abstractmethod
    def _code_fields(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The codes as description and arrays."""

    @classmethod
    @abstractmethod
    def _from(cls, meta: dict[str, Any], arrays: dict[str, Any], bits: torch.Tensor,
              params: dict[str, Param]) -> IntegerForm:
        """Inverse of :meth:`to_fields`, given the width map and parameters already read."""

    # -- storage ----------------------------------------------------------------------------

    def _bits_fields(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return _width_map(self.bits)

    def to_fields(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A JSON-able description and the arrays (float32 tensors, :class:`Packed` streams) of the form."""
        meta, arrays = self._bits_fields()
        meta = {"grid": self.grid, **meta}
        constants, shapes = {}, {}
        for name, value in self.parameters().items():
            if isinstance(value, torch.Tensor):
                arrays[name] = value.detach().to("cpu", torch.float32).numpy()
                shapes[name] = list(value.shape)
            elif value is not None:
                constants[name] = float(value)
        meta["constants"], meta["tensors"] = constants, shapes
        if self.codes is not None:
            code_meta, code_arrays = self._code_fields()
            meta.update(code_meta)
            arrays.update(code_arrays)
        return meta, arrays

    @staticmethod
    def from_fields(meta: dict[str, Any], arrays: dict[str, Any]) -> IntegerForm:
        """Rebuild a form from :meth:`to_fields`'s output (arrays as numpy)."""
        cls = GRIDS.get(meta.get("grid"))
        if cls is None:
            raise MpsearchError(f"unknown grid {meta.get('grid')!r}; known: {', '.join(GRIDS)}.")
        bits = _read_width_map(meta, arrays) if meta.get("bits") != "mask" else None
        params: dict[str, Param] = dict(meta.get("constants", {}))
        for name, shape in meta.get("tensors", {}).items():
            params[name] = torch.from_numpy(np.array(arrays[name], dtype=np.float32)).reshape(shape)
        return cls._from(meta, arrays, bits, params)

    def storage_bits(self) -> int:
        """Bits this form takes in a packed file: codes, float32 tensors, width map and masks."""
        meta, arrays = self.to_fields()
        total = width_map_bits(meta)
        for name, value in arrays.items():
            if name == "bits":
                continue
            total += value.total_bits if isinstance(value, Packed) else 32 * int(np.asarray(value).size)
        return total


# -- uniform ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class UniformGrid(IntegerForm):
    """``(offset + span * (c / (2**b - 1))) * gain``: the shared kernel's grid.

    The codes come from an input range ``[lo, lo + scale]``: ``c = round(clamp((x - lo)
    / scale, 0, 1) * (2**b - 1))``. That range is the output range (``offset``,
    ``span``) for every activation quantizer; DoReFa maps ``tanh(w)``'s range onto
    ``[-1, 1]``. ``gain`` (None: 1) rescales the result (DoReFa's mean magnitude).

    Attributes:
        dynamic: ``offset`` and ``span`` are each tensor's minimum and range
            (``max - min``, at least the smallest normal float), as min-max computes them.
    """

    grid: ClassVar[str] = "uniform"
    offset: Param = 0.0
    span: Param = 1.0
    gain: Param = None
    dynamic: bool = False
    value_shape: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape) if self.codes is not None else self.value_shape

    @classmethod
    def from_input(cls, x: torch.Tensor, bits: torch.Tensor, lo: Param, scale: Param, *,
                   offset: Param, span: Param, gain: Param = None, dynamic: bool = False,
                   integer_bits: Any = None) -> UniformGrid:
        """Encode ``x`` (its input range ``[lo, lo + scale]``) at the float widths ``bits``."""
        x = x.detach()
        lo, scale = _as_tensor(lo, x), _as_tensor(scale, x)
        n = bits.detach().to(device=x.device, dtype=x.dtype)
        u = ((x - lo) / scale).clamp(0.0, 1.0)
        levels = torch.exp2(n) - 1.0
        k = torch.round(u * levels).to(torch.int64)
        b = torch.as_tensor(integer_bits if integer_bits is not None else n, device=x.device).to(torch.int64)
        # above 24 bits 2**b - 1 rounds up in float32; the largest code reads back as the same float
        k = torch.minimum(k, torch.bitwise_left_shift(torch.ones_like(b), b) - 1)
        return cls(bits=b.cpu(), codes=k.cpu(), offset=_cpu(offset), span=_cpu(span), gain=_cpu(gain),
                   dynamic=dynamic, value_shape=tuple(x.shape))

    def encode(self, x: torch.Tensor) -> UniformGrid:
        if self.dynamic:
            lo, hi = torch.aminmax(x.detach())
            span = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
            offset = lo
        else:
            offset, span = self.offset, self.span
            if isinstance(offset, torch.Tensor):
                offset = offset.to(x.device)
            if isinstance(span, torch.Tensor):
                span = span.to(x.device)
        return UniformGrid.from_input(x, self.bits.to(torch.float32), offset, span, offset=offset, span=span,
                                      gain=self.gain, dynamic=self.dynamic, integer_bits=self.bits)

    def dequantize(self) -> torch.Tensor:
        if self.codes is None:
            raise MpsearchError("a template has no values; encode a tensor first.")
        codes = self.codes.to(torch.float32)
        levels = torch.exp2(self.bits.to(torch.float32)) - 1.0
        # the eager kernel's order: codes times span / levels, then the offset
        out = codes * (_as_tensor(self.span, codes) / levels) + _as_tensor(self.offset, codes)
        out = torch.where(levels > 0, out, torch.zeros_like(out))
        if self.gain is not None:
            out = out * _as_tensor(self.gain, codes)
        return out

    def parameters(self) -> dict[str, Param]:
        if self.dynamic and self.codes is None:
            return {"gain": self.gain}
        return {"offset": self.offset, "span": self.span, "gain": self.gain}

    def to_fields(self):
        meta, arrays = super().to_fields()
        meta["dynamic"] = self.dynamic
        if self.codes is not None:
            meta["shape"] = list(self.shape)
        return meta, arrays

    def _code_fields(self):
        widths = torch.broadcast_to(self.bits, self.shape).reshape(-1).numpy()
        return {}, {"codes": Packed(self.codes.reshape(-1).numpy().astype(np.uint64), widths)}

    @classmethod
    def _from(cls, meta, arrays, bits, params):
        shape = tuple(meta.get("shape", ()))
        codes = None
        if "codes" in arrays:
            count = math.prod(shape)
            widths = torch.broadcast_to(bits, shape).reshape(-1).numpy()
            codes = torch.from_numpy(unpack_bits(arrays["codes"], widths, count).astype(np.int64)).reshape(shape)
        return cls(bits=bits, codes=codes, offset=params.get("offset"), span=params.get("span"),
                   gain=params.get("gain"), dynamic=bool(meta.get("dynamic")), value_shape=shape)


# -- affine ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class AffineGrid(IntegerForm):
    """``(c - zero_point) * scale``: integer quantization as ONNX's QuantizeLinear defines it.

    Codes are ``signed`` (two's complement, ``-2**(b-1) .. 2**(b-1) - 1``) or unsigned
    (``0 .. 2**b - 1``); where ``b = 0`` the code is the zero point. ``scale`` and
    ``zero_point`` broadcast onto the tensor. :meth:`encode` rounds ``x / scale`` half
    to even, adds the zero point and saturates, as QuantizeLinear does.
    """

    grid: ClassVar[str] = "affine"
    scale: Param = 1.0
    zero_point: torch.Tensor | int = 0
    signed: bool = True
    value_shape: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape) if self.codes is not None else self.value_shape

    def limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.bits
        one = torch.ones_like(b)
        if self.signed:
            half = torch.bitwise_left_shift(one, (b - 1).clamp_min(0))
            return torch.where(b > 0, -half, 0), torch.where(b > 0, half - 1, 0)
        return torch.zeros_like(b), torch.bitwise_left_shift(one, b) - 1

    def encode(self, x: torch.Tensor) -> AffineGrid:
        scale = _as_tensor(self.scale, x)
        zp = torch.as_tensor(self.zero_point, device=x.device, dtype=torch.int64)
        low, high = (v.to(x.device) for v in self.limits())
        k = torch.round(x.detach() / scale).to(torch.int64) + zp
        k = torch.maximum(torch.minimum(k, high), low)
        k = torch.where(self.bits.to(x.device) > 0, k, zp)
        return replace(self, codes=k.cpu(), value_shape=tuple(x.shape))

    def dequantize(self) -> torch.Tensor:
        if self.codes is None:
            raise MpsearchError("a template has no values; encode a tensor first.")
        zp = torch.as_tensor(self.zero_point, dtype=torch.int64)
        out = (self.codes - zp).to(torch.float32) * _as_tensor(self.scale, self.codes.to(torch.float32))
        return torch.where(self.bits > 0, out, torch.zeros_like(out))

    def parameters(self) -> dict[str, Param]:
        return {"scale": self.scale}

    def to_fields(self):
        meta, arrays = super().to_fields()
        meta["signed"] = self.signed
        if self.codes is not None:
            meta["shape"] = list(self.shape)
        if isinstance(self.zero_point, torch.Tensor) and self.zero_point.numel() > 1:
            meta["zero_point"] = {"shape": list(self.zero_point.shape),
                                  "values": self.zero_point.reshape(-1).tolist()}
        else:
            meta["zero_point"] = int(torch.as_tensor(self.zero_point))
        return meta, arrays

    def _code_fields(self):
        widths = torch.broadcast_to(self.bits, self.shape).reshape(-1)
        codes = self.codes.reshape(-1)
        if self.signed:
            values = _signed_to_unsigned(codes, widths)
        else:
            values = codes.numpy().astype(np.uint64)
        return {}, {"codes": Packed(values, widths.numpy())}

    @classmethod
    def _from(cls, meta, arrays, bits, params):
        shape = tuple(meta.get("shape", ()))
        raw = meta["zero_point"]
        zp = (torch.tensor(raw["values"], dtype=torch.int64).reshape(raw["shape"]) if isinstance(raw, dict)
              else int(raw))
        codes = None
        if "codes" in arrays:
            widths = torch.broadcast_to(bits, shape).reshape(-1)
            values = unpack_bits(arrays["codes"], widths.numpy(), math.prod(shape))
            codes = (_unsigned_to_signed(values, widths) if meta["signed"]
                     else torch.from_numpy(values.astype(np.int64)))
            codes = torch.where(widths > 0, codes, torch.as_tensor(zp).expand(shape).reshape(-1)).reshape(shape)
        return cls(bits=bits, codes=codes, scale=params.get("scale"), zero_point=zp, signed=bool(meta["signed"]),
                   value_shape=shape)


# -- SMOL's odd grid -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class OddGrid(IntegerForm):
    """SMOL's grid: ``scale * ((c + 1/2) * 2**(2 - b))`` with ``c`` a signed ``b``-bit integer.

    The values are the odd multiples of ``2**(1 - b)`` in ``(-2, 2)``, scaled:
    ``+-1`` at 1 bit, ``+-0.5, +-1.5`` at 2 bits. Widths may differ per weight.
    """

    grid: ClassVar[str] = "odd"
    scale: Param = 1.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    def dequantize(self) -> torch.Tensor:
        b = self.bits.to(torch.float32)
        step = torch.exp2(2.0 - b)
        grid = torch.where(b > 0, (self.codes.to(torch.float32) + 0.5) * step, torch.zeros(()))
        return _as_tensor(self.scale, grid) * grid

    def parameters(self) -> dict[str, Param]:
        return {"scale": self.scale}

    def to_fields(self):
        meta, arrays = super().to_fields()
        meta["shape"] = list(self.shape)
        return meta, arrays

    def _code_fields(self):
        widths = torch.broadcast_to(self.bits, self.shape).reshape(-1)
        return {}, {"codes": Packed(_signed_to_unsigned(self.codes.reshape(-1), widths), widths.numpy())}

    @classmethod
    def _from(cls, meta, arrays, bits, params):
        shape = tuple(meta["shape"])
        widths = torch.broadcast_to(bits, shape).reshape(-1)
        values = unpack_bits(arrays["codes"], widths.numpy(), math.prod(shape))
        return cls(bits=bits, codes=_unsigned_to_signed(values, widths).reshape(shape), scale=params.get("scale"))


# -- ALQ's binary bases ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class BinaryGrid(IntegerForm):
    """Multi-bit binary bases: group ``g`` of ``n`` values is ``sum_i B_gi alpha_gi`` (ALQ, Eq. 2).

    Attributes:
        codes: the bases, int64 ``(G, n, I)`` of ``+-1``; slot ``i`` of group ``g`` is
            used where ``mask[g, i]`` (its coordinate is 0 elsewhere).
        mask: bool ``(G, I)``; ``mask.sum(1)`` is each group's width.
        alpha: float32 ``(G, I)``, the coordinates.
        view, perm: the tensor is ``groups.reshape(view).permute(perm)``.
        bits: each value's group width, the tensor's shape.
    """

    grid: ClassVar[str] = "binary"
    mask: torch.Tensor
    alpha: torch.Tensor
    view: tuple[int, ...]
    perm: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.view[p] for p in self.perm)

    def dequantize(self) -> torch.Tensor:
        groups = torch.einsum("gni,gi->gn", self.codes.to(self.alpha.dtype), self.alpha)
        return groups.reshape(self.view).permute(self.perm)

    def parameters(self) -> dict[str, Param]:
        return {}

    def _bits_fields(self):
        return {"bits": "mask"}, {}  # each group's width is its number of used slots

    def code_bits(self) -> int:
        return int(self.mask.sum()) * int(self.codes.shape[1])

    def _code_fields(self):
        g, n, i = self.codes.shape
        active = self.codes.permute(0, 2, 1)[self.mask]  # (active slots, n), group by group
        meta = {"groups": [g, n, i], "view": list(self.view), "perm": list(self.perm)}
        return meta, {"mask": Packed(self.mask.reshape(-1).numpy().astype(np.uint64), 1),
                      "bases": Packed(((active.reshape(-1) + 1) // 2).numpy().astype(np.uint64), 1),
                      "alpha": self.alpha[self.mask].to(torch.float32).numpy()}

    @classmethod
    def _from(cls, meta, arrays, bits, params):
        g, n, i = meta["groups"]
        mask = torch.from_numpy(unpack_bits(arrays["mask"], 1, g * i).astype(bool)).reshape(g, i)
        active = int(mask.sum())
        signs = torch.from_numpy(unpack_bits(arrays["bases"], 1, active * n).astype(np.int64)) * 2 - 1
        bases = torch.ones(g, i, n, dtype=torch.int64)
        bases[mask] = signs.reshape(active, n)
        alpha = torch.zeros(g, i, dtype=torch.float32)
        alpha[mask] = torch.from_numpy(np.array(arrays["alpha"], dtype=np.float32))
        view, perm = tuple(meta["view"]), tuple(meta["perm"])
        bits = mask.sum(1, keepdim=True).expand(g, n).reshape(view).permute(perm).contiguous()
        return cls(bits=bits, codes=bases.permute(0, 2, 1).contiguous(), mask=mask, alpha=alpha,
                   view=view, perm=perm)


# -- a table of levels -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class LevelsGrid(IntegerForm):
    """``levels[c]``: the nearest of ``2**b`` sorted levels (ALQ's multi-bit activations, Eq. 24).

    :meth:`encode` finds each value's nearest level by the midpoints between
    neighbours (a value on a midpoint takes the lower level).
    """

    grid: ClassVar[str] = "levels"
    levels: torch.Tensor
    value_shape: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape) if self.codes is not None else self.value_shape

    def midpoints(self) -> torch.Tensor:
        return (self.levels[1:] + self.levels[:-1]) / 2

    def encode(self, x: torch.Tensor) -> LevelsGrid:
        levels = self.levels.to(x.device)
        codes = torch.bucketize(x.detach(), (levels[1:] + levels[:-1]) / 2)
        return replace(self, codes=codes.cpu(), value_shape=tuple(x.shape))

    def dequantize(self) -> torch.Tensor:
        return self.levels[self.codes]

    def parameters(self) -> dict[str, Param]:
        return {"levels": self.levels}

    def to_fields(self):
        meta, arrays = super().to_fields()
        if self.codes is not None:
            meta["shape"] = list(self.shape)
        return meta, arrays

    def _code_fields(self):
        return {}, {"codes": Packed(self.codes.reshape(-1).numpy().astype(np.uint64), int(self.bits))}

    @classmethod
    def _from(cls, meta, arrays, bits, params):
        shape = tuple(meta.get("shape", ()))
        codes = None
        if "codes" in arrays:
            codes = torch.from_numpy(unpack_bits(arrays["codes"], int(bits), math.prod(shape))
                                     .astype(np.int64)).reshape(shape)
        return cls(bits=bits, codes=codes, levels=params["levels"], value_shape=shape)


GRIDS: dict[str, type[IntegerForm]] = {c.grid: c for c in (UniformGrid, AffineGrid, OddGrid, BinaryGrid,
                                                         LevelsGrid)}

__all__ = ["AffineGrid", "BinaryGrid", "GRIDS", "IntegerForm", "LevelsGrid", "OddGrid", "Packed",
           "UniformGrid", "pack_bits", "packed_bytes", "unpack_bits", "width_map_bits"]
