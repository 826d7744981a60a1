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
from mpsearch.checkpoint import CheckpointMismatch, TrialCheckpointer, checkpoint_folder, save_tensors
from mpsearch.data import ImageData, open_split, resolve_augment, resolve_root
from mpsearch.errors import MpsearchError
from mpsearch.models import model_profile
from mpsearch.objectives import Objective
from mpsearch.profile import ModelProfile
from mpsearch.weights import FLOAT_START_FILE, load_weights
from mpsearch.quant import apply_assignment, assignment_from_model
from mpsearch.record import (
    ATTR_ACT_BITS,
    ATTR_ARTEFACTS,
    ATTR_CHECKPOINTS,
    ATTR_CHECKPOINT_WARNING,
    ATTR_EPOCHS,
    ATTR_FAIL,
    ATTR_HISTORY,
    ATTR_PARAMS,
    ATTR_SECONDS,
    ATTR_SEED,
    ATTR_START,
    ATTR_START_ACCURACY,
    ATTR_STRATEGY,
    ATTR_TEST_ACCURACY,
    ATTR_UNITS,
    ATTR_WEIGHT_BITS,
    WIDTHS_PREFIX,
)
from mpsearch.spec import StudySpec
from mpsearch.strategy import START_FLOAT, START_INIT, START_SCRATCH
from mpsearch.training import (
    TrialFailed,
    evaluate,
    make_optimizer,
    make_schedule,
    set_autocast,
    steps_per_epoch,
    train_epoch,
)

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
                options: tuple, streaming: bool | str = False, augment: str | None = None,
                workers: int | None = None) -> ImageData:
    source = plugin_host(plugins).datasets.get(dataset)
    return open_split(source, resolve_root(root) if source.needs_root else None, split,
                      streaming=streaming, augment=resolve_augment(augment, source), workers=workers,
                      **dict(options))


def load_data(spec: StudySpec) -> tuple[ImageData, ImageData, ImageData]:
    """Train (minus validation), validation and test splits, on the CPU, cached per process.

    The validation split is held out of the training data with the study's seed,
    so every trial of a study sees the same one; the test split is only ever used
    to report the final model's accuracy.
    """
    key = (tuple(spec.plugins), spec.data.name, spec.data.root, tuple(sorted(spec.data.options.items())))
    how = (spec.data.streaming, spec.data.augment, spec.data.workers)  # in memory, or streamed
    train = _load_split(*key[:3], "train", key[3], *how)
    test = _load_split(*key[:3], "test", key[3], *how)
    train, val = train.split(spec.data.validation_fraction, seed=spec.study.seed)
    if spec.data.train_subset is not None and spec.data.train_subset < len(train):
        _, train = train.split(spec.data.train_subset / len(train), seed=spec.study.seed + 1)
    return train, val, test


