"""A strategy plugin that fails in the ways real ones do, on demand (tests only).

``behaviour``: ``ok`` trains a uniform network for a fraction of an epoch;
``raise`` raises in the middle of training (after the first epoch's metrics);
``oom`` raises :class:`torch.OutOfMemoryError` as an exhausted device does;
``hold`` creates the file ``<hold>.holding``, then waits, before training, while
the file ``hold`` names exists (at most 60 s), so that a test can interrupt a trial
that is surely inside its strategy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import torch

from mpsearch import hookimpl
from mpsearch.assignment import PrecisionAssignment
from mpsearch.quant import quantize_at
from mpsearch.spec import Param
from mpsearch.strategy import SearchResult, Strategy

MID_TRIAL = "the flaky strategy broke in the middle of its trial"


class Flaky(Strategy):
    """Uniform 4-bit widths trained for a fraction of an epoch, or one of the failures above."""

    parameters: ClassVar[Mapping[str, Param]] = {
        "behaviour": Param(choices=("ok", "raise", "oom", "hold")),
        "fraction": Param(value=1.0),  # one epoch: above chance, or the trial FAILs as diverged
        "hold": Param(value=""),
    }

    def search(self, context, params):
        if params["behaviour"] == "hold":
            if params["hold"]:  # tells the test that this trial is inside its strategy
                Path(f"{params['hold']}.holding").touch()
            deadline = time.monotonic() + 60
            while params["hold"] and Path(params["hold"]).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if params["behaviour"] == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                         "(simulated by the flaky test strategy)")
        a = context.legalise(PrecisionAssignment.uniform(context.profile, 4, 4))
        model = quantize_at(context.model, context.profile, a, "minmax")

        def on_epoch(epoch: int) -> dict:
            if params["behaviour"] == "raise":
                raise ValueError(MID_TRIAL)
            return {}

        context.fit(model, params["fraction"], on_epoch=on_epoch)
        return SearchResult(model, a, 0.0, {})


@hookimpl
def register_strategies(register):
    register("flaky", Flaky)
