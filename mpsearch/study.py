"""Create, run and resume studies: an Optuna multi-objective study, trials run by Ray Tune or in-process.

Optuna owns the search over hyperparameters and the record: every trial's
strategy, hyperparameters, objective values and attributes live in the study's
storage, which ``mpsearch study show``, ``optuna`` and optuna-dashboard all read.
Ray Tune owns placement (see :mod:`mpsearch.ray_executor`); ``executor="local"``
runs the same trial function in this process, one trial after another.

Several drivers may run one study at once (on PostgreSQL from several machines,
on SQLite from one). Together they run exactly ``n_trials`` counted trials
(COMPLETE, or FAIL for a reason of their own): each counts and claims its next
trial under the study's lock, and an enqueued point runs once. Each driver keeps
a heartbeat for every trial it runs, so a driver's trials are never failed while
it lives.

Resuming: trials whose driver died (``kill -9``, a lost machine) go stale once
their last heartbeat is older than the grace period (10 s by default). The next
driver to claim a trial marks them FAIL (with the reason, ``orphaned = true``) and
re-queues them with the same parameters (``retry_of``). Numbering continues and no
COMPLETE trial is repeated or lost. See :mod:`mpsearch.driver` for the details.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsearch import __version__
from mpsearch.driver import (  # noqa: F401 - ORPHAN, counted_count, finished_count, reconcile re-exported
    ORPHAN,
    RETRY_OF,
    Driver,
    counted_count,
    finished_count,
    reconcile,
)
from mpsearch.errors import MpsearchError
from mpsearch.float_start import ensure_float_start
from mpsearch.heartbeat import DEFAULT_GRACE, DEFAULT_INTERVAL
from mpsearch.spec import ACCURACY, StudySpec, parse_spec
from mpsearch.optuna_private import study_id, study_storage
from mpsearch.storage import (
    OBJECTIVES_ATTR,
    SPEC_ATTR,
    STUDY_ID_ATTR,
    UNITS_ATTR,
    claim_study_dir,
    load_study,
    new_study_id,
    open_storage,
    shown_url,
    study_lock,
)
from mpsearch.trial import TrialOutcome, checkpoint_folder, run_trial

RUNS = "runs"  # one record per `run`: executor, trials, wall seconds, Ray start-up seconds
STRATEGY_PARAM = "strategy"


def make_sampler(spec: StudySpec):
    """The spec's Optuna sampler, seeded with the study's seed."""
    import optuna

    seed = spec.study.seed
    if spec.study.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if spec.study.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed)
    if spec.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # The strategy choice makes the space dynamic; GP then samples those
    # parameters independently, which it would otherwise warn about every trial.
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


def define_space(spec: StudySpec, host) -> Callable[[Any], dict[str, Any]]:
    """The define-by-run search space: a strategy, then that strategy's hyperparameters.

    The strategy is an Optuna parameter (``strategy_choice = "sampler"``), or trial
    ``n`` runs strategy ``n mod k`` (``"round-robin"``, recorded as a user attribute).

    Returns the strategy's parameters under their own names (the Optuna trial
    holds them as ``strategy.name``).
    """
    names = [s.name for s in spec.strategies]
    by_sampler = spec.study.strategy_choice == "sampler" and len(names) > 1

    def space(trial) -> dict[str, Any]:
        if by_sampler:
            name = trial.suggest_categorical(STRATEGY_PARAM, names)
        else:  # one strategy, or round-robin (a re-queued or enqueued trial keeps its strategy)
            name = trial.user_attrs.get(STRATEGY_PARAM) or names[trial.number % len(names)]
            trial.set_user_attr(STRATEGY_PARAM, name)
        strategy = host.strategies.get(name)()
        return {"strategy": name, "params": strategy.suggest(trial, spec.strategy(name).space, name)}

    return space


def create_study(spec: StudySpec, storage_url: str | None, host) -> Any:
    """Create the study in the storage (SQLite file created if needed).

    The stored spec names each plugin file with the sha256 of its content (see
    :func:`mpsearch.host.pin_plugin`) and never holds a storage password; the study
    gets a UUID of its own (``mpsearch_study_id``), which names its artefact folder.

    Raises:
        MpsearchError: a study of that name already exists there (also when another
            process creates it at the same moment).
    """
    from dataclasses import replace

    import optuna

    from mpsearch.host import pin_plugin

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = replace(spec, plugins=tuple(dict.fromkeys(pin_plugin(p) for p in spec.plugins)))
    storage = open_storage(storage_url, create=True)
    exists = MpsearchError(f"study {spec.name!r} already exists in {shown_url(storage_url)}; "
                           f"continue it with 'mpsearch study run {spec.name}' or choose another "
                           f"[study] name.")
    if spec.name in optuna.get_all_study_names(storage):
        raise exists
    directions = [o.direction for o in spec.study.objectives]
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions,
                                    sampler=make_sampler(spec))
    except optuna.exceptions.DuplicatedStudyError:  # another driver created it just now
        raise exists from None
    study.set_user_attr(STUDY_ID_ATTR, new_study_id())
    with warnings.catch_warnings():  # experimental since Optuna 3.2; what its CLI, plots and dashboard read
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.name for o in spec.study.objectives])
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(OBJECTIVES_ATTR, [o.name for o in spec.study.objectives])
    study.set_user_attr(UNITS_ATTR, {n: host.objectives.get(n).unit for n in spec.cost_objectives})
    study.set_user_attr("mpsearch_version", __version__)
    by_sampler = spec.study.strategy_choice == "sampler" and len(spec.strategies) > 1
    for section in spec.strategies:
        for point in section.enqueue:
            params = {f"{section.name}.{k}": v for k, v in point.items()}
            if by_sampler:
                params[STRATEGY_PARAM] = section.name
            study.enqueue_trial(params, user_attrs={STRATEGY_PARAM: section.name})
    return study


def stored_spec(study, host=None) -> StudySpec:
    """The spec a study was created with."""
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise MpsearchError(f"study {study.study_name!r} was not created by mpsearch "
                            f"(it has no stored spec).")
    return parse_spec(raw, source=f"study {study.study_name!r}", host=host)


@dataclass
class Progress:
    """Counts for the live display: trials running, done, failed, best accuracy, elapsed."""

    total: int
    stream: Any = field(default_factory=lambda: sys.stderr)
    running: int = 0
    done: int = 0
    failed: int = 0
    best: float = float("nan")
    started: float = field(default_factory=time.monotonic)
    detail: str = ""

    def line(self) -> str:
        best = "-" if math.isnan(self.best) else f"{self.best:.4f}"
        elapsed = time.monotonic() - self.started
        return (f"trials: {self.running} running, {self.done} done, {self.failed} failed "
                f"of {self.total} | best accuracy {best} | {elapsed:5.0f} s {self.detail}")

    def show(self, event: bool = False) -> None:
        """Redraw the line; when not on a terminal, print only on ``event`` (a trial ended)."""
        tty = self.stream.isatty()
        if not tty and not event:
            return
        self.stream.write(self.line().ljust(100) + ("\r" if tty else "\n"))
        self.stream.flush()

    def finished(self, outcome_values: dict | None) -> None:
        self.running = max(0, self.running - 1)
        if outcome_values is None:
            self.failed += 1
        else:
            self.done += 1
            acc = outcome_values.get(ACCURACY, float("nan"))
            if not math.isnan(acc) and (math.isnan(self.best) or acc > self.best):
                self.best = acc


def record(study, trial, spec: StudySpec, outcome: TrialOutcome, driver: Driver | None = None) -> None:
    """Store a finished trial: attributes, then COMPLETE with its values or FAIL.

    With a ``driver``, all of it happens under the study's lock, where another driver
    fails stale trials: the trial is either still RUNNING and gets its whole record,
    or was failed by another driver meanwhile, and nothing is stored (with a warning).
    """
    from contextlib import nullcontext

    from optuna.trial import TrialState

    lock = (study_lock(study_storage(study), study_id(study)) if driver is not None
            else nullcontext())
    with lock:
        if driver is not None and not driver.still_running(trial):
            return
        for key, value in _json_safe(outcome.attrs).items():
            trial.set_user_attr(key, value)
        from mpsearch.artifacts import register_trial_artefacts  # listed by Optuna Dashboard

        register_trial_artefacts(study, trial, outcome.attrs)
        if outcome.failed:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [outcome.values[o.name] for o in spec.study.objectives])


def run_study(name: str, storage_url: str | None, host, *, n_trials: int | None = None,
              executor: str | None = None, address: str | None = None,
              progress: bool = True, heartbeat: float = DEFAULT_INTERVAL,
              grace: float = DEFAULT_GRACE) -> Any:
    """Run (or continue) a study until it has its trials, and return it.

    Returns when the study has its counted trials and none is RUNNING: it waits for
    other drivers' trials, and runs those a stopped driver left (see :mod:`mpsearch.driver`).

    Args:
        n_trials: run this many more trials (default: up to the spec's ``n_trials``).
        executor: ``"ray"`` or ``"local"`` (default: the spec's).
        address: an existing Ray cluster (``HOST:PORT`` or ``auto``).
        heartbeat: seconds between this driver's heartbeats.
        grace: seconds without a heartbeat after which another driver's trial is failed
            and re-queued (the trial's own grace period, if it carries one, wins).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(storage_url, name)
    spec = stored_spec(study, host)
    study.sampler = make_sampler(spec)
    say = (lambda message: print(message, file=sys.stderr)) if progress else None
    driver = Driver(study, spec.study.n_trials, interval=heartbeat, grace=grace, say=say,
                    max_retries=spec.resources.max_retries)
    if n_trials is not None:
        driver.target = driver.count() + n_trials
    artefacts = claim_study_dir(storage_url, study)  # this study's own; refuses another's
    ensure_float_start(study, spec, host, artefacts, say)
    executor = executor or spec.resources.executor
    started, timings = time.time(), {}
    with driver:
        while True:
            remaining = driver.target - driver.count()
            if remaining > 0:
                artefacts.mkdir(parents=True, exist_ok=True)
                if executor == "local":
                    _run_local(study, spec, host, driver, remaining, artefacts, progress)
                else:
                    from mpsearch.ray_executor import run_with_ray

                    timings = run_with_ray(study, spec, host, remaining, storage_url, artefacts,
                                           address=address, driver=driver,
                                           progress=Progress(remaining) if progress else None)
            if not driver.wait_for_others():
                break
    if driver.claimed:
        with study_lock(study_storage(study), study_id(study)):  # another driver may append too
            runs = list(optuna.load_study(study_name=name, storage=study_storage(study)).user_attrs
                        .get(RUNS, []))
            runs.append({"started": started, "executor": executor, "trials": driver.claimed,
                         "max_concurrent": spec.resources.max_concurrent,
                         "seconds": time.time() - started, **timings})
            study.set_user_attr(RUNS, runs)
    return study


def _run_local(study, spec: StudySpec, host, driver: Driver, remaining: int, artefacts: Path,
               progress: bool) -> None:
    """Claim and run trials one after another until the driver may claim no more."""
    space = define_space(spec, host)
    display = Progress(remaining)
    while True:
        with driver.claiming() as allowed:
            if not allowed:
                break
            trial = study.ask()
            driver.started(trial)
        drawn = space(trial)
        display.running += 1
        if progress:
            display.show()

        def reporter(epoch: int, metrics: dict, _trial=trial) -> None:
            if progress:
                display.detail = f"| trial {_trial.number} epoch {epoch}"
                display.show()

        # a re-queued trial resumes from the checkpoints of the trial it re-runs
        retry_of = trial.user_attrs.get(RETRY_OF)
        outcome = run_trial(spec, trial.number, drawn["strategy"], drawn["params"],
                            artefacts=artefacts, threads=int(spec.resources.cpus_per_trial),
                            reporter=reporter,
                            resume_from=None if retry_of is None
                            else checkpoint_folder(artefacts, int(retry_of)),
                            plugins=host.sources)  # the plugins the spec was checked with
        record(study, trial, spec, outcome, driver)
        driver.finished(trial)
        display.finished(outcome.values)
        display.detail = ""
        if progress:
            display.show(event=True)
    if progress and sys.stderr.isatty():
        sys.stderr.write("\n")


def _json_safe(value: Any) -> Any:
    """Attributes as JSON-serialisable values (Optuna stores user attributes as JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
