"""A trial's model out: packed integers (``.mpq``) and ONNX (QDQ), written once against the
quantizers' integer form (:mod:`mpsearch.quant.integer`).

Nothing here knows a quantizer or a strategy by name: a model's quantized layers give
their weights' integer form and their input quantizer's grid
(:meth:`~mpsearch.quant.quantizers.Quantizer.integer_form`), and both writers work
from those alone.

**Packed file** (``.mpq``). ``MPQ1``, a little-endian uint32 header length, the header
(JSON, UTF-8), then the payload. The header holds the model (its registered name,
classes, input shape), metadata (preprocessing, study, trial), and per quantized
layer the description of its weights' and its input's grid
(:meth:`~mpsearch.quant.integer.IntegerForm.to_fields`); each array a description
names is at ``[offset, offset + length)`` of the payload: float32 tensors raw,
bit streams (codes at each value's own width, 1-bit masks and bases, width maps)
least significant bit first, each padded to a byte. The payload has three sections
(``header["sections"]``): ``weights`` (every conv/linear weight: codes and the
quantizer's stored parameters, or float32 where a layer is not quantized: what the
``size`` objective counts, plus width maps where widths vary inside a tensor),
``float`` (biases, batch-norm and every other tensor of the model, float32 as
trained) and ``inputs`` (the input quantizers' parameters). :func:`load_packed`
rebuilds the model with the registered model's builder and :mod:`mpsearch.quant.stored`
quantizers; it computes what the trial's model computed, bit for bit.

**ONNX** (opset 21). The float graph comes from ``torch.onnx.export`` of the model
with its weights replaced by their quantized values; then every quantized weight's
initializer becomes integer codes (int4/uint4 up to 4 bits, int8/uint8 up to 8,
int16/uint16 up to 16, int32 above) with a DequantizeLinear (per tensor, or per
group of values that share a scale along axis 0 of a reshaped view) feeding the
Conv/Gemm, and every quantized input gets its grid in front of the Conv/Gemm. Per grid:

- uniform weights (min-max, DoReFa, PACT): DequantizeLinear with scale
  ``span * gain / (2**b - 1)`` per group of equal width, then an Add of
  ``offset * gain`` where the grid does not start at 0 (min-max's lower bound,
  DoReFa's -1); pruned groups have scale and offset 0.
- affine weights (AdaPT's fixed point): DequantizeLinear with scale ``2**-FL``, zero point 0.
- odd weights (SMOL): each code ``c`` at width ``b`` is stored as the integer
  ``(2c + 1) * 2**(B - b)`` at ``B + 1`` bits (``B`` the widest in the tensor), with
  scale ``scale * 2**(1 - B)``: SMOL's exact values on one grid.
- binary weights (ALQ): one DequantizeLinear per basis slot (``+-1`` codes, 0 where
  a group does not use the slot, the coordinates as per-group scales), summed.
- uniform inputs (PACT, SMOL-A, min-max): ``(x - offset) / span`` clipped to
  ``[0, 1]`` and times ``2**b - 1`` (the shared kernel's arithmetic, so the codes
  are the torch model's), QuantizeLinear with scale 1 (the codes, at their width's
  container), DequantizeLinear with scale ``span / (2**b - 1)``, Add ``offset``.
  Min-max's range is dynamic, as in mpsearch: ReduceMin and ReduceMax over the whole
  input tensor, i.e. over the batch it runs on, so the ONNX model reproduces the
  trial's accuracy when run in batches of ``mpsearch.eval_batch_size`` (512) in
  the test split's order, as the trial evaluated it. Above 16 bits (no ONNX integer
  type for QuantizeLinear) Round replaces the QuantizeLinear/DequantizeLinear pair.
- levels inputs (ALQ): the index of the nearest level is the count of midpoints
  below ``x`` (Greater, ReduceSum), then Gather from the levels.

``metadata_props`` carry ``mpsearch.assignment`` (the assignment JSON), the input's
``mpsearch.input_shape``, ``mpsearch.input_mean``, ``mpsearch.input_std``,
``mpsearch.channel_order`` and ``mpsearch.preprocessing``, and where the model came
from (``mpsearch.study``, ``mpsearch.trial``, ``mpsearch.strategy``, recorded
accuracies and costs).
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.quant.integer import (AffineGrid, BinaryGrid, IntegerForm, LevelsGrid, OddGrid, Packed, UniformGrid,
                                    pack_bits)
from mpsearch.quant.modules import quantize_model, quantized_layers, restore_model
from mpsearch.record import ATTR_ACT_BITS, ATTR_TEST_ACCURACY, ATTR_WEIGHT_BITS

MAGIC = b"MPQ1"
FORMAT = "mpsearch-packed"
VERSION = 1
SUFFIXES = (".onnx", ".mpq")
OPSET = 21
EVAL_BATCH = 512  # mpsearch.training.evaluate's batch: min-max input ranges are per batch
PACKED_NAME = "model.mpq"
PREPROCESSING = "x = (pixel / 255 - mean) / std per channel; float32 NCHW"


# -- the integer forms of a model -----------------------------------------------------------------


@dataclass(frozen=True)
class LayerForms:
    """What one quantized layer stores: its weights' integer form and its input's grid (either may be None)."""

    weight: IntegerForm | None
    input: IntegerForm | None
    scale_bits: int = 0
    input_scale_bits: int = 0


def layer_forms(model: nn.Module, input_shape: Sequence[int]) -> dict[str, LayerForms]:
    """Every quantized layer's forms, from one forward pass of zeros in eval mode.

    Raises:
        MpsearchError: a quantizer without an integer form, or a layer the pass never reached.
    """
    layers = quantized_layers(model)
    seen: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, layer in layers.items() if layer.input_quantizer is not None]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_shape, device=device))
            forms = {}
            for name, layer in layers.items():
                weight = _form(name, "weight", layer.weight_quantizer, layer.weight)
                if layer.input_quantizer is not None and name not in seen:
                    raise MpsearchError(f"layer {name!r} has an input quantizer but the model never calls it.")
                inputs = _form(name, "input", layer.input_quantizer, seen.get(name))
                forms[name] = LayerForms(weight, None if inputs is None else inputs.template(),
                                         layer.weight_quantizer.scale_bits() if weight is not None else 0,
                                         layer.input_quantizer.scale_bits() if inputs is not None else 0)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return forms


def _form(layer: str, role: str, quantizer, x) -> IntegerForm | None:
    if quantizer is None:
        return None
    try:
        return quantizer.integer_form(x)
    except MpsearchError as exc:
        raise MpsearchError(f"layer {layer!r} {role}: {exc}") from None


# -- packed files ---------------------------------------------------------------------------------


class PackedSize(NamedTuple):
    """Bytes of a packed file, in all and per payload section."""

    total: int
    header: int
    weights: int
    floats: int
    inputs: int


def _float_state(model: nn.Module, forms: Mapping[str, LayerForms]) -> tuple[dict, dict]:
    """(weights of layers stored as float32, every other tensor) of the model's state, quantizers left out."""
    state = model.state_dict()
    layers = quantized_layers(model)
    owned = tuple(f"{name}.{part}_quantizer." for name in layers for part in ("weight", "input"))
    weights, rest = {}, {}
    for key, value in state.items():
        if key.startswith(owned):
            continue
        layer, _, leaf = key.rpartition(".")
        if leaf == "weight" and layer in layers:
            if forms[layer].weight is None:
                weights[key] = value
            continue
        rest[key] = value
    return weights, rest


