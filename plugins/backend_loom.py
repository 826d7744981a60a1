"""The ``loom`` backend: bit-serial weights and activations (Sharify et al., DAC 2018)."""

from __future__ import annotations

from mpsearch.api import MULT_PJ_PER_BIT2, AnalyticBackend, energy_pj, hookimpl

BASELINE_BITS = 16


class LoomBackend(AnalyticBackend):
    """Loom: weights and activations both bit-serial; time scales with both precisions.

    Source: S. Sharify, A. Delmas Lascorz, K. Siu, P. Judd, A. Moshovos, "Loom:
    Exploiting Weight and Activation Precisions to Accelerate Convolutional
    Neural Networks", DAC 2018. Baseline: the equivalent 16-bit bit-parallel
    accelerator (DaDianNao-like) the paper compares against, same peak MACs.

    Widths: weights and activations any of 1-16. Legalisation rounds up, never
    down: 1-16 are all legal, a pruned (0-bit) group stays 0, above 16 is an error.

    Performance, per layer from the profile, summed (the paper's ideal speed-ups):
        - convolutions: ``time = MACs x w x a / (16 x 16)``; a ``w``-bit weight
          meets an ``a``-bit activation in ``w x a`` single-bit steps where the
          baseline spends one 16x16 step, speed-up ``256 / (w x a)``.
        - fully connected layers: ``time = MACs x w / 16``; they are limited by
          fetching weights, which Loom does bit-serially, so only the weight
          precision counts, speed-up ``16 / w``.
        ``w`` and ``a`` are the layer's mean widths (pruned weights count 0).
    Memory: weights and input activations stored at their widths, as the
    paper's per-layer precisions allow, against 16 bits each.
    Energy (pJ, :func:`mpsearch.backends.energy_pj`): ``w x a`` bit-products
    per MAC in convolutions and ``w x 16`` in fully connected layers, a 32-bit
    accumulate per live MAC, weight bits read from DRAM and input bits from SRAM.
    Ignored: under-utilisation when a layer's filters or windows do not fill the
    array, and the paper's dynamic per-group activation precision.
    """

    weight_bits = tuple(range(1, BASELINE_BITS + 1))
    activation_bits = tuple(range(1, BASELINE_BITS + 1))
    description = ("Loom (Sharify et al. DAC 2018): bit-serial weights and activations 1-16; "
                   "conv time ~ w*a/256, FC ~ w/16, vs 16-bit bit-parallel")

    def layer_model(self, layer, widths):
        base = BASELINE_BITS
        w, a = widths.weight_mean, widths.input_mean
        conv = layer.kind == "conv2d"
        time = layer.macs * w * a / (base * base) if conv else layer.macs * w / base
        products = layer.macs * w * (a if conv else base)
        return {
            "time": time,
            "baseline_time": layer.macs,
            "memory_bits": widths.weight_total + widths.input_total,
            "baseline_memory_bits": base * (layer.weight_numel + layer.input_numel),
            "energy_pj": energy_pj(products * MULT_PJ_PER_BIT2, layer.macs * widths.weight_live,
                                   widths.weight_total, widths.input_total),
            "baseline_energy_pj": energy_pj(layer.macs * base * base * MULT_PJ_PER_BIT2, layer.macs,
                                            base * layer.weight_numel, base * layer.input_numel),
        }


@hookimpl
def register_backends(register):
    register("loom", LoomBackend())

