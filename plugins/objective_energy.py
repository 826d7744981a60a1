"""The ``energy`` objective: first-order energy per inference at batch 1, in µJ."""

from __future__ import annotations

from mpsearch.api import Energy, hookimpl


@hookimpl
def register_objectives(register):
    register("energy", Energy())
