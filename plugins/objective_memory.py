"""The ``memory`` objectives: weights plus the largest activation, in MB."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpsearch.api import BitTensors, Objective, group_sum, hookimpl, weight_bits_total


class MemoryFootprint(Objective):
    """Storage of all weights plus the largest quantized activation, at a batch size.

    The footprint MPDNN (Uhlich et al. 2020) constrains and BitPruning reports:
    every weight (with its quantizer's ``scale_bits``) plus, over the quantized
    layers, the largest input activation tensor for ``batch_size`` samples, in MB
    (10^6 bytes). Batch 1 is weight-heavy; batch 128 activation-heavy. The
    fractional form takes the maximum over layers, whose gradient reaches the
    layer that is currently largest.
    """

    unit = "MB"

    def __init__(self, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.batch_size = int(batch_size)
        self.description = f"all weights + the largest activation at batch {batch_size}, MB"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        weights = weight_bits_total(profile, bits, scale_bits)
        acts = torch.stack([torch.as_tensor(group_sum(bits[l.input_group], l.input_shape),
                                            dtype=torch.as_tensor(bits[l.input_group]).dtype)
                            for l in profile])
        return (weights + acts.max() * self.batch_size) / 8 / 1e6


@hookimpl
def register_objectives(register):
    register("memory", MemoryFootprint(batch_size=1))
    register("memory@128", MemoryFootprint(batch_size=128))
