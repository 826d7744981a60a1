"""The base class of precision-search strategies, and the trial context they run in.

Lifecycle: a strategy is registered as a class. For each trial the host
instantiates it in the process that runs the trial (a Ray worker, or the driver
with ``--executor local``); the study's driver calls :meth:`Strategy.suggest` on
the Optuna trial to draw the hyperparameters. The trial's process then owns the
rest (:func:`mpsearch.trial.run_trial`):

1. the **float start**: ``context.model`` is a copy of the study's trained float
   model (``[model] weights`` or ``[training] pretrain_epochs``), or the seeded
   random initialisation when the study has none or the strategy declares
   :attr:`Strategy.from_scratch`;
2. :meth:`Strategy.search` learns (or picks) the widths and returns the quantized
   model and its assignment, with the epochs of the trial's budget it leaves for
   fine-tuning;
3. the host legalises the assignment for the study's backend and sets the legal
   widths on the model (:meth:`mpsearch.quant.Quantizer.set_bits`);
4. :meth:`Strategy.finetune` trains the model with its widths frozen (the shared
   loop; a strategy overrides it only where its paper fine-tunes differently);
   with ``[training] epochs = 0`` nothing trains and the quantizers are
   calibrated instead (post-training quantization);
5. the host evaluates, costs the legal assignment, and saves the artefacts.

A strategy neither pretrains nor legalises its result nor fine-tunes it on its
own: those are the host's, so every strategy of a study gets the same. A
strategy knows no backend by name and does no accelerator arithmetic: costs come
from ``context.costs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mpsearch.errors import MpsearchError
from mpsearch.spec import Param, SpecError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.backends import Backend
    from mpsearch.data import ImageData
    from mpsearch.objectives import Objective
    from mpsearch.profile import ModelProfile
    from mpsearch.spec import StudySpec, TrainingSection

# Where a trial's model started (recorded as the trial attribute ``start``).
START_FLOAT = "float-start"  # a copy of the study's trained float model
START_SCRATCH = "scratch"  # the seeded random initialisation, because the strategy asks for it
START_INIT = "init"  # the seeded random initialisation: the study has no float start


class TrialContext(Protocol):
    """What a strategy is given for one trial (implemented by :mod:`mpsearch.trial`).

    Attributes:
        spec: the study's spec.
        number, seed: the trial's number and seed (the seed fixes data order, noise, init).
        device: where the model and the data live.
        model: the trial's starting model on ``device`` (see ``start``).
        start: where ``model`` came from: ``"float-start"``, ``"scratch"`` or ``"init"``.
        float_accuracy: validation accuracy of ``model`` before any quantization.
        profile: per-layer MACs, weight counts and activation sizes of the model.
        train / val: the training split (validation held out) and the validation split.
        objectives: the study's cost objectives by name, bound to the study's backend.
        backend: the study's backend.
        generator: the trial's random source for data order and augmentation.
        epochs: the trial's own budget (search plus fine-tuning), on top of the float start.
        training: the spec's ``[training]`` section.
        epochs_trained: training spent so far in this trial, in epochs of the training split.
    """

    spec: StudySpec
    number: int
    seed: int
    device: torch.device
    model: nn.Module
    start: str
    float_accuracy: float
    profile: ModelProfile
    train: ImageData
    val: ImageData
    objectives: dict[str, Objective]
    backend: Backend
    generator: torch.Generator
    augment: str | None
    epochs_trained: float

    @property
    def epochs(self) -> int: ...

    @property
    def training(self) -> TrainingSection: ...

    def objective(self, name: str) -> Objective:
        """A cost objective by name: the study's, or any registered one bound to the study's backend.

        Raises:
            UnknownNameError: no objective has that name.
        """

    def legalise(self, assignment: PrecisionAssignment) -> PrecisionAssignment:
        """The assignment rounded up to widths the study's backend supports."""

    def costs(self, assignment: PrecisionAssignment) -> dict[str, float]:
        """Every cost objective of the study on the legalised assignment."""

    def fit(self, model: nn.Module, epochs: float, groups: list[dict[str, Any]] | None = None, *,
            lr: float | None = None, extra_loss: Callable[[], torch.Tensor] | None = None,
            after_step: Callable[[], None] | None = None, on_epoch: Callable[[int], dict] | None = None,
            data: ImageData | None = None, report: bool = True, phase: str = "train",
            extra_optimizers: Sequence[torch.optim.Optimizer] = (),
            trial_schedule: bool = False) -> dict[str, float]:
        """Train ``model`` for ``epochs`` with the spec's optimizer; returns the last epoch's metrics.

        With ``trial_schedule`` the learning rate follows the trial's one schedule over
        its ``epochs`` (search and fine-tuning share it); otherwise the call has a
        schedule of its own (candidates, a strategy's private phases).
        """

    def calibrate(self, model: nn.Module) -> None:
        """Calibrate a quantized model's ranges on ``[training] calibration_images`` of the training split."""

    def evaluate(self, model: nn.Module, data: ImageData | None = None) -> float:
        """Top-1 accuracy on the validation split (or ``data``)."""

    def report(self, phase: str = "train", **metrics: float) -> None:
        """Record one epoch's metrics (history, lifecycle hooks, Ray)."""

    def track(self, name: str, obj: Any) -> None:
        """Keep a strategy's own state in the trial's checkpoints (see :mod:`mpsearch.checkpoint`)."""


