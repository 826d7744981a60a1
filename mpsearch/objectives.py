"""Cost objectives: what an assignment costs, as a number with a unit.

Lifecycle: objectives are registered once per process by plugins and are
stateless, so one instance may be used from several threads. The host calls
:meth:`Objective.evaluate` on an assignment that the study's backend has already
legalised. Gradient strategies call :meth:`Objective.differentiable` with
fractional bit tensors inside their training step; it must be built from torch
operations only (no host syncs) so that its gradient reaches the bits.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.backends import Backend
    from mpsearch.profile import ModelProfile

BitTensors = Mapping[str, torch.Tensor]


class Cost(NamedTuple):
    value: float
    unit: str


class Objective(ABC):
    """A cost of a precision assignment on a profiled model.

    Subclasses set :attr:`unit` and implement :meth:`differentiable`; the discrete
    value is the differentiable form evaluated at the integer widths (in float64),
    so the two agree exactly at integer bits. An objective that depends on the
    backend's model (latency, energy) overrides :meth:`evaluate` and sets
    :attr:`has_differentiable` to False if it has no differentiable form.
    """

    unit: str = ""
    direction: str = "minimize"
    description: str = ""
    has_differentiable: bool = True

    @abstractmethod
    def differentiable(self, profile: ModelProfile, bits: BitTensors,
                       scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
        """The cost as a 0-d tensor of fractional widths, in :attr:`unit`.

        Args:
            bits: group -> width tensor (0-d, or broadcastable onto the group's shape).
            scale_bits: group -> bits its quantizer stores besides the values.
        """

    def for_backend(self, backend: Backend, backend_name: str | None = None) -> Objective:
        """The objective a study with ``backend`` uses: this one, unless its value depends
        on the backend's model (latency, energy): that returns itself bound to the backend,
        which gives it a differentiable form. An objective already bound keeps its backend."""
        return self

    def evaluate(self, profile: ModelProfile, assignment: PrecisionAssignment,
                 backend: Backend | None = None) -> float:
        """The cost of a (legalised) integer assignment."""
        scale = {g: assignment.scale_bits(g) for g in assignment}
        return float(self.differentiable(profile, assignment.as_tensors(torch.float64), scale))


def group_sum(bits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Differentiable sum of widths over every element of a tensor of ``shape``."""
    bits = torch.as_tensor(bits)
    return bits.sum() * (math.prod(shape) / bits.numel())


def weight_bits_total(profile: ModelProfile, bits: BitTensors,
                      scale_bits: Mapping[str, int] | None = None) -> torch.Tensor:
    """Bits to store every quantized weight, plus each group's quantizer storage."""
    total = sum(group_sum(bits[l.weight_group], l.weight_shape) for l in profile)
    extra = sum((scale_bits or {}).get(l.weight_group, 0) for l in profile)
    return total + extra


def evaluate_all(profile: ModelProfile, assignment: PrecisionAssignment,
                 objectives: Mapping[str, Objective], backend: Backend) -> dict[str, Cost]:
    """Legalise ``assignment`` for ``backend`` and evaluate every objective on it."""
    assignment.validate(profile)
    legal = backend.legalise(assignment)
    return {name: Cost(obj.evaluate(profile, legal, backend), obj.unit)
            for name, obj in objectives.items()}
