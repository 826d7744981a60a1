"""Every hook a plugin can implement.

Plugins implement these with ``@mpsearch.hookimpl``. Registration hooks receive a
``register`` callback so that the host owns naming, duplicate detection and error
messages; each is called once per plugin when the host loads, and its return
value is ignored. Lifecycle hooks are notifications: every implementation is
called, in no guaranteed order, and return values are ignored. They may run in
a Ray worker process, so they receive plain values, never live objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from mpsearch.backends import Backend
    from mpsearch.data import DatasetSource
    from mpsearch.execution.base import Executor
    from mpsearch.models import ModelSpec
    from mpsearch.objectives import Objective
    from mpsearch.strategy import Strategy

PROJECT = "mpsearch"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_strategies(register: Callable[[str, type[Strategy]], None]) -> None:
    """Register precision-search strategies.

    Call ``register(name, StrategySubclass)`` once per strategy. The class must
    subclass :class:`mpsearch.strategy.Strategy`.
    """


@hookspec
def register_objectives(register: Callable[[str, Objective], None]) -> None:
    """Register cost objectives.

    Call ``register(name, objective)`` with an instance of
    :class:`mpsearch.objectives.Objective`. The same class may be registered
    under several names with different settings (e.g. memory at batch 1 and 128).
    """


@hookspec
def register_backends(register: Callable[[str, Backend], None]) -> None:
    """Register accelerator backends.

    Call ``register(name, backend)`` with an instance of
    :class:`mpsearch.backends.Backend`. The host then registers the backend's own
    ``latency@<name>`` and ``energy@<name>`` objectives, in this plugin's name.
    """


@hookspec
def register_models(register: Callable[[str, ModelSpec], None]) -> None:
    """Register model builders.

    Call ``register(name, ModelSpec(...))``. Names may carry a namespace
    (``"torchvision:resnet18"``).
    """


@hookspec
def register_datasets(register: Callable[[str, DatasetSource], None]) -> None:
    """Register datasets.

    Call ``register(name, source)`` with an instance of
    :class:`mpsearch.data.DatasetSource`.
    """


@hookspec
def register_executors(register: Callable[[str, type[Executor]], None]) -> None:
    """Register executors: where and how a study's trials run (``[resources] executor``,
    ``--executor``).

    Call ``register(name, ExecutorSubclass)`` once per executor. The class must
    subclass :class:`mpsearch.execution.base.Executor` and keep the contract its
    docstring states (check it with :mod:`mpsearch.testing.executors`); it is
    constructed without arguments, once per run, in the driver's process.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``mpsearch`` command group.

    Called once when the command line starts, after the built-in commands exist;
    use ``@cli.command()`` or ``cli.add_command(...)``. A name that clashes with
    an existing command is an error.
    """


@hookspec
def on_trial_start(study: str, trial: int, params: Mapping[str, Any]) -> None:
    """Called when a trial starts, in the process that runs it.

    Args:
        study: the study's name.
        trial: the trial's number in the study.
        params: the hyperparameters Optuna proposed (strategy included).
    """


@hookspec
def on_epoch_end(study: str, trial: int, epoch: int, metrics: Mapping[str, float]) -> None:
    """Called after every training epoch of a trial, in the process that runs it.

    Args:
        epoch: 0-based index of the epoch that ended.
        metrics: what the strategy reported (loss, accuracy, average bits, ...).
    """


@hookspec
def on_trial_end(study: str, trial: int, state: str, values: Mapping[str, float],
                 attrs: Mapping[str, Any]) -> None:
    """Called when a trial ends, in the process that ran it.

    Args:
        state: ``"COMPLETE"`` or ``"FAIL"``.
        values: objective name -> value (empty when the trial failed).
        attrs: everything else recorded on the trial (test accuracy, timings,
            the failure's message).
    """
