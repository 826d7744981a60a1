"""One trial, end to end: data -> model -> strategy -> evaluation -> costs -> artefacts.

:func:`run_trial` is the same function whether it runs in a Ray worker or in the
driver (``--executor local``, and most tests). The trial's seed fixes the data
order, the initial weights and every random draw of the strategy, so a trial can
be re-run exactly on the same device and thread count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.assignment import PrecisionAssignment
from mpsearch.backends import Backend
from mpsearch.checkpoint import CheckpointMismatch, TrialCheckpointer, save_tensors
from mpsearch.data import ImageData, resolve_root
from mpsearch.errors import MpsearchError
from mpsearch.models import model_profile
from mpsearch.objectives import Objective
from mpsearch.profile import ModelProfile
from mpsearch.spec import StudySpec
from mpsearch.training import (
    TrialFailed,
    evaluate,
    make_optimizer,
    make_schedule,
    steps_per_epoch,
    train_epoch,
)

# Names of the values and attributes a trial records (Optuna user attributes).
ATTR_STRATEGY = "strategy"
ATTR_PARAMS = "strategy_params"
ATTR_TEST_ACCURACY = "test_accuracy"
ATTR_WEIGHT_BITS = "average_weight_bits"
ATTR_ACT_BITS = "average_activation_bits"
ATTR_EPOCHS = "epochs_trained"
ATTR_SECONDS = "seconds"
ATTR_SEED = "seed"
ATTR_ARTEFACTS = "artefacts"
ATTR_FAIL = "fail_reason"
ATTR_UNITS = "units"
ATTR_HISTORY = "history"
ATTR_CHECKPOINTS = "checkpoints"
ATTR_CHECKPOINT_WARNING = "checkpoint_warning"


def trial_seed(study_seed: int, number: int) -> int:
    """The seed of trial ``number`` of a study seeded ``study_seed``.

    Every trial of a study gets the same seed: the same initial weights, the same
    data order, the same noise. Differences between trials then come from their
    strategies and hyperparameters, not from luck of the draw (common random
    numbers), and any trial can be re-run exactly from the study's seed.
    """
    del number  # kept in the signature: a future option may vary seeds per trial
    return (study_seed * 1_000_003 + 1) % 2**31


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MpsearchError("the spec asks for device \"cuda\" but no CUDA device is available; "
                            "use \"auto\" or \"cpu\".")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=8)
def plugin_host(plugins: tuple[str, ...] = ()):
    """The plugin host of a trial's process, built once per plugin list."""
    from mpsearch.host import PluginHost

    return PluginHost(plugins)


@functools.lru_cache(maxsize=4)
def _load_split(plugins: tuple, dataset: str, root: str | None, split: str,
                options: tuple) -> ImageData:
    source = plugin_host(plugins).datasets.get(dataset)
    return source.load(resolve_root(root) if source.needs_root else None, split, **dict(options))


def load_data(spec: StudySpec) -> tuple[ImageData, ImageData, ImageData]:
    """Train (minus validation), validation and test splits, on the CPU, cached per process.

    The validation split is held out of the training data with the study's seed,
    so every trial of a study sees the same one; the test split is only ever used
    to report the final model's accuracy.
    """
    key = (tuple(spec.plugins), spec.data.name, spec.data.root, tuple(sorted(spec.data.options.items())))
    train = _load_split(key[0], key[1], key[2], "train", key[3])
    test = _load_split(key[0], key[1], key[2], "test", key[3])
    train, val = train.split(spec.data.validation_fraction, seed=spec.study.seed)
    if spec.data.train_subset is not None and spec.data.train_subset < len(train):
        _, train = train.split(spec.data.train_subset / len(train), seed=spec.study.seed + 1)
    return train, val, test


