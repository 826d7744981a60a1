"""Every use of Optuna's and Ray's private internals, in one place.

mpsearch needs a few things neither library offers publicly: a study's storage
and id (to lock it and to fail its stale trials), a trial's storage id, the
``RDBStorage`` behind the cache a ``Study`` wraps it in, Optuna's heartbeat
table, and the trials and study that Ray's ``OptunaSearch`` keeps. Each access
is one function here with one test in ``tests/host/test_optuna_private.py``, and
``pyproject.toml`` pins ``optuna>=5,<6`` and ``ray[tune]>=2.60,<3``, so an
upgrade that moves one of them fails in one place. Nothing here imports Optuna
or Ray at import time.
"""

from __future__ import annotations

from typing import Any


def study_storage(study: Any) -> Any:
    """The storage object of an ``optuna.Study`` (``Study._storage``)."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage's id of an ``optuna.Study`` (``Study._study_id``)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of an ``optuna.Trial`` or ``FrozenTrial`` (``_trial_id``)."""
    return trial._trial_id


def rdb_storage(storage: Any) -> Any:
    """The ``RDBStorage`` itself, also behind the ``_CachedStorage`` a ``Study`` wraps it in."""
    return getattr(storage, "_backend", storage)


def heartbeat_table() -> Any:
    """The SQLAlchemy table of Optuna's trial heartbeats (``optuna.storages._rdb.models``)."""
    from optuna.storages._rdb import models

    return models.TrialHeartbeatModel.__table__


def searcher_trials(searcher: Any) -> dict[str, Any]:
    """Ray Tune trial id -> the ``optuna.Trial`` that ``OptunaSearch`` asked for it (``_ot_trials``)."""
    return searcher._ot_trials


def searcher_study(searcher: Any) -> Any:
    """The ``optuna.Study`` that ``OptunaSearch`` asks and tells (``_ot_study``)."""
    return searcher._ot_study


def searcher_completed(searcher: Any) -> set[str]:
    """The Ray Tune trial ids ``OptunaSearch`` has told its study about (``_completed_trials``)."""
    return searcher._completed_trials


def searcher_study_name(searcher: Any) -> str:
    """The name of the study ``OptunaSearch`` was given (``_study_name``)."""
    return searcher._study_name


# What an ``OptunaSearch`` holds that leads to the storage (and its URL, password included):
# never pickled with Ray's tuner.
SEARCHER_STORAGE_ATTRS = ("_storage", "_ot_study", "_ot_trials")
