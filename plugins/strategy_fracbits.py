"""The ``fracbits`` strategy: fractional bit-widths under an L1 penalty to a target cost (Yang & Jin 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mpsearch.api import (MAX_BITS, Bits, DoReFaQuantizer, FixedBits, LayerProfile, LearnableBits,
                          ModelProfile, MpsearchError, Objective, PACTQuantizer, Param, PrecisionAssignment,
                          SearchResult, SpecError, Strategy, bit_parameters, bits_shape, group_sum, hookimpl,
                          quantize_model, quantizers, steps_per_epoch, suggest_param)

MAX_CANDIDATE_BITS = 8  # the paper's candidate widths end at 8
REFERENCE_BITS = 8  # target_fraction is a fraction of the cost at 8 bits everywhere
TOLERANCE = 0.01  # the discretised cost must land within 1 % of the target
EDGE = 1e-3  # an initial width of max_bits + 0.5 starts this far inside the range instead
# The penalty is on cost relative to the all-8-bit model's. The paper's kappa is 0.1 per
# GBitOPs and 1 per MB on ResNet-18 and MobileNet, tuned on ResNet-18, whose 8-bit model
# costs 116.1 GBitOPs and 11.68 MB: both are 11.6 per all-8-bit cost.
KAPPA = 11.6
# What a run without these parameters uses: the paper's kappa and split, and lr_bits (see below).
PAPER_DEFAULTS = {"kappa": "auto", "split": 0.8, "lr_bits": 10.0}
GRANULARITIES = ("layer", "channel")
WEIGHT_ONLY = ("auto", True, False)
FLOAT_BITS = MAX_BITS  # an unquantized group counts as 32 bits


class FracBitsStrategy(Strategy):
    """FracBits: fractional widths trained under an L1 penalty to a target cost, thresholded, fine-tuned.

    Yang & Jin, "FracBits: Mixed Precision Quantization via Fractional
    Bit-Widths" (AAAI 2021). Weights are quantized with DoReFa, layer inputs with
    PACT (learnable clip alpha; two-sided where a layer's input is signed, as the
    paper's footnote does for MobileNetV2). Every width is a learnable fractional
    ``lambda``; the quantizer interpolates the two neighbouring integer widths,
    ``f = f_b + (lambda - b)(f_{b+1} - f_b)`` with ``b = floor(lambda)``, in the
    forward and the backward pass (Eq. 1-2: the gradient with respect to lambda
    is ``f_{b+1} - f_b``, not a straight-through estimate). Weight widths are per
    layer or per output channel (``granularity``; FracBits' "kernel", one filter
    producing one output channel, is the engine's ``channel``); input widths are
    per layer. The loss is ``CE + kappa * |cost(lambda) - target| / reference``
    (Eq. 6-7, with the cost relative to the all-8-bit model's: see below), cost
    the objective's differentiable form. Every width starts at ``b_t + 0.5``,
    where ``b_t`` is the largest uniform width (first and last layers at their fixed width) whose cost does
    not exceed the target (``min_bits`` when none fits). The search trains for
    ``split`` of the trial's steps on the trial's one cosine schedule; then the
    widths are discretised, ``width = floor(lambda) + [frac(lambda) > t]``, with
    one threshold ``t`` for weights and activations found by binary search so
    that the cost of the legalised assignment lands within 1 % of the target;
    the host legalises and freezes them, and the shared fine-tuning trains the
    rest of the steps on the same schedule.

    The threshold search (:func:`threshold_search`) bisects over the sorted
    distinct fractional parts, the only thresholds at which the cost changes
    (cost is non-increasing in ``t``). It returns the closer to the target of the
    two thresholds around it when that is within 1 %; otherwise the one not
    above the target; when even every width floored exceeds the target, all
    floored. The achieved deviation and whether it is within 1 % are recorded.

    Parameters (defaults):
        target_fraction: range 0.1-0.6; the target as a fraction of the cost of
            8 bits on every quantized group (weights and inputs). Unused when
            ``target`` is given.
        target: fixed 0, meaning "use target_fraction"; otherwise the target in
            the objective's unit (GBitOPs, MB).
        kappa: fixed ``"auto"``, 11.6; the penalty's weight per all-8-bit cost
            (the paper's 0.1 per GBitOPs and 1 per MB on ResNet-18; see below);
            or a number of at least 0.
        split: range 0.6-0.9; the share of the training steps that searches
            (the paper: 0.8, also what a run without ``split`` uses); 1 searches
            to the end and discretises without fine-tuning.
        lr_bits: fixed 10; the widths' learning rate as a multiple of the
            spec's (the paper trains them with the weights' optimizer, at 1; see
            below); 0 freezes them at their initial width.
        granularity: fixed ``"layer"``, or ``"channel"`` (FracBits' kernel-wise).
        first_last_bits: fixed 0: the first and last layers are learned like
            the rest (the paper keeps them at 8 bits; see below); or a width at
            which their weights and inputs stay.
        objective: fixed ``""``, meaning the study's first cost objective; any
            registered objective with a differentiable form.
        weight_only: fixed ``"auto"``: inputs stay float when the objective does
            not depend on activation widths (size: the paper's model-size
            experiments are weight-only), quantized otherwise; or true / false.
        min_bits: fixed 0, meaning the paper's candidate range: 2-8 for
            layer-wise search with weights and inputs quantized, 1-8 for
            weight-only and for kernel-wise (``channel``) search; or 1-8.

    Deviations and choices:
        - The penalty is on cost relative to the all-8-bit model's cost
          (``reference_cost``), with ``kappa`` 11.6: the paper's kappa (0.1 per
          GBitOPs, 1 per MB) depends on the unit and on the model's scale, and
          was set for ResNet-18 and MobileNet at tens of GBitOPs; on ResNet-18 the
          relative penalty is the paper's for both units (its 8-bit model costs
          116.1 GBitOPs and 11.68 MB), while on LeNet-5 (0.15 GBitOPs) the
          paper's per-unit kappa pulls a width by 1e-5 to 1e-3 per step and
          2-epoch trials ended within 0.02 bit of where they started. The pull
          per width is now the same share of the trial's penalty at any scale.
        - The widths learn at ``lr_bits`` (10) times the spec's learning rate, on
          the trial's schedule: at 1, LeNet-5's widths ended within 0.1 bit of
          where they started in one-epoch trials of mnist-mini (56 search steps)
          and the threshold search split them on hundredths of a bit; at 10 they
          spread 0.9 bit apart (3.28-4.18 from 3.5), the expensive conv2 lowest.
          A longer budget moves them further on the same schedule.
        - A layer's per-channel widths are preconditioned (:func:`precondition`):
          their mean moves as the layer's one width would, and each deviates by
          its own gradient; with the plain gradient each channel sees the layer's
          pull divided by its channels and would not move in a short trial.
        - The first and last layers are learned like the others, as uniform QAT
          and BitPruning quantize them here; the paper keeps them at 8 bits
          (following SAT). On LeNet-5 those two cost 0.014 of uniform 4-bit's
          0.037 GBitOPs: one-epoch trials of mnist-mini from the float start
          reached 97.0 % validation accuracy at 0.021 GBitOPs with them learned,
          and 96.3 % at 0.028 with them at 8 bits. ``first_last_bits = 8`` is the
          paper's setting.
        - The engine's DoReFa rescales its ``[-1, 1]`` output to the float
          weights' mean magnitude, and PACT's clip starts at the first batch's
          maximum (see :mod:`mpsearch.quant.quantizers`): without them LeNet-5
          (no batch normalisation) does not train.
        - No learning-rate warm-up (the paper warms up 5 epochs): the spec's
          optimizer and schedule are used as they are.
        - Widths get no weight decay (it would be a pressure towards 0 bits that
          the paper's loss does not have); PACT's alpha keeps the spec's (PACT
          regularises alpha with L2).
        - After every step the widths are projected back into
          ``[min_bits, max_bits]`` (the engine's widths pass the gradient at the
          bounds, so a width on a bound still moves when the penalty turns).
        - The discretisation happens at the step ``round(split * steps)``, not
          at an epoch's end, so a 1- or 2-epoch trial still searches 80 % and
          fine-tunes 20 %. The fine-tuning's optimizer starts afresh (its
          momentum is not carried over from the search); the schedule goes on.
        - The paper's kernel-wise experiments (Table 5) use the candidate range
          1-8 although weights and inputs are quantized; ``min_bits`` 0 follows
          the paper, ``min_bits = 2`` gives 2-8 there.
        - Costs during the threshold search are those of the legalised
          assignment, so the target holds for what the backend runs.
    """

    label = "fracbits"
    resumable = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "target_fraction": Param(low=0.1, high=0.6),
        "target": Param(value=0.0),
        "kappa": Param(value="auto"),
        "split": Param(low=0.6, high=0.9),
        "lr_bits": Param(value=10.0),
        "granularity": Param(value="layer"),
        "first_last_bits": Param(value=0),
        "objective": Param(value=""),
        "weight_only": Param(value="auto"),
        "min_bits": Param(value=0),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names, invalid values, and a ``target_fraction`` a given target leaves unused."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        for name, lowest in (("target_fraction", 0.0), ("target", 0.0)):
            for v in merged[name].values():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lowest or (
                        name == "target_fraction" and v == 0):
                    what = "a positive number" if name == "target_fraction" else \
                        "a cost of at least 0 (0: use target_fraction)"
                    raise SpecError(f"{where}.{name}: {v!r} must be {what}.")
        for v in merged["kappa"].values():
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise SpecError(f"{where}.kappa: {v!r} must be a number of at least 0, or \"auto\".")
        for v in merged["split"].values():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise SpecError(f"{where}.split: {v!r} must be a share of the training in (0, 1].")
        for v in merged["lr_bits"].values():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise SpecError(f"{where}.lr_bits: {v!r} must be a number of at least 0 (a multiple of "
                                f"the spec's learning rate).")
        for v in merged["granularity"].values():
            if v == "kernel":
                raise SpecError(f"{where}.granularity: FracBits' kernel-wise widths (one per filter, "
                                f"i.e. per output channel) are the granularity \"channel\"; use it.")
            if v not in GRANULARITIES:
                raise SpecError(f"{where}.granularity: {v!r} is not one of {', '.join(GRANULARITIES)}.")
        for name, lowest, highest in (("first_last_bits", 0, MAX_BITS), ("min_bits", 0, MAX_CANDIDATE_BITS)):
            p = merged[name]
            if p.low is not None and not p.integer:
                raise SpecError(f"{where}.{name}: a range of widths needs integer low and high.")
            zero = "not fixed" if name == "first_last_bits" else "the paper's range"
            for v in p.values():
                if isinstance(v, bool) or not isinstance(v, int) or not lowest <= v <= highest:
                    raise SpecError(f"{where}.{name}: {v!r} must be an integer {lowest}-{highest} "
                                    f"(0: {zero}).")
        for v in merged["objective"].values():
            if not isinstance(v, str):
                raise SpecError(f"{where}.objective: {v!r} must be an objective's name (\"\": the "
                                f"study's first cost objective).")
        for v in merged["weight_only"].values():
            if v not in WEIGHT_ONLY or (v in (0, 1) and not isinstance(v, bool)):
                raise SpecError(f"{where}.weight_only: {v!r} must be true, false or \"auto\".")
        if "target_fraction" in space and 0 not in merged["target"].values():
            raise SpecError(f"{where}: target_fraction is never used when target is given (not 0); "
                            f"drop one of them.")

    def suggest(self, trial: Any, space: Mapping[str, Param], prefix: str) -> dict[str, Any]:
        """Draw ``target`` when a space opens it, ``target_fraction`` only where the drawn target is 0."""
        self.check_space(space, f"strategy {prefix!r} space")
        merged = {**self.parameters, **space}
        drawn: dict[str, Any] = {}
        if not (merged["target"].fixed and merged["target"].value == 0):
            drawn["target"] = suggest_param(trial, f"{prefix}.target", merged["target"])
        if not drawn.get("target"):
            drawn.pop("target", None)  # a drawn 0 means target_fraction: recorded as absent
            drawn["target_fraction"] = suggest_param(trial, f"{prefix}.target_fraction",
                                                     merged["target_fraction"])
        for name in self.parameters:
            if name not in ("target", "target_fraction"):
                drawn[name] = suggest_param(trial, f"{prefix}.{name}", merged[name])
        return drawn

    @classmethod
    def resolve(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters with fixed and paper defaults filled in, checked like a space.

        Raises:
            MpsearchError: neither a target nor a target fraction is given, or a value is invalid.
        """
        out = {**{n: p.value for n, p in cls.parameters.items() if p.fixed}, **PAPER_DEFAULTS, **params}
        if not out.get("target") and out.get("target_fraction") is None:
            raise MpsearchError("strategy 'fracbits' needs target_fraction, or a target (got "
                                f"parameters {', '.join(sorted(params)) or 'none'}).")
        checked = {n: v for n, v in out.items() if not (n == "target_fraction" and out.get("target"))}
        cls.check_space({n: Param(value=v) for n, v in checked.items()}, "strategy 'fracbits' parameters")
        return out

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Train the fractional widths under the penalty for ``split`` of the steps, then threshold them."""
        p = self.resolve(params)
        profile: ModelProfile = context.profile
        name, objective = _objective(context, p["objective"])
        weight_only = (not depends_on_inputs(objective, profile) if p["weight_only"] == "auto"
                       else bool(p["weight_only"]))
        granularity = p["granularity"]
        min_bits = int(p["min_bits"]) or (1 if weight_only or granularity == "channel" else 2)
        max_bits = MAX_CANDIDATE_BITS
        first_last = int(p["first_last_bits"]) or None
        plan = LayerPlan(profile, first_last, weight_only)

        def legal_cost(assignment: PrecisionAssignment) -> float:
            return objective.evaluate(profile, context.legalise(assignment), context.backend)

        reference = legal_cost(plan.uniform(REFERENCE_BITS, fixed=REFERENCE_BITS))
        target = float(p["target"]) if p.get("target") else float(p["target_fraction"]) * reference
        kappa = float(KAPPA if p["kappa"] == "auto" else p["kappa"])
        uniform_bits = uniform_width(lambda b: legal_cost(plan.uniform(b)), target, min_bits, max_bits)
        init = initial_width(uniform_bits, max_bits)

        model = context.model
        quantize_fractional(model, plan, init, granularity=granularity, min_bits=min_bits,
                            max_bits=max_bits)
        search = FracBitsSearch(model, profile, objective, target, kappa, reference)
        widths = bit_parameters([model])
        learned = {id(w) for w in widths}
        others = [q for q in model.parameters() if id(q) not in learned]
        groups = [{"params": others}, *width_groups(widths, context.training.lr * float(p["lr_bits"]))]

        # The search's share of the trial's steps (whole batches: a 1- or 2-epoch trial
        # still searches 80 % and fine-tunes 20 %); both phases follow one schedule.
        per_epoch = steps_per_epoch(context.train, context.training.batch_size)
        steps = context.epochs * per_epoch
        split_step = min(steps, max(1, round(float(p["split"]) * steps)))
        search_epochs = split_step / per_epoch

        def on_epoch(_: int) -> dict[str, float]:
            with torch.no_grad():
                return {**search.average_bits(), "cost": float(search.cost())}

        context.fit(model, search_epochs, groups, extra_loss=search.penalty, after_step=search.project,
                    on_epoch=on_epoch, phase="search", trial_schedule=True)
        with torch.no_grad():
            search_cost = float(search.cost())
            learned_widths = {g: float(b().mean()) for g, b in search.learnable().items()}
        found = search.freeze(lambda bits: legal_cost(search.assignment(bits)))
        attrs = {
            "objective": name, "unit": objective.unit, "target": target,
            "target_fraction": target / reference if reference else None, "reference_cost": reference,
            "kappa": kappa, "lr_bits": float(p["lr_bits"]), "uniform_bits": uniform_bits,
            "initial_bits": init, "min_bits": min_bits, "max_bits": max_bits, "granularity": granularity,
            "weight_only": weight_only,
            "split_step": split_step, "steps": steps, "search_cost": search_cost,
            "threshold": found.threshold, "cost": found.cost, "deviation": found.deviation,
            "within_tolerance": found.within, "threshold_evaluations": found.evaluations,
            "search_widths": learned_widths,
        }
        return SearchResult(model, search.current_assignment(), context.epochs - search_epochs, attrs)


# -- the pieces, usable on their own -----------------------------------------------------------

class LayerPlan:
    """Which groups of a profile are learned, fixed (first and last layers) or float.

    Args:
        first_last: the fixed width of the first and last layers' weights and
            inputs, or None to learn them too.
        weight_only: inputs stay float (32 bits).
    """

    def __init__(self, profile: ModelProfile, first_last: int | None, weight_only: bool):
        self.profile = profile
        ends = {profile.layers[0].name, profile.layers[-1].name} if first_last else set()
        self.fixed: dict[str, int] = {}
        self.float: set[str] = set()
        for layer in profile:
            if layer.name in ends:
                self.fixed[layer.weight_group] = int(first_last)
            if weight_only:
                self.float.add(layer.input_group)
            elif layer.name in ends:
                self.fixed[layer.input_group] = int(first_last)
        self.scale_bits = DoReFaQuantizer(FixedBits(REFERENCE_BITS)).scale_bits()

    def uniform(self, bits: int, fixed: int | None = None) -> PrecisionAssignment:
        """Every learned group at ``bits``, fixed groups at theirs (or ``fixed``), float ones at 32."""
        out: dict[str, Bits] = {}
        for group in self.profile.group_shapes():
            if group in self.float:
                out[group] = FLOAT_BITS
            elif group in self.fixed:
                out[group] = self.fixed[group] if fixed is None else fixed
            else:
                out[group] = bits
        return PrecisionAssignment(out, self.profile.group_shapes(),
                                   {l.weight_group: self.scale_bits for l in self.profile})


def width_groups(widths: list[torch.nn.Parameter], lr: float) -> list[dict[str, Any]]:
    """Optimizer groups for the widths (no weight decay, learning rate ``lr``); see :func:`precondition`."""
    for w in widths:
        precondition(w)
    return [{"params": widths, "weight_decay": 0.0, "lr": lr}]


def precondition(width: torch.nn.Parameter) -> None:
    """Make a layer's ``n`` widths (one per channel) move as its one width would, and spread by their own.

    Each of ``n`` per-channel widths sees ``1/n`` of the layer's pull, so with one
    learning rate their mean would move ``n`` times slower than the layer's one
    width. The gradient is replaced by ``sum(g) + sqrt(n) (g - mean(g))``: the mean
    follows the layer's gradient, and each channel's deviation from it follows its
    own gradient scaled so that its batch-to-batch noise is about the layer's.
    """
    n = width.numel()
    if n > 1 and not getattr(width, "_fracbits_preconditioned", False):
        root = math.sqrt(n)
        width.register_hook(lambda g: g.sum() + root * (g - g.mean()))
        width._fracbits_preconditioned = True


def depends_on_inputs(objective: Objective, profile: ModelProfile) -> bool:
    """Whether an objective's differentiable cost changes with any input width."""
    bits = {g: torch.tensor(4.0, dtype=torch.float64, requires_grad=True) for g in profile.group_shapes()}
    inputs = [bits[l.input_group] for l in profile]
    cost = objective.differentiable(profile, bits)
    if not cost.requires_grad:
        return False
    grads = torch.autograd.grad(cost, inputs, allow_unused=True)
    return any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def uniform_width(cost: Callable[[int], float], target: float, min_bits: int, max_bits: int) -> int:
    """The largest uniform width whose cost does not exceed ``target`` (``min_bits`` when none does)."""
    best = min_bits
    for bits in range(min_bits, max_bits + 1):
        if cost(bits) <= target:
            best = bits
    return best


def initial_width(uniform_bits: int, max_bits: int) -> float:
    """``b_t + 0.5`` (FracBits, "Implementation details"), kept inside the learnable range."""
    return min(uniform_bits + 0.5, max_bits - EDGE)


def quantize_fractional(model: torch.nn.Module, plan: LayerPlan, init: float, *, granularity: str,
                        min_bits: int, max_bits: int) -> torch.nn.Module:
    """Give ``model`` DoReFa weight and PACT input quantizers, learnable at ``init`` or fixed per ``plan``."""

    def width(group: str, shape: tuple[int, ...]):
        if group in plan.fixed:
            return FixedBits(plan.fixed[group])
        return LearnableBits(init, shape, min_bits=min_bits, max_bits=max_bits, rounding="floor")

    def weight(layer: LayerProfile):
        return DoReFaQuantizer(width(layer.weight_group, bits_shape(granularity, layer.weight_shape)))

    def activation(layer: LayerProfile):
        if layer.input_group in plan.float:
            return None
        return PACTQuantizer(width(layer.input_group, ()), two_sided=layer.input_signed)

    return quantize_model(model, plan.profile, weight, activation)


class FracBitsSearch:
    """The penalty, the projection and the discretisation of one fractionally quantized model."""

    def __init__(self, model: torch.nn.Module, profile: ModelProfile, objective: Objective, target: float,
                 kappa: float, reference: float = 1.0):
        self.model, self.profile, self.objective = model, profile, objective
        self.target, self.kappa, self.reference = float(target), float(kappa), float(reference)
        self.quantizers = quantizers(model)
        device = next(model.parameters()).device
        self.zero = torch.zeros((), device=device)
        self.constants = {g: torch.tensor(float(FLOAT_BITS), device=device)
                          for g in profile.group_shapes() if g not in self.quantizers}
        self.scale_bits = {g: q.scale_bits() for g, q in self.quantizers.items() if q.scale_bits()}

    def learnable(self) -> dict[str, LearnableBits]:
        return {g: q.bits for g, q in self.quantizers.items() if isinstance(q.bits, LearnableBits)}

    def widths(self) -> dict[str, torch.Tensor]:
        return {**self.constants, **{g: q.widths() for g, q in self.quantizers.items()}}

    def cost(self) -> torch.Tensor:
        """The objective's differentiable cost of the current (fractional) widths."""
        return self.objective.differentiable(self.profile, self.widths(), self.scale_bits)

    def penalty(self) -> torch.Tensor:
        """``kappa * |cost - target| / reference`` (FracBits, Eq. 6-7, relative to the 8-bit cost)."""
        return self.kappa * (self.cost() - self.target).abs() / self.reference

    def project(self) -> None:
        for bits in self.learnable().values():
            bits.project_()

    @torch.no_grad()
    def average_bits(self) -> dict[str, float]:
        """Mean weight and input width, each value weighted by its count (float groups at 32)."""
        widths, shapes = self.widths(), self.profile.group_shapes()
        out = {}
        for kind, key in (("weight", "weight_bits"), ("input", "act_bits")):
            groups = [g for g in shapes if g.endswith(f":{kind}")]
            total = sum(float(group_sum(widths[g], shapes[g])) for g in groups)
            out[key] = total / sum(math.prod(shapes[g]) for g in groups)
        return out

    def assignment(self, learned: Mapping[str, Bits]) -> PrecisionAssignment:
        """The current assignment with the learnable groups at ``learned``."""
        bits: dict[str, Bits] = {}
        for group in self.profile.group_shapes():
            q = self.quantizers.get(group)
            if group in learned:
                bits[group] = learned[group]
            else:
                bits[group] = FLOAT_BITS if q is None else q.integer_bits()
        return PrecisionAssignment(bits, self.profile.group_shapes(), self.scale_bits)

    def current_assignment(self) -> PrecisionAssignment:
        return self.assignment({})

    def freeze(self, cost: Callable[[Mapping[str, Bits]], float]) -> Discretised:
        """Discretise by threshold search and make every learned quantizer run at the found widths."""
        fractional = {g: b().detach() for g, b in self.learnable().items()}
        found = threshold_search(fractional, cost, self.target)
        for group, bits in found.bits.items():
            self.quantizers[group].bits = FixedBits(bits).to(self.zero.device)
        return found


@dataclass(frozen=True)
class Discretised:
    """The outcome of :func:`threshold_search`.

    Attributes:
        bits: group -> integer widths (int for a 0-d width, int64 tensor otherwise).
        threshold: ``t``; a width rounds up when its fractional part exceeds it.
        cost: the cost of ``bits`` (as the ``cost`` callable returned it).
        deviation: ``(cost - target) / target``.
        within: ``|deviation| <= tolerance``.
        evaluations: calls of ``cost``.
    """

    bits: dict[str, Bits]
    threshold: float
    cost: float
    deviation: float
    within: bool
    evaluations: int


def discretise(fractional: Mapping[str, torch.Tensor], threshold: float) -> dict[str, Bits]:
    """``floor(lambda) + [frac(lambda) > threshold]`` for every group."""
    out: dict[str, Bits] = {}
    for group, value in fractional.items():
        v = value.detach().cpu().double()
        base = torch.floor(v)
        width = (base + ((v - base) > threshold).double()).to(torch.int64)
        out[group] = int(width) if width.dim() == 0 else width
    return out


def threshold_search(fractional: Mapping[str, torch.Tensor], cost: Callable[[Mapping[str, Bits]], float],
                     target: float, tolerance: float = TOLERANCE) -> Discretised:
    """Find the threshold whose discretised widths cost closest to ``target`` (FracBits, "Finetuning").

    Widths are ``floor(lambda) + [frac(lambda) > t]`` with one ``t`` for every
    group, so the cost is non-increasing in ``t`` (for a cost non-decreasing in
    every width) and changes only where ``t`` crosses a fractional part. The
    bisection runs over ``0`` and the sorted distinct fractional parts.

    Returns:
        The closer to ``target`` of the two thresholds around it when that one is
        within ``tolerance`` (relative); otherwise the one not above the target;
        when every threshold exceeds the target, the largest (every width floored).
    """
    fracs = [v.detach().cpu().double() for v in fractional.values()]
    parts = torch.cat([(f - torch.floor(f)).reshape(-1) for f in fracs]) if fracs else torch.zeros(0)
    candidates = [0.0] + sorted({float(x) for x in parts[parts > 0]})
    evaluated: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in evaluated:
            evaluated[i] = float(cost(discretise(fractional, candidates[i])))
        return evaluated[i]

    # The first index whose cost is at most the target (len(candidates) when none is).
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    below = lo
    if below == len(candidates):
        choice = below - 1
    elif below == 0:
        choice = 0
    else:
        above = below - 1
        closer = min((above, below), key=lambda i: (abs(at(i) - target), -i))
        choice = closer if abs(at(closer) - target) <= tolerance * abs(target) else below
    value = at(choice)
    deviation = (value - target) / target if target else math.inf
    return Discretised(discretise(fractional, candidates[choice]), candidates[choice], value, deviation,
                       abs(deviation) <= tolerance, len(evaluated))


def _objective(context, name: str) -> tuple[str, Objective]:
    """The penalised objective: ``name`` (a study objective or any registered one), or the study's first."""
    if not name:
        if not context.objectives:
            raise MpsearchError("strategy 'fracbits' needs a cost objective for its target; add one to "
                                "[study] objectives, or name one with the parameter objective.")
        name = next(iter(context.objectives))
    objective = context.objective(name)
    if not objective.has_differentiable:
        raise MpsearchError(f"strategy 'fracbits' penalises a differentiable cost; objective {name!r} has "
                            f"none. Name another with the parameter objective.")
    return name, objective


@hookimpl
def register_strategies(register):
    register("fracbits", FracBitsStrategy)
