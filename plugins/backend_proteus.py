"""The ``proteus`` backend: per-layer storage precision, 16-bit compute (Judd et al., ICS 2016)."""

from __future__ import annotations

from mpsearch.api import MULT_PJ_PER_BIT2, AnalyticBackend, energy_pj, hookimpl

BASELINE_BITS = 16


class ProteusBackend(AnalyticBackend):
    """Proteus: weights and activations stored at per-layer precisions, computed at 16 bits.

    Source: P. Judd, J. Albericio, T. Hetherington, T. Aamodt, N. Enright Jerger,
    R. Urtasun, A. Moshovos, "Proteus: Exploiting Numerical Precision
    Variability in Deep Neural Networks", ICS 2016. Baseline: the 16-bit
    accelerator (DaDianNao) whose storage Proteus packs.

    Widths: weights and activations any of 1-16. Legalisation rounds up, never
    down: 1-16 are legal, a pruned (0-bit) group stays 0, above 16 is an error.

    Performance: none gained; data are unpacked to 16 bits before the unchanged
    datapath, so ``time = MACs``, the baseline's (times the live share of
    weights, when groups are pruned). The paper's small gains where packed data
    relieve a memory-bound layer are not modelled (this is a compute-bound
    first-order model), so latency here never depends on widths above 0.
    Memory: weights and input activations stored at their widths against 16 bits
    each, per layer from the profile, summed.
    Energy (pJ, :func:`mpsearch.backends.energy_pj`): 16 x 16 bit-products and a
    32-bit accumulate per live MAC; weight bits read from DRAM and input bits
    from SRAM at the stored widths, which is where Proteus saves energy.
    """

    weight_bits = tuple(range(1, BASELINE_BITS + 1))
    activation_bits = tuple(range(1, BASELINE_BITS + 1))
    description = ("Proteus (Judd et al. ICS 2016): storage at per-layer widths 1-16, 16-bit compute; "
                   "memory only, time = baseline")
    time_depends_on_bits = False

    def layer_model(self, layer, widths):
        base = BASELINE_BITS
        macs = layer.macs * widths.weight_live
        return {
            "time": macs,
            "baseline_time": layer.macs,
            "memory_bits": widths.weight_total + widths.input_total,
            "baseline_memory_bits": base * (layer.weight_numel + layer.input_numel),
            "energy_pj": energy_pj(macs * base * base * MULT_PJ_PER_BIT2, macs,
                                   widths.weight_total, widths.input_total),
            "baseline_energy_pj": energy_pj(layer.macs * base * base * MULT_PJ_PER_BIT2, layer.macs,
                                            base * layer.weight_numel, base * layer.input_numel),
        }


@hookimpl
def register_backends(register):
    register("proteus", ProteusBackend())

