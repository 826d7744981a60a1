"""The ``bitfusion`` backend: 2-bit BitBricks fused per multiply (Sharma et al., ISCA 2018)."""

from __future__ import annotations

from mpsearch.api import MULT_PJ_PER_BIT2, AnalyticBackend, energy_pj, hookimpl

WIDTHS = (2, 4, 8, 16)
BRICK_BITS = 2
BRICKS_PER_UNIT = 16  # one Fusion Unit: 16 BitBricks, one 8x8-bit multiply per cycle
BASELINE_BITS = 16


def bricks(w, a):
    """BitBricks one ``w`` x ``a``-bit multiply occupies: ``(w / 2) x (a / 2)``."""
    return (w / BRICK_BITS) * (a / BRICK_BITS)


class BitFusionBackend(AnalyticBackend):
    """Bit Fusion: 2-bit BitBricks fused into as many as a multiply's widths need.

    Source: H. Sharma, J. Park, N. Suda, L. Lai, B. Chau, V. Chandra,
    H. Esmaeilzadeh, "Bit Fusion: Bit-Level Dynamically Composable Architecture
    for Accelerating Deep Neural Networks", ISCA 2018. Baseline: the same Bit
    Fusion array running every layer at 16 x 16 bits.

    Widths: 2, 4, 8 and 16 for weights and activations, independently (a 2-bit
    weight may meet an 8-bit activation). Legalisation rounds up, never down: 1
    becomes 2 (a binary operand runs on a 2-bit brick at the same cost), 3 becomes
    4, 5-7 become 8, 9-15 become 16; a pruned (0-bit) group stays 0; above 16 is
    an error.

    Performance, per layer from the profile, summed: a ``w`` x ``a`` multiply
    occupies ``(w/2) x (a/2)`` bricks of a 16-brick Fusion Unit, so a unit does
    ``16 / bricks`` of them per cycle (16 at 2x2, 1 at 8x8; a 16x16 multiply
    takes 64 bricks, four cycles): ``time = MACs x bricks / 16`` Fusion-Unit
    cycles against ``MACs x 64 / 16`` at 16x16, speed-up ``256 / (w x a)``
    (``64`` against 8x8 bits; divide by 4 to read it against an 8-bit baseline).
    ``w`` and ``a`` are the layer's mean legal widths (pruned weights count 0).
    Memory: weights and input activations stored at their legal widths (the
    paper's buffers hold operands at their bit-widths), against 16 bits each.
    Energy (pJ, :func:`mpsearch.backends.energy_pj`): a brick multiplies 2 x 2
    bits, so ``w x a`` bit-products per MAC; a 32-bit accumulate per live MAC;
    weight bits from DRAM, input bits from SRAM. Ignored: the shift-add tree's
    energy, which the paper shows grows for fused 8/16-bit multiplies, and
    under-utilisation of the systolic array.
    """

    weight_bits = WIDTHS
    activation_bits = WIDTHS
    description = ("Bit Fusion (Sharma et al. ISCA 2018): widths 2/4/8/16; time ~ (w/2)(a/2) bricks "
                   "vs 16x16 (64 bricks)")

    def layer_model(self, layer, widths):
        base = BASELINE_BITS
        w, a = widths.weight_mean, widths.input_mean
        return {
            "time": layer.macs * bricks(w, a) / BRICKS_PER_UNIT,
            "baseline_time": layer.macs * bricks(base, base) / BRICKS_PER_UNIT,
            "memory_bits": widths.weight_total + widths.input_total,
            "baseline_memory_bits": base * (layer.weight_numel + layer.input_numel),
            "energy_pj": energy_pj(layer.macs * w * a * MULT_PJ_PER_BIT2, layer.macs * widths.weight_live,
                                   widths.weight_total, widths.input_total),
            "baseline_energy_pj": energy_pj(layer.macs * base * base * MULT_PJ_PER_BIT2, layer.macs,
                                            base * layer.weight_numel, base * layer.input_numel),
        }


@hookimpl
def register_backends(register):
    register("bitfusion", BitFusionBackend())

