"""The ``rl`` strategy (HAQ): conformance, budget per episode, the agent learning, action to bits, DDPG."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mpsearch.api import BUDGET_SLACK
from mpsearch.plugins.rl.strategy import (
    GREEDY_CHECKS,
    REWARD_SCALE,
    RLStrategy,
    action_to_bits,
    greedy_after,
    layer_states,
    lower_to_budget,
    lowering_order,
    noise_at,
    run_episodes,
    step_groups,
)

from mpsearch.assignment import PrecisionAssignment
from mpsearch.backends import Backend
from mpsearch.plugins.rl.ddpg import DDPG, DDPGConfig, truncated_normal
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.spec import Param, SpecError, parse_spec
from mpsearch.testing.strategies_suite import StrategyTestCase, base_spec
from mpsearch.record import ATTR_FAIL
from mpsearch.trial import run_trial

# Eight episodes, two of them warm-up; rewards on 500 validation images.
PARAMS = {"budget": 0.3, "episodes": 8, "warmup": 2, "reward_images": 500}

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

    # Cost pressure is the budget, which every episode keeps: three episodes show it
    # (the suite's trials are deterministic, so a pass is not luck).
    @pytest.fixture
    def stronger_params(self):
        return {**PARAMS, "budget": 0.1, "episodes": 3, "warmup": 1}

    @pytest.fixture
    def weaker_params(self):
        return {**PARAMS, "budget": 0.6, "episodes": 3, "warmup": 1}

    def test_every_episode_respects_the_budget(self, trial):
        attrs = trial.outcome.attrs
        assert attrs["budget_objective"] == "bitops" and attrs["budget_unit"] == "GBitOPs"
        # The reference is LeNet-5 at max_bits = 8 everywhere: 2,293,000 MACs x 64.
        assert attrs["reference_cost"] == pytest.approx(2_293_000 * 64 / 1e9)
        assert attrs["budget"] == pytest.approx(0.3 * attrs["reference_cost"])
        assert attrs["episodes"] == len(attrs["episode_cost"]) == len(attrs["episode_reward"]) == 8
        assert attrs["over_budget"] == 0
        for value in attrs["episode_cost"] + attrs["greedy_cost"]:
            assert value <= attrs["budget"] * (1 + BUDGET_SLACK)
        assert trial.cost("bitops") <= attrs["budget"] * (1 + BUDGET_SLACK)

    def test_the_best_candidate_is_the_one_returned_and_rewards_follow_haq(self, trial):
        attrs = trial.outcome.attrs
        rewards = attrs["episode_reward"] + attrs["greedy_reward"]
        accuracies = attrs["episode_accuracy"] + attrs["greedy_accuracy"]
        costs = attrs["episode_cost"] + attrs["greedy_cost"]
        for r, a in zip(rewards, accuracies):
            assert r == pytest.approx(REWARD_SCALE * (a - attrs["acc_origin"]), abs=1e-12)
        assert attrs["best_reward"] == max(rewards)
        assert trial.cost("bitops") == pytest.approx(
            min(c for r, c in zip(rewards, costs) if r == max(rewards)), rel=1e-12)
        assert attrs["reward_images"] == 500  # a stratified subset of the 1,000 validation images

    def test_warm_up_then_noise_decays_to_its_final_value_within_the_episodes(self, trial):
        # Episodes 0-1 act at random; then sigma falls geometrically from 0.5 to 0.02 over 6.
        sigma = trial.outcome.attrs["episode_sigma"]
        assert sigma[:2] == [None, None]
        assert sigma[2:] == pytest.approx([0.5 * 0.04 ** (k / 5) for k in range(6)])
        assert sigma[-1] == pytest.approx(0.02)

    def test_the_greedy_policy_is_scored_through_the_search(self, trial):
        attrs = trial.outcome.attrs
        assert attrs["greedy_episode"] == sorted(greedy_after(8, 2)) == [2, 3, 4, 5, 6, 7]
        assert len(attrs["greedy_reward"]) == len(attrs["greedy_accuracy"]) == 6

    def test_each_episode_costs_one_evaluation(self, trial):
        attrs = trial.outcome.attrs
        # No fine-tuning per candidate by default: the search trains nothing, and the trial's
        # 1 epoch is the host's fine-tuning of the chosen widths.
        assert attrs["candidate_epochs"] == 0.0
        assert attrs["epochs_trained"] == pytest.approx(1.0)
        assert 0 < attrs["agent_seconds"] < attrs["search_seconds"] < attrs["seconds"]
        assert attrs["seconds_per_episode"] < 5.0

    def test_every_episode_records_its_widths(self, trial):
        widths = trial.outcome.attrs["search_widths"]
        assert widths["step"] == "episode" and set(widths["groups"]) == set(step_groups(PROFILE))
        assert all(len(v) == 8 for v in widths["groups"].values())
        first = PrecisionAssignment.uniform(PROFILE, 8, 8).replace(
            {g: v[0] for g, v in widths["groups"].items()})
        assert BITOPS.evaluate(PROFILE, first) == pytest.approx(trial.outcome.attrs["episode_cost"][0])

    def test_candidates_train_silently_and_the_rest_reports(self, trial):
        phases = [row["phase"] for row in trial.outcome.attrs["history"]]
        assert phases == ["finetune"]

    def test_the_reward_is_the_calibrated_candidates_post_training_accuracy(self, run_strategy_trial,
                                                                           spec_dict):
        # Post-training, with every validation image in the reward: the host quantizes the
        # chosen widths afresh and calibrates them, and must score exactly what the episode
        # scored with the quantizers calibrated once per width and swapped in.
        raw = json.loads(json.dumps(spec_dict))
        raw["training"]["epochs"] = 0
        done = run_strategy_trial(raw, "rl", {**PARAMS, "reward_images": 10_000})
        assert not done.outcome.failed, done.outcome.attrs.get(ATTR_FAIL)
        attrs = done.outcome.attrs
        accuracies = attrs["episode_accuracy"] + attrs["greedy_accuracy"]
        rewards = attrs["episode_reward"] + attrs["greedy_reward"]
        assert done.outcome.values["accuracy"] == accuracies[rewards.index(max(rewards))]

    def test_a_short_fine_tune_per_candidate_is_counted(self, run_strategy_trial, spec_dict):
        done = run_strategy_trial(spec_dict, "rl", {**PARAMS, "episodes": 3, "finetune_epochs": 1.0,
                                                   "finetune_images": 200})
        attrs = done.outcome.attrs
        # 1,000 training images at batch 64: 16 steps an epoch. A candidate takes one epoch of
        # its ~200-image subset, 4 steps: a quarter epoch, for 3 episodes and the greedy
        # policy after the last; then the trial's 1 epoch of fine-tuning.
        assert attrs["candidate_epochs"] == pytest.approx(1.0)
        assert attrs["epochs_trained"] == pytest.approx(2.0)


# -- the agent learns ---------------------------------------------------------------------------

TARGET = [3, 6, 2, 8, 5, 4, 7, 3]  # LeNet-5's eight steps: conv1 weights, conv1 inputs, ...


def synthetic_search(lr_actor: float, lr_critic: float, seed: int = 0):
    """The strategy's own loop and schedule, at its defaults, on a reward whose optimum is TARGET."""

    def score(actions):
        bits = [action_to_bits(a, 2, 8) for a in actions]
        return -REWARD_SCALE * sum(abs(b - t) for b, t in zip(bits, TARGET)) / (6 * len(TARGET)), bits

    defaults = {k: p.value for k, p in RLStrategy.parameters.items() if p.fixed}
    states = layer_states(PROFILE)
    agent = DDPG(states.shape[1] + 2, DDPGConfig(buffer_size=128 * 8, lr_actor=lr_actor,
                                                 lr_critic=lr_critic), seed=seed)
    return run_episodes(agent, states, score, episodes=defaults["episodes"], warmup=defaults["warmup"],
                        noise=defaults["noise"], noise_final=defaults["noise_final"])


