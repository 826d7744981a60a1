"""The ``generic`` backend: any width from 1 to 32 bits, ideal bit-level scaling."""

from __future__ import annotations

from mpsearch.api import MULT_PJ_PER_BIT2, AnalyticBackend, energy_pj, hookimpl

BASELINE_BITS = 16


class GenericBackend(AnalyticBackend):
    """Any width 1-32 for weights and activations; legalisation is the identity.

    Performance model: an ideal bit-scalable datapath whose time per layer is
    proportional to its bit operations, ``MACs x w_bits x a_bits``, relative to the
    same datapath running the layer at 16x16 bits. Memory: weight bits plus
    input-activation bits at batch 1, against 16 bits each. Energy (pJ, first
    order, :func:`mpsearch.backends.energy_pj`, Horowitz ISSCC 2014): multiplies at
    0.2/64 pJ per bit-product, a 32-bit accumulate per MAC, weights read once from
    DRAM and inputs once from on-chip SRAM per bit moved.
    """

    weight_bits = None
    activation_bits = None
    description = "any width 1-32; time ~ MACs x w x a vs 16x16 bits (ideal bit-scalable)"

    def layer_model(self, layer, widths):
        bitops = layer.uses_per_weight * widths.weight_total * widths.input_mean
        base = BASELINE_BITS
        return {
            "time": bitops,
            "baseline_time": layer.macs * base * base,
            "memory_bits": widths.weight_total + widths.input_total,
            "baseline_memory_bits": (layer.weight_numel + layer.input_numel) * base,
            "energy_pj": energy_pj(bitops * MULT_PJ_PER_BIT2, layer.macs,
                                   widths.weight_total, widths.input_total),
            "baseline_energy_pj": energy_pj(layer.macs * base * base * MULT_PJ_PER_BIT2, layer.macs,
                                            layer.weight_numel * base, layer.input_numel * base),
        }


@hookimpl
def register_backends(register):
    register("generic", GenericBackend())

