"""The quantization engine every strategy shares.

- :mod:`~mpsearch.quant.granularity`: which weights share a width.
- :mod:`~mpsearch.quant.bitwidth`: fixed and learnable (fractional) widths.
- :mod:`~mpsearch.quant.functional`: the fake-quantization kernel.
- :mod:`~mpsearch.quant.quantizers`: min-max, DoReFa, PACT and the Quantizer interface.
- :mod:`~mpsearch.quant.modules`: swapping layers for quantized ones and back.
- :mod:`~mpsearch.quant.calibration`, :mod:`~mpsearch.quant.linear`: clips chosen from data
  (KL divergence or squared error) and HAQ's linear quantizer.
- :mod:`~mpsearch.quant.integer`, :mod:`~mpsearch.quant.stored`: each quantizer's integer form
  (what export writes) and the layers rebuilt from it.

What serves one method only (ALQ's bases, SMOL's noise, AdaPT's fixed point) lives
with that method's plugin under ``plugins/``.
"""

from mpsearch.quant.bitwidth import BitWidth, FixedBits, LearnableBits, bit_parameters, project_bits
from mpsearch.quant.functional import compile_mode, fake_quant, set_compile
from mpsearch.quant.granularity import GRANULARITIES, bits_shape
from mpsearch.quant.calibration import CALIBRATIONS, kl_clip, mse_clip
from mpsearch.quant.linear import LinearQuantizer
from mpsearch.quant.modules import (QUANTIZER_FAMILIES, QuantConv2d, QuantLinear, apply_assignment,
                                    assignment_from_model, calibrate_model, freeze_bits, fractional_bits,
                                    quantize_at, quantize_model, quantized_layers, quantizers,
                                    restore_model)
from mpsearch.quant.quantizers import (DoReFaQuantizer, MinMaxQuantizer, PACTQuantizer, Quantizer,
                                       WidthQuantizer)

__all__ = [
    "BitWidth", "FixedBits", "LearnableBits", "bit_parameters", "project_bits", "compile_mode", "fake_quant",
    "set_compile", "GRANULARITIES", "bits_shape", "QuantConv2d", "QuantLinear",
    "QUANTIZER_FAMILIES", "apply_assignment", "assignment_from_model", "calibrate_model", "freeze_bits", "fractional_bits", "quantize_at", "quantize_model", "quantized_layers", "quantizers",
    "restore_model", "DoReFaQuantizer", "MinMaxQuantizer", "PACTQuantizer", "Quantizer",
    "WidthQuantizer",
    "CALIBRATIONS", "kl_clip", "mse_clip", "LinearQuantizer",
]
