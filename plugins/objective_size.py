"""The ``size`` objective: storage of the quantized weights, in MB."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mpsearch.api import BitTensors, Objective, hookimpl, weight_bits_total


class ModelSize(Objective):
    """Bits of every convolution and fully connected weight, plus each quantizer's storage.

    ``size = (sum over weights of their bits + sum over weight groups of scale_bits) / 8 / 1e6``
    in MB (10^6 bytes), the measure FracBits uses (Eq. 6a; only convolution and
    fully connected layers count; biases and batch-norm parameters do not).
    ``scale_bits`` is what the assignment records for each group's quantizer:
    64 for min-max (its two float32 extremes), 0 for DoReFa, 32 (one float32
    scale) for a uniform assignment made by ``mpsearch cost``, and whatever a
    strategy's own quantizer stores (coordinates, bit-width tables).
    """

    unit = "MB"
    description = "weight storage incl. quantizer scales, MB"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        return weight_bits_total(profile, bits, scale_bits) / 8 / 1e6


@hookimpl
def register_objectives(register):
    register("size", ModelSize())
