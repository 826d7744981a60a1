"""The ``smol`` strategy: conformance, the paper's bit count, both ZPA models, SMOL-L, accuracy on MNIST."""

from __future__ import annotations

import copy
import json
import math

import pytest

from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.plugins.smol.strategy import (SmolStrategy, attach_smol, noise_learning_rate, settle,
                                            total_noise_bits)
from mpsearch.quant import apply_assignment, assignment_from_model, quantizers
from mpsearch.spec import Param, SpecError, parse_spec
from mpsearch.testing.strategies_suite import StrategyTestCase, TrialRun, base_spec
from mpsearch.trial import run_trial

optuna = pytest.importorskip("optuna")

# The suite's trial searches for 8 steps: noise_lr "auto" is then 7 ln 2 / 8 = 0.61.
FAST = {"granularity": "parameter", "zpa": True, "split": 0.5}


def _sum_of_precisions_over_weights(assignment) -> float:
    bits = total = 0.0
    for g in assignment.weight_groups:
        b, n = assignment[g], assignment.numel(g)
        bits += b * n if isinstance(b, int) else float(b.double().sum()) * n / b.numel()
        total += n
    return bits / total


class TestSmolConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "smol"

    @pytest.fixture
    def params(self):
        return {"lam": 1e-9, **FAST}

    @pytest.fixture
    def weaker_params(self, params):
        return params

    @pytest.fixture
    def min_accuracy(self):
        return 0.8  # the float start has 0.887; measured 0.864

    @pytest.fixture
    def stronger_params(self):
        return {"lam": 1e-5, **FAST}

    def test_the_precisions_follow_lambda(self, run_strategy_trial, spec_dict, trial: TrialRun):
        # lambda's default range, 1e-9 to 1e-5, spans the precisions: the trained noise is
        # what sets them (at noise_lr ~0 both ends stay at 7-8 bits, where s starts).
        strong = run_strategy_trial(spec_dict, "smol", {"lam": 1e-5, **FAST, "zpa": False})
        weak = run_strategy_trial(spec_dict, "smol", {"lam": 1e-9, **FAST, "zpa": False})
        for done in (strong, weak):
            assert not done.outcome.failed, done.outcome.attrs.get("fail_reason")
        assert weak.outcome.attrs["bpp"] >= 6.5
        assert strong.outcome.attrs["bpp"] <= 3.5
        bits = [done.outcome.attrs["average_activation_bits"] for done in (strong, weak)]
        assert bits[0] < bits[1] - 2
        assert strong.outcome.attrs["noise_lr"] == pytest.approx(7 * math.log(2) / 8)

    def test_bpp_is_the_sum_of_precisions_over_the_number_of_weights(self, trial: TrialRun):
        assignment = trial.assignment()
        attrs = trial.outcome.attrs
        assert attrs["bpp"] == pytest.approx(_sum_of_precisions_over_weights(assignment))
        assert attrs["bpp"] == pytest.approx(attrs["average_weight_bits_zpa"])
        assert attrs["compression_ratio"] == pytest.approx(32 / attrs["bpp"])

    def test_one_search_records_both_models(self, trial: TrialRun):
        attrs = trial.outcome.attrs
        assignment = trial.assignment()
        zeros = sum(int((assignment[g] == 0).sum()) * assignment.numel(g) // assignment[g].numel()
                    for g in assignment.weight_groups)
        assert attrs["pruned_share_zpa"] == pytest.approx(zeros / 430_500) and zeros > 0
        assert attrs["pruned_share_plain"] == 0.0
        # Pruning frees each pruned weight's bits and changes nothing else.
        assert attrs["average_weight_bits_zpa"] < attrs["average_weight_bits_plain"]
        for key in ("val_accuracy_quantized_zpa", "val_accuracy_quantized_plain"):
            assert 0.0 <= attrs[key] <= 1.0
        assert "val_accuracy_plain" not in attrs  # not fine-tuned unless finetune_other
        assert attrs["epochs_trained"] == pytest.approx(1.0)

    def test_history_records_the_bits_of_the_search_then_the_fine_tuning(self, trial: TrialRun):
        history = trial.outcome.attrs["history"]
        # one epoch: the search takes half of it (8 of 16 steps), the fine-tuning the rest
        search, finetune = history
        assert (search["phase"], finetune["phase"]) == ("search", "finetune")
        assert trial.outcome.attrs["search_epochs"] == pytest.approx(0.5)
        assert search["total_loss"] > search["loss"]  # the search's bit cost was in the loss
        assert finetune["total_loss"] == finetune["loss"]  # and only there
        assert search["average_weight_bits"] >= trial.outcome.attrs["average_weight_bits_plain"]
        assert finetune["weight_bits"] == pytest.approx(trial.outcome.attrs["bpp"])
        assert finetune["act_bits"] == pytest.approx(trial.outcome.attrs["average_activation_bits"])