@dataclass
class TrialContext:
    """Everything a strategy needs for one trial, and the helpers it trains with.

    Attributes:
        model: a fresh float model on ``device``, initialised from the trial's seed.
        train / val: the training split and the held-out validation split, on ``device``.
        epochs: the quantization-aware training budget of the trial (the spec's).
        objectives: the study's cost objectives by name (accuracy excluded).
        generator: the trial's random source for data order and augmentation.
        augment: the train-time augmentation (the dataset's default unless the spec says).
    """

    spec: StudySpec
    number: int
    seed: int
    device: torch.device
    model: nn.Module
    profile: ModelProfile
    train: ImageData
    val: ImageData
    objectives: dict[str, Objective]
    backend: Backend
    generator: torch.Generator
    make_model: Callable[[], nn.Module]
    augment: str | None = None
    reporter: Callable[[int, Mapping[str, float]], None] = lambda epoch, metrics: None
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_trained: float = 0.0
    checkpoints: TrialCheckpointer | None = None

    @property
    def epochs(self) -> int:
        return self.spec.training.epochs

    @property
    def training(self):
        return self.spec.training

    def fresh_model(self) -> nn.Module:
        """Another float model with the trial's initial weights, on the device."""
        return self.make_model()

    def legalise(self, assignment: PrecisionAssignment) -> PrecisionAssignment:
        return self.backend.legalise(assignment)

    def costs(self, assignment: PrecisionAssignment) -> dict[str, float]:
        """Every cost objective of the study on the legalised assignment."""
        legal = self.legalise(assignment)
        return {n: o.evaluate(self.profile, legal, self.backend) for n, o in self.objectives.items()}

    def fit(self, model: nn.Module, epochs: float, groups: list[dict[str, Any]] | None = None, *,
            lr: float | None = None, extra_loss: Callable[[], torch.Tensor] | None = None,
            after_step: Callable[[], None] | None = None, on_epoch: Callable[[int], dict] | None = None,
            data: ImageData | None = None, report: bool = True, phase: str = "train",
            extra_optimizers: Sequence[torch.optim.Optimizer] = ()) -> dict[str, float]:
        """Train ``model`` for ``epochs`` (a fraction trains part of an epoch) with the spec's optimizer.

        Args:
            groups: optimizer parameter groups (default: all of the model's parameters); a
                group may set its own ``lr`` and ``weight_decay`` (e.g. learnable widths).
            on_epoch: called after each epoch with its index; returns extra metrics. It
                may change the model (e.g. freeze widths at the end of a search phase):
                the optimizer and its schedule go on, nothing is re-initialised.
            extra_optimizers: stepped alongside the spec's optimizer, unscheduled.
            report: send each epoch's metrics to the reporter (per-epoch history).

        Returns:
            The last epoch's metrics, with validation accuracy.
        """
        data = data or self.train
        checkpoints = self.checkpoints
        call = checkpoints.begin() if checkpoints is not None else -1
        if checkpoints is not None and checkpoints.resuming:
            ended = checkpoints.finished_call(call, model, self.generator)
            if ended is not None:  # trained before the interruption: its end state is loaded
                self._restore(ended)
                return dict(ended["metrics"])
        whole, part = int(epochs), epochs - int(epochs)
        batches = [None] * whole + ([max(1, round(part * steps_per_epoch(data, self.training.batch_size)))]
                                    if part > 1e-9 else [])
        optimizer = make_optimizer(self.training, groups or list(model.parameters()), lr)
        total = sum(steps_per_epoch(data, self.training.batch_size, b) for b in batches)
        schedule = make_schedule(self.training, optimizer, total)
        optimizers = [optimizer, *extra_optimizers]
        metrics: dict[str, float] = {}
        start = 0
        if checkpoints is not None and checkpoints.resuming:
            state = checkpoints.resume_call(call, model, optimizers, schedule, self.generator)
            if state is not None:
                self._restore(state)
                metrics, start = dict(state["metrics"]), int(state["epoch"]) + 1
        for i, max_batches in enumerate(batches):
            if i < start:
                continue
            metrics = train_epoch(model, data, optimizer, batch_size=self.training.batch_size,
                                  generator=self.generator, augment=self.augment, schedule=schedule,
                                  extra_loss=extra_loss, after_step=after_step, max_batches=max_batches,
                                  extra_optimizers=extra_optimizers)
            self.epochs_trained += (steps_per_epoch(data, self.training.batch_size, max_batches)
                                    / steps_per_epoch(self.train, self.training.batch_size))
            metrics["val_accuracy"] = evaluate(model, self.val)
            if on_epoch is not None:
                metrics.update(on_epoch(i) or {})
            if report:
                self.report(phase=phase, **metrics)
            if checkpoints is not None:
                checkpoints.epoch_done(call, i, model, optimizers, schedule, self.generator,
                                       {**self._state(), "metrics": metrics})
        if checkpoints is not None:
            checkpoints.call_done(call, model, self.generator, metrics, self._state())
        return metrics

    def track(self, name: str, obj: Any) -> None:
        """Keep a strategy's own state (a schedule it steps, a dict of counters) in the
        trial's checkpoints, so a resumed trial restores it. See :mod:`mpsearch.checkpoint`."""
        if self.checkpoints is not None:
            self.checkpoints.track(name, obj)

    def _state(self) -> dict[str, Any]:
        return {"history": list(self.history), "epochs_trained": self.epochs_trained}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.history[:] = list(state["history"])
        self.epochs_trained = float(state["epochs_trained"])
        if self.checkpoints is not None:  # the trial's record starts from the restored history
            self.checkpoints.context_history = self.history

    def evaluate(self, model: nn.Module, data: ImageData | None = None) -> float:
        return evaluate(model, self.val if data is None else data)

    def report(self, phase: str = "train", **metrics: float) -> None:
        """Record one epoch's metrics (history, lifecycle hooks, Ray)."""
        epoch = len(self.history)
        row = {"epoch": epoch, "phase": phase, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        self.reporter(epoch, row)


@dataclass
class TrialOutcome:
    """What a finished trial records: objective values (None when it failed) and attributes."""

    values: dict[str, float] | None
    attrs: dict[str, Any]

    @property
    def failed(self) -> bool:
        return self.values is None


def run_trial(spec: StudySpec, number: int, strategy: str, params: Mapping[str, Any], *,
              artefacts: Path | None = None, threads: int | None = None,
              reporter: Callable[[int, Mapping[str, float]], None] | None = None,
              resume_from: Path | None = None,
              plugins: Sequence[str] | None = None) -> TrialOutcome:
    """Run one trial and return its values, or a failure with its reason.

    A strategy that raises, a non-finite loss, or an out-of-memory error fail the
    trial (the message is kept); they never escape. Bad input that concerns the
    whole study (an unknown plugin name) raises :class:`MpsearchError`.

    With ``artefacts`` and ``[resources] checkpoint`` on, a resumable strategy's
    trial checkpoints every epoch to ``trial-NNNNN/checkpoint/`` there, resumes
    from that folder if it holds a checkpoint (Ray restarted the trial), or else
    from ``resume_from`` (the checkpoints of the trial this one re-runs). The
    checkpoints are deleted when the trial ends.

    ``plugins`` (the driver's ``PluginHost.sources``) replaces the spec's list: the
    trial loads the plugins its driver checked the spec with.
    """
    spec = spec if plugins is None else dataclasses.replace(spec, plugins=tuple(plugins))
    started = time.perf_counter()
    seed = trial_seed(spec.study.seed, number)
    attrs: dict[str, Any] = {ATTR_STRATEGY: strategy, ATTR_PARAMS: dict(params), ATTR_SEED: seed}
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    host = plugin_host(tuple(spec.plugins))
    host.trial_started(spec.name, number, {"strategy": strategy, **params})
    history: list[dict] = []

    def report(epoch: int, metrics: Mapping[str, float]) -> None:
        history.append(dict(metrics))
        host.epoch_ended(spec.name, number, epoch, metrics)
        if reporter is not None:
            reporter(epoch, metrics)

    checkpoints = _checkpointer(spec, number, strategy, params, host, artefacts, resume_from)
    try:
        try:
            outcome = _run(spec, number, seed, strategy, params, host, report, artefacts, checkpoints)
        except CheckpointMismatch as exc:
            history.clear()
            checkpoints = checkpoints.restart(f"the checkpoint did not fit the trial ({exc})")
            outcome = _run(spec, number, seed, strategy, params, host, report, artefacts, checkpoints)
    except (TrialFailed, MpsearchError) as exc:
        outcome = TrialOutcome(None, {ATTR_FAIL: str(exc)})
    except torch.OutOfMemoryError as exc:
        outcome = TrialOutcome(None, {ATTR_FAIL: f"out of memory: {str(exc).splitlines()[0]} "
                                                 f"Lower [training] batch_size or "
                                                 f"[resources] max_concurrent."})
    except OSError as exc:  # a full disk or a folder that cannot be written, not the strategy
        outcome = TrialOutcome(None, {ATTR_FAIL: f"cannot use {str(exc.filename or 'a file')!r}: "
                                                 f"{exc.strerror or exc}"})
    except Exception as exc:  # noqa: BLE001 - a strategy's bug fails its trial, not the study
        outcome = TrialOutcome(None, {ATTR_FAIL: f"strategy {strategy!r} raised "
                                                 f"{type(exc).__name__}: {exc}"})
    if checkpoints is not None:
        if checkpoints.context_history is not None:
            history[:] = checkpoints.context_history
        attrs[ATTR_CHECKPOINTS] = {"saved": checkpoints.saved, "skipped": checkpoints.skipped,
                                   "resumed_at": checkpoints.resumed_at}
        if checkpoints.warning:
            attrs[ATTR_CHECKPOINT_WARNING] = checkpoints.warning
        checkpoints.remove()
    outcome.attrs = {**attrs, **outcome.attrs, ATTR_HISTORY: history,
                     ATTR_SECONDS: time.perf_counter() - started}
    host.trial_ended(spec.name, number, "FAIL" if outcome.failed else "COMPLETE",
                     outcome.values or {}, outcome.attrs)
    return outcome


def checkpoint_folder(artefacts: Path, number: int) -> Path:
    """Where trial ``number`` of a study with artefacts in ``artefacts`` keeps its checkpoints."""
    return Path(artefacts) / f"trial-{number:05d}" / "checkpoint"


def _checkpointer(spec: StudySpec, number: int, strategy: str, params: Mapping[str, Any], host,
                  artefacts: Path | None, resume_from: Path | None) -> TrialCheckpointer | None:
    if artefacts is None or not spec.resources.checkpoint:
        return None
    try:
        if not getattr(host.strategies.get(strategy), "resumable", False):
            return None
    except MpsearchError:
        return None  # the unknown name fails the trial in _run, with its message
    own = checkpoint_folder(artefacts, number)
    identity = {"strategy": strategy, "params": json.loads(json.dumps(dict(params), default=str)),
                "spec": json.dumps(spec.to_dict(), sort_keys=True, default=str)}
    source = own if (own / "last.pt").exists() else resume_from
    return TrialCheckpointer(own, source, identity)


def _run(spec: StudySpec, number: int, seed: int, strategy_name: str, params: Mapping[str, Any],
         host, report, artefacts: Path | None,
         checkpoints: TrialCheckpointer | None = None) -> TrialOutcome:
    device = pick_device(spec.training.device)
    from mpsearch.quant import set_compile

    set_compile(spec.training.compile)
    generator = seed_everything(seed)
    train, val, test = load_data(spec)
    train, val = train.to(device), val.to(device)
    model_spec = host.models.get(spec.model.name)

    def make_model() -> nn.Module:
        return model_spec.create(train.num_classes, train.input_shape, seed=seed).to(device)

    profile = model_profile(model_spec, train.num_classes, train.input_shape)
    backend = host.backends.get(spec.backend)
    objectives = {n: host.objectives.get(n).for_backend(backend, spec.backend)
                  for n in spec.cost_objectives}
    augment = spec.data.augment
    if augment == "default":
        augment = host.datasets.get(spec.data.name).augment
    context = TrialContext(spec=spec, number=number, seed=seed, device=device, model=make_model(),
                           profile=profile, train=train, val=val, objectives=objectives,
                           backend=backend, generator=generator, make_model=make_model,
                           augment=None if augment in (None, "none") else augment, reporter=report,
                           checkpoints=checkpoints)
    strategy = host.strategies.get(strategy_name)()
    result = strategy.run(context, params)
    assignment = result.assignment
    assignment.validate(profile)
    if not backend.is_legal(assignment):
        raise TrialFailed(f"strategy {strategy_name!r} returned an assignment that backend "
                          f"{spec.backend!r} cannot run; strategies must legalise before fine-tuning.")
    accuracy = evaluate(result.model, val)
    test_accuracy = evaluate(result.model, test.to(device))
    values = {"accuracy": accuracy}
    values.update({n: o.evaluate(profile, assignment, backend) for n, o in objectives.items()})
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    if bad:
        raise TrialFailed(f"objective(s) {', '.join(bad)} came out NaN or infinite.")
    attrs = {ATTR_TEST_ACCURACY: test_accuracy,
             ATTR_WEIGHT_BITS: assignment.average_weight_bits(),
             ATTR_ACT_BITS: assignment.average_activation_bits(),
             ATTR_EPOCHS: float(result.epochs_trained),
             ATTR_UNITS: {n: o.unit for n, o in objectives.items()},
             **result.attrs}
    if artefacts is not None:
        folder = Path(artefacts) / f"trial-{number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        assignment.replace(model=spec.model.name, strategy=strategy_name).save(folder / "assignment.json")
        save_tensors({k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                     folder / "model.pt")  # a full disk raises OSError naming the file
        (folder / "params.json").write_text(json.dumps(dict(params), indent=1) + "\n")
        attrs[ATTR_ARTEFACTS] = str(folder)
    return TrialOutcome(values, attrs)
