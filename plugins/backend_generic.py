"""The ``generic`` backend: any width from 1 to 32 bits, ideal bit-level scaling."""

from __future__ import annotations

import pandas as pd

from mpsearch.backends import Backend
from mpsearch.hookspecs import hookimpl

# Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm, 0.9 V): an 8-bit integer
# multiply costs 0.2 pJ and a 32-bit one 3.1 pJ; both are ~0.003 pJ per bit-product,
# so multiply energy is modelled as proportional to weight bits x activation bits.
MULT_PJ_PER_BIT2 = 0.2 / 64
ADD32_PJ = 0.1  # 32-bit integer add: one accumulation per MAC
# Memory reads as Han et al. (Deep Compression, ICLR 2016, Table 1) tabulate Horowitz's
# figures: 640 pJ per 32-bit DRAM read, 5 pJ per 32-bit SRAM read.
DRAM_PJ_PER_BIT = 640 / 32
SRAM_PJ_PER_BIT = 5 / 32
BASELINE_BITS = 16


class GenericBackend(Backend):
    """Any width 1-32 for weights and activations; legalisation is the identity.

    Performance model: an ideal bit-scalable datapath whose time per layer is
    proportional to its bit operations, ``MACs x w_bits x a_bits``, relative to the
    same datapath running the layer at 16x16 bits. Memory: weight bits plus
    input-activation bits at batch 1, against 16 bits each. Energy (pJ, first
    order, constants from Horowitz, ISSCC 2014): multiplies at 0.2/64 pJ per
    bit-product, a 32-bit accumulate per MAC, weights read once from DRAM and
    inputs once from on-chip SRAM per bit moved.
    """

    weight_bits = None
    activation_bits = None
    description = "any width 1-32; time ~ MACs x w x a vs 16x16 bits (ideal bit-scalable)"

    def layer_costs(self, profile, assignment) -> pd.DataFrame:
        rows = []
        for layer in profile:
            w_total = assignment.total_bits(layer.weight_group)
            a_total = assignment.total_bits(layer.input_group)
            a_mean = a_total / layer.input_numel
            bitops = layer.uses_per_weight * w_total * a_mean
            rows.append({
                "layer": layer.name,
                "time": bitops,
                "baseline_time": layer.macs * BASELINE_BITS * BASELINE_BITS,
                "memory_bits": w_total + a_total,
                "baseline_memory_bits": (layer.weight_numel + layer.input_numel) * BASELINE_BITS,
                "energy_pj": (bitops * MULT_PJ_PER_BIT2 + layer.macs * ADD32_PJ
                              + w_total * DRAM_PJ_PER_BIT + a_total * SRAM_PJ_PER_BIT),
            })
        return pd.DataFrame(rows).set_index("layer")


@hookimpl
def register_backends(register):
    register("generic", GenericBackend())
