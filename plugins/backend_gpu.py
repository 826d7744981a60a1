"""The ``gpu`` backend: NVIDIA Ampere (A100) tensor cores at int4, int8 and fp16."""

from __future__ import annotations

from mpsearch.api import FP16_MULT_PJ, WidestOperandBackend, hookimpl

WIDTHS = (4, 8, 16)
BASELINE_BITS = 16  # fp16
# Dense peak tensor-core throughput of an A100 (NVIDIA A100 Tensor Core GPU Architecture
# whitepaper, 2020): FP16 312 TFLOPS, INT8 624 TOPS, INT4 1,248 TOPS, i.e. 1 : 2 : 4.
PEAK_TOPS = {16: 312, 8: 624, 4: 1248}


class GpuBackend(WidestOperandBackend):
    """An NVIDIA A100's tensor cores: a layer runs at int4, int8 or fp16, whichever fits both operands.

    Source of the throughputs: NVIDIA, "NVIDIA A100 Tensor Core GPU
    Architecture" whitepaper (2020), dense peaks FP16 312 TFLOPS, INT8 624 TOPS,
    INT4 1,248 TOPS (sparsity off). Baseline: the same GPU running every layer in
    fp16 on its tensor cores.

    Widths: 4, 8, 16 for weights and activations (int4, int8, fp16).
    Legalisation rounds up, never down: 1-4 become 4, 5-8 become 8, 9-16 become
    16; a pruned (0-bit) group stays 0; above 16 is an error.

    Performance, per layer from the profile, summed: one matrix-multiply
    instruction takes both operands in one format, so a layer runs at the wider
    of its weights and inputs, ``e = max(w_max, a_max)``, and
    ``time = MACs x 312 / peak(e) = MACs x e / 16``: a quarter of fp16's at int4,
    a half at int8 (the ratios happen to be linear in the width). Pruned (0-bit)
    weights are work removed. Ignored: memory-bound layers (depthwise
    convolutions, batch 1 fully connected layers reach far below peak),
    quantisation overheads and kernel launch times; a first-order peak model.
    Memory: weights and input activations at their legal widths, against 16 bits.
    Energy (pJ, :func:`mpsearch.backends.energy_pj`, Horowitz ISSCC 2014
    constants): an integer MAC at ``e`` bits is ``e x e`` bit-products and a
    32-bit add, an fp16 MAC a 1.1 pJ fp16 multiply and a 0.9 pJ fp32 accumulate
    (tensor cores accumulate fp16 products in fp32); weight bits from DRAM, input
    bits from SRAM. Not a measured GPU energy: it ignores the register file and
    instruction overheads, which dominate a GPU's energy per operation.
    """

    weight_bits = WIDTHS
    activation_bits = WIDTHS
    description = ("NVIDIA A100 tensor cores: int4/int8/fp16; time ~ peak ratio at max(w, a) "
                   "(4x int4, 2x int8) vs fp16")
    baseline_bits = BASELINE_BITS
    float_multiply_pj = FP16_MULT_PJ


@hookimpl
def register_backends(register):
    register("gpu", GpuBackend())

