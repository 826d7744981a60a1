"""The one path by which every executor tells a trial's result to the study.

Local, Ray and plugin executors all end a trial here, so a trial's record does not
depend on where it ran. Under the study's lock (where other drivers fail stale
trials), :func:`tell`:

1. checks that the trial is still RUNNING for this driver; if another driver failed
   it as stale meanwhile, the result is dropped with a warning (the re-queued copy
   is the one that counts) and nothing is written;
2. writes the trial's attributes in their JSON form (:func:`mpsearch.record.json_safe`)
   and registers its artefacts with Optuna's artifact store;
3. checks that every objective has a finite value: a missing or non-finite one ends
   the trial FAIL, with the reason in ``fail_reason``;
4. tells Optuna COMPLETE with the values in the objectives' order, or FAIL;
5. stops the trial's heartbeat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Literal, NamedTuple

from mpsearch.optuna_private import study_id, study_storage
from mpsearch.record import ATTR_FAIL, json_safe
from mpsearch.execution.lock import study_lock

NO_REASON = "the trial failed without a reason"


class Told(NamedTuple):
    """What :func:`tell` stored: the state, and the values when COMPLETE (objective -> value)."""

    state: Literal["COMPLETE", "FAIL", "DROPPED"]
    values: dict[str, float] | None


def tell(study: Any, trial: Any, objectives: Sequence[str], values: Mapping[str, Any] | None,
         attrs: Mapping[str, Any], *, driver: Any = None, reason: str | None = None) -> Told:
    """Record a finished trial: its attributes, then COMPLETE with its values, or FAIL.

    Args:
        trial: the ``optuna.Trial`` the executor claimed (RUNNING).
        objectives: the study's objective names, in the order of its directions.
        values: objective name -> value, or None when the trial failed.
        attrs: the trial's record (:mod:`mpsearch.record` names), JSON-safe or not.
        driver: the :class:`~mpsearch.execution.driver.Driver` that claimed the trial;
            None only outside a driver (tests), where no lock is taken.
        reason: why the trial failed when ``attrs`` carries no ``fail_reason``.
    """
    from optuna.trial import TrialState

    lock = study_lock(study_storage(study), study_id(study)) if driver is not None else nullcontext()
    with lock:
        if driver is not None and not driver.still_running(trial):
            driver.finished(trial)
            return Told("DROPPED", None)
        for key, value in json_safe(dict(attrs)).items():
            trial.set_user_attr(key, value)
        from mpsearch.artifacts import (
            register_trial_artefacts,  # listed by Optuna Dashboard
        )

        register_trial_artefacts(study, trial, dict(attrs))
        ordered, reason = checked_values(objectives, values, attrs, reason)
        if ordered is None:
            trial.set_user_attr(ATTR_FAIL, reason)
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, ordered)
        if driver is not None:
            driver.finished(trial)
    if ordered is None:
        return Told("FAIL", None)
    return Told("COMPLETE", dict(zip(objectives, ordered)))


def checked_values(objectives: Sequence[str], values: Mapping[str, Any] | None,
                   attrs: Mapping[str, Any], reason: str | None = None
                   ) -> tuple[list[float] | None, str]:
    """The values in the objectives' order, or None with the reason the trial failed."""
    if values is None:
        return None, reason or attrs.get(ATTR_FAIL) or NO_REASON
    ordered = [values.get(n) for n in objectives]
    if not all(_finite(v) for v in ordered):
        return None, f"objective values missing or not finite: {dict(values)}"
    return ordered, ""


def _finite(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(value)
    except TypeError:  # not a number
        return False
