"""The ``smol`` strategy: per-weight precisions learned as trainable noise magnitudes (Savarese et al.)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.api import (ModelProfile, MpsearchError, Param, PrecisionAssignment, SearchResult, SpecError,
                          Strategy, apply_assignment, assignment_from_model, fractional_bits, freeze_bits,
                          group_sum, hookimpl, quantize_model, quantized_layers, quantizers, steps_per_epoch)

from .quantizers import MAX_P_INIT, SmolPACTQuantizer, SmolWeightQuantizer, noise_parameters, smol_quantizers

GRANULARITIES = ("parameter", "kernel", "pixel", "channel", "layer")
ACTIVATIONS = ("smol", "float")
BITS = "bits"  # the paper's criterion, ||log2(1 + exp(-s))||_1
NOISE_SALT = 0x534D4F4C  # "SMOL": the noise's seed differs from the trial's own
PAPER_NOISE_LR = 1e-3  # the paper's Adam learning rate for s (650 epochs on CIFAR)
AUTO = "auto"


class SmolStrategy(Strategy):
    """SMOL: per-weight precisions from trainable noise magnitudes, then fine-tuning at those precisions.

    Savarese et al., "Not All Bits have Equal Value: Heterogeneous Precisions via
    Trainable Noise" (NeurIPS 2022), Algorithm 1. Every quantized weight gets a
    trainable ``s`` (or one per layer: SMOL-L), initialised at
    ``-ln(2**(p_init - 1) - 1)`` so that ``sigma(s) = 2**(1 - p_init)``. For the
    first ``split`` of the epochs the network is trained on ``w + sigma(s) * eps``,
    ``eps ~ U(-1, 1)`` drawn afresh each step, with the loss
    ``L + lam * ||log2(1 + exp(-s))||_1``; the weights use the spec's optimizer, the
    ``s`` Adam (lr ``noise_lr``, no weight decay), and after every step each weight
    is clipped to ``+-(2 - sigma(s))``. Then ``p = 1 + floor(log2(1 + exp(-s)))``
    (the floor of Sec. 4); with zero-precision allocation ``p = 0`` wherever
    ``|w| <= |w - q(w, p)|`` (the weight is pruned). The precisions are frozen, the
    host legalises them, and the weights are fine-tuned for the remaining epochs on SMOL's grid
    (``+-1`` at 1 bit, ``+-0.5, +-1.5`` at 2 bits, odd multiples of ``2**(1 - p)``)
    with straight-through gradients. Activations (SMOL-A, Sec. 4.4): every
    layer's input is PACT-clipped and perturbed by noise as wide as the worst
    rounding error of PACT's grid at the precision ``s`` stands for, then
    quantized by PACT at its learned precision.

    One search yields both models of Sec. 3.2: ``zpa`` picks the one returned
    and fine-tuned; the other's average bits, pruned share and validation
    accuracy (after discretisation, and after its own fine-tuning, before the
    returned model's, when ``finetune_other``, which counts in ``epochs_trained``) are recorded as
    ``*_zpa`` / ``*_plain`` attributes. ``bpp`` is the paper's average bits per
    parameter (sum of precisions over the number of weights, pruned ones
    counting 0).

    Parameters (defaults):
        lam: log range 1e-9-1e-5; the weight ``lambda`` of the criterion, in its
            unit (bits for ``criterion="bits"``). With ``noise_lr`` "auto", one-epoch
            trials of LeNet-5 on mnist-mini from its float start (42 search steps)
            ended at 7.30, 3.91 and 2.02 bits per weight for 1e-9, 1e-7 and 1e-5
            (1.15 with ZPA), at 97.8, 97.8 and 96.2 % validation accuracy.
        p_init: fixed 8, the paper's; integers 2-16.
        granularity: ``["parameter", "layer"]`` (SMOL, SMOL-L); also ``"channel"``,
            ``"kernel"``, ``"pixel"``.
        zpa: ``[false, true]``; return the model with zero-precision allocation.
        split: range 0.5-0.7; the search's share of the epochs (the paper: 350 of
            650 on CIFAR, 120 of 180 on ImageNet). 1 skips fine-tuning.
        activations: fixed ``"smol"`` (SMOL-A), or ``"float"`` (32 bits, as the
            paper's CIFAR weight experiments).
        criterion: fixed ``"bits"``, or the name of one of the study's cost
            objectives, whose differentiable form then takes the fractional
            widths ``1 + log2(1 + exp(-s))`` of every group in place of the bits.
        noise_lr: fixed ``"auto"``: the larger of the paper's 1e-3 and
            ``(p_init - 1) * ln 2 / steps`` over the search's ``steps``, so that Adam
            (which moves each ``s`` by at most about ``noise_lr`` per step; a bit
            is ``ln 2`` of ``s``) can take a weight from ``p_init`` to 1 bit within
            the search; or a positive number.
        finetune_other: fixed false.

    Deviations:
        - ``noise_lr`` "auto" rather than the paper's 1e-3 for searches shorter than
          about 4,900 steps: 1e-3 was tuned for 650 epochs, and in a one-epoch
          trial it left every weight at 7 or 8 bits (7.33 bits per weight at
          ``lam`` 1e-9, 7.0 at 1e-5: ``s`` moved by hundredths from where it starts,
          exactly on the edge between 7 and 8 bits).
        - Scale: the paper's grid and clip live on ``[-2, 2]`` (its appendix on
          scaling is not in our copy). Each layer's weights are mapped onto it by
          a per-layer scale fixed at the start of the search, so that the largest
          initial weight lands on the largest ``p_init``-bit level
          ``2 - 2**(1 - p_init)``; noise, clip and grid are multiplied by it, and
          it is stored as one float32 per layer (``scale_bits`` 32).
        - SMOL-L's cost counts every weight its shared ``s`` stands for
          (``numel * log2(1 + exp(-s))``), i.e. the total number of bits, the
          objective Sec. 3.1 starts from, rather than one term per layer; a
          ``lam`` then means the same price per bit at every granularity. The
          same holds for activations: an input's ``s`` counts its per-sample size.
        - SMOL-A learns one ``s`` per layer input (the paper: one per activation
          value); the returned assignment has one width per input group.
        - SMOL-A's noise has the half-width ``(M / 2) * sigma / (2 - sigma)``, not
          the paper's ``(M / 2) * sigma``: at an integer precision it equals the
          worst rounding error of the PACT grid the input is deployed on, as
          ``sigma`` does for the weights on SMOL's grid; the paper's is twice that
          and learned input precisions about a bit wider than needed.
        - The floor of the precision has a 1e-4-bit tolerance, so that ``s_init``
          maps to ``p_init`` despite float32 rounding.
        - The search ends after the training step that completes its share of
          the epochs (mid-epoch if need be), and one run of the spec's schedule
          (cosine) spans both phases, as the paper's CIFAR and ResNet-18 step
          schedules do (its ResNet-50 run restarts for fine-tuning); the
          fine-tuning's optimizer starts afresh. With ``finetune_other`` the other
          model is fine-tuned for the same number of epochs with a schedule of its own.
        - Validation accuracy during the search is that of the model quantized at
          its current precisions (no noise, no ZPA).
        - ZPA prunes where ``|w| <= |w - q(w, p)|`` (Sec. 3.2's text; Algorithm 1 writes ``<``).
    """

    label = "smol"
    parameters: ClassVar[Mapping[str, Param]] = {
        "lam": Param(low=1e-9, high=1e-5, log=True),
        "p_init": Param(value=8),
        "granularity": Param(choices=("parameter", "layer")),
        "zpa": Param(choices=(False, True)),
        "split": Param(low=0.5, high=0.7),
        "activations": Param(value="smol"),
        "criterion": Param(value=BITS),
        "noise_lr": Param(value=AUTO),
        "finetune_other": Param(value=False),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names and values outside each parameter's domain."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        for name in ("lam", "noise_lr"):
            for v in merged[name].values():
                if name == "noise_lr" and v == AUTO:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    what = " or \"auto\"" if name == "noise_lr" else ""
                    raise SpecError(f"{where}.{name}: {v!r} must be a positive number{what}.")
        if merged["p_init"].low is not None and not merged["p_init"].integer:
            raise SpecError(f"{where}.p_init: a range of precisions needs integer low and high.")
        for v in merged["p_init"].values():
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= MAX_P_INIT:
                raise SpecError(f"{where}.p_init: {v!r} must be an integer 2-{MAX_P_INIT}.")
        for v in merged["split"].values():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise SpecError(f"{where}.split: {v!r} must be a fraction in (0, 1].")
        for name, valid in (("granularity", GRANULARITIES), ("activations", ACTIVATIONS),
                            ("zpa", (False, True)), ("finetune_other", (False, True))):
            for v in merged[name].values():
                if v not in valid or (isinstance(v, bool) != isinstance(valid[0], bool)):
                    raise SpecError(f"{where}.{name}: {v!r} is not one of "
                                    f"{', '.join(map(str, valid))}.")
        for v in merged["criterion"].values():
            if not isinstance(v, str) or not v:
                raise SpecError(f"{where}.criterion: {v!r} must be \"bits\" or an objective's name.")

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Train with noise for ``split`` of the steps, then freeze the precisions (ZPA if asked)."""
        p = self.resolve(params)
        profile = context.profile
        criterion = self._criterion(context, p["criterion"])
        model = context.model
        attach_smol(model, profile, granularity=p["granularity"], p_init=p["p_init"],
                    activations=p["activations"])
        # The noise has a generator of its own on the model's device, seeded from the
        # trial's seed: drawing from the trial's generator would change the data order,
        # which every strategy of a study shares (common random numbers).
        noise = torch.Generator(device=context.device)
        noise.manual_seed((context.seed * 1_000_003 + NOISE_SALT) % 2**63)
        for q in smol_quantizers(model):
            q.generator = noise
        # The search's share of the trial's steps; search and fine-tuning follow one
        # run of the spec's schedule (as the paper's CIFAR and ResNet-18 runs).
        per_epoch = steps_per_epoch(context.train, context.training.batch_size)
        total = context.epochs * per_epoch
        search_steps = min(total, max(1, round(float(p["split"]) * total)))
        search_epochs = search_steps / per_epoch

        s_params = noise_parameters(model)
        taken = {id(s) for s in s_params}
        weights = [w for w in model.parameters() if id(w) not in taken]
        noise_lr = noise_learning_rate(p["noise_lr"], int(p["p_init"]), search_steps)
        adam = torch.optim.Adam(s_params, lr=noise_lr, weight_decay=0.0)
        lam, zpa = float(p["lam"]), bool(p["zpa"])
        layers = quantized_layers(model)

        def after_step() -> None:
            for layer in layers.values():
                if isinstance(layer.weight_quantizer, SmolWeightQuantizer):
                    layer.weight_quantizer.clip_(layer.weight)

        context.fit(model, search_epochs, groups=[{"params": weights}],
                    extra_loss=lambda: lam * criterion(model), after_step=after_step,
                    on_epoch=lambda _: epoch_bits(model, profile), extra_optimizers=[adam],
                    phase="search", trial_schedule=True)
        for q in smol_quantizers(model):
            q.generator = None  # the copy below must not share it
        other = copy.deepcopy(model)
        assignment = settle(model, profile, zpa=zpa)
        other_legal = context.legalise(settle(other, profile, zpa=not zpa))
        apply_assignment(other, profile, other_legal)
        before, other_before = context.evaluate(model), context.evaluate(other)
        finetune_epochs = context.epochs - search_epochs
        other_after = None
        if p["finetune_other"] and finetune_epochs > 0:
            context.fit(other, finetune_epochs, report=False, phase="finetune-other")
            other_after = context.evaluate(other)
        del other
        legal = context.legalise(assignment)

        mine, theirs = ("zpa", "plain") if zpa else ("plain", "zpa")
        attrs: dict[str, Any] = {
            "bpp": legal.average_weight_bits(),
            "compression_ratio": _ratio(legal.average_weight_bits()),
            "pruned_share": pruned_share(legal),
            "search_epochs": search_epochs, "finetune_epochs": finetune_epochs, "noise_lr": noise_lr,
            "criterion": p["criterion"],
            f"average_weight_bits_{mine}": legal.average_weight_bits(),
            f"average_weight_bits_{theirs}": other_legal.average_weight_bits(),
            f"pruned_share_{mine}": pruned_share(legal),
            f"pruned_share_{theirs}": pruned_share(other_legal),
            f"val_accuracy_quantized_{mine}": before,
            f"val_accuracy_quantized_{theirs}": other_before,
        }
        if other_after is not None:
            attrs[f"val_accuracy_{theirs}"] = other_after
        return SearchResult(model, assignment, finetune_epochs, attrs)

    @staticmethod
    def _criterion(context, name: str) -> Callable[[nn.Module], torch.Tensor]:
        """The cost term ``lam`` multiplies, as a function of the model being searched."""
        profile = context.profile
        if name == BITS:
            return lambda model: total_noise_bits(model, profile)
        objective = context.objectives.get(name)
        if objective is None:
            known = ", ".join([BITS, *context.objectives])
            raise MpsearchError(f"strategy 'smol': criterion {name!r} is neither \"bits\" nor one of "
                                f"the study's cost objectives; choose one of {known}.")
        if not objective.has_differentiable:
            raise MpsearchError(f"strategy 'smol': objective {name!r} has no differentiable form "
                                f"to use as criterion; use \"bits\" or another objective.")

        def cost(model: nn.Module) -> torch.Tensor:
            scale = {g: q.scale_bits() for g, q in quantizers(model).items()}
            return objective.differentiable(profile, fractional_bits(model, profile), scale)

        return cost


def noise_learning_rate(noise_lr: float | str, p_init: int, search_steps: int) -> float:
    """Adam's learning rate for ``s``: ``noise_lr``, or for ``"auto"`` the larger of the paper's
    1e-3 and the rate at which ``search_steps`` steps can take ``s`` from ``p_init`` to 1 bit."""
    if noise_lr != AUTO:
        return float(noise_lr)
    return max(PAPER_NOISE_LR, (p_init - 1) * math.log(2.0) / max(1, search_steps))


def attach_smol(model: nn.Module, profile: ModelProfile, *, granularity: str = "parameter",
                p_init: int = 8, activations: str = "smol") -> nn.Module:
    """Give every profiled layer SMOL's weight quantizer and, with ``activations="smol"``, SMOL-A's."""
    modules = dict(model.named_modules())

    def weight(layer):
        return SmolWeightQuantizer(modules[layer.name].weight, granularity, p_init)

    def activation(layer):
        if activations == "float":
            return None
        return SmolPACTQuantizer(p_init, two_sided=layer.input_signed)

    return quantize_model(model, profile, weight, activation)


def total_noise_bits(model: nn.Module, profile: ModelProfile) -> torch.Tensor:
    """The paper's ``||log2(1 + exp(-s))||_1``, each ``s`` counted once per value it stands for."""
    qs = quantizers(model)
    shapes = profile.group_shapes()
    total = None
    for group, q in qs.items():
        bits = getattr(q, "bits", None)
        if bits is not None and hasattr(bits, "penalty"):
            term = group_sum(bits.penalty(), shapes[group])
            total = term if total is None else total + term
    if total is None:
        return torch.zeros((), device=next(model.parameters()).device)
    return total


def settle(model: nn.Module, profile: ModelProfile, *, zpa: bool) -> PrecisionAssignment:
    """Freeze a searched model's precisions (ZPA if asked) and return the assignment it runs at."""
    for layer in quantized_layers(model).values():
        if isinstance(layer.weight_quantizer, SmolWeightQuantizer):
            layer.weight_quantizer.freeze(layer.weight, zpa)
    freeze_bits(model)  # SMOL-A's inputs: no ZPA for activations
    return assignment_from_model(model, profile)


def pruned_share(assignment: PrecisionAssignment) -> float:
    """Share of all weights at 0 bits."""
    groups = assignment.weight_groups
    total = sum(assignment.numel(g) for g in groups)
    zero = 0.0
    for g in groups:
        bits = assignment[g]
        if isinstance(bits, int):
            zero += assignment.numel(g) if bits == 0 else 0
        else:
            zero += float((bits == 0).double().sum()) * assignment.numel(g) / bits.numel()
    return zero / total if total else 0.0


def epoch_bits(model: nn.Module, profile: ModelProfile) -> dict[str, float]:
    """Average weight and activation bits now, and what zero-precision allocation would make of them."""
    now = assignment_from_model(model, profile)
    out = {"average_weight_bits": now.average_weight_bits(),
           "average_activation_bits": now.average_activation_bits()}
    searching = {name: layer for name, layer in quantized_layers(model).items()
                 if isinstance(layer.weight_quantizer, SmolWeightQuantizer)
                 and layer.weight_quantizer.searching}
    if searching:
        zpa = now.replace({f"{name}:weight": layer.weight_quantizer.frozen_bits(layer.weight, True)
                           for name, layer in searching.items()})
        out["average_weight_bits_zpa"] = zpa.average_weight_bits()
        out["pruned_share_zpa"] = pruned_share(zpa)
        widths = fractional_bits(model, profile)
        numel = sum(math.prod(l.weight_shape) for l in profile)
        with torch.no_grad():
            out["fractional_weight_bits"] = float(sum(
                group_sum(widths[l.weight_group], l.weight_shape) for l in profile)) / numel
    return out


def _ratio(bpp: float) -> float | None:
    """The paper's compression ratio, 32 / bpp (None when every weight is pruned)."""
    return 32.0 / bpp if bpp > 0 else None


@hookimpl
def register_strategies(register):
    register("smol", SmolStrategy)