class _Payload:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> dict[str, int]:
        ref = {"offset": self.size, "length": len(data)}
        self.chunks.append(data)
        self.size += len(data)
        return ref

    def form(self, form: IntegerForm) -> dict[str, Any]:
        meta, arrays = form.to_fields()
        fields = {}
        for name, value in arrays.items():
            if isinstance(value, Packed):
                fields[name] = {"kind": "bits", **self.add(pack_bits(value))}
            else:
                fields[name] = {"kind": "float32", **self.add(np.asarray(value, dtype="<f4").tobytes())}
        return {**meta, "fields": fields}

    def tensor(self, value: torch.Tensor) -> dict[str, Any]:
        array = value.detach().cpu().numpy()
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return {"dtype": str(value.dtype).replace("torch.", ""), "shape": list(value.shape),
                **self.add(array.tobytes())}


def save_packed(model: nn.Module, path: str | Path, *, model_name: str, num_classes: int,
                input_shape: Sequence[int], metadata: Mapping[str, Any] | None = None,
                forms: Mapping[str, LayerForms] | None = None) -> PackedSize:
    """Write ``model`` as a packed file (see the module docstring).

    Args:
        model_name: the registered model :func:`load_packed` rebuilds the network with.
        metadata: JSON-able facts to keep with it (preprocessing, study, trial, ...).
        forms: the model's :func:`layer_forms`, if already taken.
    """
    forms = dict(forms if forms is not None else layer_forms(model, input_shape))
    float_weights, floats = _float_state(model, forms)
    payload = _Payload()
    layers: dict[str, dict[str, Any]] = {}
    for name, f in forms.items():
        if f.weight is not None:
            layers.setdefault(name, {})["weight"] = payload.form(f.weight)
            layers[name]["scale_bits"] = f.scale_bits
    tensors = {key: payload.tensor(value) for key, value in float_weights.items()}
    weights_end = payload.size
    tensors.update({key: payload.tensor(value) for key, value in floats.items()})
    floats_end = payload.size
    for name, f in forms.items():
        if f.input is not None:
            layers.setdefault(name, {})["input"] = payload.form(f.input)
            layers[name]["input_scale_bits"] = f.input_scale_bits
    header = {"format": FORMAT, "version": VERSION,
              "model": {"name": model_name, "num_classes": int(num_classes),
                        "input_shape": [int(s) for s in input_shape]},
              "metadata": dict(metadata or {}), "layers": layers, "tensors": tensors,
              "sections": {"weights": [0, weights_end], "float": [weights_end, floats_end],
                           "inputs": [floats_end, payload.size]}}
    head = json.dumps(header, separators=(",", ":"), default=_json_default).encode()
    path = Path(path)
    with path.open("wb") as f:
        f.write(MAGIC + len(head).to_bytes(4, "little") + head)
        for chunk in payload.chunks:
            f.write(chunk)
    return PackedSize(path.stat().st_size, 8 + len(head), weights_end, floats_end - weights_end,
                      payload.size - floats_end)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_packed(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The header and payload of a packed file.

    Raises:
        MpsearchError: not a packed file, a version this mpsearch cannot read, or truncated.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MpsearchError(f"cannot read {str(path)!r}: {exc.strerror or exc}.") from None
    if data[:4] != MAGIC or len(data) < 8:
        raise MpsearchError(f"{str(path)!r} is not an mpsearch packed model (no {MAGIC.decode()} header).")
    length = int.from_bytes(data[4:8], "little")
    try:
        header = json.loads(data[8:8 + length])
    except ValueError as exc:
        raise MpsearchError(f"{str(path)!r}: its header is damaged ({exc}).") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise MpsearchError(f"{str(path)!r} has packed format {header.get('format')!r} version "
                            f"{header.get('version')!r}; this mpsearch reads {FORMAT} version {VERSION}.")
    payload = data[8 + length:]
    if len(payload) < header["sections"]["inputs"][1]:
        raise MpsearchError(f"{str(path)!r} is truncated: {len(payload)} of "
                            f"{header['sections']['inputs'][1]} payload bytes.")
    return header, payload


def _read_form(meta: Mapping[str, Any], payload: bytes) -> IntegerForm:
    arrays: dict[str, Any] = {}
    for name, ref in meta["fields"].items():
        raw = payload[ref["offset"]:ref["offset"] + ref["length"]]
        arrays[name] = raw if ref["kind"] == "bits" else np.frombuffer(raw, dtype="<f4")
    return IntegerForm.from_fields(dict(meta), arrays)


def _read_tensor(ref: Mapping[str, Any], payload: bytes) -> torch.Tensor:
    dtype = getattr(torch, ref["dtype"])
    raw = bytearray(payload[ref["offset"]:ref["offset"] + ref["length"]])
    return torch.frombuffer(raw, dtype=dtype).reshape(ref["shape"]).clone() if raw else torch.zeros(
        ref["shape"], dtype=dtype)


def load_packed(path: str | Path, host: Any = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a packed file holds, in eval mode.

    The network comes from its registered model's builder (``host``: a
    :class:`~mpsearch.host.PluginHost`, default the built-in and installed plugins);
    quantized layers get :mod:`mpsearch.quant.stored` quantizers holding the file's
    integer forms. Its outputs are those of the model that was saved, bit for bit.

    Raises:
        MpsearchError: the file is not a packed model, or its model is not registered.
    """
    from mpsearch.models import model_profile
    from mpsearch.quant.stored import StoredInputs, StoredWeights

    header, payload = read_packed(path)
    if host is None:
        from mpsearch.host import PluginHost

        host = PluginHost()
    info = header["model"]
    spec = host.models.get(info["name"])
    shape = tuple(info["input_shape"])
    model = spec.create(info["num_classes"], shape, seed=0)
    profile = model_profile(spec, info["num_classes"], shape)
    stored = header["layers"]
    unknown = sorted(set(stored) - {layer.name for layer in profile})
    if unknown:
        raise MpsearchError(f"{str(path)!r} has layer(s) {', '.join(unknown)} that model "
                            f"{info['name']!r} does not have.")
    forms = {name: LayerForms(_read_form(s["weight"], payload) if "weight" in s else None,
                              _read_form(s["input"], payload) if "input" in s else None,
                              s.get("scale_bits", 0), s.get("input_scale_bits", 0))
             for name, s in stored.items()}
    none = LayerForms(None, None)
    quantize_model(model, profile,
                   weight=lambda layer: (None if (f := forms.get(layer.name, none)).weight is None
                                         else StoredWeights(f.weight, f.scale_bits)),
                   activation=lambda layer: (None if (f := forms.get(layer.name, none)).input is None
                                             else StoredInputs(f.input, f.input_scale_bits)))
    state = {key: _read_tensor(ref, payload) for key, ref in header["tensors"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    layers = quantized_layers(model)
    for name, layer in layers.items():
        if isinstance(layer.weight_quantizer, StoredWeights):
            with torch.no_grad():
                layer.weight.copy_(layer.weight_quantizer.values)
    owned = tuple(f"{name}.{part}_quantizer." for name in layers for part in ("weight", "input"))
    lacking = [k for k in missing if not k.startswith(owned)
               and not (k.endswith(".weight") and isinstance(getattr(layers.get(k[:-7]), "weight_quantizer", None),
                                                             StoredWeights))]
    if lacking or unexpected:
        raise MpsearchError(f"{str(path)!r} does not fit model {info['name']!r}: "
                            f"{'missing ' + ', '.join(lacking[:5]) if lacking else ''}"
                            f"{'; unexpected ' + ', '.join(unexpected[:5]) if unexpected else ''}.")
    return model.to(device).eval()


def packed_metadata(path: str | Path) -> dict[str, Any]:
    """The model and metadata a packed file records (its header without the layer descriptions)."""
    header, _ = read_packed(path)
    return {"model": header["model"], "metadata": header["metadata"], "sections": header["sections"]}


# -- ONNX -----------------------------------------------------------------------------------------


def _onnx():
    try:
        import onnx
    except ImportError:
        raise MpsearchError("ONNX export needs the onnx package: pip install onnx onnxruntime.") from None
    return onnx


class _Graph:
    """New initializers and nodes for the ONNX graph, with unique names."""

    def __init__(self, onnx, taken: set[str]):
        self.onnx, self.taken = onnx, taken
        self.initializers: list[Any] = []

    def name(self, base: str) -> str:
        base = base.replace("/", ".")
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray | float, onnx_type: int | None = None) -> str:
        name = self.name(base)
        TP, helper = self.onnx.TensorProto, self.onnx.helper
        array = np.asarray(value)
        if onnx_type is None:
            onnx_type = TP.INT64 if array.dtype.kind in "iu" else TP.FLOAT
        if onnx_type in (TP.INT4, TP.UINT4):  # two to a byte, the first in the low nibble
            nibbles = array.astype(np.int64).reshape(-1) & 0xF
            if nibbles.size % 2:
                nibbles = np.append(nibbles, 0)
            raw = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()
            tensor = helper.make_tensor(name, onnx_type, list(array.shape), raw, raw=True)
        else:
            np_type = self.onnx.helper.tensor_dtype_to_np_dtype(onnx_type)
            tensor = self.onnx.numpy_helper.from_array(array.astype(np_type), name)
        self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, out: str | None = None, **attrs) -> tuple[Any, str]:
        out = out or self.name(f"{base}.{op}")
        return self.onnx.helper.make_node(op, list(inputs), [out], name=self.name(f"{base}.{op}.node"),
                                          **attrs), out


def _container(onnx, bits: int, signed: bool) -> int:
    TP = onnx.TensorProto
    for limit, s, u in ((4, TP.INT4, TP.UINT4), (8, TP.INT8, TP.UINT8), (16, TP.INT16, TP.UINT16)):
        if bits <= limit:
            return s if signed else u
    if bits <= (32 if signed else 31):
        return TP.INT32
    raise MpsearchError(f"{bits}-bit {'signed' if signed else 'unsigned'} codes fit no ONNX integer type.")


def _layout(shape: tuple[int, ...], *params: Any) -> tuple[tuple[int, ...], int, int]:
    """(perm, G, n): axes along which any parameter varies first, so the tensor is ``(G, n)`` groups."""
    rank = len(shape)
    varying: set[int] = set()
    for p in params:
        if isinstance(p, torch.Tensor) and p.numel() > 1:
            padded = (1,) * (rank - p.dim()) + tuple(p.shape)
            varying |= {i for i, d in enumerate(padded) if d > 1}
    axes = sorted(varying)
    perm = tuple(axes + [i for i in range(rank) if i not in varying])
    groups = math.prod(shape[i] for i in axes)
    return perm, groups, math.prod(shape) // max(groups, 1)


def _grouped(value: Any, shape: tuple[int, ...], perm: tuple[int, ...], groups: int) -> torch.Tensor:
    """``value`` broadcast onto ``shape`` and cut into ``(G, n)`` by ``perm``."""
    t = torch.broadcast_to(torch.as_tensor(value), shape).permute(perm).reshape(groups, -1)
    return t


def _ungroup(g: _Graph, nodes: list, tensor: str, shape: tuple[int, ...], perm: tuple[int, ...],
             base: str, out: str) -> None:
    permuted = [shape[p] for p in perm]
    if list(perm) == sorted(perm):
        nodes.append(g.node("Reshape", [tensor, g.const(f"{base}.shape", np.array(shape, np.int64))], base, out)[0])
        return
    node, mid = g.node("Reshape", [tensor, g.const(f"{base}.shape", np.array(permuted, np.int64))], base)
    nodes.append(node)
    inverse = [perm.index(i) for i in range(len(perm))]
    nodes.append(g.node("Transpose", [mid], base, out, perm=inverse)[0])


def _dequantize(g: _Graph, nodes: list, base: str, codes: np.ndarray, scale: np.ndarray, bits: int,
                signed: bool, zero_point: np.ndarray | None = None) -> str:
    """DequantizeLinear of ``(G, n)`` codes with a scale per group (per tensor when G is 1)."""
    onnx_type = _container(g.onnx, max(int(bits), 1), signed)
    c = g.const(f"{base}.codes", codes.astype(np.int64), onnx_type)
    per_tensor = scale.size == 1
    s = g.const(f"{base}.scale", scale.reshape(()) if per_tensor else scale.reshape(-1), g.onnx.TensorProto.FLOAT)
    inputs = [c, s]
    if zero_point is not None and np.any(zero_point != 0):
        inputs.append(g.const(f"{base}.zero_point", zero_point.reshape(()) if per_tensor else zero_point.reshape(-1),
                              onnx_type))
    attrs = {} if per_tensor else {"axis": 0}
    node, out = g.node("DequantizeLinear", inputs, base, **attrs)
    nodes.append(node)
    return out


def _weight_nodes(g: _Graph, form: IntegerForm, base: str, out: str) -> list:
    """Nodes whose output ``out`` is the weight tensor the form describes."""
    nodes: list = []
    shape = tuple(form.shape)
    if isinstance(form, BinaryGrid):
        groups, n, slots = form.codes.shape
        terms = []
        for i in range(slots):
            used = form.mask[:, i]
            if not bool(used.any()):
                continue
            codes = (form.codes[:, :, i] * used.unsqueeze(1)).numpy()
            terms.append(_dequantize(g, nodes, f"{base}.basis{i}", codes, form.alpha[:, i].numpy(), 1, True))
        if not terms:
            terms.append(g.const(f"{base}.zeros", np.zeros((groups, n), np.float32)))
        total = terms[0]
        if len(terms) > 1:
            node, total = g.node("Sum", terms, base)
            nodes.append(node)
        if form.perm == tuple(range(len(form.perm))):
            nodes.append(g.node("Reshape", [total, g.const(f"{base}.shape", np.array(shape, np.int64))], base,
                                out)[0])
        else:
            node, mid = g.node("Reshape", [total, g.const(f"{base}.view", np.array(form.view, np.int64))], base)
            nodes.append(node)
            nodes.append(g.node("Transpose", [mid], base, out, perm=list(form.perm))[0])
        return nodes
    bits = torch.broadcast_to(form.bits, shape)
    if isinstance(form, UniformGrid):
        perm, groups, _ = _layout(shape, form.bits, form.offset, form.span, form.gain)
        b = _grouped(form.bits, shape, perm, groups)[:, 0].to(torch.float64)
        levels = torch.exp2(b) - 1
        gain = _grouped(1.0 if form.gain is None else form.gain, shape, perm, groups)[:, 0].to(torch.float64)
        span = _grouped(form.span, shape, perm, groups)[:, 0].to(torch.float64)
        offset = _grouped(form.offset, shape, perm, groups)[:, 0].to(torch.float64)
        used = levels > 0
        scale = torch.where(used, span * gain / levels.clamp_min(1), 0.0).to(torch.float32)
        shift = torch.where(used, offset * gain, 0.0).to(torch.float32)
        codes = _grouped(form.codes, shape, perm, groups).numpy()
        t = _dequantize(g, nodes, base, codes, scale.numpy(), int(bits.max()), False)
        if bool((shift != 0).any()):
            value = shift.reshape(()) if groups == 1 else shift.reshape(groups, 1)
            node, t = g.node("Add", [t, g.const(f"{base}.offset", value.numpy())], base)
            nodes.append(node)
    elif isinstance(form, AffineGrid):
        perm, groups, _ = _layout(shape, form.scale, form.zero_point)
        scale = _grouped(torch.as_tensor(form.scale, dtype=torch.float32), shape, perm, groups)[:, 0]
        zero = _grouped(torch.as_tensor(form.zero_point, dtype=torch.int64), shape, perm, groups)[:, 0]
        codes = _grouped(form.codes, shape, perm, groups).numpy()
        t = _dequantize(g, nodes, base, codes, scale.numpy(), int(bits.max()), form.signed, zero.numpy())
    elif isinstance(form, OddGrid):
        perm, groups, _ = _layout(shape, form.scale)
        b = _grouped(form.bits, shape, perm, groups)
        top = b.max(1).values  # the widest code of each group sets its common step
        codes = torch.where(b > 0, (2 * _grouped(form.codes, shape, perm, groups) + 1)
                            * torch.bitwise_left_shift(torch.ones_like(b), (top.unsqueeze(1) - b).clamp_min(0)), 0)
        scale = _grouped(torch.as_tensor(form.scale, dtype=torch.float32), shape, perm, groups)[:, 0]
        scale = torch.where(top > 0, scale * torch.exp2(1.0 - top.to(torch.float32)), 0.0)
        t = _dequantize(g, nodes, base, codes.numpy(), scale.numpy(), int(top.max()) + 1, True)
    else:
        raise MpsearchError(f"{base}: the ONNX writer knows no {form.grid!r} weights.")
    _ungroup(g, nodes, t, shape, perm, base, out)
    return nodes


def _input_nodes(g: _Graph, form: IntegerForm, x: str, base: str) -> tuple[list, str]:
    """Nodes that quantize tensor ``x`` on the grid ``form``; returns them and the output's name."""
    TP = g.onnx.TensorProto
    nodes: list = []

    def add(op: str, inputs: Sequence[str], **attrs) -> str:
        node, out = g.node(op, inputs, base, **attrs)
        nodes.append(node)
        return out

    if form.bits.numel() != 1:
        raise MpsearchError(f"{base}: the ONNX writer takes one width per input quantizer, not "
                            f"{list(form.bits.shape)}.")
    bits = int(form.bits)
    if isinstance(form, LevelsGrid):
        mids = g.const(f"{base}.midpoints", form.midpoints().numpy().astype(np.float32))
        axis = g.const(f"{base}.last", np.array([-1], np.int64))
        above = add("Greater", [add("Unsqueeze", [x, axis]), mids])
        index = add("ReduceSum", [add("Cast", [above], to=TP.INT64), axis], keepdims=0)
        return nodes, add("Gather", [g.const(f"{base}.levels", form.levels.numpy().astype(np.float32)), index])
    if isinstance(form, AffineGrid):
        onnx_type = _container(g.onnx, bits, form.signed)
        scale = g.const(f"{base}.scale", np.float32(float(form.scale)))
        zero = g.const(f"{base}.zero_point", np.array(int(form.zero_point)), onnx_type)
        return nodes, add("DequantizeLinear", [add("QuantizeLinear", [x, scale, zero]), scale, zero])
    if not isinstance(form, UniformGrid):
        raise MpsearchError(f"{base}: the ONNX writer knows no {form.grid!r} inputs.")
    if bits == 0:
        return nodes, add("Mul", [x, g.const(f"{base}.zero", np.float32(0.0))])
    levels = float(2 ** bits - 1)
    if form.dynamic:
        lo = add("ReduceMin", [x], keepdims=0)
        span = add("Max", [add("Sub", [add("ReduceMax", [x], keepdims=0), lo]),
                           g.const(f"{base}.tiny", np.float32(np.finfo(np.float32).tiny))])
        step = add("Div", [span, g.const(f"{base}.levels", np.float32(levels))])
        offset_zero = False
    else:
        offset_zero = not isinstance(form.offset, torch.Tensor) and float(form.offset) == 0.0
        lo = None if offset_zero else g.const(f"{base}.offset", np.float32(float(form.offset)))
        span = g.const(f"{base}.span", np.float32(float(form.span)))
        step = g.const(f"{base}.step", np.float32(float(form.span) / levels))
    u = x if offset_zero else add("Sub", [x, lo])
    u = add("Clip", [add("Div", [u, span]), g.const(f"{base}.0", np.float32(0.0)),
                     g.const(f"{base}.1", np.float32(1.0))])
    y = add("Mul", [u, g.const(f"{base}.grid", np.float32(levels))])
    if bits <= 16:
        container = _container(g.onnx, bits, False)
        unit = g.const(f"{base}.unit", np.float32(1.0))
        zero = g.const(f"{base}.zero_point", np.array(0), container)
        codes = add("QuantizeLinear", [y, unit, zero])
        value = add("DequantizeLinear", [codes, step, zero])
    else:
        value = add("Mul", [add("Round", [y]), step])
    return nodes, value if offset_zero else add("Add", [value, lo])


def _float_copy(model: nn.Module, forms: Mapping[str, LayerForms]) -> nn.Module:
    """A plain float model computing with the quantized weights (quantizers removed)."""
    plain = copy.deepcopy(model)
    layers = quantized_layers(plain)
    with torch.no_grad():
        for name, f in forms.items():
            if f.weight is not None:
                layers[name].weight.copy_(f.weight.dequantize().to(layers[name].weight.device))
    return restore_model(plain).cpu().eval()


def float_onnx(model: nn.Module, input_shape: Sequence[int], opset: int = OPSET):
    """The ONNX graph of ``model`` as torch exports it (float; quantizers, if any, removed).

    Batch-norm stays a BatchNormalization node (not folded into the convolution), so
    every layer's weight is its own initializer named ``<layer>.weight``.
    """
    onnx = _onnx()
    if quantized_layers(model):
        model = restore_model(copy.deepcopy(model))
    model = model.cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *input_shape),), buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def to_onnx(model: nn.Module, input_shape: Sequence[int], metadata: Mapping[str, Any] | None = None,
            opset: int = OPSET, forms: Mapping[str, LayerForms] | None = None):
    """The quantized model as an ONNX ``ModelProto`` (see the module docstring), checked by ``onnx.checker``.

    Raises:
        MpsearchError: a quantizer without an integer form, or a layer whose weight torch's
            exporter did not keep as a Conv/Gemm initializer.
    """
    onnx = _onnx()
    forms = dict(forms if forms is not None else layer_forms(model, input_shape))
    proto = float_onnx(_float_copy(model, forms), input_shape, opset)
    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    taken = set(initializers) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    g = _Graph(onnx, taken)
    consumers: dict[str, list] = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1:
            consumers.setdefault(node.input[1], []).append(node)
    head: list = []
    before: dict[int, list] = {}
    dropped = set()
    for name, f in forms.items():
        if f.weight is None and f.input is None:
            continue
        key = f"{name}.weight"
        users = consumers.get(key, [])
        if not users or key not in initializers:
            raise MpsearchError(f"layer {name!r}: torch's ONNX export did not keep its weight as the input of a "
                                f"Conv or Gemm node, so it cannot be stored as integers.")
        if f.weight is not None:
            if tuple(initializers[key].dims) != tuple(f.weight.shape):
                raise MpsearchError(f"layer {name!r}: the exported weight has shape {list(initializers[key].dims)}, "
                                    f"not {list(f.weight.shape)}.")
            dropped.add(key)
            head += _weight_nodes(g, f.weight, f"{name}.weight_q", key)
        if f.input is not None:
            for user in users:
                nodes, out = _input_nodes(g, f.input, user.input[0], f"{name}.input_q")
                before.setdefault(id(user), []).extend(nodes)
                user.input[0] = out
    kept = [i for i in graph.initializer if i.name not in dropped]
    ordered = head + [n for node in graph.node for n in (*before.get(id(node), []), node)]
    del graph.initializer[:]
    graph.initializer.extend(kept + g.initializers)
    del graph.node[:]
    graph.node.extend(ordered)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - the checker's errors are many; this one is ours
        raise MpsearchError(f"the ONNX model failed onnx.checker: {str(exc).splitlines()[0]}") from exc
    return proto


