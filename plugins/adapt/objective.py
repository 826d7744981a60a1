"""AdaPT's analytical performance model (Kummer et al. 2021, Sec. 4.1.2) and its objectives.

The model weighs each layer's operations (MACs) by its weights' word length and
share of non-zero weights, ``sp * WL``: a sparse fixed-point format. For an
assignment, ``sp * WL`` of a layer is the mean of its weight widths (0 for pruned
weights), so the two objectives below apply to any strategy's assignment:

- ``adapt-inference-speedup`` (maximise): ``sum_l ops_l * 32 / sum_l ops_l * sp_l * WL_l``,
  the speed-up of inference against float32 (Table 6's SU).
- ``adapt-size-ratio`` (minimise): ``sz / sz_float32`` with the paper's
  ``sz = sum_l sp_l * WL_l`` (Table 6's SZ).

The training-time parts depend on the word lengths over training, which an
assignment does not hold; :class:`TrainingCostModel` accumulates them step by
step (the ``adapt`` strategy feeds it and records the results on its trial):
``costs_train`` (8), AdaPT's overhead ``costs_AdaPT`` (9) from the PushDown and
PushUp bounds (6)-(7), the speed-up ``SU`` against float32 training, and the
memory ratio ``MEM``.

Deviations and readings:
    - Activations do not enter the model (the paper weighs ops by the layer's
      weight word length only); activation widths have no effect here.
    - ``sz`` and ``mem`` count each layer once, whatever its size, exactly as
      the paper's formulas (which "ignore tensor dimensions"); the ``size``
      objective gives the true storage.
    - Sec. 4.1.2 writes ``SZ = sz_other / sz_ours`` and ``MEM = mem_other / mem_ours``,
      but Tables 3 and 6 report values that are ``ours / float32`` (model sizes
      0.36-0.60, training memory 1.41-1.66, which the text says is *increased*
      memory): both are reported here as ours / float32, the tables' reading, with
      float32 training keeping one 32-bit copy per layer (``mem = sum_l 32``).
    - ``ops`` of a training step is the layer's MACs per sample times the step's
      batch size, so costs are totals over a run; AdaPT and its float32 baseline
      then see the same batches and ``SU = costs_float32 / costs_AdaPT`` (the
      paper's ``bs`` factors are equal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from mpsearch.api import MAX_BITS, BitTensors, ModelProfile, Objective, group_sum, hookimpl

FLOAT_BITS = MAX_BITS  # the float32 baseline's word length
START_BITS = 8  # PushDown's bisection runs over 32 - 8 word lengths in (6)


def mean_weight_bits(profile: ModelProfile, bits: BitTensors) -> dict[str, torch.Tensor]:
    """Layer -> ``sp * WL``: its weights' mean width, pruned (0-bit) weights counted as 0."""
    return {l.name: group_sum(bits[l.weight_group], l.weight_shape) / l.weight_numel for l in profile}


class InferenceSpeedup(Objective):
    """AdaPT's inference speed-up against float32: ``sum ops * 32 / sum ops * sp * WL`` (Table 6)."""

    unit = "x float32"
    direction = "maximize"
    description = "AdaPT performance model: inference speed-up vs float32 (ops x sp x WL)"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        del scale_bits  # the model counts the weights' word lengths only
        per_layer = mean_weight_bits(profile, bits)
        ours = sum(l.macs * per_layer[l.name] for l in profile)
        return FLOAT_BITS * profile.macs / torch.as_tensor(ours)


class SizeRatio(Objective):
    """AdaPT's model size against float32: ``sum_l sp_l * WL_l / sum_l 32`` (Table 6's SZ)."""

    unit = "x float32"
    description = "AdaPT performance model: model size vs float32, sum over layers of sp x WL"

    def differentiable(self, profile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        del scale_bits
        per_layer = mean_weight_bits(profile, bits)
        return torch.as_tensor(sum(per_layer.values())) / (FLOAT_BITS * len(profile))


def pushdown_ops(numel: int, resolution: int) -> float:
    """Eq. (6): ``2 log2(32 - 8) * r * 3 * prod(dims)``, the bound on one PushDown."""
    return 2.0 * math.log2(MAX_BITS - START_BITS) * resolution * 3.0 * numel


def pushup_ops(numel: int, lookback: int) -> float:
    """Eq. (7): ``(lb + 1) * prod(dims) + 1``, the bound on one PushUp."""
    return (lookback + 1.0) * numel + 1.0


@dataclass(frozen=True)
class LayerStep:
    """One layer in one training step: its word length, non-zero share, lookback and resolution."""

    wl: int
    sp: float
    lookback: int
    resolution: int


@dataclass
class TrainingCostModel:
    """Accumulates AdaPT's training costs over steps, against float32 training of the same steps.

    Args:
        profile: the model's layers (MACs per sample, weight counts).
        accumulation: gradient accumulation steps ``accs`` (1: none).
    """

    profile: ModelProfile
    accumulation: int = 1
    train: float = 0.0
    overhead: float = 0.0
    float32: float = 0.0
    memory: float = 0.0
    float32_memory: float = 0.0
    steps: int = 0
    _layers: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.accumulation < 1:
            raise ValueError("accumulation steps must be at least 1")
        self._layers = {l.name: l for l in self.profile}

    def step(self, batch_size: int, layers: Mapping[str, LayerStep]) -> None:
        """Add one training step of ``batch_size`` samples with each layer's state in it."""
        accs = float(self.accumulation)
        for name, s in layers.items():
            layer = self._layers[name]
            ops = layer.macs * batch_size
            self.train += ops * (s.sp * s.wl + FLOAT_BITS / accs)  # (8)
            self.float32 += ops * (FLOAT_BITS + FLOAT_BITS / accs)
            self.overhead += FLOAT_BITS * (s.sp * pushdown_ops(layer.weight_numel, s.resolution)
                                           + pushup_ops(layer.weight_numel, s.lookback)) / (
                accs * s.lookback)  # (9)
            self.memory += s.sp * s.wl + FLOAT_BITS
            self.float32_memory += FLOAT_BITS
        self.steps += 1

    @property
    def cost(self) -> float:
        """``costs = costs_train + costs_AdaPT``."""
        return self.train + self.overhead

    @property
    def speedup(self) -> float:
        """``SU = costs_float32 / costs`` (AdaPT's overhead included, the baseline's excluded)."""
        return self.float32 / self.cost if self.cost > 0 else math.nan

    @property
    def speedup_without_overhead(self) -> float:
        return self.float32 / self.train if self.train > 0 else math.nan

    @property
    def memory_ratio(self) -> float:
        """``MEM``: mean training memory against float32 training (ours / float32, as Table 3)."""
        return self.memory / self.float32_memory if self.float32_memory > 0 else math.nan

    def summary(self) -> dict[str, float]:
        return {"training_cost": self.train, "adapt_overhead": self.overhead,
                "float32_training_cost": self.float32, "training_speedup": self.speedup,
                "training_speedup_without_overhead": self.speedup_without_overhead,
                "training_memory_ratio": self.memory_ratio, "training_steps": float(self.steps)}


@hookimpl
def register_objectives(register):
    register("adapt-inference-speedup", InferenceSpeedup())
    register("adapt-size-ratio", SizeRatio())
