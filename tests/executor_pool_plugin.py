"""A throwaway executor plugin for the tests: trials in a ``concurrent.futures`` process pool.

It keeps the executor contract with the helpers every executor has: it claims through
the driver (:meth:`Executor.claim`), runs each trial as a picklable
:class:`~mpsearch.execution.job.TrialJob` in a worker process, and tells every result
in the driver's process through the one tell path (:meth:`Executor.tell`).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from mpsearch.api import Execution, Executor, TrialJob, define_space, hookimpl, run_job


class PoolExecutor(Executor):
    """Up to ``[resources] max_concurrent`` trials at once, each in a worker of a process pool."""

    def run(self, execution: Execution) -> dict[str, float]:
        space = define_space(execution.spec, execution.host)
        workers = max(1, execution.spec.resources.max_concurrent)
        running: dict = {}  # future -> its claimed trial
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            more = True
            while more or running:
                while more and len(running) < workers:
                    trial = self.claim(execution)
                    if trial is None:
                        more = False
                        break
                    running[pool.submit(run_job, TrialJob.of(execution, trial, space(trial)))] = trial
                done, _ = wait(running, return_when=FIRST_COMPLETED) if running else ((), ())
                for future in done:
                    trial = running.pop(future)
                    try:
                        values, attrs = future.result()
                    except Exception as exc:  # noqa: BLE001 - the worker died: the trial FAILs
                        self.tell(execution, trial, None, {},
                                  reason=f"its worker process failed: {type(exc).__name__}: {exc}")
                        continue
                    self.tell(execution, trial, values, attrs)
        return {}


@hookimpl
def register_executors(register):
    register("pool", PoolExecutor)
