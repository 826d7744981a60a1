"""One driver of a study: claiming trials, keeping them alive, and taking over a dead driver's.

A *driver* is a process that runs a study's trials (``mpsearch study run`` or
``create``, with any executor). Several drivers may run one study at once,
from one machine on SQLite, or from several machines on PostgreSQL. Either way:

- **Counted trials** are COMPLETE trials, trials that FAILed for a reason of their
  own, and RUNNING trials of live drivers. A trial failed because its driver died
  is not counted; its parameters are re-queued instead.
- **Claims are serialised.** A driver counts and claims its next trial while it
  holds the study's lock (:func:`mpsearch.execution.lock.study_lock`). It claims only
  while the count is below the target, and the claimed trial is RUNNING, with a
  heartbeat, before the lock is released. So drivers together claim exactly
  ``n_trials`` counted trials. A queued point (an ``enqueue`` baseline, a re-queued
  orphan) is claimed by one driver only: Optuna pops WAITING trials atomically.
- **Liveness is a heartbeat** (:mod:`mpsearch.execution.heartbeat`). A driver renews the
  heartbeat of every trial it runs every ``interval`` seconds. Before each claim,
  the claiming driver fails the RUNNING trials whose heartbeat is older than their
  grace period: their driver is gone. Each is marked FAIL, with the reason in
  ``fail_reason`` and ``orphaned = true``, and re-queued with the same parameters
  (``retry_of`` = its number). A live driver's trials are never touched.
- **A driver returns when the study has its trials and none is RUNNING.** When it
  may claim no more, it waits for the other drivers' RUNNING trials: they finish,
  or go stale and are re-queued, and then it runs the re-queued ones.
  After a ``kill -9``, the next ``study run`` therefore takes over the killed
  driver's trials at most one grace period after its last heartbeat.
- **A driver that stops on an exception, Ctrl-C or SIGTERM** fails and re-queues
  its own trials at once, without waiting for the grace period.
- **A point is re-run at most ``max_retries`` times** (``[resources] max_retries``,
  default 2) after drivers died running it: a trial that kills its driver is not
  re-queued forever. The last orphan records why (``fail_reason``, ``gave_up =
  true``) and counts as a failed trial.
- **Writes that decide a trial's fate happen under the study's lock**: recording a
  result (:func:`mpsearch.execution.tell.tell`) and failing a stale trial both check that
  the trial is RUNNING and write its attributes and state while holding it. So a
  trial ends either COMPLETE with its driver's record or FAIL as an orphan, never a
  mix.

A driver that is alive but silent for longer than the grace period (a stalled
machine) has its trials taken over. When it comes back, its result for such a
trial is dropped with a warning; the re-queued copy is the one that counts.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

from mpsearch.execution.heartbeat import (
    DEFAULT_GRACE,
    DEFAULT_INTERVAL,
    GRACE_ATTR,
    Heartbeat,
    stale_trials,
)
from mpsearch.optuna_private import study_id, study_storage, trial_id
from mpsearch.record import ATTR_DRIVER_LOST as LOST
from mpsearch.record import ATTR_FAIL, ATTR_STRATEGY
from mpsearch.record import ATTR_GAVE_UP as GAVE_UP
from mpsearch.record import ATTR_ORPHAN as ORPHAN
from mpsearch.record import ATTR_RETRY_OF as RETRY_OF
from mpsearch.record import SYSTEM_DRIVER as DRIVER_ATTR
from mpsearch.execution.lock import study_lock

DEFAULT_MAX_RETRIES = 2


def finished_count(study) -> int:
    """Trials that count toward ``n_trials`` and are over: COMPLETE, FAIL for a reason of their
    own, or orphans given up after ``max_retries``."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.COMPLETE
               or (t.state == TrialState.FAIL
                   and (not t.user_attrs.get(ORPHAN) or t.user_attrs.get(GAVE_UP))))


