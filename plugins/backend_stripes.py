"""The ``stripes`` backend: bit-serial activations, bit-parallel 16-bit weights (Judd et al., MICRO 2016)."""

from __future__ import annotations

from mpsearch.api import MULT_PJ_PER_BIT2, AnalyticBackend, energy_pj, hookimpl

BASELINE_BITS = 16  # DaDianNao's fixed-point width, which Stripes keeps for weights and storage


class StripesBackend(AnalyticBackend):
    """Stripes: activations processed bit-serially, weights bit-parallel at 16 bits.

    Source: P. Judd, J. Albericio, T. Hetherington, T. Aamodt, A. Moshovos,
    "Stripes: Bit-Serial Deep Neural Network Computing", MICRO 2016. Baseline:
    DaDianNao, the 16-bit bit-parallel accelerator Stripes is derived from
    (the paper's baseline), at the same throughput per MAC slot.

    Widths: weights 16 only (bit-parallel 16-bit, as DaDianNao); activations any
    of 1-16 (one bit per cycle). Legalisation rounds up, never down: every weight
    width 1-16 becomes 16, activations are unchanged; a pruned (0-bit) group stays
    0; a width above 16 is an error.

    Performance, per layer from the profile, summed:
        - convolutions (depthwise and grouped included): ``time = MACs x a / 16``.
          An activation of ``a`` bits takes ``a`` cycles where DaDianNao takes one
          16-bit cycle, and Stripes processes 16 windows at once to make up the
          throughput: the paper's ideal speed-up ``16 / a``.
        - fully connected layers: ``time = MACs``, no speed-up. There is one
          window per input at batch 1 and every weight is used once, so Stripes
          runs them at DaDianNao's speed, as the paper states (its gains are for
          convolutional layers; Loom, DAC 2018, was motivated by this limit).
        ``a`` is the layer's mean activation width; a layer's share of pruned
        (0-bit) weights is work removed (time times the live share).
    Memory: Stripes keeps DaDianNao's 16-bit storage (per-layer storage precision
    is Proteus, the ``proteus`` backend): 16 bits per live weight and activation
    against 16 bits for all, i.e. a ratio of 1 unless groups are pruned.
    Energy (pJ, :func:`mpsearch.backends.energy_pj`): a convolution multiplies 16
    x ``a`` bit-products per MAC, a fully connected layer 16 x 16; a 32-bit
    accumulate per MAC; 16-bit weights read from DRAM and 16-bit inputs from SRAM.
    Ignored: the paper's partial utilisation when a layer's channels or windows
    do not fill the tiles, and its per-group dynamic precision.
    """

    weight_bits = (BASELINE_BITS,)
    activation_bits = tuple(range(1, BASELINE_BITS + 1))
    description = ("Stripes (Judd et al. MICRO 2016): bit-serial activations 1-16, 16-bit weights; "
                   "conv time ~ a/16, FC no gain, vs DaDianNao 16-bit")

    def layer_model(self, layer, widths):
        base = BASELINE_BITS
        macs = layer.macs * widths.weight_live
        conv = layer.kind == "conv2d"
        time = macs * widths.input_mean / base if conv else macs
        products = base * widths.input_mean if conv else base * base
        stored_weights = base * layer.weight_numel * widths.weight_live
        stored_inputs = base * layer.input_numel * widths.input_live
        return {
            "time": time,
            "baseline_time": layer.macs,
            "memory_bits": stored_weights + stored_inputs,
            "baseline_memory_bits": base * (layer.weight_numel + layer.input_numel),
            "energy_pj": energy_pj(macs * products * MULT_PJ_PER_BIT2, macs, stored_weights,
                                   stored_inputs),
            "baseline_energy_pj": energy_pj(layer.macs * base * base * MULT_PJ_PER_BIT2, layer.macs,
                                            base * layer.weight_numel, base * layer.input_numel),
        }


@hookimpl
def register_backends(register):
    register("stripes", StripesBackend())

