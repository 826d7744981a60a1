"""The ``cpu-int8`` backend: a SIMD CPU running each layer in int8 or fp32."""

from __future__ import annotations

from mpsearch.api import FP32_MULT_PJ, WidestOperandBackend, hookimpl

WIDTHS = (8, 32)
BASELINE_BITS = 32  # fp32


class CpuInt8Backend(WidestOperandBackend):
    """A CPU with int8 dot-product instructions: a layer runs in int8 when both operands fit, else fp32.

    Source of the first-order factor: Intel, "Introduction to Intel Deep
    Learning Boost on Second Generation Intel Xeon Scalable Processors" (2019):
    one AVX-512 VNNI ``VPDPBUSD`` does 64 8-bit multiply-accumulates into 16 int32
    lanes where one ``VFMADD231PS`` does 16 fp32 ones, 4x per instruction (Arm's
    ``SDOT`` against ``FMLA`` is the same 16 : 4). Baseline: the same CPU running
    every layer in fp32.

    Widths: 8 (int8) and 32 (fp32) for weights and activations. Legalisation
    rounds up, never down: 1-8 become 8, 9-32 become 32; a pruned (0-bit) group
    stays 0.

    Performance, per layer from the profile, summed: the layer runs at the wider
    of its weights and inputs, ``e = max(w_max, a_max)``, and ``time = MACs x e /
    32``: a quarter of fp32's in int8 (the lane ratio is linear in the width).
    Pruned (0-bit) weights are work removed. This is the peak ratio; measured
    int8 speed-ups on CPUs are usually lower (2-3x) once memory traffic and
    (de)quantisation are counted, which this first-order model ignores.
    Memory: weights and input activations at their legal widths, against 32 bits.
    Energy (pJ, :func:`mpsearch.backends.energy_pj`, Horowitz ISSCC 2014): an int8
    MAC is 8 x 8 bit-products and a 32-bit add, an fp32 MAC a 3.7 pJ multiply and
    a 0.9 pJ add; weight bits from DRAM, input bits from SRAM. Instruction,
    register and cache overheads, which dominate a CPU's energy, are ignored.
    """

    weight_bits = WIDTHS
    activation_bits = WIDTHS
    description = "CPU int8 (AVX-512 VNNI / Arm SDOT) or fp32; time ~ max(w, a)/32 (4x int8) vs fp32"
    baseline_bits = BASELINE_BITS
    float_multiply_pj = FP32_MULT_PJ


@hookimpl
def register_backends(register):
    register("cpu-int8", CpuInt8Backend())

