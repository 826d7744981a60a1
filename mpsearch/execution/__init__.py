"""Running a study's trials: executors behind one base class, the driver, heartbeats, the tell path.

- :mod:`~mpsearch.execution.base`: :class:`Executor`, the contract every executor keeps,
  and :class:`Execution`, what it is given.
- :mod:`~mpsearch.execution.local` (``local``: in the driver's process) and
  :mod:`~mpsearch.execution.ray_tune` (``ray``: Ray Tune trials), registered by
  :mod:`~mpsearch.execution.builtin`; plugins add more with ``register_executors``.
- :mod:`~mpsearch.execution.driver`: claims, orphans and re-queues;
  :mod:`~mpsearch.execution.heartbeat`: which trials still have a live driver.
- :mod:`~mpsearch.execution.tell`: the one path by which a result reaches the study;
  :mod:`~mpsearch.execution.lock`: the study's lock it and the driver hold.
- :mod:`~mpsearch.execution.space`: the sampler and the define-by-run search space;
  :mod:`~mpsearch.execution.progress`: the live progress line.

Importing this package imports neither Optuna, Ray nor torch.
"""

from mpsearch.execution.base import Execution, Executor

__all__ = ["Execution", "Executor"]
