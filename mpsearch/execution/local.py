"""The ``local`` executor: trials in the driver's process, one after another (no Ray)."""

from __future__ import annotations

import sys

from mpsearch.execution.base import Execution, Executor
from mpsearch.execution.progress import Progress
from mpsearch.execution.space import define_space


class LocalExecutor(Executor):
    """Claims and runs trials one after another in this process until the driver may claim no more.

    ``run_trial`` runs in the driver's process, with ``[resources] cpus_per_trial``
    threads; the driver's heartbeat thread keeps the trial alive meanwhile.
    """

    def run(self, execution: Execution) -> dict[str, float]:
        from mpsearch.trial import run_trial

        spec, progress = execution.spec, execution.progress
        space = define_space(spec, execution.host)
        display = progress if progress is not None else Progress(execution.remaining)
        while (trial := self.claim(execution)) is not None:
            drawn = space(trial)
            display.running += 1
            if progress is not None:
                display.show()

            def reporter(epoch: int, metrics: dict, _trial=trial) -> None:
                if progress is not None:
                    display.detail = f"| trial {_trial.number} epoch {epoch}"
                    display.show()

            outcome = run_trial(spec, trial.number, drawn["strategy"], drawn["params"],
                                artefacts=execution.artefacts,
                                threads=int(spec.resources.cpus_per_trial), reporter=reporter,
                                resume_from=self.resume_from(execution, trial),
                                plugins=execution.host.sources)  # what the spec was checked with
            self.tell(execution, trial, outcome.values, outcome.attrs)
            display.finished(outcome.values)
            display.detail = ""
            if progress is not None:
                display.show(event=True)
        if progress is not None and sys.stderr.isatty():
            sys.stderr.write("\n")
        return {}
