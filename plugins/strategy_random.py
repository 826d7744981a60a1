"""The ``random`` strategy: random per-layer widths under a cost budget, the best one fine-tuned."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.api import (BUDGET_SLACK, Candidate, ModelProfile, MpsearchError, Param, PrecisionAssignment,
                          SearchResult, Strategy, check_search_space, hookimpl, quantize_at)

REFERENCE_BITS = 8  # the budget is a fraction of the uniform 8-bit assignment's cost


class RandomStrategy(Strategy):
    """Random per-layer bit-widths under a cost budget; the best of a few, briefly fine-tuned, is trained.

    The search-based baseline of HAQ (Wang et al., CVPR 2019) without the agent:
    ``candidates`` assignments are drawn, each weight and each input group at a
    width uniform in ``[min_bits, max_bits]``. A draw whose cost (legalised, on
    the study's first cost objective) exceeds the budget has the widths of
    randomly chosen groups lowered one bit at a time, never below ``min_bits``,
    until it fits, as HAQ does; a budget that even ``min_bits`` everywhere
    exceeds leaves ``min_bits`` everywhere, recorded as over budget. Each
    candidate is a copy of the trial's start (the study's float start) quantized
    at its widths, its clips calibrated, fine-tuned for ``candidate_epochs``
    epochs (not at all with ``[training] epochs = 0``), then scored on the
    validation split. The best (highest validation accuracy; ties: lower cost) is
    quantized again from the start and handed to the shared fine-tuning for the
    trial's ``epochs``, as ``uniform`` is, so the returned model has had the
    training a one-shot strategy gets; the candidates' fine-tuning is the
    search's own cost (it counts in ``epochs_trained``). Each candidate's widths
    and accuracy are recorded (``search_widths``, drawn by ``mpsearch study plot``).

    Parameters (defaults):
        budget: range 0.1-0.6; the cost budget as a fraction of the uniform
            8-bit assignment's cost on the study's first cost objective.
        candidates: integer range 4-8; assignments drawn and fine-tuned.
        candidate_epochs: fixed 0.25; fine-tuning per candidate (fractions train
            part of an epoch).
        min_bits, max_bits: fixed 2 and 8.
        quantizer: fixed ``"dorefa-pact"``, or ``"minmax"``.

    Deviation from HAQ: HAQ lowers the layers' widths in turn; here the group
    lowered is drawn at random, so repeated draws do not all end alike.
    """

    label = "random"
    resumable = True
    post_training = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "budget": Param(low=0.1, high=0.6),
        "candidates": Param(low=4, high=8, integer=True),
        "candidate_epochs": Param(value=0.25),
        "min_bits": Param(value=2),
        "max_bits": Param(value=8),
        "quantizer": Param(value="dorefa-pact"),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names, non-positive budgets or epochs, and widths outside 1-32 or crossed."""
        super().check_space(space, where)
        check_search_space({**cls.parameters, **space}, where,
                           numbers={"budget": (lambda v: v > 0, "a positive number"),
                                    "candidate_epochs": (lambda v: v > 0, "a positive number")},
                           integers=(("candidates", 1, None),))

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        p = self.resolve(params)
        if not context.objectives:
            raise MpsearchError("strategy 'random' needs a cost objective for its budget; add one "
                                "to [study] objectives.")
        name = next(iter(context.objectives))
        objective = context.objectives[name]

        def cost(legal: PrecisionAssignment) -> float:
            return objective.evaluate(context.profile, legal, context.backend)

        reference = cost(context.legalise(
            PrecisionAssignment.uniform(context.profile, REFERENCE_BITS, REFERENCE_BITS)))
        budget = float(p["budget"]) * reference
        start = context.model
        # Drawn before any candidate trains, so the widths do not depend on the
        # training's own draws from the same generator.
        drawn = [sample_under_budget(context.profile, budget, cost, context.legalise,
                                     context.generator, min_bits=p["min_bits"], max_bits=p["max_bits"])
                 for _ in range(p["candidates"])]
        accuracies = []
        for candidate in drawn:
            model = candidate_model(context, start, candidate.assignment, p["quantizer"])
            if context.epochs > 0:  # post-training (epochs = 0): scored as calibrated, untrained
                context.fit(model, p["candidate_epochs"], report=False, phase="candidate")
            accuracies.append(context.evaluate(model))
            del model
        # max() keeps the first of equals: ties on accuracy and cost go to the earlier draw.
        best = max(range(len(drawn)), key=lambda i: (accuracies[i], -drawn[i].cost))
        model = candidate_model(context, start, drawn[best].assignment, p["quantizer"])
        attrs = {
            "budget": budget, "budget_fraction": float(p["budget"]), "budget_objective": name,
            "budget_unit": objective.unit, "reference_cost": reference,
            "n_candidates": len(drawn), "best_candidate": best,
            "over_budget": sum(not c.fits for c in drawn),
            "candidates": [{"cost": c.cost, "val_accuracy": a, "fits": c.fits}
                           for c, a in zip(drawn, accuracies)],
            "search_widths": {"step": "candidate", "score_name": "val_accuracy", "best": best,
                              "groups": {g: [int(c.assignment[g]) for c in drawn]
                                         for g in drawn[0].assignment},
                              "score": accuracies},
        }
        return SearchResult(model, drawn[best].assignment, float(context.epochs), attrs)


def candidate_model(context, start: nn.Module, assignment: PrecisionAssignment, family: str) -> nn.Module:
    """A copy of the trial's start quantized at ``assignment``, its ranges calibrated."""
    model = quantize_at(copy.deepcopy(start), context.profile, assignment, family)
    context.calibrate(model)
    return model


def sample_under_budget(profile: ModelProfile, budget: float,
                        cost: Callable[[PrecisionAssignment], float],
                        legalise: Callable[[PrecisionAssignment], PrecisionAssignment],
                        generator: torch.Generator, *, min_bits: int = 2,
                        max_bits: int = 8) -> Candidate:
    """Draw one assignment with random widths and lower them until its cost fits ``budget``.

    Args:
        budget: in the unit of ``cost``.
        cost: the cost of a legal assignment.
        legalise: the backend's legalisation (rounds widths up).
        generator: every draw comes from it, so a seed gives the same candidate.

    Returns:
        The legal assignment; ``fits`` is False when even ``min_bits`` everywhere
        exceeds the budget (the assignment is then ``min_bits`` everywhere, legalised).
    """
    base = PrecisionAssignment.uniform(profile, max_bits, max_bits)
    groups = list(base)
    bits = torch.randint(min_bits, max_bits + 1, (len(groups),), generator=generator).tolist()
    limit = budget * (1 + BUDGET_SLACK)
    # Every pass lowers one width by one bit, so the loop ends within
    # len(groups) * (max_bits - min_bits) passes.
    while True:
        legal = legalise(base.replace(dict(zip(groups, bits))))
        value = cost(legal)
        if value <= limit:
            return Candidate(legal, value, True)
        lowerable = [i for i, b in enumerate(bits) if b > min_bits]
        if not lowerable:
            return Candidate(legal, value, False)
        bits[lowerable[int(torch.randint(len(lowerable), (1,), generator=generator))]] -= 1


@hookimpl
def register_strategies(register):
    register("random", RandomStrategy)