def deviation(bits):
    return sum(abs(b - t) for b, t in zip(bits, TARGET))


@pytest.mark.slow
@pytest.mark.parametrize("learns", [True, False])
def test_the_agent_reaches_a_known_optimum_within_its_default_episodes(learns):
    # HAQ's learning rates, or none: with 0 the actor never moves, and neither the greedy
    # policy nor the best of 300 episodes comes near the optimum (7^8 assignments).
    log = synthetic_search(*((1e-4, 1e-3) if learns else (0.0, 0.0)))
    greedy = [deviation(e.info) for e in log if e.greedy]
    best = max(log, key=lambda e: e.reward)
    assert len(greedy) == GREEDY_CHECKS
    reached = deviation(best.info) <= 1 and greedy[-1] <= 2 and greedy[-1] <= greedy[0] / 4
    assert reached == learns, (greedy, best.info)


def test_the_exploration_noise_ends_within_the_episodes_given():
    for episodes, warmup in ((300, 20), (40, 5), (12, 11)):
        sigma = [noise_at(e, episodes=episodes, warmup=warmup, noise=0.5, noise_final=0.02)
                 for e in range(episodes)]
        assert sigma[:warmup] == [None] * warmup
        assert sigma[warmup] == 0.5 and sigma[-1] == pytest.approx(0.5 if episodes - warmup == 1 else 0.02)
        assert all(a >= b for a, b in zip(sigma[warmup:], sigma[warmup + 1:]))
    # HAQ's 0.99 per episode would leave sigma at 0.5 * 0.99^20 = 0.41 after 40 episodes.
    assert noise_at(39, episodes=40, warmup=5, noise=0.5, noise_final=0.02) < 0.5 * 0.99**20 / 10


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
    ({"noise_final": Param(value=0.0)}, "positive number"),
    ({"noise_final": Param(choices=(0.1, 0.6))}, "noise_final can exceed noise"),
    ({"finetune_epochs": Param(value=-1.0)}, "at least 0"),
    ({"calibration": Param(value="entropy")}, "not a calibration"),
    ({"max_bits": Param(value=33)}, "integer 1-32"),
    ({"quantizer": Param(value="pact")}, "not a quantizer family"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        RLStrategy.check_space(space, "spec: strategy[0].space")


def test_missing_parameter_is_named():
    with pytest.raises(MpsearchError, match="needs parameter\\(s\\) budget"):
        RLStrategy.resolve({"episodes": 2})
    assert RLStrategy.resolve({"budget": 0.3, "episodes": 2})["warmup"] == 20


def test_a_maximised_first_objective_fails_the_trial_with_its_name():
    spec = base_spec("rl")
    spec["study"]["objectives"] = ["accuracy", "adapt-inference-speedup", "bitops"]
    outcome = run_trial(parse_spec(spec), 0, "rl", PARAMS)
    assert outcome.failed
    assert "'adapt-inference-speedup' is maximised" in outcome.attrs[ATTR_FAIL]


# -- on the real MNIST --------------------------------------------------------------------------


@pytest.mark.slow
def test_on_mnist_its_point_is_not_dominated_by_randoms_at_the_same_budget(shared_datasets, tmp_path):
    # One float start (an epoch of LeNet-5 on 54,000 images), then rl at its defaults and
    # random at its middle candidate count, both at a fifth of the 8-bit BitOPs and both
    # fine-tuning their chosen widths for the same 1 epoch.
    from mpsearch.float_start import make_float_start

    raw = {"study": {"name": "rl-mnist", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 0},
           "model": {"name": "lenet5"}, "data": {"name": "mnist", "root": str(shared_datasets)},
           "training": {"pretrain_epochs": 1, "epochs": 1, "batch_size": 128, "lr": 0.05, "device": "cpu"},
           "strategy": [{"name": "rl"}, {"name": "random"}], "resources": {"executor": "local"}}
    spec = parse_spec(raw)
    make_float_start(spec, HOST, tmp_path)
    points = {}
    for name, params in (("rl", {"budget": 0.2}), ("random", {"budget": 0.2, "candidates": 6})):
        outcome = run_trial(spec, 0, name, params, artefacts=tmp_path)
        assert not outcome.failed, outcome.attrs.get(ATTR_FAIL)
        points[name] = (outcome.values["accuracy"], outcome.values["bitops"])
    (acc, cost), (other_acc, other_cost) = points["rl"], points["random"]
    assert acc > 0.97
    dominated = other_acc >= acc and other_cost <= cost and (other_acc, other_cost) != (acc, cost)
    assert not dominated, points
