"""The ``rl`` strategy (HAQ): conformance, budget per episode, action to bits, action wall, DDPG."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mpsearch.plugins.strategy_random import BUDGET_SLACK
from mpsearch.plugins.strategy_rl import (
    REWARD_SCALE,
    RLStrategy,
    action_to_bits,
    layer_states,
    lower_to_budget,
    lowering_order,
    step_groups,
)

from mpsearch.assignment import PrecisionAssignment
from mpsearch.backends import Backend
from mpsearch.ddpg import DDPG, DDPGConfig, truncated_normal
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.spec import Param, SpecError, parse_spec
from mpsearch.testing.strategies_suite import StrategyTestCase, base_spec
from mpsearch.trial import ATTR_FAIL, run_trial

# Four episodes, two of them warm-up, each candidate fine-tuned on 200 images.
PARAMS = {"budget": 0.3, "episodes": 4, "warmup": 2, "finetune_images": 200}

HOST = PluginHost(entry_points=False)
PROFILE = model_profile(HOST.models.get("lenet5"), 10, (1, 28, 28))
BITOPS = HOST.objectives.get("bitops")
GENERIC = HOST.backends.get("generic")


class TestRLConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "rl"

    @pytest.fixture
    def params(self):
        return PARAMS

    @pytest.fixture
    def stronger_params(self):
        return {**PARAMS, "budget": 0.1}

    @pytest.fixture
    def weaker_params(self):
        return {**PARAMS, "budget": 0.6}

    def test_every_episode_respects_the_budget(self, trial):
        attrs = trial.outcome.attrs
        assert attrs["budget_objective"] == "bitops" and attrs["budget_unit"] == "GBitOPs"
        # The reference is LeNet-5 at max_bits = 8 everywhere: 2,293,000 MACs x 64.
        assert attrs["reference_cost"] == pytest.approx(2_293_000 * 64 / 1e9)
        assert attrs["budget"] == pytest.approx(0.3 * attrs["reference_cost"])
        assert attrs["episodes"] == len(attrs["episode_cost"]) == len(attrs["episode_reward"]) == 4
        assert attrs["over_budget"] == 0
        for value in attrs["episode_cost"]:
            assert value <= attrs["budget"] * (1 + BUDGET_SLACK)
        assert trial.cost("bitops") <= attrs["budget"] * (1 + BUDGET_SLACK)

    def test_the_best_episode_is_the_one_returned_and_rewards_follow_eq_5(self, trial):
        attrs = trial.outcome.attrs
        rewards, accuracies = attrs["episode_reward"], attrs["episode_accuracy"]
        for r, a in zip(rewards, accuracies):
            assert r == pytest.approx(REWARD_SCALE * (a - attrs["acc_origin"]), abs=1e-12)
        best = attrs["best_episode"]
        assert rewards[best] == max(rewards) == attrs["best_reward"]
        assert trial.cost("bitops") == pytest.approx(attrs["episode_cost"][best], rel=1e-12)
        assert trial.assignment().average_weight_bits() == pytest.approx(
            attrs["episode_weight_bits"][best])

    def test_warm_up_then_noise_decays_per_episode(self, trial):
        # Episodes 0-1 act at random; then sigma = 0.5 * 0.99^(episode - warmup).
        assert trial.outcome.attrs["episode_sigma"] == [None, None, pytest.approx(0.5),
                                                        pytest.approx(0.495)]

    def test_all_training_is_counted(self, trial):
        attrs = trial.outcome.attrs
        # 1,000 images at batch 64: 16 steps an epoch. A candidate takes one epoch of
        # its ~200-image subset, 4 steps: a quarter epoch, times 4 episodes; then the
        # trial's 1 epoch of fine-tuning.
        assert attrs["candidate_epochs"] == pytest.approx(1.0)
        assert attrs["epochs_trained"] == pytest.approx(2.0)
        assert 0 < attrs["agent_seconds"] < attrs["search_seconds"] < attrs["seconds"]

    def test_candidates_train_silently_and_the_rest_reports(self, trial):
        phases = [row["phase"] for row in trial.outcome.attrs["history"]]
        assert phases == ["finetune"]


# -- HAQ's action to width---------------------------------------------------------------------


@pytest.mark.parametrize("low, high", [(2, 8), (1, 8), (1, 1), (3, 4), (2, 32)])
def test_the_ends_of_the_action_range_give_min_and_max_bits(low, high):
    assert action_to_bits(0.0, low, high) == low
    assert action_to_bits(1.0, low, high) == high


def test_every_width_gets_an_equal_share_of_the_action_range():
    # 2-8 bits: 7 widths, each 1/7 of [0, 1].
    for i in range(7):
        for a in (i / 7 + 1e-9, (i + 0.5) / 7, (i + 1) / 7 - 1e-9):
            assert action_to_bits(a, 2, 8) == 2 + i


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0, 1), b=st.floats(0, 1), low=st.integers(1, 8), extra=st.integers(0, 8))
def test_bits_are_monotone_in_the_action(a, b, low, extra):
    high = low + extra
    a, b = sorted((a, b))
    assert low <= action_to_bits(a, low, high) <= action_to_bits(b, low, high) <= high


# -- the action wall (budget lowering) ----------------------------------------------------


def _cost(assignment):
    return BITOPS.evaluate(PROFILE, GENERIC.legalise(assignment), GENERIC)


REFERENCE = _cost(PrecisionAssignment.uniform(PROFILE, 8, 8))
ORDER = lowering_order(PROFILE)


class PowersOfTwo(Backend):
    """Rounds widths up to 2, 4 or 8: lowering a width often changes no cost."""

    weight_bits = (2, 4, 8)
    activation_bits = (2, 4, 8)

    def layer_costs(self, profile, assignment):  # pragma: no cover - not used here
        raise NotImplementedError


def test_haq_lowers_from_the_last_layer_back_inputs_first():
    assert ORDER == ["fc2:input", "fc2:weight", "fc1:input", "fc1:weight", "conv2:input",
                     "conv2:weight", "conv1:input", "conv1:weight"]
    full = PrecisionAssignment.uniform(PROFILE, 8, 8)
    # fc2 does 5,000 MACs: its input 8 -> 7 saves 40,000 BitOPs, then its weights 8 -> 7
    # save 35,000 more.
    one = lower_to_budget(full, ORDER, _cost, GENERIC.legalise, REFERENCE - 30_000 / 1e9, 2)
    assert one.fits and one.cost == pytest.approx(REFERENCE - 40_000 / 1e9)
    assert {g: one.assignment[g] for g in ORDER if one.assignment[g] != 8} == {"fc2:input": 7}
    two = lower_to_budget(full, ORDER, _cost, GENERIC.legalise, REFERENCE - 50_000 / 1e9, 2)
    assert {g: two.assignment[g] for g in ORDER if two.assignment[g] != 8} == {"fc2:input": 7,
                                                                               "fc2:weight": 7}
    assert two.cost == pytest.approx(REFERENCE - 75_000 / 1e9)
    # A budget that already fits changes nothing.
    same = lower_to_budget(full, ORDER, _cost, GENERIC.legalise, REFERENCE, 2)
    assert same.fits and same.assignment == full


@settings(max_examples=40, deadline=None)
@given(widths=st.lists(st.integers(1, 8), min_size=8, max_size=8), fraction=st.floats(0.01, 1.2),
       powers=st.booleans(), min_bits=st.integers(1, 3))
def test_lowering_never_raises_a_width_and_fits_when_min_bits_fits(widths, fraction, powers,
                                                                   min_bits):
    backend = PowersOfTwo() if powers else GENERIC
    widths = [max(w, min_bits) for w in widths]

    def cost(a):
        return BITOPS.evaluate(PROFILE, backend.legalise(a), backend)

    start = PrecisionAssignment.uniform(PROFILE, 8, 8).replace(dict(zip(step_groups(PROFILE), widths)))
    budget = fraction * REFERENCE
    c = lower_to_budget(start, ORDER, cost, backend.legalise, budget, min_bits)
    assert backend.is_legal(c.assignment)
    assert c.cost == pytest.approx(cost(c.assignment), rel=1e-12)
    legal_start = backend.legalise(start)
    for g in start:
        assert backend.legalise(PrecisionAssignment.uniform(PROFILE, min_bits, min_bits))[g] \
            <= c.assignment[g] <= legal_start[g], g
    floor = cost(PrecisionAssignment.uniform(PROFILE, min_bits, min_bits))
    if floor <= budget:
        assert c.fits and c.cost <= budget * (1 + BUDGET_SLACK)
    else:
        assert not c.fits and c.cost == pytest.approx(floor)


# -- HAQ's state ---------------------------------------------------------------------------


def test_the_state_is_haqs_layer_embedding_normalised_over_the_network():
    s = layer_states(PROFILE)
    assert s.shape == (4, 8) and bool(((s >= 0) & (s <= 1)).all())
    k, c_in, c_out, kernel, stride, fmap, params, dw = s.T.tolist()
    assert k == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert c_in == pytest.approx([0, 19 / 799, 1, 499 / 799])            # 1, 20, 800, 500
    assert c_out == pytest.approx([10 / 490, 40 / 490, 1, 0])            # 20, 50, 500, 10
    assert kernel == [1, 1, 0, 0] and stride == [1, 1, 0, 0]             # 5, 5 / 1, 1 and 1, 1 / 0, 0
    assert fmap == pytest.approx([1, 143 / 783, 0, 0])                   # 28x28, 12x12, 1, 1
    assert params == pytest.approx([0, (25_000 - 500) / 399_500, 1, (5_000 - 500) / 399_500])
    assert dw == [0, 0, 0, 0]                                            # constant: 0


# -- the DDPG agent ------------------------------------------------------------------------


def _filled_agent(seed=0, reward=0.3):
    agent = DDPG(10, DDPGConfig(batch_size=8, buffer_size=32), seed=seed)
    g = torch.Generator().manual_seed(1)
    for t in range(8):
        agent.observe(torch.rand(10, generator=g), float(torch.rand((), generator=g)), reward,
                      torch.rand(10, generator=g), t == 7)
    return agent


def test_a_ddpg_update_runs_on_the_cpu_and_moves_the_actor_and_its_target_by_tau():
    agent = _filled_agent()
    before = copy.deepcopy(agent.actor.state_dict())
    target_before = copy.deepcopy(agent.actor_target.state_dict())
    assert all(torch.equal(before[k], target_before[k]) for k in before)  # targets start equal
    value_loss, policy_loss = agent.update()
    assert math.isfinite(value_loss) and math.isfinite(policy_loss)
    after = agent.actor.state_dict()
    assert all(v.device.type == "cpu" for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for k in before:  # soft update: θ' = (1 - τ) θ' + τ θ, τ = 0.01
        expected = 0.99 * target_before[k] + 0.01 * after[k]
        assert torch.allclose(agent.actor_target.state_dict()[k], expected, atol=1e-7)
    # One reward for every transition: the baseline is that reward after the first batch.
    assert agent.baseline == pytest.approx(0.3)


def test_the_baseline_is_a_moving_average_of_batch_rewards():
    agent = _filled_agent(reward=1.0)
    agent.update()
    agent.buffer.rewards.fill_(0.0)
    agent.update()
    assert agent.baseline == pytest.approx(0.5)  # 1 + 0.5 (0 - 1)


def test_the_agent_is_seeded():
    a, b, c = _filled_agent(seed=3), _filled_agent(seed=3), _filled_agent(seed=4)
    for agent in (a, b, c):
        agent.update()
    state = torch.full((10,), 0.5)
    first, second, other = (agent.act(state, 0.2) for agent in (a, b, c))
    assert first == second != other


@pytest.mark.parametrize("mean", [-0.5, 0.0, 0.3, 1.0, 1.7])
def test_exploration_noise_is_truncated_to_the_action_range(mean):
    g = torch.Generator().manual_seed(0)
    draws = truncated_normal(torch.full((20_000,), mean, dtype=torch.float64), 0.5, g)
    assert bool(((draws >= 0) & (draws <= 1)).all())
    assert float(draws.std()) > 0.05  # noise, not the clipped mean


def test_truncated_normal_has_the_truncated_mean():
    # N(0, 0.5^2) on [0, 1]: mean = σ (φ(0) - φ(2)) / (Φ(2) - Φ(0)) = 0.36140.
    g = torch.Generator().manual_seed(0)
    draws = truncated_normal(torch.zeros(40_000, dtype=torch.float64), 0.5, g)
    assert float(draws.mean()) == pytest.approx(0.36140, abs=0.005)


def test_agent_actions_stay_in_range_and_sigma_zero_is_the_actor():
    agent = _filled_agent()
    state = torch.full((10,), 0.5)
    actions = [agent.act(state, 0.5) for _ in range(200)]
    assert all(0.0 <= a <= 1.0 for a in actions) and len(set(actions)) > 100
    with torch.no_grad():
        mean = float(agent.actor(state.reshape(1, -1))[0, 0])
    assert agent.act(state, 0.0) == pytest.approx(mean)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("space, message", [
    ({"min_bits": Param(value=6), "max_bits": Param(choices=(4, 8))}, "min_bits can exceed max_bits"),
    ({"budget": Param(value=0)}, "positive number"),
    ({"episodes": Param(low=1.5, high=4.0)}, "integer low and high"),
    ({"episodes": Param(value=0)}, "integer of at least 1"),
    ({"warmup": Param(value=-1)}, "integer of at least 0"),
    ({"noise_decay": Param(value=1.5)}, "in \\(0, 1\\]"),
    ({"max_bits": Param(value=33)}, "integer 1-32"),
    ({"quantizer": Param(value="pact")}, "not a quantizer family"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        RLStrategy.check_space(space, "spec: strategy[0].space")


def test_missing_parameter_is_named():
    with pytest.raises(MpsearchError, match="needs parameter\\(s\\) budget"):
        RLStrategy.resolve({"episodes": 2})
    assert RLStrategy.resolve({"budget": 0.3, "episodes": 2})["warmup"] == 4


def test_a_maximised_first_objective_fails_the_trial_with_its_name():
    spec = base_spec("rl")
    spec["study"]["objectives"] = ["accuracy", "adapt-inference-speedup", "bitops"]
    outcome = run_trial(parse_spec(spec), 0, "rl", PARAMS)
    assert outcome.failed
    assert "'adapt-inference-speedup' is maximised" in outcome.attrs[ATTR_FAIL]
