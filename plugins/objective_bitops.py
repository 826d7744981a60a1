"""The ``bitops`` objective: bit operations of all multiplications, in GBitOPs."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpsearch.api import BitTensors, Objective, group_sum, hookimpl


class BitOps(Objective):
    """Sum over layers of MACs x weight bits x activation bits, per sample, in GBitOPs.

    A multiplication of a ``k_w``-bit weight by a ``k_a``-bit activation costs
    ``k_w * k_a`` BitOPs (FracBits, Eq. 4); every weight takes part in
    ``uses_per_weight`` multiplications (the output's spatial size for a
    convolution), so a layer costs ``a_bits * uses_per_weight * sum(w_bits)``.
    Exact for any weight granularity; a per-element activation width enters as its
    mean. Bilinear in the widths, so the fractional form is the same formula
    (FracBits, Eq. 5).
    """

    unit = "GBitOPs"
    description = "bit operations (MACs x weight bits x activation bits), GBitOPs per sample"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        total = 0.0
        for layer in profile:
            a = torch.as_tensor(bits[layer.input_group]).mean()
            total = total + a * layer.uses_per_weight * group_sum(bits[layer.weight_group],
                                                                 layer.weight_shape)
        return total / 1e9


@hookimpl
def register_objectives(register):
    register("bitops", BitOps())
