"""Accelerator backends: which widths a target supports, and what an assignment costs on it.

A backend never searches; strategies never do accelerator arithmetic. Lifecycle:
backends are registered once per process and are stateless. The host legalises
every assignment with :meth:`Backend.legalise` before any cost is computed, so
costs are always those of what the hardware would run.

Most backends are first-order analytical models: :class:`AnalyticBackend` lets a
plugin write its model once, per layer, in torch operations on the layer's
widths (:class:`LayerWidths`); the per-layer frame and a differentiable form of
fractional widths (which the ``latency`` and ``energy`` objectives give gradient
strategies) then come from the same formula, so they agree exactly at integer
widths. :func:`energy_pj` and the constants below are the shared first-order
energy model (Horowitz, ISSCC 2014).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mpsearch.assignment import MAX_BITS, Bits, PrecisionAssignment, split_group
from mpsearch.errors import AssignmentError, MpsearchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mpsearch.profile import LayerProfile, ModelProfile

# First-order energy, Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V).
# An 8-bit integer multiply costs 0.2 pJ and a 32-bit one 3.1 pJ: both ~0.003 pJ per
# bit-product, so an integer multiply is modelled as proportional to w_bits x a_bits.
MULT_PJ_PER_BIT2 = 0.2 / 64
ADD32_PJ = 0.1  # 32-bit integer add: one accumulation per MAC
FP16_MULT_PJ = 1.1  # the same table's floating-point figures
FP16_ADD_PJ = 0.4
FP32_MULT_PJ = 3.7
FP32_ADD_PJ = 0.9
# Memory reads as Han et al. (Deep Compression, ICLR 2016, Table 1) tabulate Horowitz's
# figures: 640 pJ per 32-bit DRAM read, 5 pJ per 32-bit SRAM read.
DRAM_PJ_PER_BIT = 640 / 32
SRAM_PJ_PER_BIT = 5 / 32

COLUMNS = ("time", "baseline_time", "memory_bits", "baseline_memory_bits")
ENERGY_COLUMNS = ("energy_pj", "baseline_energy_pj")


class Backend(ABC):
    """An accelerator's view of precision.

    Attributes:
        weight_bits / activation_bits: supported widths in increasing order, or
            ``None`` for any width from 1 to 32. A width of 0 (pruned) is always kept.
        description: one line, with the source paper of the performance model.

    Subclasses implement :meth:`layer_costs`, a first-order model computed per layer
    from the profile and relative to a stated baseline of the same accelerator.
    """

    weight_bits: Sequence[int] | None = None
    activation_bits: Sequence[int] | None = None
    description: str = ""
    # Whether :meth:`differentiable_costs` is implemented, and whether the time it
    # gives changes with any width (a storage-only backend's does not).
    has_differentiable_costs: bool = False
    time_depends_on_bits: bool = True

    def supported(self, kind: str) -> Sequence[int] | None:
        return self.weight_bits if kind == "weight" else self.activation_bits

    def legalise(self, assignment: PrecisionAssignment) -> PrecisionAssignment:
        """Round every width up to the nearest supported one; never lower a width.

        Raises:
            AssignmentError: a width exceeds the largest supported one.
        """
        def up(group: str, bits: Bits) -> Bits:
            widths = self.supported(split_group(group)[1])
            if widths is None:
                return bits
            return _round_up(bits, widths, group, type(self).__name__)

        return assignment.map(up)

    def is_legal(self, assignment: PrecisionAssignment) -> bool:
        return self.legalise(assignment) == assignment

    @abstractmethod
    def layer_costs(self, profile: ModelProfile, assignment: PrecisionAssignment) -> pd.DataFrame:
        """Per-layer costs of a legal assignment at batch 1.

        Returns:
            A frame indexed by layer with columns ``time`` and ``baseline_time`` (same
            unit, the backend's), ``memory_bits`` and ``baseline_memory_bits``, and
            optionally ``energy_pj`` and ``baseline_energy_pj`` (pJ per inference).
        """

    def differentiable_costs(self, profile: ModelProfile,
                             bits: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's totals over layers as 0-d tensors of fractional widths.

        The pre-legalisation model: at legal integer widths it equals the sums of
        :meth:`layer_costs`' columns. Backends without one raise NotImplementedError
        and leave :attr:`has_differentiable_costs` False.
        """
        raise NotImplementedError(f"backend {type(self).__name__} has no differentiable cost model")

    def speedup(self, profile: ModelProfile, assignment: PrecisionAssignment) -> float:
        """Baseline time over the assignment's time, summed over layers."""
        costs = self.layer_costs(profile, self.legalise(assignment))
        return float(costs["baseline_time"].sum() / costs["time"].sum())

    def memory_ratio(self, profile: ModelProfile, assignment: PrecisionAssignment) -> float:
        """The assignment's storage over the baseline's (smaller is better)."""
        costs = self.layer_costs(profile, self.legalise(assignment))
        return float(costs["memory_bits"].sum() / costs["baseline_memory_bits"].sum())

    def energy_ratio(self, profile: ModelProfile, assignment: PrecisionAssignment) -> float:
        """The assignment's energy over the baseline's (smaller is better).

        Raises:
            MpsearchError: the backend has no energy model.
        """
        costs = self.layer_costs(profile, self.legalise(assignment))
        if not set(ENERGY_COLUMNS) <= set(costs.columns):
            raise MpsearchError(f"backend {type(self).__name__} has no energy model (its layer costs "
                                f"lack {' and '.join(ENERGY_COLUMNS)}).")
        return float(costs["energy_pj"].sum() / costs["baseline_energy_pj"].sum())


def energy_pj(multiply_pj, accumulates, weight_bits, input_bits, *, accumulate_pj: float = ADD32_PJ):
    """First-order energy of one layer at batch 1, in pJ (floats or tensors alike).

    ``multiply_pj`` (e.g. bit-products x :data:`MULT_PJ_PER_BIT2`) plus one
    ``accumulate_pj`` add per accumulation, every stored weight bit read once from
    DRAM and every input-activation bit once from on-chip SRAM.
    """
    return (multiply_pj + accumulates * accumulate_pj
            + weight_bits * DRAM_PJ_PER_BIT + input_bits * SRAM_PJ_PER_BIT)


def mixed_mac_pj(width, float_bits: int, float_mult_pj: float, float_add_pj: float):
    """(multiply, accumulate) pJ of one MAC on integer units up to 8 bits and a float one above.

    Up to 8 bits an integer multiply (``width**2`` bit-products) and a 32-bit add;
    above, the float multiply scaled by ``(width / float_bits)**2`` and the float
    add. Exact at the widths such a datapath runs (4, 8, ``float_bits``); in
    between it is monotone, so fractional widths have a slope.
    """
    width = width if torch.is_tensor(width) else torch.as_tensor(width, dtype=torch.float64)
    integer = width <= 8
    multiply = torch.where(integer, width * width * MULT_PJ_PER_BIT2,
                           float_mult_pj * (width / float_bits) ** 2)
    accumulate = torch.where(integer, torch.full_like(width, ADD32_PJ),
                             torch.full_like(width, float_add_pj))
    return multiply, accumulate


@dataclass(frozen=True)
class LayerWidths:
    """One layer's widths as 0-d tensors (fractional or integer), what analytical models read.

    Attributes:
        weight_total / input_total: bits stored for the layer's weights / per-sample input.
        weight_mean / input_mean: mean width per element (0-bit, pruned, elements count as 0).
        weight_max / input_max: the widest element, what one kernel for the layer runs at.
        weight_live / input_live: share of elements with a width above 0 (no gradient).
    """

    weight_total: torch.Tensor
    input_total: torch.Tensor
    weight_mean: torch.Tensor
    input_mean: torch.Tensor
    weight_max: torch.Tensor
    input_max: torch.Tensor
    weight_live: torch.Tensor
    input_live: torch.Tensor

    @classmethod
    def of(cls, layer: LayerProfile, bits: Mapping[str, torch.Tensor]) -> LayerWidths:
        # A width tensor broadcast onto its group repeats every element equally often,
        # so its mean and maximum are the group's.
        w = torch.as_tensor(bits[layer.weight_group])
        a = torch.as_tensor(bits[layer.input_group])
        w = w if w.is_floating_point() else w.double()
        a = a if a.is_floating_point() else a.double()
        wm, am = w.mean(), a.mean()
        return cls(weight_total=wm * layer.weight_numel, input_total=am * layer.input_numel,
                   weight_mean=wm, input_mean=am, weight_max=w.max(), input_max=a.max(),
                   weight_live=(w.detach() > 0).to(w.dtype).mean(),
                   input_live=(a.detach() > 0).to(a.dtype).mean())


class AnalyticBackend(Backend):
    """A backend whose model is one torch formula per layer, of the layer and its widths.

    Subclasses implement :meth:`layer_model`. :meth:`layer_costs` evaluates it at
    the assignment's integer widths (float64) and :meth:`differentiable_costs` at
    fractional ones, so the two agree exactly at integer widths. Neither
    legalises: :meth:`layer_costs` is given legal assignments by contract, and on
    any other the formula is the pre-legalisation model.
    """

    has_differentiable_costs = True

    @abstractmethod
    def layer_model(self, layer: LayerProfile, widths: LayerWidths) -> Mapping[str, object]:
        """``time``, ``baseline_time``, ``memory_bits``, ``baseline_memory_bits``,
        ``energy_pj`` and ``baseline_energy_pj`` of one layer (tensors or numbers)."""

    def layer_costs(self, profile: ModelProfile, assignment: PrecisionAssignment) -> pd.DataFrame:
        import pandas as pd

        bits = assignment.as_tensors(torch.float64)
        rows = []
        for layer in profile:
            model = self.layer_model(layer, LayerWidths.of(layer, bits))
            rows.append({"layer": layer.name, **{k: float(model[k]) for k in (*COLUMNS, *ENERGY_COLUMNS)}})
        return pd.DataFrame(rows).set_index("layer")

    def differentiable_costs(self, profile: ModelProfile,
                             bits: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        totals: dict[str, torch.Tensor] = {}
        for layer in profile:
            model = self.layer_model(layer, LayerWidths.of(layer, bits))
            for k in (*COLUMNS, *ENERGY_COLUMNS):
                totals[k] = totals.get(k, 0.0) + torch.as_tensor(model[k], dtype=torch.float64)
        return totals


class WidestOperandBackend(AnalyticBackend):
    """A datapath that runs a layer in one format wide enough for both operands.

    ``e = max(w_max, a_max)``; ``time = MACs x e / baseline_bits`` (the throughput
    ratios of such machines are linear in the width), pruned weights are work
    removed. Memory: weights and inputs at their widths against ``baseline_bits``.
    Energy: :func:`mixed_mac_pj` at ``e`` with the baseline's float multiply, then
    :func:`energy_pj`. Subclasses set the widths, ``baseline_bits`` and
    ``float_multiply_pj``.
    """

    baseline_bits: int = 16
    float_multiply_pj: float = FP16_MULT_PJ

    def layer_model(self, layer, widths):
        base = self.baseline_bits
        e = torch.maximum(widths.weight_max, widths.input_max)
        macs = layer.macs * widths.weight_live
        multiply, accumulate = mixed_mac_pj(e, base, self.float_multiply_pj, FP32_ADD_PJ)
        base_multiply, base_accumulate = mixed_mac_pj(base, base, self.float_multiply_pj, FP32_ADD_PJ)
        return {
            "time": macs * e / base,
            "baseline_time": layer.macs,
            "memory_bits": widths.weight_total + widths.input_total,
            "baseline_memory_bits": base * (layer.weight_numel + layer.input_numel),
            "energy_pj": energy_pj(macs * multiply, macs, widths.weight_total, widths.input_total,
                                   accumulate_pj=accumulate),
            "baseline_energy_pj": energy_pj(layer.macs * base_multiply, layer.macs,
                                            base * layer.weight_numel, base * layer.input_numel,
                                            accumulate_pj=base_accumulate),
        }


def _round_up(bits: Bits, widths: Sequence[int], group: str, backend: str) -> Bits:
    table = sorted(int(w) for w in widths)
    if isinstance(bits, int):
        if bits == 0:
            return 0
        for w in table:
            if w >= bits:
                return w
        raise AssignmentError(f"group {group!r}: {bits} bits exceeds the widest width "
                              f"{table[-1]} that backend {backend} supports.")
    if bits.numel() and int(bits.max()) > table[-1]:
        raise AssignmentError(f"group {group!r}: {int(bits.max())} bits exceeds the widest width "
                              f"{table[-1]} that backend {backend} supports.")
    lut = torch.zeros(MAX_BITS + 1, dtype=torch.int64)
    for b in range(1, MAX_BITS + 1):
        lut[b] = next((w for w in table if w >= b), 0)
    return lut[bits]
