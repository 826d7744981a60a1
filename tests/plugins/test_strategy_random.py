"""The ``random`` strategy: conformance, the budget, the lowering loop, the best candidate returned."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.assignment import PrecisionAssignment
from mpsearch.backends import Backend
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.api import BUDGET_SLACK
from mpsearch.plugins.strategy_random import RandomStrategy, sample_under_budget
from mpsearch.spec import Param, SpecError
from mpsearch.testing.strategies_suite import StrategyTestCase

PARAMS = {"budget": 0.5, "candidates": 3, "candidate_epochs": 0.25}

HOST = PluginHost(entry_points=False)
PROFILE = model_profile(HOST.models.get("lenet5"), 10, (1, 28, 28))
BITOPS = HOST.objectives.get("bitops")
GENERIC = HOST.backends.get("generic")


class TestRandomConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "random"

    @pytest.fixture
    def params(self):
        return PARAMS

    @pytest.fixture
    def stronger_params(self):
        return {**PARAMS, "budget": 0.1}

    @pytest.fixture
    def weaker_params(self):
        return PARAMS

    def test_every_candidate_respects_the_budget(self, trial):
        attrs = trial.outcome.attrs
        assert attrs["budget_objective"] == "bitops" and attrs["budget_unit"] == "GBitOPs"
        assert attrs["budget"] == pytest.approx(0.5 * attrs["reference_cost"])
        # LeNet-5 at 8 bits everywhere: the uniform reference must be its real BitOPs.
        assert attrs["reference_cost"] == pytest.approx(
            BITOPS.evaluate(PROFILE, PrecisionAssignment.uniform(PROFILE, 8, 8)))
        assert attrs["n_candidates"] == len(attrs["candidates"]) == 3
        assert attrs["over_budget"] == 0
        for c in attrs["candidates"]:
            assert c["fits"] and c["cost"] <= attrs["budget"] * (1 + BUDGET_SLACK)
        assert trial.cost("bitops") <= attrs["budget"] * (1 + BUDGET_SLACK)

    def test_the_best_candidate_is_the_one_returned(self, trial):
        attrs = trial.outcome.attrs
        accuracies = [c["val_accuracy"] for c in attrs["candidates"]]
        best = attrs["candidates"][attrs["best_candidate"]]
        assert best["val_accuracy"] == max(accuracies)
        assert trial.cost("bitops") == pytest.approx(best["cost"], rel=1e-12)
        # Distinct draws: a cost match would be luck if the candidates were all alike.
        assert len({c["cost"] for c in attrs["candidates"]}) > 1

    def test_the_most_accurate_candidate_is_chosen(self, run_strategy_trial, spec_dict):
        # Post-training, eight candidates: their accuracies spread, and the search must pick
        # the most accurate, which here is neither the first draw nor the cheapest nor the
        # costliest, so a choice that ignored accuracy would fail. The host quantizes the
        # chosen widths afresh and calibrates them: it must score what the search scored.
        raw = json.loads(json.dumps(spec_dict))
        raw["training"]["epochs"] = 0
        done = run_strategy_trial(raw, "random", {"budget": 0.2, "candidates": 8})
        assert not done.outcome.failed, done.outcome.attrs.get("fail_reason")
        attrs = done.outcome.attrs
        accuracies = [c["val_accuracy"] for c in attrs["candidates"]]
        costs = [c["cost"] for c in attrs["candidates"]]
        best = attrs["best_candidate"]
        assert accuracies[best] == max(accuracies)
        assert max(accuracies) - min(accuracies) > 0.05
        assert best != 0 and costs[best] not in (min(costs), max(costs))
        assert done.outcome.values["accuracy"] == accuracies[best]
        widths = attrs["search_widths"]
        assert widths["best"] == best and widths["score"] == accuracies
        assert all(len(v) == 8 for v in widths["groups"].values())

    def test_all_training_is_counted(self, trial):
        # 1,000 images at batch 64: 16 steps an epoch, so a quarter epoch is exactly 4 steps.
        # The trial's 1 epoch of fine-tuning, plus the search's own cost, 3 candidates x 0.25.
        assert trial.outcome.attrs["epochs_trained"] == pytest.approx(1.75)

    def test_candidates_train_silently_and_the_rest_reports(self, trial):
        phases = [row["phase"] for row in trial.outcome.attrs["history"]]
        assert phases == ["finetune"]


def _cost(legal):
    return BITOPS.evaluate(PROFILE, legal, GENERIC)


REFERENCE = _cost(PrecisionAssignment.uniform(PROFILE, 8, 8))


class PowersOfTwo(Backend):
    """Rounds widths up to 2, 4 or 8: lowering a width often changes nothing."""

    weight_bits = (2, 4, 8)
    activation_bits = (2, 4, 8)

    def layer_costs(self, profile, assignment):  # pragma: no cover - not used here
        raise NotImplementedError


def _widths(assignment):
    return [int(assignment[g]) for g in assignment]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), fraction=st.floats(0.07, 1.2),
       powers=st.booleans(), min_bits=st.integers(1, 3))
def test_sampling_fits_the_budget_within_min_and_max_bits(seed, fraction, powers, min_bits):
    backend = PowersOfTwo() if powers else GENERIC
    budget = fraction * REFERENCE
    c = sample_under_budget(PROFILE, budget, _cost, backend.legalise,
                            torch.Generator().manual_seed(seed), min_bits=min_bits, max_bits=8)
    assert backend.is_legal(c.assignment)
    assert c.cost == _cost(c.assignment)
    assert all(min_bits <= b <= 8 for b in _widths(c.assignment))
    floor = _cost(backend.legalise(PrecisionAssignment.uniform(PROFILE, min_bits, min_bits)))
    if budget >= floor:
        assert c.fits and c.cost <= budget * (1 + BUDGET_SLACK)
    else:
        assert not c.fits


@pytest.mark.parametrize("budget", [0.0, 0.01 * REFERENCE])
def test_an_impossible_budget_ends_at_min_bits_everywhere(budget):
    # 2 bits everywhere costs 1/16 of 8 bits everywhere: 1% cannot be met.
    c = sample_under_budget(PROFILE, budget, _cost, GENERIC.legalise,
                            torch.Generator().manual_seed(3), min_bits=2, max_bits=8)
    assert not c.fits
    assert _widths(c.assignment) == [2] * len(c.assignment)
    assert c.cost == pytest.approx(REFERENCE / 16)


def test_a_generous_budget_keeps_the_random_draw():
    c = sample_under_budget(PROFILE, REFERENCE, _cost, GENERIC.legalise,
                            torch.Generator().manual_seed(5), min_bits=2, max_bits=8)
    expected = torch.randint(2, 9, (len(c.assignment),), generator=torch.Generator().manual_seed(5))
    assert c.fits and _widths(c.assignment) == expected.tolist()
    assert len(set(_widths(c.assignment))) > 1


def test_a_seed_gives_the_same_candidate():
    draws = [sample_under_budget(PROFILE, 0.2 * REFERENCE, _cost, GENERIC.legalise,
                                 torch.Generator().manual_seed(11)) for _ in range(2)]
    assert draws[0].assignment == draws[1].assignment
    other = sample_under_budget(PROFILE, 0.2 * REFERENCE, _cost, GENERIC.legalise,
                                torch.Generator().manual_seed(12))
    assert other.assignment != draws[0].assignment


@pytest.mark.parametrize("space, message", [
    ({"min_bits": Param(value=6), "max_bits": Param(choices=(4, 8))}, "min_bits can exceed max_bits"),
    ({"budget": Param(value=0)}, "positive number"),
    ({"candidates": Param(low=1.5, high=4.0)}, "integer low and high"),
    ({"max_bits": Param(value=33)}, "integer 1-32"),
    ({"quantizer": Param(value="pact")}, "not a quantizer family"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        RandomStrategy.check_space(space, "spec: strategy[0].space")


def test_missing_parameter_is_named():
    with pytest.raises(MpsearchError, match="needs parameter\\(s\\) budget"):
        RandomStrategy.resolve({"candidates": 2})
    assert RandomStrategy.resolve({"budget": 0.3, "candidates": 2})["min_bits"] == 2
