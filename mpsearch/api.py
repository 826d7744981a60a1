"""The face of mpsearch that plugins import from: base classes, values, ``hookimpl``, errors and helpers.

The promise: a plugin that imports only from this module (and torch, numpy, ...) keeps
working as the host's modules change; the built-in plugins under ``plugins/`` import
nothing else from mpsearch. ``import mpsearch`` does not import it (it loads torch and
the quantization engine).
"""

from __future__ import annotations

from mpsearch.assignment import MAX_BITS, Bits, PrecisionAssignment, split_group
from mpsearch.backend_objectives import BackendObjective, Energy, Latency
from mpsearch.backends import (ADD32_PJ, DRAM_PJ_PER_BIT, ENERGY_COLUMNS, FP16_ADD_PJ, FP16_MULT_PJ,
                               FP32_ADD_PJ, FP32_MULT_PJ, MULT_PJ_PER_BIT2, SRAM_PJ_PER_BIT, AnalyticBackend,
                               Backend, LayerWidths, WidestOperandBackend, energy_pj, mixed_mac_pj)
from mpsearch.candidates import BUDGET_SLACK, Candidate, check_search_space
from mpsearch.data import SPLITS, DatasetSource, ImageData, channel_stats
from mpsearch.execution import Execution, Executor
from mpsearch.execution.job import TrialJob, run_job
from mpsearch.execution.space import define_space
from mpsearch.errors import AssignmentError, DatasetError, MpsearchError, PluginError, UnknownNameError
from mpsearch.hookspecs import hookimpl
from mpsearch.image_folder import list_image_folder, read_image_folder, streamed_stats
from mpsearch.models import ModelSpec
from mpsearch.objectives import BitTensors, Objective, group_sum, weight_bits_total
from mpsearch.profile import LayerProfile, ModelProfile
from mpsearch.quant import (CALIBRATIONS, GRANULARITIES, QUANTIZER_FAMILIES, BitWidth, DoReFaQuantizer,
                            FixedBits, LearnableBits, LinearQuantizer, MinMaxQuantizer, PACTQuantizer,
                            QuantConv2d, QuantLinear, Quantizer, WidthQuantizer, apply_assignment,
                            assignment_from_model, bit_parameters, bits_shape, fake_quant, fractional_bits,
                            freeze_bits, project_bits, quantize_at, quantize_model, quantized_layers,
                            quantizers, restore_model)
from mpsearch.quant.integer import AffineGrid, BinaryGrid, IntegerForm, LevelsGrid, OddGrid
from mpsearch.sensitivity import layer_sensitivity
from mpsearch.spec import Param, SpecError, check_integer_params
from mpsearch.strategy import SearchResult, Strategy, TrialContext, suggest_param
from mpsearch.streaming import ImageFiles
from mpsearch.training import TrialFailed, make_schedule, steps_per_epoch, train_epoch

__all__ = [
    # hooks and errors
    "hookimpl", "MpsearchError", "SpecError", "AssignmentError", "DatasetError", "PluginError",
    "UnknownNameError", "TrialFailed",
    # values
    "PrecisionAssignment", "Bits", "MAX_BITS", "split_group", "ModelProfile", "LayerProfile", "Param",
    "SearchResult", "BitTensors",
    # strategies
    "Strategy", "TrialContext", "suggest_param", "check_integer_params",
    "BUDGET_SLACK", "Candidate", "check_search_space",
    # objectives
    "Objective", "group_sum", "weight_bits_total", "BackendObjective", "Latency", "Energy",
    # backends
    "Backend", "AnalyticBackend", "WidestOperandBackend", "LayerWidths", "energy_pj", "mixed_mac_pj",
    "ENERGY_COLUMNS", "MULT_PJ_PER_BIT2", "ADD32_PJ", "FP16_MULT_PJ", "FP16_ADD_PJ", "FP32_MULT_PJ",
    "FP32_ADD_PJ", "DRAM_PJ_PER_BIT", "SRAM_PJ_PER_BIT",
    # models and datasets
    "ModelSpec", "DatasetSource", "ImageData", "ImageFiles", "SPLITS", "channel_stats",
    "list_image_folder", "read_image_folder", "streamed_stats",
    # the quantization engine
    "BitWidth", "FixedBits", "LearnableBits", "bit_parameters", "project_bits", "fake_quant",
    "GRANULARITIES", "bits_shape", "Quantizer", "WidthQuantizer", "MinMaxQuantizer", "DoReFaQuantizer",
    "PACTQuantizer", "LinearQuantizer", "CALIBRATIONS", "QUANTIZER_FAMILIES", "QuantConv2d", "QuantLinear",
    "apply_assignment", "assignment_from_model", "fractional_bits", "freeze_bits", "quantize_at",
    "quantize_model", "quantized_layers", "quantizers", "restore_model",
    # integer forms a quantizer declares for export
    "IntegerForm", "AffineGrid", "OddGrid", "BinaryGrid", "LevelsGrid",
    # executors: where trials run
    "Executor", "Execution", "TrialJob", "run_job", "define_space",
    # training and sensitivity helpers
    "make_schedule", "steps_per_epoch", "train_epoch", "layer_sensitivity",
]
