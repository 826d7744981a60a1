"""The ``latency`` objective: time per inference at batch 1 relative to the backend's baseline."""

from __future__ import annotations

from mpsearch.api import Latency, hookimpl


@hookimpl
def register_objectives(register):
    register("latency", Latency())