def test_layer_granularity_float_activations_objective_criterion_and_fine_tuning_the_other(tmp_path):
    params = {"lam": 1.0, "granularity": "layer", "zpa": False, "split": 0.5,
              "activations": "float", "criterion": "size", "finetune_other": True}
    outcome = run_trial(parse_spec(base_spec("smol")), 0, "smol", params, artefacts=tmp_path)
    assert not outcome.failed, outcome.attrs.get("fail_reason")
    done = TrialRun(parse_spec(base_spec("smol")), "smol", params, outcome, tmp_path)
    assignment = done.assignment()
    assert all(isinstance(assignment[g], int) and 1 <= assignment[g] <= 8
               for g in assignment.weight_groups)
    assert all(assignment[g] == 32 for g in assignment.activation_groups)
    attrs = outcome.attrs
    assert attrs["criterion"] == "size" and attrs["pruned_share"] == 0.0
    assert attrs["pruned_share_zpa"] > 0
    assert 0.0 <= attrs["val_accuracy_zpa"] <= 1.0  # the other model, fine-tuned too
    assert attrs["epochs_trained"] == pytest.approx(1.5)  # and its fine-tuning counted


def test_an_unknown_criterion_fails_the_trial_naming_the_choices():
    outcome = run_trial(parse_spec(base_spec("smol")), 0, "smol",
                        {"lam": 1e-6, **FAST, "criterion": "energy"})
    assert outcome.failed
    assert "criterion 'energy'" in outcome.attrs["fail_reason"]
    assert "bits, bitops, size" in outcome.attrs["fail_reason"]


@pytest.fixture(scope="module")
def lenet():
    host = PluginHost(entry_points=False)
    spec = host.models.get("lenet5")
    return spec.create(10, (1, 28, 28), seed=0), model_profile(spec, 10, (1, 28, 28))


@pytest.mark.parametrize("granularity", ["parameter", "layer"])
def test_the_bit_cost_counts_every_weight_and_input_a_shared_s_stands_for(lenet, granularity):
    model, profile = copy.deepcopy(lenet[0]), lenet[1]
    attach_smol(model, profile, granularity=granularity, p_init=8)
    values = profile.weight_numel + sum(l.input_numel for l in profile)
    # log2(1 + exp(-s_init)) = p_init - 1 for every value, whichever s it shares
    assert float(total_noise_bits(model, profile).detach()) == pytest.approx(7 * values, rel=1e-5)


def test_settled_widths_once_legalised_run_the_model(lenet):
    model, profile = copy.deepcopy(lenet[0]), lenet[1]
    attach_smol(model, profile, granularity="layer", p_init=3)

    def even(assignment):  # a backend that supports even widths only
        return assignment.map(lambda g, b: b + b % 2)

    settled = settle(model, profile, zpa=False)
    assert all(settled[g] == 3 for g in settled)
    legal = even(settled)
    apply_assignment(model, profile, legal)  # what the trial does next
    assert all(legal[g] == 4 for g in legal)
    assert assignment_from_model(model, profile) == legal
    assert all(q.integer_bits() == 4 for q in quantizers(model).values())


@pytest.mark.parametrize("space, message", [
    ({"lam": Param(value=0.0)}, "positive"),
    ({"noise_lr": Param(value="fast")}, "or \"auto\""),
    ({"p_init": Param(value=1)}, "2-16"),
    ({"p_init": Param(low=2.0, high=8.0)}, "integer low and high"),
    ({"split": Param(value=1.5)}, r"\(0, 1\]"),
    ({"granularity": Param(value="network")}, "not one of"),
    ({"zpa": Param(value=1)}, "not one of"),
    ({"activations": Param(value="pact")}, "not one of"),
    ({"lamda": Param(value=1e-6)}, "unknown parameter"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        SmolStrategy.check_space(space, "spec: strategy[0].space")


def test_default_space_draws_the_papers_hyperparameters():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    drawn = SmolStrategy().suggest(trial, {}, "smol")
    assert set(trial.params) == {"smol.lam", "smol.granularity", "smol.zpa", "smol.split"}
    assert drawn["p_init"] == 8 and drawn["noise_lr"] == "auto" and drawn["criterion"] == "bits"
    json.dumps(drawn)
    # "auto": the paper's 1e-3 where the search is long enough for it, else a rate at which
    # Adam can take s from p_init to 1 bit within the search's steps.
    assert noise_learning_rate("auto", 8, 42) == pytest.approx(7 * math.log(2) / 42)
    assert noise_learning_rate("auto", 8, 137_000) == 1e-3
    assert noise_learning_rate(0.05, 8, 42) == 0.05