@dataclass
class TrialContext:
    """What a strategy is given for one trial: see :class:`mpsearch.strategy.TrialContext`.

    The host's implementation of that protocol: the model, data, objectives and
    backend of the trial, and the helpers strategies train with.
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
    host: Any = None
    start: str = START_INIT
    float_accuracy: float = float("nan")
    augment: str | None = None
    reporter: Callable[[int, Mapping[str, float]], None] = lambda epoch, metrics: None
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_trained: float = 0.0
    checkpoints: TrialCheckpointer | None = None
    # optimizer steps taken on the trial's one schedule (search, then fine-tuning)
    schedule_steps: int = 0

    @property
    def epochs(self) -> int:
        return self.spec.training.epochs

    @property
    def training(self):
        return self.spec.training

    def objective(self, name: str) -> Objective:
        """The study's cost objective ``name``, or any registered one bound to the study's backend."""
        if name in self.objectives:
            return self.objectives[name]
        return self.host.objectives.get(name).for_backend(self.backend, self.spec.backend)

    def legalise(self, assignment: PrecisionAssignment) -> PrecisionAssignment:
        return self.backend.legalise(assignment)

    def costs(self, assignment: PrecisionAssignment) -> dict[str, float]:
        """Every cost objective of the study on the legalised assignment."""
        legal = self.legalise(assignment)
        return {n: o.evaluate(self.profile, legal, self.backend) for n, o in self.objectives.items()}

    def calibrate(self, model: nn.Module) -> None:
        """Calibrate the quantizers' ranges on ``calibration_images`` of the training split (in order)."""
        from mpsearch.quant import calibrate_model

        n = min(len(self.train), self.training.calibration_images)
        batch = self.training.batch_size
        calibrate_model(model, (x for i, (x, _) in enumerate(self.train.batches(batch))
                                if i * batch < n))

    def fit(self, model: nn.Module, epochs: float, groups: list[dict[str, Any]] | None = None, *,
            lr: float | None = None, extra_loss: Callable[[], torch.Tensor] | None = None,
            after_step: Callable[[], None] | None = None, on_epoch: Callable[[int], dict] | None = None,
            data: ImageData | None = None, report: bool = True, phase: str = "train",
            extra_optimizers: Sequence[torch.optim.Optimizer] = (),
            trial_schedule: bool = False) -> dict[str, float]:
        """Train ``model`` for ``epochs`` (a fraction trains part of an epoch) with the spec's optimizer.

        Args:
            groups: optimizer parameter groups (default: all of the model's parameters); a
                group may set its own ``lr`` and ``weight_decay`` (e.g. learnable widths).
            on_epoch: called after each epoch with its index; returns extra metrics. It
                may change the model (e.g. freeze widths at the end of a search phase):
                the optimizer and its schedule go on, nothing is re-initialised.
            extra_optimizers: stepped alongside the spec's optimizer, unscheduled.
            report: send each epoch's metrics to the reporter (per-epoch history).
            trial_schedule: follow the trial's one learning-rate schedule over its
                ``epochs`` from where the previous such call left it (search and
                fine-tuning share it), instead of a schedule of this call's own.

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
        if trial_schedule:
            trial_total = self.epochs * steps_per_epoch(self.train, self.training.batch_size)
            schedule = make_schedule(self.training, optimizer, max(trial_total, self.schedule_steps + total),
                                     offset=self.schedule_steps)
        else:
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
            steps = steps_per_epoch(data, self.training.batch_size, max_batches)
            self.epochs_trained += steps / steps_per_epoch(self.train, self.training.batch_size)
            if trial_schedule:
                self.schedule_steps += steps
            metrics["val_accuracy"] = evaluate(model, self.val)
            if on_epoch is not None:
                metrics.update(on_epoch(i) or {})
            if report:
                self.report(phase=phase, **{**metrics, **width_metrics(model)})
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
        return {"history": list(self.history), "epochs_trained": self.epochs_trained,
                "schedule_steps": self.schedule_steps}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.history[:] = list(state["history"])
        self.epochs_trained = float(state["epochs_trained"])
        self.schedule_steps = int(state.get("schedule_steps", 0))
        if self.checkpoints is not None:  # the trial's record starts from the restored history
            self.checkpoints.context_history = self.history

    def evaluate(self, model: nn.Module, data: ImageData | None = None) -> float:
        return evaluate(model, self.val if data is None else data)

    def report(self, phase: str = "train", **metrics: float) -> None:
        """Record one epoch's metrics (history, lifecycle hooks, Ray)."""
        epoch = len(self.history)
        if not any(k.startswith(WIDTHS_PREFIX) for k in metrics):
            metrics = {**metrics, **width_metrics(self.model)}
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
    strategy = host.strategies.get(strategy_name)()
    if spec.training.epochs == 0 and not strategy.post_training:
        raise TrialFailed(f"strategy {strategy_name!r} cannot run post-training ([training] epochs = 0); "
                          f"it learns by training.")
    start = (START_SCRATCH if strategy.from_scratch else
             START_FLOAT if spec.has_float_start else START_INIT)
    context = make_context(spec, number, seed, host, start=start, artefacts=artefacts, reporter=report,
                           checkpoints=checkpoints)
    profile, backend, device = context.profile, context.backend, context.device

    found = strategy.search(context, params)
    legal = backend.legalise(found.assignment)
    apply_assignment(found.model, profile, legal)
    model = found.model
    if spec.training.epochs == 0:
        context.calibrate(model)  # post-training quantization: ranges from data, nothing trains
    elif found.finetune_epochs > 1e-9:
        strategy.finetune(context, model, legal, float(found.finetune_epochs), params)
    final = assignment_from_model(model, profile)
    if not final.same_widths(legal):
        raise TrialFailed(f"strategy {strategy_name!r} changed the widths after they were legalised "
                          f"and frozen; its fine-tuning must keep them.")
    legal = final  # with the scale storage the model's quantizers really need
    accuracy = evaluate(model, context.val)
    reason = divergence(context.history, accuracy, context.val, context.float_accuracy)
    if reason is not None:
        raise TrialFailed(reason)
    test_accuracy = evaluate(model, load_data(spec)[2].to(device))
    values = {"accuracy": accuracy}
    values.update({n: o.evaluate(profile, legal, backend) for n, o in context.objectives.items()})
    bad = [n for n, v in values.items() if not math.isfinite(v)]
    if bad:
        raise TrialFailed(f"objective(s) {', '.join(bad)} came out NaN or infinite.")
    attrs = {ATTR_TEST_ACCURACY: test_accuracy,
             ATTR_WEIGHT_BITS: legal.average_weight_bits(),
             ATTR_ACT_BITS: legal.average_activation_bits(),
             ATTR_EPOCHS: float(context.epochs_trained),
             ATTR_START: start,
             ATTR_START_ACCURACY: (None if math.isnan(context.float_accuracy)
                                   else context.float_accuracy),
             ATTR_UNITS: {n: o.unit for n, o in context.objectives.items()},
             **found.attrs}
    if artefacts is not None:
        folder = Path(artefacts) / f"trial-{number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        legal.replace(model=spec.model.name, strategy=strategy_name).save(folder / "assignment.json")
        save_tensors({k: v.detach().cpu() for k, v in model.state_dict().items()},
                     folder / "model.pt")  # a full disk raises OSError naming the file
        from mpsearch.export import save_trial_model  # the deployable model: packed integers, model.mpq

        attrs.update(save_trial_model(model, folder, spec, number, context.val))
        (folder / "params.json").write_text(json.dumps(dict(params), indent=1) + "\n")
        attrs[ATTR_ARTEFACTS] = str(folder)
    return TrialOutcome(values, attrs)


