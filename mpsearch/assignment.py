"""PrecisionAssignment: how many bits each group of weights and activations gets.

A group is the tensor of one quantizable layer's weights (``"conv1:weight"``) or
of its input activations (``"conv1:input"``). Its bits are an ``int`` (the whole
tensor shares one width) or an integer tensor whose shape broadcasts onto the
group's tensor shape (per output channel ``(C_out, 1, 1, 1)``, per kernel
``(C_out, C_in, 1, 1)``, per parameter: the weight's own shape). ``0`` means pruned.
Activation shapes are per sample.

Each group may also carry ``scale_bits``: the bits its quantizer stores besides
the weights themselves (scales, offsets, coordinates, a bit-width table), which
the ``size`` objective adds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpsearch.errors import AssignmentError

MIN_BITS, MAX_BITS = 0, 32
FORMAT = "mpsearch-assignment"
VERSION = 1
INLINE_LIMIT = 4096  # bit tensors larger than this go to the .npz sidecar

Bits = int | torch.Tensor
KINDS = ("weight", "input")


def split_group(group: str) -> tuple[str, str]:
    """``"layer1.0.conv1:weight"`` -> ``("layer1.0.conv1", "weight")``."""
    layer, sep, kind = group.rpartition(":")
    if not sep or kind not in KINDS or not layer:
        raise AssignmentError(f"group name {group!r} must be '<layer>:weight' or '<layer>:input'.")
    return layer, kind


def broadcasts_to(bits_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """True when a bits tensor of ``bits_shape`` gives every element of ``shape`` one width."""
    if bits_shape == ():
        return True
    return len(bits_shape) == len(shape) and all(b in (1, s) for b, s in zip(bits_shape, shape))


def total_bits(bits: Bits, shape: tuple[int, ...]) -> float:
    """Sum of widths over every element of a tensor of ``shape``."""
    numel = math.prod(shape)
    if isinstance(bits, int):
        return float(bits * numel)
    return float(bits.double().sum()) * (numel / bits.numel())


class PrecisionAssignment(Mapping[str, Bits]):
    """Immutable mapping group -> bits, with the shapes needed to weigh them.

    Args:
        bits: group -> int, or integer tensor broadcastable onto the group's shape.
        shapes: group -> the shape of the tensor it quantizes (per sample for inputs).
        scale_bits: group -> bits its quantizer stores besides the values (default 0).
        meta: free-form JSON-serialisable facts (the model's name, the strategy).

    Raises:
        AssignmentError: a name, shape or width is invalid.
    """

    def __init__(self, bits: Mapping[str, Bits], shapes: Mapping[str, tuple[int, ...]],
                 scale_bits: Mapping[str, int] | None = None, meta: Mapping[str, Any] | None = None):
        self._bits: dict[str, Bits] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        missing = [g for g in bits if g not in shapes]
        if missing:
            raise AssignmentError(f"no shape given for group(s) {', '.join(missing)}.")
        extra = [g for g in shapes if g not in bits]
        if extra:
            raise AssignmentError(f"no bits given for group(s) {', '.join(extra)}.")
        for group, value in bits.items():
            split_group(group)
            shape = tuple(int(s) for s in shapes[group])
            self._shapes[group] = shape
            self._bits[group] = _check_bits(group, value, shape)
        self._scale_bits = {g: int(v) for g, v in (scale_bits or {}).items() if int(v)}
        unknown = [g for g in self._scale_bits if g not in self._bits]
        if unknown:
            raise AssignmentError(f"scale_bits names unknown group(s) {', '.join(unknown)}.")
        self.meta: dict[str, Any] = dict(meta or {})

    # -- construction ----------------------------------------------------------------

    @classmethod
    def uniform(cls, profile, weight_bits: int, act_bits: int, *, first_last_bits: int | None = None,
                scale_bits: int = 32, meta: Mapping[str, Any] | None = None) -> PrecisionAssignment:
        """One width for every weight group and one for every input group of a profile.

        Args:
            profile: a :class:`mpsearch.profile.ModelProfile`.
            first_last_bits: if given, the first and last quantized layers (in execution
                order) get this width for weights and inputs, as most papers do.
            scale_bits: storage per weight group for its quantizer's scale (one
                float32 by default).
        """
        bits: dict[str, Bits] = {}
        ends = {profile.layers[0].name, profile.layers[-1].name} if first_last_bits is not None else set()
        for layer in profile:
            w, a = (first_last_bits, first_last_bits) if layer.name in ends else (weight_bits, act_bits)
            bits[layer.weight_group] = w
            bits[layer.input_group] = a
        return cls(bits, profile.group_shapes(),
                   {l.weight_group: scale_bits for l in profile}, meta)

    def replace(self, bits: Mapping[str, Bits] | None = None, **meta: Any) -> PrecisionAssignment:
        """A new assignment with some groups' bits replaced (and meta entries updated)."""
        merged = {**self._bits, **(bits or {})}
        return PrecisionAssignment(merged, self._shapes, self._scale_bits, {**self.meta, **meta})

    def map(self, fn) -> PrecisionAssignment:
        """A new assignment with ``fn(group, bits) -> bits`` applied to every group."""
        return self.replace({g: fn(g, b) for g, b in self._bits.items()})

    # -- Mapping ---------------------------------------------------------------------

    def __getitem__(self, group: str) -> Bits:
        value = self._bits[group]
        return value.clone() if isinstance(value, torch.Tensor) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrecisionAssignment):
            return NotImplemented
        if self._shapes != other._shapes or self._scale_bits != other._scale_bits:
            return False
        return all(_bits_equal(self._bits[g], other._bits[g]) for g in self._bits)

    __hash__ = None  # type: ignore[assignment]

    def same_widths(self, other: PrecisionAssignment) -> bool:
        """Whether both give every group the same widths (scale storage and meta aside)."""
        return (self._shapes == other._shapes
                and all(_bits_equal(self._bits[g], other._bits[g]) for g in self._bits))

    def __repr__(self) -> str:
        return (f"PrecisionAssignment({len(self.layers)} layers, "
                f"avg weight bits {self.average_weight_bits():.2f}, "
                f"avg activation bits {self.average_activation_bits():.2f})")

    # -- views -----------------------------------------------------------------------

    def shape(self, group: str) -> tuple[int, ...]:
        return self._shapes[group]

    def scale_bits(self, group: str) -> int:
        return self._scale_bits.get(group, 0)

    @property
    def weight_groups(self) -> list[str]:
        return [g for g in self._bits if g.endswith(":weight")]

    @property
    def activation_groups(self) -> list[str]:
        return [g for g in self._bits if g.endswith(":input")]

    @property
    def layers(self) -> list[str]:
        seen: dict[str, None] = {}
        for g in self._bits:
            seen.setdefault(split_group(g)[0], None)
        return list(seen)

    def as_tensors(self, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """Group -> bits as a float tensor (0-d for a shared width), for differentiable costs."""
        return {g: (torch.tensor(float(b), dtype=dtype) if isinstance(b, int) else b.to(dtype))
                for g, b in self._bits.items()}

    def total_bits(self, group: str) -> float:
        return total_bits(self._bits[group], self._shapes[group])

    def numel(self, group: str) -> int:
        return math.prod(self._shapes[group])

    def average_weight_bits(self) -> float:
        """Bits per weight, averaged over every weight (each weighted by its count)."""
        return self._average(self.weight_groups)

    def average_activation_bits(self) -> float:
        """Bits per input activation value, weighted by each layer's per-sample input size."""
        return self._average(self.activation_groups)

    def _average(self, groups: list[str]) -> float:
        count = sum(self.numel(g) for g in groups)
        return sum(self.total_bits(g) for g in groups) / count if count else float("nan")

    def to_frame(self):
        """Per-layer table: weight count, weight bits (mean, min, max), pruned share, input bits."""
        import pandas as pd

        rows = []
        for layer in self.layers:
            wg, ag = f"{layer}:weight", f"{layer}:input"
            row: dict[str, Any] = {"layer": layer}
            if wg in self._bits:
                b = self._bits[wg]
                row.update(weights=self.numel(wg), weight_bits=self.total_bits(wg) / self.numel(wg),
                           weight_bits_min=_min(b), weight_bits_max=_max(b),
                           pruned=_pruned_share(b), scale_bits=self.scale_bits(wg))
            if ag in self._bits:
                row.update(inputs=self.numel(ag), input_bits=self.total_bits(ag) / self.numel(ag))
            rows.append(row)
        return pd.DataFrame(rows).set_index("layer")

    def histogram(self, kind: str = "weight"):
        """Bit-width -> how many values (weights, or per-sample input values) use it."""
        import pandas as pd

        if kind not in KINDS:
            raise AssignmentError(f"histogram kind must be one of {KINDS}, not {kind!r}.")
        counts: dict[int, int] = {}
        for g in (self.weight_groups if kind == "weight" else self.activation_groups):
            b, numel = self._bits[g], self.numel(g)
            if isinstance(b, int):
                counts[b] = counts.get(b, 0) + numel
            else:
                per = numel // b.numel()
                values, n = torch.unique(b, return_counts=True)
                for v, c in zip(values.tolist(), n.tolist()):
                    counts[int(v)] = counts.get(int(v), 0) + int(c) * per
        return pd.Series(counts, name="count", dtype="int64").rename_axis("bits").sort_index()

    # -- validation ------------------------------------------------------------------

    def validate(self, profile, source: str = "assignment", model: str | None = None) -> None:
        """Check that the groups and shapes are exactly those of a model's profile.

        Args:
            source: what the assignment is, in messages (e.g. ``assignment file 'a.json'``).
            model: the model's name, in messages.

        Raises:
            AssignmentError: groups missing or unknown, or a shape that differs.
        """
        made_for = self.meta.get("model")
        the_model = f"the model {model!r}" if model else "the model"
        if made_for and made_for != model:
            source = f"{source} (made for model {made_for!r})"
        expected = profile.group_shapes()
        missing = [g for g in expected if g not in self._bits]
        unknown = [g for g in self._bits if g not in expected]
        if missing or unknown:
            parts = []
            if unknown:
                parts.append(f"unknown group(s) {_few(unknown)}")
            if missing:
                parts.append(f"missing group(s) {_few(missing)}")
            raise AssignmentError(f"{source} does not match {the_model}: {'; '.join(parts)}.")
        for g, shape in expected.items():
            if tuple(shape) != self._shapes[g]:
                raise AssignmentError(f"{source} does not match {the_model}: group {g!r} has "
                                      f"shape {list(self._shapes[g])} but the model's is "
                                      f"{list(shape)}.")

    # -- serialisation ---------------------------------------------------------------

    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A JSON-able dict and the arrays that go to the sidecar (empty if none)."""
        groups: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for g, b in self._bits.items():
            entry: dict[str, Any] = {"shape": list(self._shapes[g])}
            if isinstance(b, int):
                entry["bits"] = b
            elif b.numel() <= INLINE_LIMIT:
                entry["bits"] = {"shape": list(b.shape), "values": b.flatten().tolist()}
            else:
                key = f"a{len(arrays)}"
                arrays[key] = b.to(torch.uint8).numpy()
                entry["bits"] = {"shape": list(b.shape), "sidecar": key}
            if g in self._scale_bits:
                entry["scale_bits"] = self._scale_bits[g]
            groups[g] = entry
        return {"format": FORMAT, "version": VERSION, "meta": self.meta, "groups": groups}, arrays

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None,
                  source: str = "assignment") -> PrecisionAssignment:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise AssignmentError(f"{source} is not an mpsearch assignment "
                                  f"(expected \"format\": \"{FORMAT}\").")
        version = data.get("version")
        if version != VERSION:
            raise AssignmentError(f"{source} has assignment format version {version!r}; "
                                  f"this mpsearch reads version {VERSION}.")
        bits: dict[str, Bits] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        scale: dict[str, int] = {}
        try:
            for g, entry in data["groups"].items():
                shapes[g] = tuple(entry["shape"])
                raw = entry["bits"]
                if isinstance(raw, int) and not isinstance(raw, bool):
                    bits[g] = raw
                elif not isinstance(raw, Mapping):
                    raise AssignmentError(f"{source}: group {g!r} has bits {raw!r}; give a whole "
                                          f"number of bits from {MIN_BITS} to {MAX_BITS}.")
                elif "values" in raw:
                    values = raw["values"]
                    if not isinstance(values, list) or not all(_whole(v) for v in values):
                        bad = next((v for v in values if not _whole(v)), values) \
                            if isinstance(values, list) else values
                        raise AssignmentError(f"{source}: group {g!r} has a width {bad!r}; widths "
                                              f"are whole numbers from {MIN_BITS} to {MAX_BITS}.")
                    bits[g] = torch.tensor(values, dtype=torch.int64).reshape(raw["shape"])
                else:
                    if arrays is None or raw["sidecar"] not in arrays:
                        raise AssignmentError(f"{source}: group {g!r} refers to array "
                                              f"{raw['sidecar']!r} but the .npz sidecar lacks it.")
                    array = np.asarray(arrays[raw["sidecar"]])
                    if array.dtype.kind not in "iu":  # a float array would be truncated silently
                        raise AssignmentError(f"{source}: group {g!r}: the sidecar's array holds "
                                              f"{array.dtype}, not whole numbers of bits.")
                    bits[g] = torch.from_numpy(array).to(torch.int64)
                if "scale_bits" in entry:
                    scale[g] = int(entry["scale_bits"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, AssignmentError):
                raise
            raise AssignmentError(f"{source} is malformed: {type(exc).__name__}: {exc}.") from exc
        try:
            return cls(bits, shapes, scale, data.get("meta"))
        except AssignmentError as exc:  # name the file, not only the group
            raise AssignmentError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and, for large bit tensors, ``path`` with suffix ``.npz``.

        Raises:
            AssignmentError: the file cannot be written (a missing folder, a full disk).
        """
        path = Path(path)
        data, arrays = self.to_dict()
        sidecar = path.with_suffix(".npz")
        try:
            if arrays:
                np.savez_compressed(sidecar, **arrays)
                data["sidecar"] = sidecar.name
            path.write_text(json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            missing = "" if path.parent.is_dir() else f" (the folder {str(path.parent)!r} does not exist)"
            raise AssignmentError(f"cannot write the assignment {str(path)!r}: "
                                  f"{exc.strerror or exc}{missing}.") from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrecisionAssignment:
        """Read an assignment written by :meth:`save`.

        Raises:
            AssignmentError: the file is missing, not JSON, or not a valid assignment.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AssignmentError(f"assignment file {str(path)!r} does not exist.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AssignmentError(f"assignment file {str(path)!r} is not readable JSON: {exc}.") from exc
        arrays = None
        if isinstance(data, dict) and "sidecar" in data:
            name = data["sidecar"]
            # the sidecar lies beside the JSON file: a bare file name, never a path elsewhere
            if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
                raise AssignmentError(f"assignment file {str(path)!r}: \"sidecar\" must be the name "
                                      f"of a .npz file beside it, not {name!r}.")
            sidecar = path.with_name(name)
            try:
                # arrays of integers only: a pickled object in a sidecar is refused, never run
                with np.load(sidecar, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except Exception as exc:  # noqa: BLE001 - zip, format and OS errors alike
                text = " ".join(str(exc).split()) or type(exc).__name__
                raise AssignmentError(f"assignment sidecar {str(sidecar)!r} is not readable: "
                                      f"{text}.") from None
        return cls.from_dict(data, arrays, source=f"assignment file {str(path)!r}")


def _check_bits(group: str, value: Any, shape: tuple[int, ...]) -> Bits:
    if isinstance(value, bool):
        raise AssignmentError(f"group {group!r}: bits must be an integer, not {value!r}.")
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not MIN_BITS <= value <= MAX_BITS:
            raise AssignmentError(f"group {group!r}: {value} bits is outside {MIN_BITS}-{MAX_BITS}.")
        return value
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise AssignmentError(f"group {group!r}: bits must be an int or an integer tensor, "
                              f"not {type(value).__name__}.")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise AssignmentError(f"group {group!r}: bits tensor must have an integer dtype, not {value.dtype}.")
    value = value.detach().to("cpu", torch.int64).clone()
    if not broadcasts_to(tuple(value.shape), shape):
        raise AssignmentError(f"group {group!r}: bits of shape {list(value.shape)} do not "
                              f"broadcast onto the tensor's shape {list(shape)}.")
    if value.numel() and (int(value.min()) < MIN_BITS or int(value.max()) > MAX_BITS):
        raise AssignmentError(f"group {group!r}: bits range {int(value.min())}-{int(value.max())} "
                              f"is outside {MIN_BITS}-{MAX_BITS}.")
    if value.dim() == 0:
        return int(value)
    return value


def _whole(value: Any) -> bool:
    """A JSON width: an int, not a bool, a float, or NaN."""
    return isinstance(value, int) and not isinstance(value, bool)


def _bits_equal(a: Bits, b: Bits) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    return ta.shape == tb.shape and bool(torch.equal(ta, tb))


def _min(b: Bits) -> int:
    return b if isinstance(b, int) else int(b.min())


def _max(b: Bits) -> int:
    return b if isinstance(b, int) else int(b.max())


def _pruned_share(b: Bits) -> float:
    return float(b == 0) if isinstance(b, int) else float((b == 0).double().mean())


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