@dataclass
class SearchResult:
    """What :meth:`Strategy.search` hands back to the host.

    Attributes:
        model: the quantized model, at (or about to be legalised from) ``assignment``.
        assignment: the widths the search chose; the host legalises it for the backend.
        finetune_epochs: the epochs of the trial's budget left for :meth:`Strategy.finetune`
            (the trial's ``epochs`` minus those the search spent on the model it returns).
        attrs: anything else worth recording on the trial (JSON-serialisable).
    """

    model: nn.Module
    assignment: PrecisionAssignment
    finetune_epochs: float
    attrs: dict[str, Any] = field(default_factory=dict)


class Strategy(ABC):
    """A precision-search method (one-shot or search-based).

    Subclasses declare their hyperparameters in :attr:`parameters` (name -> the
    default search space); a study spec may narrow or fix any of them in its
    ``space`` table, and may not name others. They implement :meth:`search`, and
    override :meth:`finetune` only where their paper fine-tunes differently from
    the shared loop.
    """

    description: str = ""
    label: ClassVar[str] = ""  # the registered name, for messages
    parameters: ClassVar[Mapping[str, Param]] = {}
    # True when all of a trial's state between epochs is in its models, their optimizers
    # and what it passes to ``context.track``: its trials then checkpoint every epoch and
    # resume after a restart (mpsearch.checkpoint); others restart from scratch.
    resumable: ClassVar[bool] = False
    # True when the paper trains from random weights (AdaPT): the trial then starts from
    # the seeded initialisation, not from the study's float start.
    from_scratch: ClassVar[bool] = False
    # True when the strategy can run without training (``[training] epochs = 0``):
    # post-training quantization, with quantizer ranges calibrated instead.
    post_training: ClassVar[bool] = False

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
    def search(self, context: TrialContext, params: Mapping[str, Any]) -> SearchResult:
        """Learn or pick the widths from ``context.model``; return the quantized model and its assignment.

        The model returned may be ``context.model`` itself or another one. Its
        assignment need not be legal for the backend: the host legalises it and sets
        the legal widths on the model before :meth:`finetune`.
        """

    def finetune(self, context: TrialContext, model: nn.Module, assignment: PrecisionAssignment,
                 epochs: float, params: Mapping[str, Any]) -> None:
        """Train the model at its frozen, legal widths for the rest of the trial's budget.

        The shared loop: the spec's optimizer on the trial's schedule (which the
        search began). Called only when ``epochs`` > 0.
        """
        context.fit(model, epochs, phase="finetune", trial_schedule=True,
                    on_epoch=lambda _: {"weight_bits": assignment.average_weight_bits(),
                                        "act_bits": assignment.average_activation_bits()})


def suggest_param(trial: Any, name: str, p: Param) -> Any:
    """Draw one :class:`~mpsearch.spec.Param` from an Optuna trial (fixed values are not drawn)."""
    if p.fixed:
        return p.value
    if p.choices is not None:
        return trial.suggest_categorical(name, list(p.choices))
    if p.integer:
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
