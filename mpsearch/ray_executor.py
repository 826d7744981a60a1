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
- a result is recorded under the study's lock, where other drivers fail stale
  trials (see :mod:`mpsearch.driver`);
- the searcher Tune pickles into its experiment folder (``tuner.pkl``) holds
  neither the storage nor the study, so no storage URL or password reaches that
  folder; trials load the plugins the driver checked the spec with.

Trials run as Tune trials with ``{"cpu": c, "gpu": g}`` resources, on a local Ray
runtime (``ray.init(num_cpus=...)``) or an existing cluster (``address``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError
from mpsearch.optuna_private import (
    SEARCHER_STORAGE_ATTRS,
    searcher_completed,
    searcher_study,
    searcher_study_name,
    searcher_trials,
    study_id,
    study_storage,
)
from mpsearch.spec import StudySpec, parse_spec
from mpsearch.storage import study_lock
from mpsearch.study import Progress, _json_safe, define_space
from mpsearch.trial import ATTR_FAIL, ATTR_HISTORY, checkpoint_folder, run_trial

DONE = "mpsearch_done"
VALUES = "mpsearch_values"
ATTRS = "mpsearch_attrs"
EPOCH = "mpsearch_epoch"
NUMBER = "_number"
RETRY_OF = "_retry_of"
ATTR_NODE = "ray_node"  # the Ray node that ran the trial (its last attempt)


def _trainable(config: dict, spec_dict: dict, artefacts: str, threads: int,
               plugins: tuple[str, ...] = ()) -> None:
    """One trial in a Ray worker: run it and report its outcome as the final result."""
    import ray
    from ray import tune

    spec = parse_spec(spec_dict, source="study spec")

    def reporter(epoch: int, metrics: dict) -> None:
        tune.report({EPOCH: json.dumps(_json_safe(dict(metrics)))})

    # A trial Ray restarts (its worker or node died) finds its own checkpoints in the
    # study's folder; a re-queued trial resumes from those of the trial it re-runs.
    retry_of = config.get(RETRY_OF)
    outcome = run_trial(spec, int(config[NUMBER]), config["strategy"], config["params"],
                        artefacts=Path(artefacts), threads=threads, reporter=reporter,
                        resume_from=None if retry_of is None
                        else checkpoint_folder(Path(artefacts), int(retry_of)),
                        plugins=plugins)
    outcome.attrs[ATTR_NODE] = ray.get_runtime_context().get_node_id()
    final: dict[str, Any] = {DONE: True, ATTRS: json.dumps(_json_safe(outcome.attrs))}
    if outcome.values is not None:
        final[VALUES] = json.dumps(outcome.values)
        final.update(outcome.values)
    tune.report(final)


def _trial_dirname(trial) -> str:
    return f"trial-{trial.config.get(NUMBER, trial.trial_id)}"


def _searcher_class():
    from ray.tune.search.optuna import OptunaSearch

    class MpsearchOptunaSearch(OptunaSearch):
        """OptunaSearch that records what mpsearch needs and never leaves a trial RUNNING."""

        def __init__(self, *args, objective_names: list[str], progress: Progress | None,
                     driver=None, **kw):
            super().__init__(*args, **kw)
            self._objective_names = objective_names
            self._progress = progress
            self._driver = driver  # mpsearch.driver.Driver: claims under the study's lock
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
            config[NUMBER] = searcher_trials(self)[trial_id].number
            retry_of = searcher_trials(self)[trial_id].user_attrs.get("retry_of")
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
            from contextlib import nullcontext

            if trial_id in searcher_completed(self) or trial_id not in searcher_trials(self):
                return
            study = searcher_study(self)
            # checked and written under the lock where other drivers fail stale trials
            lock = (study_lock(study_storage(study), study_id(study)) if self._driver is not None
                    else nullcontext())
            with lock:
                self._record(trial_id, result, error)

        def _record(self, trial_id: str, result: dict | None, error: bool) -> None:
            from optuna.trial import TrialState

            ot_trial = searcher_trials(self)[trial_id]
            if self._driver is not None and not self._driver.still_running(ot_trial):
                self._driver.finished(ot_trial)  # another driver failed it as stale
                searcher_completed(self).add(trial_id)
                return
            values, reason = None, None
            if result and result.get(DONE):
                attrs = json.loads(result.get(ATTRS, "{}"))
                for key, value in attrs.items():
                    ot_trial.set_user_attr(key, value)
                from mpsearch.artifacts import register_trial_artefacts  # listed by Optuna Dashboard

                register_trial_artefacts(searcher_study(self), ot_trial, attrs)
                if VALUES in result:
                    found = json.loads(result[VALUES])
                    values = [found.get(n) for n in self._objective_names]
                    if any(v is None or not math.isfinite(v) for v in values):
                        reason = f"objective values missing or not finite: {found}"
                        values = None
                else:
                    reason = attrs.get(ATTR_FAIL, "the trial failed without a reason")
            else:
                reason = ("the trial stopped before it finished"
                          + (" (its worker raised or died)" if error else " (stopped early)"))
            if values is None:
                ot_trial.set_user_attr(ATTR_FAIL, reason)
                searcher_study(self).tell(ot_trial, state=TrialState.FAIL)
            else:
                searcher_study(self).tell(ot_trial, values)
            if self._driver is not None:
                self._driver.finished(ot_trial)
            searcher_completed(self).add(trial_id)
            if self._progress is not None:
                self._progress.finished(None if values is None else
                                        dict(zip(self._objective_names, values)))
                self._progress.show(event=True)

    return MpsearchOptunaSearch


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
    gpus = spec.resources.gpus_per_trial
    if gpus > 0 and address is None:
        import torch

        if not torch.cuda.is_available():
            raise MpsearchError(f"{spec.source}: [resources] gpus_per_trial = {gpus:g}, but this "
                                f"machine has no CUDA device; set it to 0, or run on a cluster "
                                f"with GPUs (--address).")
    try:
        import ray
        from ray import tune
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise MpsearchError("the ray executor needs Ray: pip install 'ray[tune]'; or use "
                            "--executor local.") from exc
    from mpsearch.storage import open_storage
    from mpsearch.study import make_sampler

    # Per-epoch results carry no objective values; only the final one does.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started_here, ray_start = False, 0.0
    if not ray.is_initialized():
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
        started_here, ray_start = True, time.monotonic() - t
        if progress is not None:
            progress.detail = f"| ray started in {ray_start:.1f} s"
    try:
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
        tuner = tune.Tuner(
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
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    return {"ray_start_seconds": ray_start}