# -- a trial that diverged -------------------------------------------------------------------

LOSS_BLOWUP = 10.0  # an epoch's training loss above this many times ln(classes) has blown up
CHANCE_SIGMAS = 2.0  # accuracy within this many binomial standard deviations of chance is chance


def divergence(history: Sequence[Mapping[str, Any]], accuracy: float, val: ImageData,
               start_accuracy: float = float("nan")) -> str | None:
    """Why a finished trial diverged, or None: its settings failed, and it is no point of the front.

    A trial has diverged when an epoch's mean training loss exceeded
    :data:`LOSS_BLOWUP` times ``ln(classes)`` (ten times a uniform guess's
    cross-entropy), or when its final validation accuracy is at chance: no more
    than :data:`CHANCE_SIGMAS` binomial standard deviations above the share of the
    validation split's most frequent class (what a model that predicts one class
    scores). A trial that trained no epoch (post-training quantization) is judged
    against where it started: at chance from a start at chance (random weights) it
    has lost nothing, and is no divergence.

    Returns:
        One line naming the value and the epoch (of ``history``, the trial's
        reported epochs) where it happened.
    """
    classes = val.num_classes
    limit = LOSS_BLOWUP * math.log(max(classes, 2))
    for row in history:
        loss = row.get("loss")
        if loss is not None and loss > limit:
            return (f"diverged: the training loss reached {loss:.4g} at epoch {row['epoch']} "
                    f"({row['phase']}), above {LOSS_BLOWUP:g} x ln({classes}) = {limit:.3g}; "
                    f"lower the learning rates or the regulariser's weight.")
    n = max(len(val), 1)
    chance = float(val.class_counts().max()) / n
    ceiling = chance + CHANCE_SIGMAS * math.sqrt(chance * (1.0 - chance) / n)
    if accuracy > ceiling:
        return None
    rows = [r for r in history if "val_accuracy" in r]
    if not history and not start_accuracy > ceiling:  # NaN: no float start
        return None
    since = None
    for row in reversed(rows):  # the epoch from which validation accuracy stayed at chance
        if row["val_accuracy"] > ceiling:
            break
        since = row
    where = (f"since epoch {since['epoch']} ({since['phase']})" if since is not None
             else "at the end" if rows else "with no epoch trained")
    return (f"diverged: validation accuracy {accuracy:.4f} is chance level {where} (the most "
            f"frequent class is {chance:.2%} of the validation split; at most {ceiling:.4f} is "
            f"chance); lower the learning rates or raise the widths.")


