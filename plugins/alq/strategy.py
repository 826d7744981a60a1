"""The ``alq`` strategy: adaptive loss-aware multi-bit quantization (Qu et al., CVPR 2020)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.api import (MAX_BITS, ModelProfile, MpsearchError, Param, PrecisionAssignment, SearchResult,
                          SpecError, Strategy, assignment_from_model, hookimpl, quantize_model,
                          quantized_layers, steps_per_epoch, train_epoch)

from .quantizers import (CONV_STRUCTURES, ALQWeightQuantizer, MultiBitActivationQuantizer, choose_grouping,
                         select_for_pruning)

# The paper's LeNet-5 schedule in epochs (App. C.1): each round prunes for about one
# epoch (App. B.1), then optimises bases for 10 and coordinates for 20; after the
# last round up to 30 more epochs of optimisation. The retraining after
# initialisation ("several epochs", App. B.3) is given half a round's Step 2.
INIT_BASES, INIT_COORDS = 5, 10
ROUND_PRUNE, ROUND_BASES, ROUND_COORDS = 1, 10, 20
FINAL_COORDS = 30
FLOAT_BITS = 32
# The fewest mini-batches a pruning round spreads its removals over: two spans of the
# first momentum's memory (beta1 = 0.9, about 10 batches), so that every iteration's
# scores rest on momenta renewed since the last removals. The paper prunes over about an
# epoch; one batch (what a short budget's share came to) removed half the bits at once.
MIN_PRUNE_BATCHES = 20


@dataclass
class Phase:
    """One stretch of the schedule: ``kind`` is "bases", "coords", "prune" or "final"."""

    kind: str
    round: int
    steps: int = 0


def plan_phases(total_steps: int, rounds: int, min_prune: int = MIN_PRUNE_BATCHES) -> list[Phase]:
    """The schedule of ``total_steps`` mini-batch steps, in the paper's proportions.

    Every round's pruning gets at least ``min_prune`` steps, and pruning at its
    minimum takes at most half of the budget: rounds are cut to
    ``total_steps // (2 * min_prune)`` (at least one), and a budget under
    ``2 * min_prune`` steps gives its one round half of them. The other phases
    share the rest in proportion to their epochs in the paper (largest
    remainders), so a short budget may leave some with none.
    """
    total_steps = int(total_steps)
    rounds = max(1, min(int(rounds), total_steps // (2 * min_prune)))
    least = max(1, min(min_prune, total_steps // 2))
    phases = [Phase("bases", 0), Phase("coords", 0)]
    weights = [INIT_BASES, INIT_COORDS]
    for r in range(1, rounds + 1):
        phases += [Phase("prune", r), Phase("bases", r), Phase("coords", r)]
        weights += [ROUND_PRUNE, ROUND_BASES, ROUND_COORDS]
    phases.append(Phase("final", rounds))
    weights.append(FINAL_COORDS)
    for p in phases:
        if p.kind == "prune":
            p.steps = least
    rest = total_steps - rounds * least
    others = [i for i, p in enumerate(phases) if p.kind != "prune"]
    total_w = sum(weights)
    ideal = {i: total_steps * weights[i] / total_w for i in range(len(phases))}
    # pruning keeps what it is due beyond its minimum when the budget allows
    for i, p in enumerate(phases):
        if p.kind == "prune":
            extra = min(int(ideal[i]) - least, rest) if ideal[i] >= least + 1 else 0
            p.steps += max(0, extra)
            rest -= max(0, extra)
    share = {i: rest * weights[i] / sum(weights[j] for j in others) for i in others}
    for i in others:
        phases[i].steps = int(share[i])
    left = rest - sum(phases[i].steps for i in others)
    for i in sorted(others, key=lambda i: (-(share[i] - int(share[i])), i))[:left]:
        phases[i].steps += 1
    return phases


def bits_schedule(start_bits: float, target_bits: float, rounds: int, ratio: float) -> tuple[list[float], float]:
    """Eq. 28's schedule of total weight bits after each round, ending at the target.

    Each round removes ``ratio`` of what remains (raised so that ``rounds``
    rounds reach the target), never going below the target.

    Returns:
        The bits after rounds 1..R and the ratio used.
    """
    if target_bits >= start_bits:
        return [start_bits] * rounds, 0.0
    ratio = max(ratio, 1 - (target_bits / start_bits) ** (1 / rounds))
    goals = [max(target_bits, start_bits * (1 - ratio) ** r) for r in range(1, rounds + 1)]
    goals[-1] = target_bits
    return goals, ratio


class _ALQSteps:
    """The "optimizer" :func:`~mpsearch.training.train_epoch` steps: one ALQ update per batch.

    ``mode`` is "prune" (Alg. 2: momenta in the alpha domain, then remove the
    coordinates the pruner names), "bases" (Alg. 3) or "coords" (Alg. 4). The
    learning rate drops by 10x after half of the phase's steps (App. B.2).
    Other parameters (biases) train with AMSGrad at the phase's rate, except
    while pruning.
    """

    def __init__(self, mode: str, layers: list[ALQWeightQuantizer], others: list[nn.Parameter], lr: float,
                 steps: int, l2: float, pruner=None):
        self.mode, self.layers, self.lr, self.steps, self.l2 = mode, layers, lr, steps, l2
        self.pruner = pruner
        self.t = 0
        self.others = (torch.optim.Adam(others, lr=lr, amsgrad=True)
                       if others and mode != "prune" else None)
        for q in layers:
            q.capture = mode == "bases"
            q.alpha.requires_grad_(mode != "bases")

    def rate(self) -> float:
        return self.lr * (0.1 if self.t >= self.steps / 2 else 1.0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for q in self.layers:
            q.alpha.grad = None  # (w_hat's gradient is fresh: forward makes a new leaf)
        if self.others is not None:
            self.others.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        lr = self.rate()
        if self.others is not None:
            for group in self.others.param_groups:
                group["lr"] = lr
            self.others.step()
        for q in self.layers:
            if self.mode == "bases":
                q.bases_step(lr)
            elif self.mode == "coords":
                q.coordinate_step(lr, self.l2)
            else:
                q.observe_alpha(self.l2)
        if self.mode == "prune":
            self.pruner(self.t)
        self.t += 1


class ALQStrategy(Strategy):
    """ALQ: multi-bit weights with adaptive per-group widths, pruned and trained on the loss.

    Qu et al., "Adaptive Loss-aware Quantization for Multi-bit Networks" (CVPR
    2020), Alg. 5. Every layer's weights are cut into groups (``structure``;
    fully connected layers channel-wise or sub-channel-wise, groups of 32-512
    where possible) and each group becomes ``B_g alpha_g``, ``I_g`` binary bases
    in ``{-1, +1}`` with positive coordinates, by structured sketching (Alg. 1,
    up to ``i_max`` bases). Then, after retraining the sketch (Step 2), ``rounds``
    rounds each (Step 1) remove coordinates with the least loss increase under
    AMSGrad's quadratic model (Eq. 13; per-layer top ``top_k`` %, re-sorted
    globally, an equal number of bits per iteration) until Eq. 28's schedule of
    total bits (``prune_ratio`` per round) reaches ``target_bits`` per weight, and
    (Step 2) optimise bases by exhaustive search per row (Eq. 19-20) with
    coordinates in closed form (Eq. 23), then coordinates by AMSGrad with L2
    (Eq. 21). A negative coordinate flips its basis. No float shadow weights and
    no straight-through estimate: the weights' gradient is taken at
    ``w_hat = B alpha``. A final coordinates phase follows the last round.
    Activations (``activation_bits`` > 0) are ``x_ref + D gamma`` (Eq. 24) with
    running-average ``x_ref`` and ``gamma``, one width for every layer's input.

    The trial starts from the study's float start (the paper quantizes
    pretrained networks). The trial's ``epochs`` are split in mini-batch steps in the paper's
    LeNet-5 proportions: retraining after sketching 5 (bases) + 10 (coordinates),
    each round 1 (pruning) + 10 + 20, final 30; every pruning round spreads its
    removals over at least ``MIN_PRUNE_BATCHES`` (20) batches, rounds are cut so
    that pruning at that minimum takes at most half of the steps (a budget under
    40 steps prunes once, over half of them), and the other phases may get none
    on a tiny budget. Learning rates drop 10x halfway through each phase.

    The assignment records every weight's group width (``parameter``
    granularity, 0 for removed groups) and, as each weight group's
    ``scale_bits``, its coordinates (32 bits each) and the table of ``I_g``
    (``ceil(log2(i_max + 1))`` bits per group), so ``size`` is Eq. 26's storage
    plus that table.

    Parameters (defaults):
        target_bits: range 0.4-2.0; average bits per weight at the end (may be < 1).
        rounds: integer range 2-6; pruning rounds ``R`` (the paper: 6 on LeNet-5),
            cut where the budget cannot give each its 20 pruning batches.
        prune_ratio: range 0.3-0.4; the least share of bits each round removes
            (Eq. 28's 0.3; 0.4 on LeNet-5).
        i_max: ``[4, 6, 8]``; the most bases per group after sketching (the paper: 6
            for VGG, 8 for ResNet).
        structure: fixed ``"auto"``; or ``"pixel"``, ``"kernel"``, ``"channel"`` for
            every convolution (the paper's LeNet-5: ``"kernel"``).
        activation_bits: ``[0, 2, 4]``; 0 keeps activations float.
        lr_bases: fixed 1e-3, the paper's (App. B.2).
        lr_coords: fixed 1e-3; the paper's 1e-4 is for 20-epoch phases (see below).
        alpha_l2: fixed 1e-4; L2 on the coordinates (not given in the paper).
        top_k: fixed 1.0; the per-layer percentage sorted again globally (App. B.1).
        sigma: fixed 0.0; Alg. 1's relative reconstruction-error threshold.

    Deviations:
        - ``lr_coords`` defaults to 1e-3, not the paper's 1e-4, which is for
          20-epoch phases (about 7,800 steps on MNIST at batch 128). AMSGrad moves a
          coordinate by about ``lr`` per step, and a trial's phases have tens to a
          few hundred steps; 1e-3 is the paper's rate for the bases. (Not tuned:
          no comparison of the two rates was run.)
        - Eq. 28 counts coordinates; here the schedule and each pruning
          iteration's quota count bits (a coordinate removes its group's ``n``
          weights' bit), so ``target_bits`` is the average per weight even when
          layers' group sizes differ (the paper's LeNet-5 has 25 to 500). With
          equal group sizes it is the paper's ``M_p`` coordinates per iteration.
          ``prune_ratio`` is raised when ``rounds`` rounds of it would miss the target.
        - A pruning round takes at least 20 batches (``MIN_PRUNE_BATCHES``), or
          its proportional share when larger; the paper prunes over about an
          epoch, which short budgets cannot spend.
        - The per-layer top-k % is widened to twice the iteration's share of
          bits when fewer pruning iterations than the paper's (an epoch's worth)
          leave too few candidates; a layer keeps at least one coordinate.
        - Alg. 1's threshold is on ``||eps||^2 / ||w||^2`` (its elementwise
          ``eps / w`` is undefined for zero weights).
        - ``H = sqrt(v_hat) + 1e-8`` (AMSGrad's epsilon); momenta of the
          coordinates restart when the bases change, those of the weights run on.
        - Biases (not quantized) train with AMSGrad at the phase's rate (not
          while pruning).
        - The retraining after sketching (5 + 10 paper-epoch units) and its share
          are this implementation's choice ("several epochs" in App. B.3). The final
          phase optimises coordinates only, with the same 10x drop at its half
          (the paper: bases and coordinates, "gradually decayed").
        - Eq. 13's ``g = a m`` uses ``lr_coords`` as ``a``. A flipped coordinate's
          first momentum flips sign with it.
        - Activations: the gradient passes straight through inside the levels'
          range (as PACT, which Sec. 4 follows); the paper gives no rule. The
          running average has momentum 0.1 over per-batch least-squares fits of
          ``(x_ref, gamma)``, started by greedy residual sketching of the first
          training batch; ``x_ref`` may be negative (signed inputs). The first
          layer's input (the image) is quantized like the others.
        - The final phase is this strategy's fine-tuning: the host legalises the
          widths before it, and a backend that rounds widths up gets them there:
          new bases start at ``alpha = 0`` along the weights' descent direction and
          train in that phase.
    """

    description = "ALQ: multi-bit binary bases with adaptive per-group widths (Qu et al. 2020)"
    label = "alq"
    parameters: ClassVar[Mapping[str, Param]] = {
        "target_bits": Param(low=0.4, high=2.0),
        "rounds": Param(low=2, high=6, integer=True),
        "prune_ratio": Param(low=0.3, high=0.4),
        "i_max": Param(choices=(4, 6, 8)),
        "structure": Param(value="auto"),
        "activation_bits": Param(choices=(0, 2, 4)),
        "lr_bases": Param(value=1e-3),
        "lr_coords": Param(value=1e-3),
        "alpha_l2": Param(value=1e-4),
        "top_k": Param(value=1.0),
        "sigma": Param(value=0.0),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names and values outside each parameter's domain."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}

        def number(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, (int, float))

        for name in ("target_bits", "lr_bases", "lr_coords"):
            for v in merged[name].values():
                if not number(v) or not v > 0:
                    raise SpecError(f"{where}.{name}: {v!r} must be a positive number.")
        for name in ("alpha_l2", "sigma"):
            for v in merged[name].values():
                if not number(v) or v < 0:
                    raise SpecError(f"{where}.{name}: {v!r} must be a number >= 0.")
        for name, lo, hi in (("prune_ratio", 0, 1),):
            for v in merged[name].values():
                if not number(v) or not (lo <= v < hi) or (name == "prune_ratio" and v == 0):
                    raise SpecError(f"{where}.{name}: {v!r} must be a fraction in "
                                    f"{'(0, 1)' if name == 'prune_ratio' else '[0, 1)'}.")
        for v in merged["top_k"].values():
            if not number(v) or not 0 < v <= 100:
                raise SpecError(f"{where}.top_k: {v!r} must be a percentage in (0, 100].")
        for name, lo, hi in (("rounds", 1, 100), ("i_max", 1, 8), ("activation_bits", 0, 8)):
            p = merged[name]
            if p.low is not None and not p.integer:
                raise SpecError(f"{where}.{name}: a range needs integer low and high.")
            for v in p.values():
                if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                    raise SpecError(f"{where}.{name}: {v!r} must be an integer {lo}-{hi}.")
        for v in merged["structure"].values():
            if v not in CONV_STRUCTURES:
                raise SpecError(f"{where}.structure: {v!r} is not one of {', '.join(CONV_STRUCTURES)}.")

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Sketch, then prune and optimise round by round; the final coordinates phase is the fine-tuning."""
        p = self.resolve(params)
        profile, model = context.profile, context.model
        per_epoch = steps_per_epoch(context.train, context.training.batch_size)
        budget = max(1, round(context.epochs * per_epoch))
        float_accuracy = context.float_accuracy
        if math.isnan(float_accuracy):
            float_accuracy = context.evaluate(model)

        act_bits = _legal_activation_bits(context, profile, int(p["activation_bits"]))
        layers = attach_alq(model, profile, i_max=int(p["i_max"]), structure=p["structure"],
                            sigma=float(p["sigma"]), activation_bits=act_bits)
        quantizers = list(layers.values())
        for layer in quantized_layers(model).values():
            layer.weight.requires_grad_(False)  # no float shadow weights: only B and alpha train
        taken = {id(q.alpha) for q in quantizers} | {id(layer.weight) for layer in quantized_layers(model).values()}
        others = [w for w in model.parameters() if id(w) not in taken and w.requires_grad]
        if act_bits:
            calibrate_activations(model, context.train, context.training.batch_size)
        sketch_accuracy = context.evaluate(model)
        start_bits = _total_bits(quantizers)

        phases = plan_phases(budget, int(p["rounds"]))
        rounds = max(ph.round for ph in phases)
        numel = profile.weight_numel
        goals, ratio = bits_schedule(start_bits, float(p["target_bits"]) * numel, rounds,
                                     float(p["prune_ratio"]))
        top = float(p["top_k"]) / 100
        costs = [q.group_size for q in quantizers]
        history: list[dict[str, Any]] = []

        def pruner_for(goal: float, steps: int):
            begin = _total_bits(quantizers)

            def prune(t: int) -> None:
                aim = begin - (t + 1) * (begin - goal) / steps
                now = _total_bits(quantizers)
                if now <= aim:
                    return
                scores = [q.prune_scores(float(p["lr_coords"])) for q in quantizers]
                wanted = max(top, min(1.0, 2 * (now - aim) / max(now, 1)))
                for q, idx in zip(quantizers, select_for_pruning(scores, costs, now - aim, wanted)):
                    q.remove(idx)

            return prune

        # Validation accuracy is measured where a round (or the sketch's retraining, or the
        # final phase) ends: on a short budget, evaluating after every phase costs more than it trains.
        last_of_round = {}
        for i, phase in enumerate(phases):
            if phase.steps:
                last_of_round[(phase.round, phase.kind == "final")] = i
        ends = set(last_of_round.values())
        final = phases[-1]
        for index, phase in enumerate(phases[:-1]):
            if phase.steps:
                self._run_phase(context, p, phase, quantizers, others, numel, index in ends,
                                pruner_for(goals[phase.round - 1], phase.steps)
                                if phase.kind == "prune" else None, history)
        self._final = (p, final, quantizers, others, numel, layers, history)
        self._attrs: dict[str, Any] = {
            "rounds": rounds,
            "rounds_requested": int(p["rounds"]),
            "prune_ratio_used": ratio,
            "activation_bits": act_bits or FLOAT_BITS,
            "val_accuracy_float": float_accuracy,
            "val_accuracy_sketch": sketch_accuracy,
            "sketch_weight_bits": start_bits / numel,
            "alq_steps": budget,
            "schedule": history,
        }
        if not final.steps:
            self._finish(context)
        return SearchResult(model, assignment_from_model(model, profile), final.steps / per_epoch,
                            self._attrs)

    def finetune(self, context, model: nn.Module, assignment: PrecisionAssignment, epochs: float,
                 params: Mapping[str, Any]) -> None:
        """The final phase: coordinates only, at the legal widths (a widened group's new bases
        start at ``alpha = 0``)."""
        p, final, quantizers, others, numel, _, history = self._final
        self._run_phase(context, p, final, quantizers, others, numel, True, None, history)
        self._finish(context)

    @staticmethod
    def _run_phase(context, p: Mapping[str, Any], phase, quantizers, others, numel: int,
                   evaluate: bool, pruner, history: list[dict[str, Any]]) -> None:
        """Train one phase of the schedule, reporting each epoch's share of it."""
        per_epoch = steps_per_epoch(context.train, context.training.batch_size)
        mode = {"final": "coords"}.get(phase.kind, phase.kind)
        lr = float(p["lr_bases"] if mode == "bases" else p["lr_coords"])
        stepper = _ALQSteps(mode, quantizers, others, lr, phase.steps, float(p["alpha_l2"]), pruner)
        left = phase.steps
        metrics: dict[str, Any] = {}
        while left > 0:
            n = min(left, per_epoch)
            metrics = train_epoch(context.model, context.train, stepper,
                                  batch_size=context.training.batch_size, generator=context.generator,
                                  augment=context.augment, max_batches=n)
            context.epochs_trained += n / per_epoch
            left -= n
            if left == 0 and evaluate:
                metrics["val_accuracy"] = context.evaluate(context.model)
            metrics.update(round=phase.round, steps=n, average_weight_bits=_total_bits(quantizers) / numel)
            context.report(phase=f"alq-{phase.kind}", **metrics)
        history.append({"phase": phase.kind, "round": phase.round, "steps": phase.steps,
                        "average_weight_bits": _total_bits(quantizers) / numel,
                        **({"val_accuracy": metrics["val_accuracy"]} if "val_accuracy" in metrics else {})})

    def _finish(self, context) -> None:
        """Stop training the coordinates and write the deployed weights into the layers; record storage."""
        _, _, quantizers, _, numel, layers, _ = self._final
        for q in quantizers:
            q.capture = False
            q.alpha.requires_grad_(False)
        with torch.no_grad():
            modules = dict(context.model.named_modules())
            for name, q in layers.items():
                modules[name].weight.copy_(q(modules[name].weight))  # the deployed weights, for readers
        storage = sum(q.storage_bits() for q in quantizers)
        float_bits = FLOAT_BITS * numel
        self._attrs.update({
            "average_bits_per_group": float(sum(int(q.group_widths().sum()) for q in quantizers)
                                            / sum(q.group_widths().numel() for q in quantizers)),
            "storage_kb": storage / 8 / 1000,
            "float_storage_kb": float_bits / 8 / 1000,
            "compression_ratio": float_bits / storage if storage else None,
            "removed_groups": sum(int((q.group_widths() == 0).sum()) for q in quantizers),
            "groups": sum(q.group_widths().numel() for q in quantizers),
            "layer_bits": {n: float(q.group_widths().double().mean()) for n, q in layers.items()},
            "layer_structure": {n: f"{q.grouping} (n={q.group_size})" for n, q in layers.items()},
        })


