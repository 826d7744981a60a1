"""Which trials still have a live driver: heartbeats, and the query for stale trials.

A *driver* is one ``mpsearch study run`` (or ``create``) process. While it runs
trials, a background thread of the driver records a heartbeat for each of them
every ``interval`` seconds, in Optuna's own ``trial_heartbeats`` table
(``RDBStorage.record_heartbeat``, stamped by the database's clock). The driver
stores each trial's grace period with the trial (the system attribute
``mpsearch:grace``), so drivers started with different settings judge each
other's trials by the owner's settings.

A RUNNING trial is *stale*, meaning its driver is gone, when its last heartbeat is
older than its grace period, or, if it never had one (its driver died between
claiming it and the first heartbeat, or was not mpsearch), when it started longer
ago than the grace period. Heartbeat ages are measured by the database's clock.
A trial without a heartbeat is measured by its start time, which Optuna stamps
with the clock of the machine that claimed it.

Optuna's own heartbeat option (``RDBStorage(heartbeat_interval=...)``) is made
for ``Study.optimize``, and it warns on every ``ask``. Its stale query also
ignores trials that never had a heartbeat. So this module keeps Optuna's table
and uses a query of its own.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Self

from mpsearch.record import SYSTEM_GRACE

DEFAULT_INTERVAL = 2.0
DEFAULT_GRACE = 10.0
GRACE_ATTR = SYSTEM_GRACE  # the trial's grace period, stored with it


class Heartbeat:
    """A thread that keeps the heartbeats of the trials this driver runs.

    ``add`` records a first heartbeat at once, in the caller's thread, so a claimed
    trial is never without one. The thread then renews every added trial each
    ``interval`` seconds until ``discard`` or ``stop``. A failed write (the database
    briefly unreachable) is kept in ``error`` and retried at the next beat. It does
    not stop the driver: if the database stays away longer than the grace period,
    the trials turn stale, and another driver fails and re-queues them.
    """

    def __init__(self, storage: Any, interval: float = DEFAULT_INTERVAL):
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be positive, not {interval!r}")
        self.storage = storage
        self.interval = float(interval)
        self.error: Exception | None = None
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)
        with self._lock:
            self._trials.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._trials.discard(trial_id)

    def trials(self) -> set[int]:
        """The trial ids this driver is running."""
        with self._lock:
            return set(self._trials)

    def start(self) -> Self:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="mpsearch-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.trials():
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001 - retried at the next beat
                    self.error = exc


def stale_trials(storage: Any, study_id: int, grace: float = DEFAULT_GRACE) -> dict[int, str]:
    """The RUNNING trials of a study whose driver is gone: trial id -> what shows it.

    Args:
        grace: the grace period (seconds) for trials that do not carry their own.
    """
    import sqlalchemy
    from optuna.trial import TrialState

    from mpsearch.optuna_private import heartbeat_table, rdb_storage, trial_id

    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return {}
    table = heartbeat_table()
    with rdb_storage(storage).engine.connect() as conn:
        now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        beats = dict(conn.execute(sqlalchemy.select(table.c.trial_id, table.c.heartbeat)
                                  .where(table.c.trial_id.in_([trial_id(t) for t in running]))).all())
    now = _naive(now)
    stale = {}
    for trial in running:
        own = trial.system_attrs.get(GRACE_ATTR)
        limit = float(own) if isinstance(own, (int, float)) and own > 0 else grace
        beat = beats.get(trial_id(trial))
        if beat is not None:
            age = (now - _naive(beat)).total_seconds()
            if age > limit:
                stale[trial_id(trial)] = f"no heartbeat for {age:.0f} s, grace period {limit:g} s"
        elif trial.datetime_start is not None:
            age = (datetime.now() - trial.datetime_start).total_seconds()
            if age > limit:
                stale[trial_id(trial)] = (f"started {age:.0f} s ago without a heartbeat, "
                                          f"grace period {limit:g} s")
    return stale


def _naive(moment: Any) -> datetime:
    """A database timestamp as a naive datetime. Stored heartbeats are naive in the session's
    time zone, and so is ``now()`` once its zone is dropped (as Optuna does for PostgreSQL)."""
    if isinstance(moment, str):  # SQLite without type information
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=None)


__all__ = ["DEFAULT_GRACE", "DEFAULT_INTERVAL", "GRACE_ATTR", "Heartbeat", "stale_trials"]
