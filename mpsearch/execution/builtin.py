"""The built-in executors, registered as an ordinary plugin (one of the host's ``DEFAULT_PLUGINS``)."""

from __future__ import annotations

from mpsearch.execution.local import LocalExecutor
from mpsearch.execution.ray_tune import RayExecutor
from mpsearch.hookspecs import hookimpl


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
    register("ray", RayExecutor)
