"""The ``rl`` strategy: HAQ's DDPG agent picks each layer's widths under a cost budget."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from mpsearch.plugins.strategy_random import BUDGET_SLACK, Candidate, check_search_space

from mpsearch.assignment import PrecisionAssignment
from mpsearch.ddpg import DDPG, DDPGConfig
from mpsearch.errors import MpsearchError
from mpsearch.hookspecs import hookimpl
from mpsearch.profile import ModelProfile
from mpsearch.quant import quantize_at
from mpsearch.spec import Param
from mpsearch.strategy import SearchResult, Strategy

REWARD_SCALE = 0.1  # λ in HAQ's reward R = λ (acc_quant - acc_origin)
BUFFER_PER_STEP = 128  # HAQ's replay buffer: 128 transitions per step of an episode
AGENT_SEED_OFFSET = 7_919  # the agent's seed is the trial's plus this: its draws leave the data order alone
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
    times the cost of the all-``max_bits`` assignment. A copy of the trial's
    start (the study's float start) is quantized at the widths, its clips
    calibrated, fine-tuned briefly (not at all with ``[training] epochs = 0``:
    HAQ's reward without fine-tuning), and scored on the validation split: the
    reward is ``0.1 (acc_quant - acc_origin)`` (HAQ's reward), with
    ``acc_origin`` the start's validation accuracy. Every transition of the episode gets the reward,
    γ = 1, and the critic's target subtracts a moving-average baseline
    (:mod:`mpsearch.ddpg`; HAQ took it from AMC).

    The trial: ``episodes`` episodes run, the first ``warmup`` of them with uniformly random
    actions; the others act with the actor plus noise drawn from a normal
    distribution truncated to [0, 1], σ = ``noise`` · ``noise_decay`` ^ (episode
    - warmup). After every episode from the last warm-up one on, the agent
    takes one DDPG update per transition of the episode (HAQ's ``n_update`` = 1).
    The episode of the highest reward (ties: lower cost, then the earlier one) is
    quantized again from the start and handed to the shared fine-tuning for the
    trial's ``epochs``, as ``random``'s is, so the returned model gets the
    training a one-shot strategy gets; the candidates' fine-tuning is the
    search's own cost. Every epoch of training counts in ``epochs_trained``.

    Parameters (defaults):
        budget: range 0.1-0.6; the cost budget as a fraction of the all-``max_bits``
            assignment's cost (legalised) on the study's first cost objective.
        episodes: integer range 10-30; episodes of the search (HAQ: 600).
        warmup: fixed 4; episodes of random actions first (HAQ's code: 20).
        noise / noise_decay: fixed 0.5 and 0.99; the exploration σ and its decay
            per episode (HAQ's paper and code).
        finetune_images: fixed 2000; the training images each candidate is
            fine-tuned on, a stratified subset drawn once per trial (HAQ: 20,000
            of ImageNet's 1.28 M).
        finetune_epochs: fixed 1; epochs over that subset per candidate (HAQ: 1).
        min_bits, max_bits: fixed 2 and 8 (HAQ's linear quantization).
        quantizer: fixed ``"dorefa-pact"``, or ``"minmax"``.

    The agent (HAQ's defaults, :class:`~mpsearch.ddpg.DDPGConfig`): actor and
    critic of 400 and 300 hidden units, Adam at 1e-4 (actor) and 1e-3 (critic),
    τ = 0.01, batches of 64, a buffer of 128 transitions per step, moving-average
    rate 0.5. It runs on the CPU whatever the trial's device, seeded from the
    trial's seed.

    Deviations from HAQ:
        - Tens of episodes rather than 600, and 4 warm-up episodes rather than 20;
          with 8 steps an episode (LeNet-5) a warm-up fills less than one batch,
          so early batches are drawn with replacement.
        - Updates begin after the last warm-up episode rather than after the first
          policy episode, so that the first policy episode already uses a
          trained actor.
        - Candidates fine-tune with the spec's optimizer and learning rate on a
          subset of the training split (HAQ: SGD at 1e-3), and are scored on the
          trial's validation split (HAQ: 10,000 held-out training images).
          ``acc_origin`` is the float model's validation accuracy.
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
        "episodes": Param(low=10, high=30, integer=True),
        "warmup": Param(value=4),
        "noise": Param(value=0.5),
        "noise_decay": Param(value=0.99),
        "finetune_images": Param(value=2000),
        "finetune_epochs": Param(value=1.0),
        "min_bits": Param(value=2),
        "max_bits": Param(value=8),
        "quantizer": Param(value="dorefa-pact"),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names, bad budgets, counts, noise and epochs, and crossed or invalid widths."""
        super().check_space(space, where)
        check_search_space(
            {**cls.parameters, **space}, where,
            numbers={"budget": (lambda v: v > 0, "a positive number"),
                     "finetune_epochs": (lambda v: v > 0, "a positive number"),
                     "noise": (lambda v: v >= 0, "a number of at least 0"),
                     "noise_decay": (lambda v: 0 < v <= 1, "a number in (0, 1]")},
            integers=(("episodes", 1, None), ("warmup", 0, None), ("finetune_images", 1, None)))

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Run the agent's episodes from the trial's start; hand the best episode's widths on."""
        p = self.resolve(params)
        if not context.objectives:
            raise MpsearchError("strategy 'rl' needs a cost objective for its budget; add one "
                                "to [study] objectives.")
        name = next(iter(context.objectives))
        objective = context.objectives[name]
        if objective.direction != "minimize":
            raise MpsearchError(f"strategy 'rl' takes its budget from the study's first cost "
                                f"objective, and {name!r} is maximised; list a minimised cost "
                                f"(e.g. bitops) first in [study] objectives.")
        min_bits, max_bits = int(p["min_bits"]), int(p["max_bits"])
        profile = context.profile

        def cost(assignment: PrecisionAssignment) -> float:
            return context.costs(assignment)[name]  # legalised for the backend

        full = PrecisionAssignment.uniform(profile, max_bits, max_bits)
        reference = cost(full)
        budget = float(p["budget"]) * reference

        start = context.model
        acc_origin = context.float_accuracy
        if math.isnan(acc_origin):
            acc_origin = context.evaluate(start)

        def quantized(assignment: PrecisionAssignment) -> torch.nn.Module:
            model = quantize_at(copy.deepcopy(start), profile, assignment, p["quantizer"])
            context.calibrate(model)
            return model

        subset = finetune_subset(context.train, int(p["finetune_images"]), context.seed)

        states = layer_states(profile)
        steps = 2 * len(profile)
        config = DDPGConfig(buffer_size=BUFFER_PER_STEP * steps)
        agent = DDPG(states.shape[1] + 2, config, seed=context.seed + AGENT_SEED_OFFSET)
        order = lowering_order(profile)
        episodes, warmup = int(p["episodes"]), int(p["warmup"])
        started, trained_before = time.perf_counter(), context.epochs_trained
        agent_seconds = 0.0
        log: dict[str, list] = {k: [] for k in ("reward", "accuracy", "cost", "weight_bits", "sigma")}
        best: tuple[float, float, int] | None = None  # (reward, -cost, -episode)
        best_candidate: Candidate | None = None
        over_budget = 0
        for episode in range(episodes):
            tick = time.perf_counter()
            sigma = float(p["noise"]) * float(p["noise_decay"]) ** max(0, episode - warmup)
            observed, actions = [], []
            previous = 1.0
            for index in range(len(profile)):
                for flag in (WEIGHT_STEP, ACTIVATION_STEP):
                    state = torch.cat([states[index], torch.tensor([flag, previous])])
                    action = agent.random_action() if episode < warmup else agent.act(state, sigma)
                    observed.append(state)
                    actions.append(action)
                    previous = action
            agent_seconds += time.perf_counter() - tick

            bits = {g: action_to_bits(a, min_bits, max_bits)
                    for g, a in zip(step_groups(profile), actions)}
            candidate = lower_to_budget(full.replace(bits), order, cost, context.legalise, budget,
                                        min_bits)
            over_budget += not candidate.fits
            model = quantized(candidate.assignment)
            if context.epochs > 0:
                accuracy = context.fit(model, float(p["finetune_epochs"]), data=subset, report=False,
                                       phase="candidate")["val_accuracy"]
            else:  # post-training: HAQ's reward measured without fine-tuning
                accuracy = context.evaluate(model)
            del model
            reward = REWARD_SCALE * (accuracy - acc_origin)
            for key, value in (("reward", reward), ("accuracy", accuracy), ("cost", candidate.cost),
                               ("weight_bits", candidate.assignment.average_weight_bits()),
                               ("sigma", sigma if episode >= warmup else None)):
                log[key].append(value)
            rank = (reward, -candidate.cost, -episode)
            if best is None or rank > best:
                best, best_candidate = rank, candidate

            tick = time.perf_counter()
            for t in range(steps):
                last = t == steps - 1
                agent.observe(observed[t], actions[t], reward, observed[t if last else t + 1], last)
            if episode >= warmup - 1:
                for _ in range(steps):
                    agent.update()
            agent_seconds += time.perf_counter() - tick
        search_seconds = time.perf_counter() - started
        candidate_epochs = context.epochs_trained - trained_before

        assert best is not None and best_candidate is not None  # episodes >= 1
        model = quantized(best_candidate.assignment)
        attrs = {
            "budget": budget, "budget_fraction": float(p["budget"]), "budget_objective": name,
            "budget_unit": objective.unit, "reference_cost": reference, "reference_bits": max_bits,
            "acc_origin": acc_origin, "episodes": episodes, "warmup": min(warmup, episodes),
            "best_episode": -best[2], "best_reward": best[0], "over_budget": over_budget,
            "finetune_subset": len(subset), "candidate_epochs": candidate_epochs,
            "search_seconds": search_seconds, "agent_seconds": agent_seconds,
            "episode_reward": log["reward"], "episode_accuracy": log["accuracy"],
            "episode_cost": log["cost"], "episode_weight_bits": log["weight_bits"],
            "episode_sigma": log["sigma"],
        }
        return SearchResult(model, best_candidate.assignment, float(context.epochs), attrs)


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


def finetune_subset(train, images: int, seed: int):
    """A stratified subset of about ``images`` training images (all of them if there are fewer)."""
    if images >= len(train):
        return train
    return train.split(images / len(train), seed=seed)[1]


@hookimpl
def register_strategies(register):
    register("rl", RLStrategy)