def attach_alq(model: nn.Module, profile: ModelProfile, *, i_max: int = 6, structure: str = "auto",
               sigma: float = 0.0, activation_bits: int = 0) -> dict[str, ALQWeightQuantizer]:
    """Sketch every profiled layer's weights into ALQ groups and quantize its input (``activation_bits`` > 0).

    Returns:
        Layer name -> its weight quantizer, in the profile's order.
    """
    modules = dict(model.named_modules())
    made: dict[str, ALQWeightQuantizer] = {}

    def weight(layer):
        w = modules[layer.name].weight
        made[layer.name] = ALQWeightQuantizer(w, choose_grouping(w.shape, structure), i_max, sigma)
        return made[layer.name]

    def activation(layer):
        return MultiBitActivationQuantizer(activation_bits) if activation_bits else None

    quantize_model(model, profile, weight, activation)
    return made


@torch.no_grad()
def calibrate_activations(model: nn.Module, data, batch_size: int) -> None:
    """Set every activation quantizer's ``x_ref`` and ``gamma`` from the first training batch (in order)."""
    x, _ = next(iter(data.batches(batch_size)))
    was_training = model.training
    model.eval()  # batch-norm statistics and the like stay as they are
    for m in model.modules():
        if isinstance(m, MultiBitActivationQuantizer):
            m.train()
    model(x)
    model.train(was_training)


def _total_bits(quantizers: list[ALQWeightQuantizer]) -> float:
    """``sum_g n_g I_g`` over every layer: the weights' bits."""
    return float(sum(int(q.group_widths().sum()) * q.group_size for q in quantizers))


def _legal_activation_bits(context, profile: ModelProfile, bits: int) -> int:
    """The width every input gets after the backend's legalisation (0: float)."""
    if bits == 0:
        return 0
    probe = PrecisionAssignment.uniform(profile, 1, bits)
    legal = context.legalise(probe)
    widths = {legal[layer.input_group] for layer in profile}
    if len(widths) != 1:
        raise MpsearchError("strategy 'alq' takes one activation width, but the backend legalises "
                            f"{bits} bits differently per layer: {sorted(widths)}.")
    width = widths.pop()
    return 0 if width >= MAX_BITS else int(width)


@hookimpl
def register_strategies(register):
    register("alq", ALQStrategy)
