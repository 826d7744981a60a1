"""Running a study's trials as Ray Tune trials, with Optuna proposing and recording.

The bridge is Ray's ``OptunaSearch`` given the study's storage object and name,
subclassed to fix what it gets wrong for mpsearch:

- a trial whose final result is missing, NaN, or not marked finished ends FAIL
  with the reason recorded (Ray would leave a NaN trial RUNNING, and tell a trial
  stopped early COMPLETE with partial values);
- per-epoch metrics of a multi-objective study are kept as the trial's
  ``history`` user attribute (Optuna cannot report intermediate values there);
- the trainable never raises for a trial's own failure: it reports the failure,
  so the study goes on and the message is stored;
- a result is told through the one tell path (:mod:`mpsearch.execution.tell`),
  under the study's lock where other drivers fail stale trials (see
  :mod:`mpsearch.execution.driver`);
- the searcher Tune pickles into its experiment folder (``tuner.pkl``) holds
  neither the storage nor the study, so no storage URL or password reaches that
  folder; trials load the plugins the driver checked the spec with.

Trials run as Tune trials with ``{"cpu": c, "gpu": g}`` resources, on a local Ray
runtime (``ray.init(num_cpus=...)``) or an existing cluster (``address``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError
from mpsearch.execution.base import Execution, Executor
from mpsearch.execution.progress import Progress
from mpsearch.execution.space import define_space, make_sampler
from mpsearch.execution.tell import tell
from mpsearch.optuna_private import (
    SEARCHER_STORAGE_ATTRS,
    searcher_completed,
    searcher_study,
    searcher_study_name,
    searcher_trials,
)
from mpsearch.record import ATTR_HISTORY, ATTR_RAY_NODE, ATTR_RETRY_OF, json_safe
from mpsearch.spec import StudySpec, parse_spec

DONE = "mpsearch_done"
VALUES = "mpsearch_values"
ATTRS = "mpsearch_attrs"
EPOCH = "mpsearch_epoch"
NUMBER = "_number"  # Tune config keys: the Optuna trial's number, and the trial it re-runs
RETRY_OF = f"_{ATTR_RETRY_OF}"


def _trainable(config: dict, spec_dict: dict, artefacts: str, threads: int,
               plugins: tuple[str, ...] = ()) -> None:
    """One trial in a Ray worker: run it and report its outcome as the final result."""
    import ray
    from ray import tune

    from mpsearch.checkpoint import checkpoint_folder
    from mpsearch.trial import run_trial

    spec = parse_spec(spec_dict, source="study spec")

    def reporter(epoch: int, metrics: dict) -> None:
        tune.report({EPOCH: json.dumps(json_safe(dict(metrics)))})

    # A trial Ray restarts (its worker or node died) finds its own checkpoints in the
    # study's folder; a re-queued trial resumes from those of the trial it re-runs.
    retry_of = config.get(RETRY_OF)
    outcome = run_trial(spec, int(config[NUMBER]), config["strategy"], config["params"],
                        artefacts=Path(artefacts), threads=threads, reporter=reporter,
                        resume_from=None if retry_of is None
                        else checkpoint_folder(Path(artefacts), int(retry_of)),
                        plugins=plugins)
    outcome.attrs[ATTR_RAY_NODE] = ray.get_runtime_context().get_node_id()
    final: dict[str, Any] = {DONE: True, ATTRS: json.dumps(json_safe(outcome.attrs))}
    if outcome.values is not None:
        final[VALUES] = json.dumps(outcome.values)
        final.update(outcome.values)
    tune.report(final)


def _trial_dirname(trial) -> str:
    return f"trial-{trial.config.get(NUMBER, trial.trial_id)}"


def _final_result(result: dict | None, error: bool) -> tuple[dict | None, dict, str | None]:
    """``(values, attrs, reason)`` of a Tune trial's last result, as the tell path takes them."""
    if not (result and result.get(DONE)):
        return None, {}, ("the trial stopped before it finished"
                          + (" (its worker raised or died)" if error else " (stopped early)"))
    attrs = json.loads(result.get(ATTRS, "{}"))
    return (json.loads(result[VALUES]) if VALUES in result else None), attrs, None


class _MpsearchSearch:
    """What mpsearch adds to Ray's ``OptunaSearch`` (mixed in before it, see :func:`_searcher_class`):
    claims through the driver, tells through the one tell path, never leaves a trial RUNNING."""

    def __init__(self, *args, objective_names: list[str], progress: Progress | None,
                 driver=None, **kw):
        super().__init__(*args, **kw)
        self._objective_names = objective_names
        self._progress = progress
        self._driver = driver  # mpsearch.execution.driver.Driver: claims under the study's lock
        self._histories: dict[str, list] = {}

    def __getstate__(self) -> dict:
        # Tune pickles its searcher with the tuner into the experiment folder (for
        # Tuner.restore, which mpsearch does not use), a folder every node reads: the
        # storage (its URL holds the password) and the driver's threads stay here.
        state = {**self.__dict__, "_driver": None}
        for key in SEARCHER_STORAGE_ATTRS:
            state.pop(key, None)
        return state

    def suggest(self, trial_id: str):
        if self._driver is None:
            config = super().suggest(trial_id)
        else:  # count and claim under the study's lock, so drivers never overshoot
            with self._driver.claiming() as allowed:
                if not allowed:
                    return self.FINISHED
                config = super().suggest(trial_id)
                self._driver.started(searcher_trials(self)[trial_id])
        if config is None:
            return None
        ot_trial = searcher_trials(self)[trial_id]
        config[NUMBER] = ot_trial.number
        retry_of = ot_trial.user_attrs.get(ATTR_RETRY_OF)
        if retry_of is not None:
            config[RETRY_OF] = int(retry_of)
        if self._progress is not None:
            self._progress.running += 1
            self._progress.show()
        return config

    def save(self, checkpoint_path: str) -> None:
        # Tune checkpoints its searcher for experiment restore; mpsearch resumes from
        # the Optuna storage instead (the search space is a closure and cannot pickle).
        Path(checkpoint_path).write_text(json.dumps({"study": searcher_study_name(self)}))

    def restore(self, checkpoint_path: str) -> None:
        raise MpsearchError("Ray experiment restore is not used; resume the study with "
                            "'mpsearch study run NAME'.")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if EPOCH not in result or trial_id not in searcher_trials(self):
            return
        from optuna.exceptions import UpdateFinishedTrialError

        history = self._histories.setdefault(trial_id, [])
        history.append(json.loads(result[EPOCH]))
        try:
            searcher_trials(self)[trial_id].set_user_attr(ATTR_HISTORY, history)
        except UpdateFinishedTrialError:  # another driver judged it stale and failed it
            return

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in searcher_completed(self) or trial_id not in searcher_trials(self):
            return
        values, attrs, reason = _final_result(result, error)
        told = tell(searcher_study(self), searcher_trials(self)[trial_id], self._objective_names,
                    values, attrs, driver=self._driver, reason=reason)
        searcher_completed(self).add(trial_id)
        if told.state != "DROPPED" and self._progress is not None:
            self._progress.finished(told.values)
            self._progress.show(event=True)


