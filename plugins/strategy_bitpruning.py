"""The ``bitpruning`` strategy: learned fractional bitlengths under a weighted bit regulariser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.api import (GRANULARITIES, MAX_BITS, FixedBits, LayerProfile, LearnableBits, MinMaxQuantizer,
                          ModelProfile, MpsearchError, Objective, Param, PrecisionAssignment, SearchResult,
                          SpecError, Strategy, UnknownNameError, assignment_from_model, bit_parameters,
                          bits_shape, fractional_bits, freeze_bits, group_sum, hookimpl, make_schedule,
                          project_bits, quantize_model, quantizers, steps_per_epoch)

UNIFORM = "uniform"
REFERENCE_BITS = 8  # the regulariser is normalised so that an all-8-bit network costs exactly gamma
MIN_BITS = 1.0  # "Since the minimum bitlength per value is 1, n is clipped at 1.0" (Sec. II-A)
FINETUNE_LR_FACTOR = 0.1  # "finetuned ... with 1/10th of the learning rate" (Sec. III-B2)
ADAM_BETAS = (0.9, 0.99)  # fast.ai's default Adam, which the paper trained with
AUTO = "auto"


class BitPruningStrategy(Strategy):
    """BitPruning: learned fractional bitlengths under a weighted bit loss, ceiled, then fine-tuned frozen.

    BitPruning (Nikolić et al., "BitPruning: Learning Bitlengths for Aggressive
    and Accurate Quantization"). Every weight and input-activation group is
    quantized uniformly between its tensor's minimum and maximum (for
    activations, of the batch) with a learnable fractional width
    ``n = b + a`` that interpolates ``Q(b)`` and ``Q(b + 1)``; rounding passes
    gradients straight through. First and last layers are quantized too. The
    loss is ``L + gamma * sum_i lambda_i * n_i`` over the learned widths, with
    ``lambda`` normalised so that an all-8-bit network's regulariser is exactly
    ``gamma``. After ``split`` of the trial's epochs every width is set to the
    ceiling of its learned value; the host legalises it for the backend, and the
    model is fine-tuned for the rest with the widths frozen and 1/10 of the
    learning rate. The trial starts from the study's float start when it has
    one (the paper's "use as fine-tuning" variant, Sec. III-B5), else from the
    seeded initialisation, as the paper's main results do.

    Parameters (defaults):
        gamma: log range 0.05-5; the regulariser's strength. The paper used
            0.5-10 on CIFAR-10 (10 did not converge for AlexNet) and 1.0 on
            ImageNet. One-epoch trials of LeNet-5 on mnist-mini from its float
            start (57 search steps, ``lr_bits`` auto) ended at 5.9, 3.0 and 3.0
            bits per weight and 4.0, 2.8 and 2.0 per input for 0.05, 0.5 and 5,
            at 97.1, 96.8 and 94.7 % validation accuracy.
        lr_bits: fixed ``"auto"``: Adam's learning rate of the widths is
            ``2 * (init_bits - 1) / steps`` over the search's ``steps``: a width
            moves by at most about the learning rate per step and the rate follows
            the cosine schedule (half its peak on average), so at full pull a
            width can just reach 1 bit by the end of the search, whatever the
            budget; or a positive number. (A rate drawn from 0.02-0.5 moved
            widths little in a one-epoch trial at the low end, while 0.47 took
            LeNet-5's widths to 1 bit within 14 steps of full MNIST and diverged:
            the rate a trial needs depends on its steps.)
        split: range 0.5-0.9; the fraction of the epochs that learns widths
            (the paper: 300 of 360 epochs on CIFAR-10, 180 of 270 on ImageNet).
            Fractions of an epoch train part of one, so a 1-epoch trial searches
            for ``split`` of an epoch and fine-tunes for the rest.
        criterion: fixed ``"uniform"`` (every layer's weights and every
            layer's inputs weigh the same at any granularity, the paper's main
            setting; a layer's per-channel widths share its weight), or the
            name of any registered cost objective with a differentiable form: ``lambda_i`` is then the objective's
            derivative with respect to ``n_i`` at the all-8-bit widths, so
            ``footprint`` / ``footprint@128`` weigh each group by its element
            count at batch 1 / 128 and ``bitops`` by its MACs (Sec. III-A5,
            Table IV).
        granularity: fixed ``"layer"`` (the paper's); ``"network"`` shares one
            width among all weight groups and one among all activation groups;
            ``"channel"`` learns a weight width per output channel (``"kernel"``,
            ``"pixel"``, ``"parameter"`` finer still) while activations stay
            per layer.
        first_last_bits: fixed 0, no exemption (the paper's); a width pins the
            first and last layers' weights and inputs there, outside the
            regulariser.
        init_bits: fixed 8, the initial width of every group. The paper does not
            say where widths start; 8 is the width its regulariser is
            normalised to and the 8-bit network its fine-tuning variant starts from.

    Deviations and choices the paper leaves open:
        - The weights train with the study's optimizer and schedule (SGD and
          cosine by default) so that strategies compare on equal terms; the
          paper used fast.ai's defaults (Adam, one-cycle) for everything. The
          widths keep Adam (betas 0.9, 0.99, no weight decay) with their own
          learning rate on the study's schedule: Adam's steps do not scale with
          the gradient, so ``lr_bits`` does not depend on ``lambda``'s scale,
          which shrinks as groups are added (per channel, larger models).
        - n is clipped at 1 by projection after every step, and the gradient
          passes at the bound, so a width that reached 1 can grow again.
        - The widths are at most 32 (the largest width an assignment holds).
        - With ``first_last_bits`` the pinned groups are constants: ``lambda`` is
          normalised over the learned groups only.
        - The min-max extremes are constants for the gradient (the engine's
          :class:`~mpsearch.quant.MinMaxQuantizer`), and at finer than layer
          granularity every width still uses the layer's minimum and maximum
          ("the minimum value in the layer", Sec. II-A).
    """

    label = "bitpruning"
    resumable = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "gamma": Param(low=0.05, high=5.0, log=True),
        "lr_bits": Param(value=AUTO),
        "split": Param(low=0.5, high=0.9),
        "criterion": Param(value=UNIFORM),
        "granularity": Param(value="layer"),
        "first_last_bits": Param(value=0),
        "init_bits": Param(value=REFERENCE_BITS),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names and values out of range (criteria are checked when a trial runs)."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        for name in ("gamma", "lr_bits"):
            for v in merged[name].values():
                if name == "lr_bits" and v == AUTO:
                    continue
                if not _is_number(v) or not v > 0:
                    what = " or \"auto\"" if name == "lr_bits" else ""
                    raise SpecError(f"{where}.{name}: {v!r} must be a positive number{what}.")
        for v in merged["split"].values():
            if not _is_number(v) or not 0 < v < 1:
                raise SpecError(f"{where}.split: {v!r} must be a fraction strictly between 0 and 1 "
                                f"(the rest of the epochs fine-tune).")
        for v in merged["criterion"].values():
            if not isinstance(v, str) or not v:
                raise SpecError(f"{where}.criterion: {v!r} must be \"uniform\" or the name of a cost "
                                f"objective.")
        for v in merged["granularity"].values():
            if v not in GRANULARITIES:
                raise SpecError(f"{where}.granularity: {v!r} is not a granularity; use one of "
                                f"{', '.join(GRANULARITIES)}.")
        for v in merged["first_last_bits"].values():
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_BITS:
                raise SpecError(f"{where}.first_last_bits: {v!r} is not a width; use an integer "
                                f"1-{MAX_BITS}, or 0 for no exemption.")
        for v in merged["init_bits"].values():
            if not _is_number(v) or not MIN_BITS <= v <= MAX_BITS:
                raise SpecError(f"{where}.init_bits: {v!r} must be a width from 1 to {MAX_BITS}.")

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Learn the widths for ``split`` of the epochs, then ceil them."""
        p = self.resolve(params)
        # Looked up first: a criterion that cannot work fails the trial before any training.
        objective = criterion_objective(context, p["criterion"])
        model, profile, training = context.model, context.profile, context.training
        bitpruning_model(model, profile, granularity=p["granularity"], init_bits=float(p["init_bits"]),
                         first_last_bits=int(p["first_last_bits"]))
        regulariser = BitRegulariser(model, profile, float(p["gamma"]), objective, p["criterion"])

        search_epochs = context.epochs * float(p["split"])
        search_steps = _steps(context, search_epochs)
        widths = bit_parameters([model])
        learned = {id(w) for w in widths}
        lr_bits = bits_learning_rate(p["lr_bits"], float(p["init_bits"]), search_steps)
        bit_optimizer = torch.optim.Adam(widths, lr=lr_bits, betas=ADAM_BETAS, weight_decay=0.0)
        bit_schedule = make_schedule(training, bit_optimizer, search_steps)
        if bit_schedule is not None:
            context.track("bit_schedule", bit_schedule)

        def after_step() -> None:
            if bit_schedule is not None:
                bit_schedule.step()
            project_bits([model])

        def search_metrics(_: int) -> dict[str, float]:
            w, a = average_bits(model, profile)
            with torch.no_grad():
                return {"weight_bits": w, "act_bits": a, "bit_loss": float(regulariser())}

        searched = context.fit(model, search_epochs,
                               groups=[{"params": [q for q in model.parameters() if id(q) not in learned]}],
                               extra_loss=regulariser, after_step=after_step, on_epoch=search_metrics,
                               extra_optimizers=[bit_optimizer], phase="search", trial_schedule=True)
        search_w, search_a = average_bits(model, profile)
        with torch.no_grad():  # each group's mean learned width, before the ceiling
            learned = {g: float(q.bits().mean()) for g, q in quantizers(model).items()
                       if isinstance(q.bits, LearnableBits)}
        freeze_bits(model)  # LearnableBits(rounding="ceil"): the smallest integer >= the learned width
        attrs = {"search_weight_bits": search_w, "search_act_bits": search_a, "search_widths": learned,
                 "search_accuracy": float(searched.get("val_accuracy", float("nan"))),
                 "ceil_accuracy": context.evaluate(model), "search_epochs": search_epochs,
                 "finetune_epochs": context.epochs - search_epochs, "criterion": p["criterion"],
                 "lr_bits": lr_bits,
                 "granularity": p["granularity"]}
        return SearchResult(model, assignment_from_model(model, profile), context.epochs - search_epochs,
                            attrs)

    def finetune(self, context, model: nn.Module, assignment: PrecisionAssignment, epochs: float,
                 params: Mapping[str, Any]) -> None:
        """Fine-tune at the frozen widths with a tenth of the learning rate (Sec. III-B2)."""
        context.fit(model, epochs, lr=context.training.lr * FINETUNE_LR_FACTOR, phase="finetune",
                    trial_schedule=True,
                    on_epoch=lambda _: {"weight_bits": assignment.average_weight_bits(),
                                        "act_bits": assignment.average_activation_bits()})


def bits_learning_rate(lr_bits: float | str, init_bits: float, search_steps: int) -> float:
    """The widths' Adam learning rate: ``lr_bits``, or for ``"auto"`` ``2 * (init_bits - 1) / steps``."""
    if lr_bits != AUTO:
        return float(lr_bits)
    return 2.0 * max(init_bits - MIN_BITS, 1.0) / max(1, search_steps)


def bitpruning_model(model: nn.Module, profile: ModelProfile, *, granularity: str = "layer",
                     init_bits: float = REFERENCE_BITS, first_last_bits: int = 0) -> nn.Module:
    """Quantize ``model`` in place with min-max quantizers of learnable widths.

    Args:
        granularity: the weights' (see :mod:`mpsearch.quant.granularity`);
            activations get one width per layer, or one for all at ``"network"``.
        first_last_bits: 0, or a fixed width for the first and last layers'
            weights and inputs.
    """
    if granularity not in GRANULARITIES:
        raise MpsearchError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}.")
    pinned = {profile.layers[0].name, profile.layers[-1].name} if first_last_bits else set()

    def learnable(shape: tuple[int, ...] = ()) -> LearnableBits:
        return LearnableBits(init_bits, shape, min_bits=MIN_BITS, max_bits=float(MAX_BITS),
                             rounding="ceil")

    shared = {"weight": learnable(), "input": learnable()} if granularity == "network" else None

    def weight(layer: LayerProfile) -> MinMaxQuantizer:
        if layer.name in pinned:
            return MinMaxQuantizer(FixedBits(first_last_bits))
        if shared is not None:
            return MinMaxQuantizer(shared["weight"])
        return MinMaxQuantizer(learnable(bits_shape(granularity, layer.weight_shape)))

    def activation(layer: LayerProfile) -> MinMaxQuantizer:
        if layer.name in pinned:
            return MinMaxQuantizer(FixedBits(first_last_bits))
        return MinMaxQuantizer(shared["input"] if shared is not None else learnable())

    return quantize_model(model, profile, weight, activation)


def criterion_objective(context, criterion: str) -> Objective | None:
    """The objective that weighs the regulariser (None for ``"uniform"``): the study's, or any registered.

    Raises:
        MpsearchError: no objective has that name, or it has no differentiable form.
    """
    if criterion == UNIFORM:
        return None
    try:
        return context.objective(criterion)
    except UnknownNameError as exc:
        raise UnknownNameError("bitpruning criterion", criterion, [UNIFORM, *exc.available]) from None


class BitRegulariser:
    """``gamma * sum_i lambda_i * n_i`` over a quantized model's learned widths (BitPruning's bit loss).

    ``lambda`` is fixed when the regulariser is made. With ``objective=None``
    every learned group (one layer's weights, or one layer's inputs) weighs the
    same in total at every granularity, its share split evenly over its widths
    (the paper "weighs all layers equally"); otherwise ``lambda`` is the
    derivative of ``objective``'s differentiable form with respect to each width
    at the all-8-bit network. Either way ``sum_i lambda_i * 8 = 1``, so an
    all-8-bit network costs exactly ``gamma``. A width shared by several groups
    is one ``n_i``: its ``lambda`` is the sum of theirs.

    Raises:
        MpsearchError: the model learns no width; the objective has no
            differentiable form, does not depend on the learned widths, or
            falls as a width grows.
    """

    def __init__(self, model: nn.Module, profile: ModelProfile, gamma: float,
                 objective: Objective | None = None, name: str = UNIFORM):
        self.gamma = float(gamma)
        self.widths, self.lambdas = bit_weights(model, profile, objective, name)

    def __call__(self) -> torch.Tensor:
        total = sum((lam * w()).sum() for w, lam in zip(self.widths, self.lambdas))
        return self.gamma * total


def bit_weights(model: nn.Module, profile: ModelProfile, objective: Objective | None = None,
                name: str = UNIFORM) -> tuple[list[LearnableBits], list[torch.Tensor]]:
    """Every distinct learned width module of ``model`` and its ``lambda`` (same shape, summing to 1/8).

    See :class:`BitRegulariser` for the rule and what is raised.
    """
    qs = quantizers(model)
    learned: dict[int, LearnableBits] = {}
    for q in qs.values():
        bits = getattr(q, "bits", None)
        if isinstance(bits, LearnableBits):
            learned.setdefault(id(bits), bits)
    if not learned:
        raise MpsearchError("strategy 'bitpruning': the model learns no width (every layer is "
                            "pinned by first_last_bits?); nothing to regularise.")
    modules = list(learned.values())
    if objective is None:
        # Every learned group (a layer's weights, a layer's inputs) weighs the same in
        # total, spread evenly over its widths: at channel granularity a layer's 50
        # weight widths share what its one input width gets alone.
        share = {id(m): torch.zeros(m.value.shape, dtype=torch.float64) for m in modules}
        for q in qs.values():
            bits = getattr(q, "bits", None)
            if isinstance(bits, LearnableBits):
                share[id(bits)] += 1.0 / bits.value.numel()
        raw = [share[id(m)] for m in modules]
    else:
        raw = _objective_gradients(qs, profile, modules, objective, name)
    total = sum(float(r.sum()) for r in raw)
    lambdas = [(r / (REFERENCE_BITS * total)).to(torch.float32).to(m.value.device)
               for r, m in zip(raw, modules)]
    return modules, lambdas


def _objective_gradients(qs, profile: ModelProfile, modules: list[LearnableBits], objective: Objective,
                         name: str) -> list[torch.Tensor]:
    """d objective / d n for every learned width, at the all-8-bit network."""
    where = f"strategy 'bitpruning': criterion {name!r}"
    if not objective.has_differentiable:
        raise MpsearchError(f"{where} has no differentiable form to weigh the bit loss by; use "
                            f"\"uniform\" or an objective such as bitops or footprint.")
    probes = {id(m): torch.full(m.value.shape, float(REFERENCE_BITS), dtype=torch.float64,
                                requires_grad=True) for m in modules}
    bits, scale = {}, {}
    for group in profile.group_shapes():
        q = qs.get(group)
        bits[group] = probes.get(id(getattr(q, "bits", None)),
                                 torch.tensor(float(REFERENCE_BITS), dtype=torch.float64))
        if q is not None and q.scale_bits():
            scale[group] = q.scale_bits()
    try:
        cost = objective.differentiable(profile, bits, scale)
    except NotImplementedError:
        raise MpsearchError(f"{where} has no differentiable form to weigh the bit loss by; use "
                            f"\"uniform\" or an objective such as bitops or footprint.") from None
    cost = torch.as_tensor(cost)
    grads = (torch.autograd.grad(cost, list(probes.values()), allow_unused=True)
             if cost.requires_grad else [None] * len(probes))
    raw = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(probes.values(), grads)]
    if any(bool((r < 0).any()) for r in raw):
        raise MpsearchError(f"{where} falls as some width grows; the bit loss needs a cost that "
                            f"grows with the widths.")
    if not sum(float(r.sum()) for r in raw) > 0:
        raise MpsearchError(f"{where} does not depend on the widths BitPruning learns; use "
                            f"\"uniform\" or an objective of the weights' or activations' bits.")
    return raw


def average_bits(model: nn.Module, profile: ModelProfile) -> tuple[float, float]:
    """Current (fractional) bits per weight and per input activation, weighted by element count."""
    with torch.no_grad():
        bits = fractional_bits(model, profile)
        out = []
        for kind in ("weight_group", "input_group"):
            groups = [(getattr(l, kind), l.weight_shape if kind == "weight_group" else l.input_shape)
                      for l in profile]
            total = sum(float(group_sum(bits[g], s)) for g, s in groups)
            count = sum(int(torch.Size(s).numel()) for _, s in groups)
            out.append(total / count)
    return out[0], out[1]


def _steps(context, epochs: float) -> int:
    """Optimizer steps ``context.fit`` takes for ``epochs`` (a fraction trains part of an epoch)."""
    per_epoch = steps_per_epoch(context.train, context.training.batch_size)
    whole, part = int(epochs), epochs - int(epochs)
    return whole * per_epoch + (max(1, round(part * per_epoch)) if part > 1e-9 else 0)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@hookimpl
def register_strategies(register):
    register("bitpruning", BitPruningStrategy)
