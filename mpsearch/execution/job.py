"""One trial as plain values, for executors that run ``run_trial`` in another process.

A :class:`TrialJob` pickles (the spec as a dict, the plugins as their pinned sources),
so a process pool, a batch system or a remote worker can run :func:`run_job` and
send back ``(values, attrs)``, which the executor tells in the driver's process
through :meth:`mpsearch.execution.base.Executor.tell`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpsearch.record import json_safe


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs to run one claimed trial (all plain, picklable values)."""

    spec: dict[str, Any]
    number: int
    strategy: str
    params: dict[str, Any]
    artefacts: str
    threads: int
    resume_from: str | None
    plugins: tuple[str, ...]

    @classmethod
    def of(cls, execution: Any, trial: Any, drawn: dict[str, Any]) -> TrialJob:
        """The job of a trial just claimed and drawn (``define_space(...)(trial)``)."""
        from mpsearch.execution.base import Executor

        resume = Executor.resume_from(execution, trial)
        spec = execution.spec
        return cls(spec.to_dict(), trial.number, drawn["strategy"], dict(drawn["params"]),
                   str(execution.artefacts), max(1, int(spec.resources.cpus_per_trial)),
                   None if resume is None else str(resume), tuple(execution.host.sources))


def run_job(job: TrialJob) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """Run a trial in this process (any process); returns its values (None: failed) and record."""
    from pathlib import Path

    from mpsearch.spec import parse_spec
    from mpsearch.trial import run_trial

    spec = parse_spec(job.spec, source="study spec")
    outcome = run_trial(spec, job.number, job.strategy, job.params, artefacts=Path(job.artefacts),
                        threads=job.threads,
                        resume_from=None if job.resume_from is None else Path(job.resume_from),
                        plugins=job.plugins)
    return outcome.values, json_safe(outcome.attrs)