def save_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int],
              metadata: Mapping[str, Any] | None = None, opset: int = OPSET) -> int:
    """Write :func:`to_onnx`'s model to ``path``; returns its bytes."""
    onnx = _onnx()
    proto = to_onnx(model, input_shape, metadata, opset)
    onnx.save_model(proto, str(path))
    return Path(path).stat().st_size


# -- trials ---------------------------------------------------------------------------------------


def preprocessing(data: Any) -> dict[str, Any]:
    """What a model trained on ``data`` (an :class:`~mpsearch.data.ImageData`) expects as input."""
    channels = data.input_shape[0]
    return {"mpsearch.input_shape": list(data.input_shape), "mpsearch.input_mean": list(data.mean),
            "mpsearch.input_std": list(data.std),
            "mpsearch.channel_order": {1: "gray", 3: "RGB"}.get(channels, f"{channels} channels"),
            "mpsearch.preprocessing": PREPROCESSING, "mpsearch.eval_batch_size": EVAL_BATCH,
            "mpsearch.classes": list(data.classes)}


def save_trial_model(model: nn.Module, folder: Path, spec: Any, number: int, data: Any) -> dict[str, Any]:
    """Write the trial's ``model.mpq`` into ``folder``; returns the attributes to record.

    A quantizer without an integer form leaves the trial as it is, with the reason
    recorded as ``packed_warning``: the trial's results do not depend on the file.
    """
    try:
        size = save_packed(model, Path(folder) / PACKED_NAME, model_name=spec.model.name,
                           num_classes=data.num_classes, input_shape=data.input_shape,
                           metadata={"mpsearch.study": spec.name, "mpsearch.trial": number, **preprocessing(data)})
    except Exception as exc:  # noqa: BLE001 - the file is an extra; the trial stands without it
        (Path(folder) / PACKED_NAME).unlink(missing_ok=True)
        return {"packed_warning": f"no {PACKED_NAME}: {type(exc).__name__}: {exc}"}
    return {"packed_bytes": size.total, "packed_weight_bytes": size.weights}