# -- the widths a model runs at, per epoch ---------------------------------------------------


@torch.no_grad()
def width_metrics(model: nn.Module) -> dict[str, float]:
    """``{"bits.<group>": mean width}`` for every quantizer of ``model`` (fractional while learned)."""
    from mpsearch.quant import quantizers

    return {f"{WIDTHS_PREFIX}{group}": float(torch.as_tensor(q.widths()).detach().float().mean())
            for group, q in quantizers(model).items()}


def make_context(spec: StudySpec, number: int, seed: int, host, *, start: str = START_INIT,
                 artefacts: Path | None = None,
                 reporter: Callable[[int, Mapping[str, float]], None] | None = None,
                 checkpoints: TrialCheckpointer | None = None) -> TrialContext:
    """The context of trial ``number``: data on the device, its starting model, objectives, backend.

    Args:
        start: ``"float-start"`` loads the study's float start (``float-start.pt`` in
            ``artefacts``, or else the spec's ``[model] weights``); ``"scratch"`` and
            ``"init"`` build the seeded random initialisation.

    Raises:
        MpsearchError: the float start is needed but missing, or does not fit the model.
    """
    device = pick_device(spec.training.device)
    from mpsearch.quant import set_compile

    set_compile(spec.training.compile)
    set_autocast(spec.training.autocast)
    generator = seed_everything(seed)
    train, val, _ = load_data(spec)
    train, val = train.to(device), val.to(device)
    model_spec = host.models.get(spec.model.name)
    model = model_spec.create(train.num_classes, train.input_shape, seed=seed)
    float_accuracy = float("nan")
    if start == START_FLOAT:
        path = float_start_file(spec, artefacts)
        model.load_state_dict(load_weights(path, model))
    model = model.to(device)
    if start == START_FLOAT:
        float_accuracy = evaluate(model, val)
    profile = model_profile(model_spec, train.num_classes, train.input_shape)
    backend = host.backends.get(spec.backend)
    objectives = {n: host.objectives.get(n).for_backend(backend, spec.backend)
                  for n in spec.cost_objectives}
    augment = resolve_augment(spec.data.augment, host.datasets.get(spec.data.name))
    return TrialContext(spec=spec, number=number, seed=seed, device=device, model=model,
                        profile=profile, train=train, val=val, objectives=objectives, backend=backend,
                        generator=generator, host=host, start=start, float_accuracy=float_accuracy,
                        augment=augment,
                        reporter=reporter or (lambda epoch, metrics: None), checkpoints=checkpoints)


def float_start_file(spec: StudySpec, artefacts: Path | None) -> Path:
    """The file a trial's float start is read from: the study's ``float-start.pt``, else ``[model] weights``.

    Raises:
        MpsearchError: the study pretrains its start and it has not been trained yet.
    """
    if artefacts is not None and (Path(artefacts) / FLOAT_START_FILE).exists():
        return Path(artefacts) / FLOAT_START_FILE
    if spec.training.pretrain_epochs == 0 and spec.model.weights is not None:
        return Path(spec.model.weights)
    raise MpsearchError(f"study {spec.name!r}: its float start ({FLOAT_START_FILE} in the study's "
                        f"artefacts) has not been trained; run the study with 'mpsearch study run', "
                        f"which trains it once before the first trial.")
