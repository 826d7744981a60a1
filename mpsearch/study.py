"""Create, run and resume studies: an Optuna multi-objective study, trials run by an executor.

Optuna owns the search over hyperparameters and the record: every trial's
strategy, hyperparameters, objective values and attributes live in the study's
storage, which ``mpsearch study show``, ``optuna`` and optuna-dashboard all read.
Executors own placement (see :mod:`mpsearch.execution`): ``ray`` runs trials as Ray
Tune trials, ``local`` runs the same trial function in this process, one trial after
another, and plugins may register more (``register_executors``).

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
COMPLETE trial is repeated or lost. See :mod:`mpsearch.execution.driver` for the details.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

from mpsearch import __version__
from mpsearch.errors import MpsearchError
from mpsearch.execution.base import Execution
from mpsearch.execution.driver import Driver
from mpsearch.execution.heartbeat import DEFAULT_GRACE, DEFAULT_INTERVAL
from mpsearch.execution.progress import Progress
from mpsearch.execution.space import STRATEGY_PARAM, make_sampler
from mpsearch.float_start import ensure_float_start
from mpsearch.optuna_private import study_id, study_storage
from mpsearch.execution.lock import study_lock
from mpsearch.spec import StudySpec, parse_spec
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
)

RUNS = "runs"  # one record per `run`: executor, trials, wall seconds, Ray start-up seconds


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


def run_study(name: str, storage_url: str | None, host, *, n_trials: int | None = None,
              executor: str | None = None, address: str | None = None,
              progress: bool = True, heartbeat: float = DEFAULT_INTERVAL,
              grace: float = DEFAULT_GRACE) -> Any:
    """Run (or continue) a study until it has its trials, and return it.

    Returns when the study has its counted trials and none is RUNNING: it waits for
    other drivers' trials, and runs those a stopped driver left (see
    :mod:`mpsearch.execution.driver`).

    Args:
        n_trials: run this many more trials (default: up to the spec's ``n_trials``).
        executor: a registered executor's name, e.g. ``"ray"`` or ``"local"`` (default: the
            spec's).
        address: an existing Ray cluster (``HOST:PORT`` or ``auto``).
        heartbeat: seconds between this driver's heartbeats.
        grace: seconds without a heartbeat after which another driver's trial is failed
            and re-queued (the trial's own grace period, if it carries one, wins).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(storage_url, name)
    spec = stored_spec(study, host)
    executor = executor or spec.resources.executor
    runner = host.executors.get(executor)  # an unknown name fails before anything is written
    study.sampler = make_sampler(spec)
    say = (lambda message: print(message, file=sys.stderr)) if progress else None
    driver = Driver(study, spec.study.n_trials, interval=heartbeat, grace=grace, say=say,
                    max_retries=spec.resources.max_retries)
    if n_trials is not None:
        driver.target = driver.count() + n_trials
    artefacts = claim_study_dir(storage_url, study)  # this study's own; refuses another's
    ensure_float_start(study, spec, host, artefacts, say)
    started, timings = time.time(), {}
    with driver:
        while True:
            remaining = driver.target - driver.count()
            if remaining > 0:
                artefacts.mkdir(parents=True, exist_ok=True)
                timings = runner().run(Execution(
                    study, spec, host, driver, remaining, artefacts, storage_url=storage_url,
                    address=address, progress=Progress(remaining) if progress else None)) or timings
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