@functools.cache
def _searcher_class() -> type:
    """Ray's ``OptunaSearch`` with mpsearch's fixes (Ray is imported only when this is called)."""
    from ray.tune.search.optuna import OptunaSearch

    return type("MpsearchOptunaSearch", (_MpsearchSearch, OptunaSearch),
                {"__doc__": _MpsearchSearch.__doc__, "__module__": __name__})


class RayExecutor(Executor):
    """Trials as Ray Tune trials with ``{"cpu": c, "gpu": g}`` resources, on a local Ray runtime
    or an existing cluster (``execution.address``); ``run_trial`` runs in Ray's workers."""

    def run(self, execution: Execution) -> dict[str, float]:
        return run_with_ray(execution.study, execution.spec, execution.host, execution.remaining,
                            execution.storage_url, execution.artefacts, address=execution.address,
                            progress=execution.progress, driver=execution.driver)


def _check_gpus(spec: StudySpec, address: str | None) -> None:
    gpus = spec.resources.gpus_per_trial
    if gpus > 0 and address is None:
        import torch

        if not torch.cuda.is_available():
            raise MpsearchError(f"{spec.source}: [resources] gpus_per_trial = {gpus:g}, but this "
                                f"machine has no CUDA device; set it to 0, or run on a cluster "
                                f"with GPUs (--address).")


def _start_ray(spec: StudySpec, address: str | None, progress: Progress | None) -> tuple[bool, float]:
    """Start Ray unless it runs; returns whether it was started here and how long it took."""
    import ray

    if ray.is_initialized():
        return False, 0.0
    t = time.monotonic()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        cpus = max(int(math.ceil(spec.resources.cpus_per_trial * spec.resources.max_concurrent)),
                   os.cpu_count() or 1)
        # "local": a runtime of our own, never a cluster some other process left running
        ray.init(address="local", num_cpus=cpus, **kwargs)
    ray_start = time.monotonic() - t
    if progress is not None:
        progress.detail = f"| ray started in {ray_start:.1f} s"
    return True, ray_start


def _tuner(study, spec: StudySpec, host, remaining: int, storage_url: str | None, artefacts: Path,
           progress: Progress | None, driver):
    from ray import tune

    from mpsearch.storage import open_storage

    names = [o.name for o in spec.study.objectives]
    modes = ["max" if o.direction == "maximize" else "min" for o in spec.study.objectives]
    searcher = _searcher_class()(
        space=define_space(spec, host), metric=names, mode=modes, sampler=make_sampler(spec),
        study_name=spec.name, storage=open_storage(storage_url), objective_names=names,
        progress=progress, driver=driver)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, spec_dict=spec.to_dict(), artefacts=str(artefacts),
                             threads=max(1, int(spec.resources.cpus_per_trial)),
                             plugins=tuple(host.sources)),
        {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial})
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                    max_concurrent_trials=spec.resources.max_concurrent,
                                    # a worker that already imported torch and loaded the
                                    # data takes the next trial: seconds saved per trial
                                    reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=f"{spec.name}-{int(time.time())}",
                                  storage_path=str(artefacts / "ray"), verbose=0,
                                  # a trial whose worker or node died is restarted and
                                  # resumes from its last per-epoch checkpoint
                                  failure_config=tune.FailureConfig(
                                      max_failures=spec.resources.max_retries)))


def run_with_ray(study, spec: StudySpec, host, remaining: int, storage_url: str | None,
                 artefacts: Path, *, address: str | None = None,
                 progress: Progress | None = None, driver=None) -> dict[str, float]:
    """Run ``remaining`` trials of ``study`` on Ray Tune and record them in the study.

    Returns:
        Timings: ``ray_start_seconds`` (0 when Ray was already running).

    Raises:
        MpsearchError: trials ask for GPUs that a local runtime does not have (Ray would
            leave them pending for ever).
    """
    _check_gpus(spec, address)
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise MpsearchError("the ray executor needs Ray: pip install 'ray[tune]'; or use "
                            "--executor local.") from exc
    # Per-epoch results carry no objective values; only the final one does.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started_here, ray_start = _start_ray(spec, address, progress)
    try:
        _tuner(study, spec, host, remaining, storage_url, artefacts, progress, driver).fit()
    finally:
        if started_here:
            ray.shutdown()
    return {"ray_start_seconds": ray_start}
