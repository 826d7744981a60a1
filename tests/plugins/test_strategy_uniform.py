"""The ``uniform`` strategy: conformance, exact widths, its conditional space, accuracy on MNIST."""

from __future__ import annotations

import pytest

from mpsearch.plugins.strategy_uniform import UniformStrategy, widths
from mpsearch.spec import Param, SpecError, parse_spec
from mpsearch.testing.strategies_suite import StrategyTestCase, base_spec
from mpsearch.trial import run_trial

optuna = pytest.importorskip("optuna")

# The default quantizer family (DoReFa + PACT); min-max is exercised separately below.
LENET: dict = {}


class TestUniformConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "uniform"

    @pytest.fixture
    def params(self):
        return {"bits": 8, **LENET}

    @pytest.fixture
    def stronger_params(self):
        return {"bits": 2, **LENET}

    @pytest.fixture
    def weaker_params(self, params):
        return params


@pytest.mark.parametrize("params, first_last", [({"bits": 3}, None),
                                                ({"weight_bits": 2, "act_bits": 5}, None),
                                                ({"bits": 4, "first_last_bits": 8}, 8)])
def test_every_group_gets_exactly_the_drawn_bits(run_strategy_trial_once, params, first_last):
    done = run_strategy_trial_once({**params, **LENET})
    assignment = done.assignment()
    weight, act = widths(params)
    layers = assignment.layers
    ends = {layers[0], layers[-1]} if first_last else set()
    for layer in layers:
        w, a = (first_last, first_last) if layer in ends else (weight, act)
        assert assignment[f"{layer}:weight"] == w, layer
        assert assignment[f"{layer}:input"] == a, layer
    assert done.outcome.attrs["epochs_trained"] == 1.0


@pytest.fixture(scope="module")
def run_strategy_trial_once(tmp_path_factory):
    from mpsearch.testing.strategies_suite import TrialRun

    def run(params):
        spec = parse_spec(base_spec("uniform"))
        folder = tmp_path_factory.mktemp("uniform")
        outcome = run_trial(spec, 0, "uniform", params, artefacts=folder)
        assert not outcome.failed, outcome.attrs.get("fail_reason")
        return TrialRun(spec, "uniform", params, outcome, folder)

    return run


def _suggest(space):
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    drawn = UniformStrategy().suggest(trial, space, "uniform")
    return drawn, set(trial.params)


def test_default_space_draws_bits_only():
    drawn, names = _suggest({})
    assert names == {"uniform.bits"}
    assert drawn["bits"] in (2, 3, 4, 5, 6, 8)
    assert drawn == {"bits": drawn["bits"], "first_last_bits": 0, "quantizer": "dorefa-pact"}


def test_bits_alone_narrows_the_choices():
    drawn, names = _suggest({"bits": Param(choices=(2, 3, 4, 8))})
    assert names == {"uniform.bits"} and drawn["bits"] in (2, 3, 4, 8)


def test_separate_widths_replace_bits():
    drawn, names = _suggest({"weight_bits": Param(choices=(2, 4)), "act_bits": Param(choices=(4, 8))})
    assert names == {"uniform.weight_bits", "uniform.act_bits"}
    assert "bits" not in drawn
    assert widths(drawn) == (drawn["weight_bits"], drawn["act_bits"])


def test_one_separate_width_keeps_bits_for_the_other():
    drawn, names = _suggest({"weight_bits": Param(choices=(2,)), "quantizer": Param(choices=("minmax",
                                                                                            "dorefa-pact"))})
    assert names == {"uniform.weight_bits", "uniform.bits", "uniform.quantizer"}
    assert widths(drawn) == (2, drawn["bits"])


def test_a_separate_width_drawn_as_zero_follows_bits():
    drawn, names = _suggest({"weight_bits": Param(choices=(0,)), "act_bits": Param(value=8)})
    assert "uniform.bits" in names and "weight_bits" not in drawn
    assert widths(drawn) == (drawn["bits"], 8)


@pytest.mark.parametrize("space, message", [
    ({"bits": Param(choices=(4,)), "weight_bits": Param(choices=(4,)), "act_bits": Param(value=8)},
     "bits is never used"),
    ({"bits": Param(choices=(0, 4))}, "not a width"),
    ({"bits": Param(low=2.0, high=8.0)}, "integer low and high"),
    ({"first_last_bits": Param(value=33)}, "not a width"),
    ({"quantizer": Param(value="lsq")}, "not a quantizer family"),
    ({"bitz": Param(value=4)}, "unknown parameter"),
])
def test_contradictory_or_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        UniformStrategy.check_space(space, "spec: strategy[0].space")


def test_spec_with_both_bits_and_separate_widths_fails_at_load(host):
    raw = base_spec("uniform")
    raw["strategy"] = [{"name": "uniform", "space": {"bits": [4], "weight_bits": [2], "act_bits": [8]}}]
    with pytest.raises(SpecError, match=r"strategy\[0\]\.space: bits is never used"):
        parse_spec(raw, host=host)


@pytest.mark.parametrize("quantizer", ["dorefa-pact", "minmax"])
def test_both_quantizer_families_learn_lenet5(quantizer):
    # LeNet-5 has no batch normalisation: DoReFa must keep the weights' scale for it to learn.
    outcome = run_trial(parse_spec(base_spec("uniform")), 0, "uniform",
                        {"bits": 8, "quantizer": quantizer})
    assert not outcome.failed, outcome.attrs.get("fail_reason")
    assert outcome.values["accuracy"] > 0.5


@pytest.mark.slow
def test_eight_bits_two_epochs_on_mnist_mini_exceeds_95_percent():
    raw = base_spec("uniform")
    del raw["data"]["train_subset"]  # all 9,000 training images (1,000 held out)
    raw["training"].update(epochs=2, batch_size=128)
    outcome = run_trial(parse_spec(raw), 0, "uniform", {"bits": 8, **LENET})
    assert not outcome.failed, outcome.attrs.get("fail_reason")
    assert outcome.values["accuracy"] > 0.95
    assert outcome.attrs["test_accuracy"] > 0.95
