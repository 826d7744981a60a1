"""The ``footprint`` objectives: every weight and every input activation, in MB."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpsearch.api import BitTensors, Objective, group_sum, hookimpl, weight_bits_total


class Footprint(Objective):
    """Bits of all weights plus all quantized input activations for ``batch_size`` samples, in MB.

    The criterion BitPruning (Nikolić et al., Sec. III-A5, Table IV) weights its bit
    loss by: every value counts by how many elements it stands for, weights once
    and activations once per sample, so batch 1 is weight-heavy and batch 128
    activation-heavy. Unlike ``memory`` (the largest activation only, MPDNN's
    definition) every layer's activations count, so each group's gradient is its
    element count. Weights include each quantizer's ``scale_bits``.
    """

    unit = "MB"

    def __init__(self, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.batch_size = int(batch_size)
        self.description = f"all weights + all input activations at batch {batch_size}, MB"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        weights = weight_bits_total(profile, bits, scale_bits)
        acts = sum(group_sum(bits[l.input_group], l.input_shape) for l in profile)
        return (weights + acts * self.batch_size) / 8 / 1e6


@hookimpl
def register_objectives(register):
    register("footprint", Footprint(batch_size=1))
    register("footprint@128", Footprint(batch_size=128))