class TrialModel(NamedTuple):
    """A trial's quantized model, its assignment and what the study recorded about it."""

    model: nn.Module
    assignment: Any
    metadata: dict[str, Any]


def _trial(study: Any, number: int) -> Any:
    from mpsearch import record as R

    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        span = f"{trials[0].number}-{trials[-1].number}" if trials else "none yet"
        raise MpsearchError(f"study {study.study_name!r} has no trial {number} (trials: {span}).")
    t = found[0]
    if t.state.name != "COMPLETE":
        reason = t.user_attrs.get(R.ATTR_FAIL)
        raise MpsearchError(f"trial {number} of study {study.study_name!r} is {t.state.name}"
                            f"{f' ({reason})' if reason else ''}; only a COMPLETE trial has a model to export.")
    return t


def trial_folder(study: Any, t: Any) -> Path:
    """The artefact folder of a COMPLETE trial, holding its packed model.

    Raises:
        MpsearchError: the trial saved no artefacts, or its packed model is missing.
    """
    from mpsearch import record as R

    folder = t.user_attrs.get(R.ATTR_ARTEFACTS)
    name = study.study_name
    if not folder:
        raise MpsearchError(f"trial {t.number} of study {name!r} saved no artefacts (it ran without an "
                            f"artefact folder).")
    path = Path(folder) / PACKED_NAME
    if not path.is_file():
        why = t.user_attrs.get("packed_warning")
        raise MpsearchError(f"trial {t.number} of study {name!r}: {str(path)!r} is missing"
                            + (f" ({why})" if why else "; the trial ran before mpsearch saved packed models, "
                               "or its folder was moved") + ".")
    return Path(folder)


