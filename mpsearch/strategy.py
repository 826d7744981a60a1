"""The base class of precision-search strategies.

Lifecycle: a strategy is registered as a class. For each trial the host
instantiates it in the process that runs the trial (a Ray worker, or the driver
with ``--executor local``); the study's driver calls :meth:`Strategy.suggest` on
the Optuna trial to draw the hyperparameters, and the trial's process calls
:meth:`Strategy.run` with a :class:`~mpsearch.trial.TrialContext` (model, data,
device, epoch budget, objectives, backend, reporter). ``run`` returns the final
quantized model and its :class:`~mpsearch.assignment.PrecisionAssignment`,
legalised for the study's backend. A strategy knows no backend by name and does
no accelerator arithmetic: costs come from ``context.costs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mpsearch.errors import MpsearchError
from mpsearch.spec import Param, SpecError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.trial import TrialContext


@dataclass
class StrategyResult:
    """What a strategy hands back.

    Attributes:
        model: the final quantized model, at the widths of ``assignment``.
        assignment: legal for the study's backend.
        epochs_trained: training spent, in epochs of the training split (search,
            candidates' fine-tuning and the final fine-tune together): the search
            cost that studies compare across strategies.
        attrs: anything else worth recording on the trial (JSON-serialisable).
    """

    model: nn.Module
    assignment: PrecisionAssignment
    epochs_trained: float
    attrs: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """A precision-search method (one-shot or search-based).

    Subclasses declare their hyperparameters in :attr:`parameters` (name -> the
    default search space); a study spec may narrow or fix any of them in its
    ``space`` table, and may not name others.
    """

    description: str = ""
    label: ClassVar[str] = ""  # the registered name, for messages
    parameters: ClassVar[Mapping[str, Param]] = {}
    # True when all of a trial's state between epochs is in its models, their optimizers
    # and what it passes to ``context.track``: its trials then checkpoint every epoch and
    # resume after a restart (mpsearch.checkpoint); others restart from scratch.
    resumable: ClassVar[bool] = False

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject spec entries that name no hyperparameter of this strategy."""
        unknown = sorted(set(space) - set(cls.parameters))
        if unknown:
            valid = ", ".join(sorted(cls.parameters)) or "(none)"
            raise SpecError(f"{where}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}.")

    @classmethod
    def resolve(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters with fixed defaults filled in, checked like a space.

        Raises:
            MpsearchError: a parameter without a fixed default is missing, or a value is invalid.
        """
        name = cls.label or cls.__name__
        missing = [n for n, p in cls.parameters.items() if n not in params and not p.fixed]
        if missing:
            raise MpsearchError(f"strategy {name!r} needs parameter(s) {', '.join(missing)}.")
        out = {**{n: p.value for n, p in cls.parameters.items() if p.fixed}, **params}
        cls.check_space({n: Param(value=v) for n, v in out.items()}, f"strategy {name!r} parameters")
        return out

    def suggest(self, trial: Any, space: Mapping[str, Param], prefix: str) -> dict[str, Any]:
        """Draw the hyperparameters from an ``optuna.Trial``; names are ``prefix.name`` there.

        The default draws every declared parameter from the spec's space, or from
        its default. Override for conditional spaces.
        """
        merged = {**self.parameters, **space}
        return {name: suggest_param(trial, f"{prefix}.{name}", p) for name, p in merged.items()}

    @abstractmethod
    def run(self, context: TrialContext, params: Mapping[str, Any]) -> StrategyResult:
        """Search, fine-tune and return the quantized model and its legal assignment."""


def suggest_param(trial: Any, name: str, p: Param) -> Any:
    """Draw one :class:`~mpsearch.spec.Param` from an Optuna trial (fixed values are not drawn)."""
    if p.fixed:
        return p.value
    if p.choices is not None:
        return trial.suggest_categorical(name, list(p.choices))
    if p.integer:
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