def counted_count(study) -> int:
    """Trials that count toward ``n_trials``: the finished ones and the RUNNING ones."""
    from optuna.trial import TrialState

    return finished_count(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def reconcile(study, grace: float = DEFAULT_GRACE,
              max_retries: int = DEFAULT_MAX_RETRIES) -> list[int]:
    """Fail the RUNNING trials whose driver is gone (stale heartbeat), and re-queue their parameters.

    Call it holding the study's lock (:func:`mpsearch.execution.lock.study_lock`).

    Args:
        grace: the grace period for trials that do not carry their own.
        max_retries: how many times a point whose driver died is re-queued.

    Returns:
        The numbers of the trials that were failed.
    """
    stale = stale_trials(study_storage(study), study_id(study), grace)
    failed = (orphan(study, tid, f"left RUNNING by a driver that stopped ({detail})",
                     max_retries=max_retries)
              for tid, detail in stale.items())
    numbers = [number for number in failed if number is not None]
    _requeue_missing(study)
    return numbers


def _requeue_missing(study) -> None:
    """Re-queue orphans whose retry was never queued (a driver died between the two steps)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    for t in trials:
        if (t.state == TrialState.FAIL and t.user_attrs.get(ORPHAN) and not t.user_attrs.get(GAVE_UP)
                and t.number not in retried):
            _requeue(study, t)


def lost_runs(study, trial) -> int:
    """How many times the point of ``trial`` ran and its driver died: the trial and the
    trials it re-runs (``retry_of``, back to the first) that a dead driver left."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    count, seen, current = 0, set(), trial
    while current is not None and current.number not in seen:
        seen.add(current.number)
        if current.user_attrs.get(LOST):
            count += 1
        previous = current.user_attrs.get(RETRY_OF)
        current = by_number.get(previous) if isinstance(previous, int) else None
    return count


def orphan(study, trial_id: int, reason: str, *,
           max_retries: int | None = DEFAULT_MAX_RETRIES) -> int | None:
    """Fail a RUNNING trial nobody runs any more, with ``reason``, and re-queue its parameters.

    Call it holding the study's lock, so that its driver cannot record it meanwhile.

    Args:
        max_retries: the trial's driver died (its heartbeat went stale): once its point
            has run ``max_retries + 1`` times so, it is failed for good (``gave_up``)
            instead of re-queued. None: its driver stopped on Ctrl-C or an error, and
            the point is always re-queued.

    Returns:
        Its number, or None when the trial was no longer RUNNING (its driver finished it).
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study_storage(study)
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return None
    attrs: dict[str, Any] = {ORPHAN: True}
    outcome = "re-queued with the same parameters"
    if max_retries is not None:
        attrs[LOST] = True
        runs = lost_runs(study, trial) + 1
        if runs > max_retries:
            attrs[GAVE_UP] = True
            outcome = (f"not re-queued: its point ran {runs} time(s) and its driver died each "
                       f"time ([resources] max_retries = {max_retries})")
    try:
        # attributes first: Optuna refuses them on a finished trial
        storage.set_trial_user_attr(trial_id, ATTR_FAIL, f"{reason}; {outcome}")
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return None
    except UpdateFinishedTrialError:
        return None
    if not attrs.get(GAVE_UP):
        _requeue(study, trial)
    return trial.number


def _requeue(study, trial) -> None:
    attrs: dict[str, Any] = {RETRY_OF: trial.number}
    if ATTR_STRATEGY in trial.user_attrs:  # a round-robin trial keeps its strategy
        attrs[ATTR_STRATEGY] = trial.user_attrs[ATTR_STRATEGY]
    # a queued point claimed but not yet sampled has its parameters only as "fixed_params"
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


class Driver:
    """This process's part in running a study: its claims, its heartbeat, its orphans.

    Use as a context manager around the executor. On leaving, trials this driver
    claimed and never finished are failed and re-queued at once, and the heartbeat
    stops.

    Args:
        target: the number of counted trials at which drivers stop claiming.
        interval: seconds between heartbeats.
        grace: seconds without a heartbeat after which a trial's driver counts as gone.
        say: where to tell the user about re-queued trials and waits (None: silent).
        max_retries: how many times a point whose driver died is re-queued.
    """

    def __init__(self, study, target: int, *, interval: float = DEFAULT_INTERVAL,
                 grace: float = DEFAULT_GRACE, say: Callable[[str], None] | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES):
        if not grace > interval > 0:
            from mpsearch.errors import MpsearchError

            raise MpsearchError(f"the grace period ({grace:g} s) must be longer than the heartbeat "
                                f"interval ({interval:g} s), and both positive.")
        self.study = study
        self.target = target
        self.grace = float(grace)
        self.max_retries = int(max_retries)
        self.heartbeat = Heartbeat(study_storage(study), interval)
        self.say = say or (lambda message: None)
        self.requeued: list[int] = []  # trials of stopped drivers this driver failed and re-queued
        self.claimed = 0
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __enter__(self) -> Self:
        self.heartbeat.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):  # SIGTERM too
                reason = "its driver was interrupted"
            elif exc_type is not None:
                reason = f"its driver stopped on {exc_type.__name__}: {exc}"
            else:
                reason = "its driver ended without finishing it"
            self.abandon(reason)
        finally:
            self.heartbeat.stop()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with study_lock(study_storage(self.study), study_id(self.study)):
            numbers = reconcile(self.study, self.grace, self.max_retries)
            if numbers:
                self.requeued += numbers
                dropped = {t.number for t in self.study.get_trials(deepcopy=False)
                           if t.number in numbers and t.user_attrs.get(GAVE_UP)}
                again = [n for n in numbers if n not in dropped]
                if again:
                    self.say(f"re-queued trial(s) {', '.join(map(str, again))} left running by a "
                             f"driver that stopped")
                if dropped:
                    self.say(f"failed trial(s) {', '.join(map(str, sorted(dropped)))} for good: "
                             f"their point ran {self.max_retries + 1} times and its driver died "
                             f"each time ([resources] max_retries)")
            yield

    def count(self) -> int:
        """Counted trials now, after failing stale ones."""
        with self._locked():
            return counted_count(self.study)

    @contextmanager
    def claiming(self) -> Iterator[bool]:
        """Hold the study's lock; yields whether one more trial may be claimed.

        Inside, the caller asks Optuna for the trial and hands it to :meth:`started`
        before the lock is released.
        """
        with self._locked():
            yield counted_count(self.study) < self.target

    def started(self, trial) -> None:
        """Take charge of a trial just asked: who runs it, its grace period, its first heartbeat."""
        storage = study_storage(self.study)
        storage.set_trial_system_attr(trial_id(trial), DRIVER_ATTR, self.name)
        storage.set_trial_system_attr(trial_id(trial), GRACE_ATTR, self.grace)
        self.heartbeat.add(trial_id(trial))
        self.claimed += 1

    def finished(self, trial) -> None:
        """Stop beating for a trial this driver has told (or is about to)."""
        self.heartbeat.discard(trial_id(trial))

    def still_running(self, trial) -> bool:
        """Whether this driver's trial is still RUNNING, so its result may be told.

        False (with a warning) when another driver failed it as stale meanwhile. Ask it
        holding the study's lock, and tell the result before releasing it.
        """
        from optuna.trial import TrialState

        if study_storage(self.study).get_trial(trial_id(trial)).state == TrialState.RUNNING:
            return True
        print(f"mpsearch: trial {trial.number} was failed by another driver because its heartbeat "
              f"was late (more than {self.grace:g} s); its parameters were re-queued, and this "
              f"result is dropped.", file=sys.stderr)
        return False

    def abandon(self, reason: str) -> list[int]:
        """Fail and re-queue the trials this driver claimed and did not finish."""
        numbers = []
        mine = sorted(self.heartbeat.trials())
        if not mine:
            return numbers
        with study_lock(study_storage(self.study), study_id(self.study)):
            for tid in mine:
                number = orphan(self.study, tid, reason, max_retries=None)
                self.heartbeat.discard(tid)
                if number is not None:
                    numbers.append(number)
        return numbers

    def wait_for_others(self) -> bool:
        """Once this driver may claim no more: wait until no trial of the study is RUNNING.

        Returns:
            True when the count fell below the target meanwhile (another driver's trials
            were re-queued), so there is more to run.
        """
        from optuna.trial import TrialState

        told = False
        while True:
            with self._locked():
                if counted_count(self.study) < self.target:
                    return True
                running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return False
            if not told:
                self.say(f"waiting for trial(s) {', '.join(str(t.number) for t in running)} of "
                         f"another driver (a stopped driver's are re-queued {self.grace:g} s after "
                         f"its last heartbeat)")
                told = True
            time.sleep(self.heartbeat.interval)