def trial_metadata(study: Any, t: Any) -> dict[str, Any]:
    """What the study records about a trial, as ``mpsearch.*`` metadata."""
    from mpsearch import report
    from mpsearch import record as R

    names = report.objective_names(study)
    units = report.units(study)
    meta: dict[str, Any] = {"mpsearch.study": study.study_name, "mpsearch.trial": t.number,
                            "mpsearch.strategy": t.user_attrs.get(R.ATTR_STRATEGY),
                            "mpsearch.strategy_params": t.user_attrs.get(R.ATTR_PARAMS),
                            "mpsearch.test_accuracy": t.user_attrs.get(R.ATTR_TEST_ACCURACY)}
    for name, value in zip(names, t.values or ()):
        meta[f"mpsearch.{'validation_accuracy' if name == report.ACCURACY else name}"] = value
        if units.get(name):
            meta[f"mpsearch.{name}_unit"] = units[name]
    return meta


def load_trial(study: Any, trial: int, storage: str | None = None, host: Any = None) -> TrialModel:
    """A COMPLETE trial's quantized model (rebuilt from its packed file), its assignment and record.

    Args:
        study: a study name (with ``storage``) or an ``optuna.Study``.
        trial: the trial number.
        storage: the study's storage URL (default ``sqlite:///mpsearch.db``).

    Raises:
        MpsearchError: no such study or trial, it is not COMPLETE, or its artefacts are missing.
    """
    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.storage import load_study

    if isinstance(study, str):
        study = load_study(storage, study)
    t = _trial(study, int(trial))
    folder = trial_folder(study, t)
    model = load_packed(folder / PACKED_NAME, host)
    path = folder / "assignment.json"
    if not path.is_file():
        raise MpsearchError(f"trial {t.number} of study {study.study_name!r}: {str(path)!r} is missing.")
    meta = {**packed_metadata(folder / PACKED_NAME)["metadata"], **trial_metadata(study, t)}
    return TrialModel(model, PrecisionAssignment.load(path), meta)


