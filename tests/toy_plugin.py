"""A throwaway strategy plugin for the study tests: quick, and able to fail on demand."""

from __future__ import annotations

import time

import torch

from mpsearch import hookimpl
from mpsearch.assignment import PrecisionAssignment
from mpsearch.quant import quantize_at
from mpsearch.spec import Param
from mpsearch.strategy import SearchResult, Strategy


class Toy(Strategy):
    """Uniform widths trained for a fraction of an epoch; fails on demand (tests only)."""

    parameters = {
        "bits": Param(choices=(2, 4, 8)),
        "fraction": Param(value=1.0),  # one epoch: above chance, or the trial FAILs as diverged
        "behaviour": Param(value="ok"),  # ok | raise | nan | slow | chance
    }

    def search(self, context, params):
        if params["behaviour"] == "raise":
            raise RuntimeError("the toy strategy was told to raise")
        if params["behaviour"] == "slow":
            time.sleep(30)
        a = context.legalise(PrecisionAssignment.uniform(context.profile, params["bits"], params["bits"]))
        model = quantize_at(context.model, context.profile, a, "minmax")
        extra = (lambda: torch.tensor(float("nan"))) if params["behaviour"] == "nan" else None
        context.fit(model, params["fraction"], extra_loss=extra)  # the whole trial: no fine-tuning
        if params["behaviour"] == "chance":  # collapsed: the same logits, so one class, for every image
            with torch.no_grad():
                model.fc2.weight.zero_()
                model.fc2.bias.zero_()
        return SearchResult(model, a, 0.0, {"toy": True})


@hookimpl
def register_strategies(register):
    register("toy", Toy)
