"""The base class of executors: what runs a study's trials, and the contract each keeps."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from mpsearch.execution.driver import Driver
    from mpsearch.execution.progress import Progress
    from mpsearch.execution.tell import Told
    from mpsearch.spec import StudySpec


@dataclass
class Execution:
    """What an executor is given for one :meth:`Executor.run`.

    Attributes:
        study: the ``optuna.Study``, loaded by the driver (its storage is the truth).
        spec: the study's stored spec, checked against ``host``.
        host: the plugin host; ``host.sources`` are the plugins a trial must load.
        driver: this process's :class:`~mpsearch.execution.driver.Driver`.
        remaining: how many counted trials the study still needs (an upper bound for
            this run: other drivers may claim some of them).
        artefacts: the study's own artefact folder (trials write there).
        storage_url: the storage's URL (it may hold a password: never store or print it).
        address: a cluster to run on (``--address``), or None.
        progress: the live display to update, or None when quiet.
    """

    study: Any
    spec: StudySpec
    host: Any  # mpsearch.host.PluginHost
    driver: Driver
    remaining: int
    artefacts: Path
    storage_url: str | None = None
    address: str | None = None
    progress: Progress | None = None


class Executor(abc.ABC):
    """Runs a study's trials somewhere and tells their results to the study.

    The contract every executor keeps (the conformance suite
    :mod:`mpsearch.testing.executors` checks it):

    - **Who claims.** Only the :class:`~mpsearch.execution.driver.Driver` decides how
      many trials run: an executor claims a trial only inside
      ``with driver.claiming() as allowed:``, and only when ``allowed``; there it asks
      Optuna for the trial (``study.ask()``) and hands it to ``driver.started(trial)``
      before leaving the block (:meth:`claim` does exactly this). It stops claiming once
      ``allowed`` is false. So drivers together run exactly ``n_trials`` counted trials.
    - **Who tells.** A result reaches the study only through
      :func:`mpsearch.execution.tell.tell` (:meth:`tell`), in the driver's process: it
      writes the record and tells COMPLETE or FAIL under the study's lock. An executor
      never calls ``study.tell`` itself. A trial whose run raised or died is told FAIL
      with the reason; none is left RUNNING when :meth:`run` returns.
    - **Heartbeats.** The driver keeps a heartbeat for every trial it claimed, from a
      thread of the driver's process; the tell path stops it. An executor whose
      trials run elsewhere keeps nothing of its own alive.
    - **A late result.** If another driver failed a trial as stale (its heartbeat was
      late) and re-queued it, the tell path drops this executor's result with a
      warning; the re-queued copy is the one that counts.
    - **Where ``run_trial`` runs.** In a process of the executor's choice (this one,
      a pool's, a Ray worker); it receives plain values (the spec as a dict, the
      plugins' sources) and loads exactly ``execution.host.sources``, never live
      objects of the driver.
    - **A re-queued trial** (user attribute ``retry_of``) resumes from the checkpoints
      of the trial it re-runs (:meth:`resume_from`).
    - :meth:`run` returns when the driver may claim no more and every trial it
      claimed has been told. It returns timings (seconds) that the study records
      with the run (e.g. ``ray_start_seconds``); an empty dict if none.

    An executor is constructed without arguments, once per run, in the driver's
    process. Register one with the ``register_executors`` hook.
    """

    @abc.abstractmethod
    def run(self, execution: Execution) -> dict[str, float]:
        """Claim, run and tell trials until the driver may claim no more; return timings."""

    # -- helpers every executor may use -----------------------------------------------

    @staticmethod
    def claim(execution: Execution) -> Any | None:
        """The next trial, claimed under the study's lock, or None when no more may be claimed."""
        driver = execution.driver
        with driver.claiming() as allowed:
            if not allowed:
                return None
            trial = execution.study.ask()
            driver.started(trial)
        return trial

    @staticmethod
    def resume_from(execution: Execution, trial: Any) -> Path | None:
        """Where a re-queued trial resumes from: the checkpoints of the trial it re-runs."""
        from mpsearch.checkpoint import checkpoint_folder
        from mpsearch.record import ATTR_RETRY_OF

        retry_of = trial.user_attrs.get(ATTR_RETRY_OF)
        return None if retry_of is None else checkpoint_folder(execution.artefacts, int(retry_of))

    @staticmethod
    def tell(execution: Execution, trial: Any, values: dict[str, float] | None,
             attrs: dict[str, Any], reason: str | None = None) -> Told:
        """Tell a claimed trial's result through the one tell path (see :mod:`~mpsearch.execution.tell`)."""
        from mpsearch.execution.tell import tell

        return tell(execution.study, trial, [o.name for o in execution.spec.study.objectives],
                    values, attrs, driver=execution.driver, reason=reason)