# -- choosing and exporting a trial ----------------------------------------------------------------

RECORDED = (ATTR_TEST_ACCURACY, ATTR_WEIGHT_BITS, ATTR_ACT_BITS)
_COMPARE = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
            ">": lambda a, b: a > b, "==": lambda a, b: a == b}


def _value(study: Any, t: Any, name: str) -> float:
    from mpsearch import report

    names = report.objective_names(study)
    if name in names:
        return float(t.values[names.index(name)])
    value = t.user_attrs.get(name)
    return math.nan if value is None else float(value)


def _check_name(study: Any, name: str, option: str) -> None:
    from mpsearch import report
    from mpsearch.errors import UnknownNameError

    known = [*report.objective_names(study), *RECORDED]
    if name not in known:
        raise UnknownNameError(f"{option} name", name, known)


def parse_where(study: Any, text: str) -> tuple[str, str, float]:
    """``"bitops<=0.03"`` -> ``("bitops", "<=", 0.03)``, the name checked against the study.

    Raises:
        MpsearchError: not ``NAME OP NUMBER``, or a name the study does not record.
    """
    import re

    match = re.fullmatch(r"\s*([A-Za-z_][\w@.:-]*)\s*(<=|>=|==|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*", text)
    if match is None:
        raise MpsearchError(f"--where {text!r}: write NAME<=NUMBER (or <, >=, >, ==), e.g. \"bitops<=0.03\".")
    name, op, number = match.groups()
    _check_name(study, name, "--where")
    try:
        return name, op, float(number)
    except ValueError:
        raise MpsearchError(f"--where {text!r}: {number!r} is not a number.") from None


