"""The ``rl`` strategy: HAQ's DDPG agent picks each layer's widths under a cost budget."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.api import (BUDGET_SLACK, CALIBRATIONS, Candidate, LinearQuantizer, ModelProfile, MpsearchError,
                          Param, PrecisionAssignment, SearchResult, SpecError, Strategy, check_search_space,
                          hookimpl, quantize_at, quantized_layers, quantizers, restore_model)

from .ddpg import DDPG, DDPGConfig

REWARD_SCALE = 0.1  # λ in HAQ's reward R = λ (acc_quant - acc_origin)
BUFFER_PER_STEP = 128  # HAQ's replay buffer: 128 transitions per step of an episode
AGENT_SEED_OFFSET = 7_919  # the agent's seed is the trial's plus this: its draws leave the data order alone
GREEDY_CHECKS = 10  # times the greedy policy (no noise) is scored, evenly over the policy episodes
STATE_FEATURES = ("layer_index", "in_channels", "out_channels", "kernel_size", "stride",
                  "feature_map", "parameters", "depthwise", "weight_step", "previous_action")
WEIGHT_STEP, ACTIVATION_STEP = 1.0, 0.0


class RLStrategy(Strategy):
    """HAQ's reinforcement-learning search: a DDPG agent sets each layer's widths, the best is trained.

    HAQ (Wang, Liu, Lin, Lin, Han, "HAQ: Hardware-Aware Automated Quantization
    with Mixed Precision", CVPR 2019). An episode walks the quantizable layers in
    execution order, two steps per layer: the weights' width, then the input
    activations' (HAQ's code). The state of a step is HAQ's observation ``(k, c_in,
    c_out, kernel, stride, feature map, parameters, depthwise, weight/activation,
    a_{k-1})``; a linear layer has kernel 1, stride 0, feature map 1. Each of the
    first eight features is min-max normalised to [0, 1] over the network's
    layers; the flag is 1 for a weight step, and the previous action starts at 1
    (HAQ's code starts it at the maximum width). The action ``a`` in [0, 1]
    gives ``round(b_min - 0.5 + a (b_max - b_min + 1))`` bits (HAQ's action space, see
    :func:`action_to_bits`).

    After the last step, an assignment whose cost (legalised for the backend, on
    the study's first cost objective) exceeds the budget has its widths lowered
    one bit at a time, from the last layer back to the first, each layer's
    activations before its weights, pass after pass, until it fits (HAQ's
    ``_final_action_wall``; :func:`lower_to_budget`). The budget is ``budget``
    times the cost of the all-``max_bits`` assignment.

    The reward is HAQ's without fine-tuning: the trial's start (the study's float
    start) quantized at the episode's widths with HAQ's linear quantizer, its clips
    chosen on the float network's weights and activations (``[training]
    calibration_images``, as ``context.calibrate`` does), scored on
    ``reward_images`` of the validation split: ``0.1 (acc_quant - acc_origin)``,
    with ``acc_origin`` the start's accuracy on the same images. Clips depend
    only on a tensor and its width, so they are calibrated once per trial for
    every width a group can take and an episode costs one evaluation: tens of
    milliseconds for LeNet-5 on 2,000 images, so hundreds of episodes fit a trial.
    ``finetune_epochs`` > 0 fine-tunes each candidate first on ``finetune_images``
    of the training split (HAQ's other variant; each then costs a training run).
    Every transition of the episode gets the reward, γ = 1, and the critic's target
    subtracts a moving-average baseline (:mod:`mpsearch.plugins.rl.ddpg`; HAQ took it from AMC).

    The trial: ``episodes`` episodes run, the first ``warmup`` of them with uniformly
    random actions; the others act with the actor plus noise drawn from a normal
    distribution truncated to [0, 1], its σ decaying geometrically from ``noise`` at
    the first policy episode to ``noise_final`` at the last (HAQ: 0.5 · 0.99 per
    episode, 0.0015 after its 580 policy episodes), so that exploration ends
    within the episodes given however many they are. After every episode from the
    last warm-up one on, the agent takes one DDPG update per transition of the
    episode (HAQ's ``n_update`` = 1). The greedy policy (no noise) is scored
    :data:`GREEDY_CHECKS` times, evenly over the policy episodes, to show the
    policy learning (``greedy_reward``); those are candidates too. The candidate
    of the highest reward (ties: lower cost, then the earlier one) is quantized
    again from the start, calibrated, and handed to the host's fine-tuning for the
    trial's ``epochs`` (post-training quantization at ``epochs = 0``), as
    ``random``'s is; the search's own cost is in ``search_seconds``, and the
    widths of every episode in ``search_widths`` (``mpsearch study plot NAME
    --trial N`` draws them).

    Parameters (defaults):
        budget: range 0.1-0.6; the cost budget as a fraction of the all-``max_bits``
            assignment's cost (legalised) on the study's first cost objective.
        episodes: fixed 300; episodes of the search (HAQ: 600).
        warmup: fixed 20; episodes of random actions first (HAQ's code: 20).
        noise / noise_final: fixed 0.5 and 0.02; the exploration σ at the first
            and the last policy episode.
        reward_images: fixed 2000; validation images each reward is measured on, a
            stratified subset drawn once per trial (HAQ: 10,000 held-out images).
        finetune_epochs: fixed 0; epochs of fine-tuning per candidate before its
            reward (HAQ: 1, or none); finetune_images: fixed 2000, the training
            images it runs over (HAQ: 20,000 of ImageNet's 1.28 M).
        min_bits, max_bits: fixed 2 and 8 (HAQ's linear quantization).
        quantizer: fixed ``"linear"`` (HAQ's), or ``"dorefa-pact"``, ``"minmax"``.
        calibration: fixed ``"mse"`` (least squared error), or ``"kl"`` (HAQ's
            KL divergence); how the linear quantizer's clips are chosen.

    The agent (HAQ's defaults, :class:`~mpsearch.plugins.rl.ddpg.DDPGConfig`): actor and
    critic of 400 and 300 hidden units, Adam at 1e-4 (actor) and 1e-3 (critic),
    τ = 0.01, batches of 64, a buffer of 128 transitions per step, moving-average
    rate 0.5. It runs on the CPU whatever the trial's device, seeded from the
    trial's seed.

    Deviations from HAQ:
        - 300 episodes rather than 600, and σ decays to ``noise_final`` over the
          episodes given rather than by 0.99 per episode.
        - Updates begin after the last warm-up episode rather than after the first
          policy episode, so that the first policy episode already uses a
          trained actor; the greedy policy is scored besides (HAQ's is not).
        - Rewards are measured on a subset of the trial's validation split (HAQ:
          10,000 held-out training images); a fine-tuned candidate trains with the
          spec's optimizer and learning rate (HAQ: SGD at 1e-3).
        - Clips minimise the squared quantization error by default; HAQ chooses
          them by KL divergence (``calibration = "kl"``), which on LeNet-5 and MNIST
          collapsed 2- and 3-bit activations to chance (the normalised image's
          background is a spike away from zero; uniform 8-bit weights with 2-bit
          activations: 0.100 against 0.968 after post-training calibration, see
          ``benchmarks/rl_search.py``). KL clips are chosen on histograms of
          ``sqrt(n)`` to 2,048 bins of the non-zero magnitudes
          (:func:`mpsearch.quant.kl_clip`); HAQ's code uses a divergence of
          cumulative histograms below 5 bits and the largest magnitude above, and
          leaves the image input unquantized.
        - A state feature that is the same for every layer is 0 (HAQ's code
          leaves it unnormalised), and the previous action is the agent's
          action in [0, 1] (HAQ's code: the width divided by ``max_bits``).
        - Every layer is searched: HAQ's code pins the first and last layers at
          8 bits (and leaves the image input unquantized); here they are searched
          as every other strategy here searches them.
        - The budget is a fraction of the all-``max_bits`` cost on any cost
          objective (HAQ: latency, energy or size from a hardware simulator).
    """

    label = "rl"
    post_training = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "budget": Param(low=0.1, high=0.6),
        "episodes": Param(value=300),
        "warmup": Param(value=20),
        "noise": Param(value=0.5),
        "noise_final": Param(value=0.02),
        "reward_images": Param(value=2000),
        "finetune_epochs": Param(value=0.0),
        "finetune_images": Param(value=2000),
        "min_bits": Param(value=2),
        "max_bits": Param(value=8),
        "quantizer": Param(value="linear"),
        "calibration": Param(value="mse"),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names, bad budgets, counts, noise and epochs, and crossed or invalid widths."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        check_search_space(
            merged, where,
            numbers={"budget": (lambda v: v > 0, "a positive number"),
                     "finetune_epochs": (lambda v: v >= 0, "a number of at least 0"),
                     "noise": (lambda v: v > 0, "a positive number"),
                     "noise_final": (lambda v: v > 0, "a positive number")},
            integers=(("episodes", 1, None), ("warmup", 0, None), ("reward_images", 1, None),
                      ("finetune_images", 1, None)))
        for v in merged["calibration"].values():
            if v not in CALIBRATIONS:
                raise SpecError(f"{where}.calibration: {v!r} is not a calibration; use one of "
                                f"{', '.join(CALIBRATIONS)}.")
        if max(merged["noise_final"].values()) > min(merged["noise"].values()):
            raise SpecError(f"{where}: noise_final can exceed noise; exploration decays, so every "
                            f"noise_final must be at most every noise.")

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Run the agent's episodes from the trial's start; hand the best candidate's widths on."""
        p = self.resolve(params)
        name, objective = budget_objective(context)
        started, trained_before = time.perf_counter(), context.epochs_trained
        min_bits, max_bits = int(p["min_bits"]), int(p["max_bits"])
        profile = context.profile

        def cost(assignment: PrecisionAssignment) -> float:
            return context.costs(assignment)[name]  # legalised for the backend

        full = PrecisionAssignment.uniform(profile, max_bits, max_bits)
        reference = cost(full)
        budget = float(p["budget"]) * reference
        start = context.model
        family = p["quantizer"]
        widths = sorted({int(b) for w in range(min_bits, max_bits + 1)
                         for b in context.legalise(PrecisionAssignment.uniform(profile, w, w)).values()})
        table = calibrated_quantizers(context, start, widths, family, p["calibration"])
        calibration_seconds = time.perf_counter() - started
        reward_data = subset(context.val, int(p["reward_images"]), context.seed)
        train_subset = subset(context.train, int(p["finetune_images"]), context.seed)
        acc_origin = context.evaluate(start, reward_data)
        legal_full = context.legalise(full)
        probe = install(quantize_at(copy.deepcopy(start), profile, legal_full, family), profile, table,
                        legal_full)
        finetune = float(p["finetune_epochs"]) if context.epochs > 0 else 0.0

        def score(actions: Sequence[float]) -> tuple[float, tuple[Candidate, float]]:
            bits = {g: action_to_bits(a, min_bits, max_bits) for g, a in zip(step_groups(profile), actions)}
            candidate = lower_to_budget(full.replace(bits), lowering_order(profile), cost, context.legalise,
                                        budget, min_bits)
            if finetune > 0:  # HAQ's reward after a short fine-tune: a fresh copy each time
                model = candidate_model(start, profile, table, candidate.assignment, family)
                context.fit(model, finetune, data=train_subset, report=False, phase="candidate")
                accuracy = context.evaluate(model, reward_data)
            else:  # HAQ's reward without fine-tuning: the calibrated quantizers swapped in
                accuracy = context.evaluate(install(probe, profile, table, candidate.assignment),
                                            reward_data)
            return REWARD_SCALE * (accuracy - acc_origin), (candidate, accuracy)

        steps = 2 * len(profile)
        states = layer_states(profile)
        agent = DDPG(states.shape[1] + 2, DDPGConfig(buffer_size=BUFFER_PER_STEP * steps),
                     seed=context.seed + AGENT_SEED_OFFSET)
        log = run_episodes(agent, states, score, episodes=int(p["episodes"]), warmup=int(p["warmup"]),
                           noise=float(p["noise"]), noise_final=float(p["noise_final"]))
        search_seconds = time.perf_counter() - started

        # max() keeps the first of equals: ties on reward and cost go to the earlier one.
        best = max(range(len(log)), key=lambda i: (log[i].reward, -log[i].info[0].cost))
        chosen = log[best].info[0]
        model = candidate_model(start, profile, table, chosen.assignment, family)
        episodes = [e for e in log if not e.greedy]
        attrs = {
            "budget": budget, "budget_fraction": float(p["budget"]), "budget_objective": name,
            "budget_unit": objective.unit, "reference_cost": reference, "reference_bits": max_bits,
            "acc_origin": acc_origin, "reward_images": len(reward_data), "episodes": len(episodes),
            "warmup": min(int(p["warmup"]), len(episodes)),
            "best_episode": log[best].episode, "best_is_greedy": log[best].greedy,
            "best_reward": log[best].reward, "over_budget": sum(not e.info[0].fits for e in log),
            "candidate_epochs": context.epochs_trained - trained_before,
            "search_seconds": search_seconds, "calibration_seconds": calibration_seconds,
            "agent_seconds": sum(e.agent_seconds for e in log),
            "seconds_per_episode": (search_seconds - calibration_seconds) / len(log),
            **episode_record(log, log[best], step_groups(profile)),
        }
        return SearchResult(model, chosen.assignment, float(context.epochs), attrs)


def budget_objective(context) -> tuple[str, Any]:
    """The study's first cost objective (its name and itself), which the budget is a share of.

    Raises:
        MpsearchError: the study has no cost objective, or its first one is maximised.
    """
    if not context.objectives:
        raise MpsearchError("strategy 'rl' needs a cost objective for its budget; add one "
                            "to [study] objectives.")
    name = next(iter(context.objectives))
    objective = context.objectives[name]
    if objective.direction != "minimize":
        raise MpsearchError(f"strategy 'rl' takes its budget from the study's first cost "
                            f"objective, and {name!r} is maximised; list a minimised cost "
                            f"(e.g. bitops) first in [study] objectives.")
    return name, objective


def episode_record(log: Sequence[Episode], best: Episode, groups: Sequence[str]) -> dict[str, Any]:
    """What the trial records of each episode: the exploring ones' rewards, accuracies, costs,
    widths and noise, the greedy ones' apart, and the widths ``mpsearch study plot`` draws."""
    episodes = [e for e in log if not e.greedy]
    greedy = [e for e in log if e.greedy]
    return {
        "episode_reward": [e.reward for e in episodes],
        "episode_accuracy": [e.info[1] for e in episodes],
        "episode_cost": [e.info[0].cost for e in episodes],
        "episode_weight_bits": [e.info[0].assignment.average_weight_bits() for e in episodes],
        "episode_sigma": [e.sigma for e in episodes],
        "greedy_episode": [e.episode for e in greedy],
        "greedy_reward": [e.reward for e in greedy],
        "greedy_accuracy": [e.info[1] for e in greedy],
        "greedy_cost": [e.info[0].cost for e in greedy],
        "search_widths": {
            "step": "episode", "score_name": "reward",
            "groups": {g: [int(e.info[0].assignment[g]) for e in episodes] for g in groups},
            "score": [e.reward for e in episodes],
            "best": None if best.greedy else best.episode,
        },
    }


@dataclass
class Episode:
    """One scored episode: its actions, the σ of their noise (None: random warm-up or greedy), the reward."""

    episode: int
    greedy: bool
    sigma: float | None
    actions: list[float]
    reward: float
    info: Any
    agent_seconds: float


def noise_at(episode: int, *, episodes: int, warmup: int, noise: float, noise_final: float) -> float | None:
    """The exploration σ of ``episode``: None in the warm-up, then geometric to ``noise_final``.

    σ is ``noise`` at the first policy episode and ``noise_final`` at the last
    (``noise`` throughout with a single policy episode); both are positive.
    """
    if episode < warmup:
        return None
    policy = episodes - warmup
    if policy <= 1:
        return noise
    return noise * (noise_final / noise) ** ((episode - warmup) / (policy - 1))


def greedy_after(episodes: int, warmup: int, checks: int = GREEDY_CHECKS) -> set[int]:
    """The policy episodes after whose updates the greedy policy is scored: ``checks``, to the last."""
    policy = episodes - warmup
    checks = min(checks, policy)
    if checks <= 0:
        return set()
    return {warmup - 1 + round(k * policy / checks) for k in range(1, checks + 1)}


def run_episodes(agent: DDPG, states: torch.Tensor, score: Callable[[list[float]], tuple[float, Any]], *,
                 episodes: int, warmup: int, noise: float, noise_final: float,
                 greedy_checks: int = GREEDY_CHECKS) -> list[Episode]:
    """HAQ's search loop: roll out, score, remember, update; the greedy policy scored besides.

    Args:
        states: the static part of the state, one row per layer (:func:`layer_states`);
            each layer takes two steps, its weights' then its inputs'.
        score: actions (one per step, in [0, 1]) -> (reward, anything to keep).

    Returns:
        Every scored rollout in order: the ``episodes`` episodes and, after the
        updates of the episodes :func:`greedy_after` names, a greedy one (same
        ``episode``, ``greedy`` True; its transitions are not remembered).
    """
    steps = 2 * len(states)
    checks = greedy_after(episodes, warmup, greedy_checks)
    log: list[Episode] = []

    def rollout(sigma: float | None) -> tuple[list[torch.Tensor], list[float]]:
        observed, actions, previous = [], [], 1.0
        for index in range(len(states)):
            for flag in (WEIGHT_STEP, ACTIVATION_STEP):
                state = torch.cat([states[index], torch.tensor([flag, previous])])
                action = agent.random_action() if sigma is None else agent.act(state, sigma)
                observed.append(state)
                actions.append(action)
                previous = action
        return observed, actions

    for episode in range(episodes):
        tick = time.perf_counter()
        sigma = noise_at(episode, episodes=episodes, warmup=warmup, noise=noise, noise_final=noise_final)
        observed, actions = rollout(sigma)
        spent = time.perf_counter() - tick
        reward, info = score(actions)
        tick = time.perf_counter()
        for t in range(steps):
            last = t == steps - 1
            agent.observe(observed[t], actions[t], reward, observed[t if last else t + 1], last)
        if episode >= warmup - 1:
            for _ in range(steps):
                agent.update()
        log.append(Episode(episode, False, sigma, actions, reward, info,
                           spent + time.perf_counter() - tick))
        if episode in checks:
            tick = time.perf_counter()
            _, actions = rollout(0.0)
            spent = time.perf_counter() - tick
            reward, info = score(actions)
            log.append(Episode(episode, True, None, actions, reward, info, spent))
    return log


def calibrated_quantizers(context, start: nn.Module, widths: Sequence[int], family: str,
                          calibration: str) -> dict[tuple[str, int], nn.Module | None]:
    """Every group's quantizer at every width in ``widths``, its range calibrated as the host would.

    Each width quantizes a copy of the start uniformly and calibrates it with
    ``context.calibrate`` (the float network's activations on the calibration
    images): the same ranges the host's calibration gives a model at any
    assignment, since a range depends only on its group's tensor and width.
    None stands for a group left float (32 bits).
    """
    profile = context.profile
    probe = copy.deepcopy(start)
    table: dict[tuple[str, int], nn.Module | None] = {}
    for bits in widths:
        quantize_at(probe, profile, PrecisionAssignment.uniform(profile, bits, bits), family)
        found = quantizers(probe)
        for q in found.values():
            if isinstance(q, LinearQuantizer):
                q.calibration = calibration
        context.calibrate(probe)
        for layer in profile:
            for group in (layer.weight_group, layer.input_group):
                table[(group, bits)] = found.get(group)
        restore_model(probe)
    return table


def install(model: nn.Module, profile: ModelProfile, table: Mapping[tuple[str, int], nn.Module | None],
            assignment: PrecisionAssignment) -> nn.Module:
    """Give a quantized model the table's quantizers for ``assignment`` (shared, not copied)."""
    layers = quantized_layers(model)
    for layer in profile:
        module = layers[layer.name]
        module.weight_quantizer = table[(layer.weight_group, int(assignment[layer.weight_group]))]
        module.input_quantizer = table[(layer.input_group, int(assignment[layer.input_group]))]
    return model


def candidate_model(start: nn.Module, profile: ModelProfile, table, assignment: PrecisionAssignment,
                    family: str) -> nn.Module:
    """A copy of the start quantized at ``assignment`` with copies of the table's calibrated quantizers."""
    model = quantize_at(copy.deepcopy(start), profile, assignment, family)
    own = {key: copy.deepcopy(q) for key, q in table.items()
           if key in {(g, int(assignment[g])) for g in assignment}}
    return install(model, profile, own, assignment)


def subset(data, images: int, seed: int):
    """A stratified subset of about ``images`` images of ``data`` (all of them if there are fewer)."""
    if images >= len(data):
        return data
    return data.split(images / len(data), seed=seed)[1]


def action_to_bits(action: float, min_bits: int, max_bits: int) -> int:
    """HAQ's action to width: ``round(b_min - 0.5 + a (b_max - b_min + 1))`` for ``a`` in [0, 1].

    Every width gets an equal share of [0, 1]. Rounding is half up, and ``a = 1``
    (which lands on ``b_max + 0.5``) gives ``b_max``; ``a = 0`` gives ``b_min``.
    """
    value = min_bits - 0.5 + float(action) * (max_bits - min_bits + 1)
    return int(min(max_bits, max(min_bits, math.floor(value + 0.5))))


def step_groups(profile: ModelProfile) -> list[str]:
    """The group each step of an episode sets: every layer's weights, then its inputs."""
    return [g for layer in profile for g in (layer.weight_group, layer.input_group)]


def lowering_order(profile: ModelProfile) -> list[str]:
    """HAQ's order for lowering widths: from the last layer back, each layer's inputs then weights."""
    return [g for layer in reversed(profile.layers) for g in (layer.input_group, layer.weight_group)]


def lower_to_budget(assignment: PrecisionAssignment, order: Sequence[str],
                    cost: Callable[[PrecisionAssignment], float],
                    legalise: Callable[[PrecisionAssignment], PrecisionAssignment],
                    budget: float, min_bits: int) -> Candidate:
    """Lower widths one bit at a time in ``order``, pass after pass, until the cost fits ``budget``.

    HAQ's action wall: the cost is checked after every single decrement, and a
    width at ``min_bits`` is skipped. Widths are never raised.

    Args:
        assignment: one integer width per group.
        order: the groups, in the order they are lowered within a pass.
        cost: the cost of an assignment, legalised for the backend.
        legalise: the backend's legalisation (the returned assignment is legal).

    Returns:
        The legal assignment and its cost; ``fits`` is False when every width in
        ``order`` reached ``min_bits`` and the cost still exceeds the budget.
    """
    bits = {g: int(assignment[g]) for g in assignment}
    limit = budget * (1 + BUDGET_SLACK)
    value = cost(assignment)
    # Each pass lowers at least one width by a bit or ends the loop, so it ends
    # within len(order) * max(bits) passes.
    while value > limit:
        lowered = False
        for group in order:
            if bits[group] <= min_bits:
                continue
            bits[group] -= 1
            lowered = True
            assignment = assignment.replace({group: bits[group]})
            value = cost(assignment)
            if value <= limit:
                break
        if not lowered:
            break
    return Candidate(legalise(assignment), value, value <= limit)


def layer_states(profile: ModelProfile) -> torch.Tensor:
    """The static part of HAQ's state, one row per layer, each column normalised to [0, 1].

    Columns: the first eight of :data:`STATE_FEATURES`. A column that is the same
    for every layer is 0.
    """
    rows = []
    for k, layer in enumerate(profile):
        conv = layer.kind == "conv2d"
        feature_map = math.prod(layer.input_shape[1:]) if conv else 1
        rows.append([k, layer.in_channels, layer.out_channels,
                     layer.kernel_size[0] if conv else 1, layer.stride[0] if conv else 0,
                     feature_map, layer.weight_numel, float(layer.depthwise)])
    table = torch.tensor(rows, dtype=torch.float64)
    low, high = table.min(0).values, table.max(0).values
    span = high - low
    out = torch.where(span > 0, (table - low) / torch.where(span > 0, span, 1.0), 0.0)
    return out.float()


@hookimpl
def register_strategies(register):
    register("rl", RLStrategy)