def pick_trial(study: Any, trial: str, where: Sequence[str] = (), by: str | None = None) -> Any:
    """The trial ``trial`` names: a number, or ``"best"``: the front's best by ``by`` under ``where``.

    ``best`` looks only at the Pareto front (``study.best_trials``), keeps the trials
    that meet every ``where`` condition and takes the one with the best ``by``
    (default accuracy) in its objective's direction (lower is better for a cost;
    ties go to the lower number).

    Raises:
        MpsearchError: an unknown trial or name, a malformed condition, ``where``/``by``
            with a trial number, or no trial on the front that meets the conditions.
    """
    from mpsearch import report

    text = str(trial).strip()
    if text != "best":
        if where or by:
            raise MpsearchError("--where and --by choose among the Pareto front; use them with --trial best.")
        if not text.isdigit():
            raise MpsearchError(f"--trial {text!r}: give a trial number or 'best'.")
        return _trial(study, int(text))
    conditions = [parse_where(study, w) for w in where]
    names = report.objective_names(study)
    by = by or (report.ACCURACY if report.ACCURACY in names else names[0])
    _check_name(study, by, "--by")
    front = sorted(study.best_trials, key=lambda t: t.number)
    if not front:
        raise MpsearchError(f"study {study.study_name!r} has no completed trial yet.")
    kept = [t for t in front if all(_COMPARE[op](_value(study, t, n), v) for n, op, v in conditions)]
    if not kept:
        shown = "; ".join(f"{n} {min(_value(study, t, n) for t in front):.4g}-"
                          f"{max(_value(study, t, n) for t in front):.4g}" for n in dict.fromkeys(c[0] for c in conditions))
        raise MpsearchError(f"no trial on the Pareto front of study {study.study_name!r} has "
                            f"{' and '.join(''.join((n, op, f'{v:g}')) for n, op, v in conditions)} "
                            f"(the front's {len(front)} trial(s) span {shown}).")
    lower = report.directions(study)[by] == "minimize" if by in names else by != ATTR_TEST_ACCURACY
    ranked = [t for t in kept if not math.isnan(_value(study, t, by))] or kept
    return min(ranked, key=lambda t: ((1 if lower else -1) * _value(study, t, by), t.number))


def export_trial(study: Any, t: Any, output: str | Path, *, force: bool = False, host: Any = None,
                 storage_url: str | None = None) -> tuple[Path, int]:
    """Write trial ``t``'s model to ``output`` (``.onnx`` or ``.mpq`` by its suffix); returns the path and bytes.

    The file is written beside the output under a temporary name and moved into
    place, so an existing file is replaced only with ``force``, and never half-written.
    An export is registered as an artifact of the study (see :mod:`mpsearch.artifacts`).

    Raises:
        MpsearchError: an unknown suffix, an existing output without ``force``, a missing
            folder, or the trial's artefacts are missing.
    """
    import os
    import tempfile

    from mpsearch.assignment import PrecisionAssignment

    path = Path(output)
    check_output(path, force)
    folder = trial_folder(study, t)
    packed = folder / PACKED_NAME
    model = load_packed(packed, host)
    info = packed_metadata(packed)
    assignment = PrecisionAssignment.load(folder / "assignment.json")
    meta = {**info["metadata"], **trial_metadata(study, t), "mpsearch.model": info["model"]["name"]}
    if path.suffix == ".onnx":  # a packed file holds the widths themselves
        meta.update(assignment_metadata(assignment))
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".onnx":
            save_onnx(model, temporary, info["model"]["input_shape"], meta)
        else:
            save_packed(model, temporary, model_name=info["model"]["name"], num_classes=info["model"]["num_classes"],
                        input_shape=info["model"]["input_shape"], metadata=meta)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    if storage_url is not None:
        from mpsearch.artifacts import register_export

        register_export(study, storage_url, t.number, path)
    return path, path.stat().st_size


def assignment_metadata(assignment: Any) -> dict[str, Any]:
    """The assignment as ONNX metadata: its JSON, its sidecar (base64 of the ``.npz``) if it has one,
    and a per-layer summary."""
    import base64

    data, arrays = assignment.to_dict()
    meta: dict[str, Any] = {"mpsearch.assignment": data}
    if arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        meta["mpsearch.assignment_sidecar"] = base64.b64encode(buffer.getvalue()).decode()
    meta["mpsearch.assignment_layers"] = json.loads(assignment.to_frame().reset_index().to_json(orient="records"))
    return meta


def assignment_from_metadata(meta: Mapping[str, str]) -> Any:
    """The assignment an exported ONNX file's ``metadata_props`` (as a dict) carry."""
    import base64

    from mpsearch.assignment import PrecisionAssignment

    arrays = None
    if "mpsearch.assignment_sidecar" in meta:
        arrays = dict(np.load(io.BytesIO(base64.b64decode(meta["mpsearch.assignment_sidecar"]))))
    return PrecisionAssignment.from_dict(json.loads(meta["mpsearch.assignment"]), arrays,
                                         source="the ONNX file's mpsearch.assignment")


def check_output(path: Path, force: bool) -> None:
    """Refuse an unknown suffix, a missing folder, or an existing file without ``force``."""
    if path.suffix not in SUFFIXES:
        raise MpsearchError(f"output {str(path)!r}: unknown suffix {path.suffix or '(none)'!r}; use .onnx "
                            f"(ONNX with QuantizeLinear/DequantizeLinear) or .mpq (packed integers).")
    if path.is_dir():
        raise MpsearchError(f"output {str(path)!r} is a folder; give a file name ending in .onnx or .mpq.")
    if path.exists() and not force:
        raise MpsearchError(f"output {str(path)!r} exists; add --force to replace it.")
    if not path.parent.is_dir():
        raise MpsearchError(f"output {str(path)!r}: the folder {str(path.parent)!r} does not exist.")


__all__ = ["EVAL_BATCH", "LayerForms", "assignment_from_metadata", "assignment_metadata", "PACKED_NAME", "PackedSize", "TrialModel", "float_onnx", "layer_forms",
           "load_packed", "load_trial", "packed_metadata", "pick_trial", "export_trial", "preprocessing", "read_packed", "save_onnx",
           "save_packed", "save_trial_model", "to_onnx", "trial_folder", "trial_metadata"]
