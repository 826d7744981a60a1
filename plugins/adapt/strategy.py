"""The ``adapt`` strategy: fixed-point training whose per-layer ⟨WL, FL⟩ adapts between batches (AdaPT)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mpsearch.api import (MAX_BITS, MpsearchError, Param, PrecisionAssignment, SearchResult, SpecError,
                          Strategy, TrialFailed, hookimpl, make_schedule, quantize_model, quantized_layers,
                          steps_per_epoch)

from .fixedpoint import (STRATEGIES, FixedPoint, FixedPointQuantizer, adapt_lookback, adapt_resolution,
                         adapt_strategy, gradient_diversity, push_down, push_up,
                         truncated_normal_variance_scaling_)
from .objective import InferenceSpeedup, LayerStep, SizeRatio, TrainingCostModel

ROUNDING_SALT = 0x41644150  # "AdAP": stochastic rounding draws differ from the trial's own
INTEGERS = ("lookback", "lookback_lower", "lookback_upper", "resolution", "resolution_lower",
            "resolution_upper", "buffer_bits", "initial_wl", "initial_fl")
NON_NEGATIVE = ("l1", "l2", "penalty")
POSITIVE = ("kl_threshold", "init_scale")


@dataclass
class LayerState:
    """One layer's entry of AdaPT's quantization mapping (Alg. 1, ln. 2) and its gradient window."""

    fmt: FixedPoint
    lookback: int
    resolution: int
    grad_sum: torch.Tensor | None = None
    norm_sum: float = 0.0
    count: int = 0
    diversity: float = math.nan

    def collect(self, grad: torch.Tensor, norm: float) -> None:
        self.grad_sum = grad.detach().clone() if self.grad_sum is None else self.grad_sum.add_(grad)
        self.norm_sum += norm
        self.count += 1

    def reset(self) -> None:
        self.grad_sum, self.norm_sum, self.count = None, 0.0, 0


class AdaptStrategy(Strategy):
    """AdaPT: fixed-point training with per-layer precision switches from KL divergence and gradient diversity.

    Kummer et al., "Adaptive Precision Training (AdaPT): A dynamic quantized
    training approach for DNNs" (2021), Alg. 1-4. The profiled layers' weights are
    initialised by truncated-normal variance scaling (TNVS, Sec. 3.1) and quantized
    to ⟨WL, FL⟩ = ⟨8, 4⟩ with stochastic rounding; forward passes use the
    quantized copy, SGD updates a float32 master copy with per-layer normalised
    gradients, and after each update the master copy is quantized again. At every
    batch each layer adds its gradient to a window, adapts its lookback ``lb`` and
    resolution ``r``, and once the window holds ``lb`` gradients runs PushDown
    (the coarsest ⟨WL, FL⟩ whose binned weight distribution keeps the KL
    divergence below ``kl_threshold`` at ``r`` bins, by bisection) and PushUp
    (more fractional bits as the window's gradient diversity asks, by the global
    min/mean/max strategy, plus ``buffer_bits`` of range), and empties the window.
    The strategy adapts to the loss. The loss is
    ``CE + l1 ||W||_1 + l2 / 2 ||W||_2^2 + penalty * sum_l WL_l / 32 * sp_l``.
    The final model is the quantized (and, where weights rounded to 0, sparse)
    one; there is no float refinement.

    Parameters (paper's values where it gives them):
        lookback: initial lookback, 25-100 (the paper's bounds ``lb_lwr``, ``lb_upr``).
        resolution: initial resolution (bins), 50-150 (``r_lwr``, ``r_upr``).
        buffer_bits: 4 or 8 (the paper's values for its CIFAR runs).
        l1, l2: the L1 and L2 weights ``alpha``, ``beta`` (chosen by grid search in
            the paper); log ranges 1e-6 to 1e-3.
        push_up_strategy: the initial PushUp strategy, min, mean or max.
        lookback_lower / lookback_upper: fixed 25 / 100.
        resolution_lower / resolution_upper: fixed 50 / 150.
        lookback_momentum: fixed 0.33 (``gamma``).
        initial_wl / initial_fl: fixed 8 / 4.
        kl_threshold: fixed 0.01 bits (``epsilon`` of Alg. 3; the text asks for 0).
        init_scale: fixed 1.0 (TNVS's ``s``; the paper's value is not given).
        penalty: fixed 1.0, the weight of the word-length x sparsity term ``P``
            (the paper adds ``P`` unweighted; see below).
        sparse_assignment: fixed true: weights stored as 0 get 0 bits in the
            returned assignment (false: one WL per layer).

    Trial attributes: the final ``wl``, ``fl``, ``sparsity`` (share of zero weights)
    per layer, their per-epoch histories (``wl_history`` etc., as the paper's
    Figures 3-6), the overall sparsity, the number of precision switches, and the
    performance model's training cost, overhead, speed-up and memory against
    float32 training, inference speed-up and size ratio
    (:mod:`mpsearch.plugins.adapt.objective`). Each epoch reports ``wl.<layer>``,
    ``fl.<layer>``, ``sparsity.<layer>``, ``lookback.<layer>`` and
    ``resolution.<layer>``, the share of the epoch's steps under each PushUp strategy
    (``strategy_share.min`` etc.) and the strategy at its end (``strategy``: 0 min,
    1 mean, 2 max), besides loss and accuracy.

    Deviations:
        - Activations stay float32 (the paper specifies fixed-point formats for
          weight tensors only; its performance model weighs ops by the weights'
          word length alone): the assignment records 32 bits for every input.
        - Biases stay float32 and are updated with unnormalised gradients; the
          L1/L2 terms, gradient normalisation and formats concern the weights of
          the profiled convolution and linear layers.
        - PushDown rounds to the nearest grid point (not stochastically), so its
          decision does not depend on a random draw; it searches every format
          (not only those below the current one): first the coarsest grid
          ``FL_min``, then the fewest word bits at that grid (the paper does not
          say how its bisection orders the two); its KL divergence adds half a
          value to every bin (see :class:`mpsearch.plugins.adapt.fixedpoint.BinnedReference`).
          ``kl_threshold`` is our choice: the text asks for ``KL = 0``, which the
          binned divergence of a large layer reaches only near 20 fractional bits.
        - The gradient passes straight through the quantizer to the master copy,
          saturated weights included (the paper does not say).
          Algorithm 4's loop is replaced by the closed form of Sec. 3.3 (Eq. 4 and
          the buffer bits), which needs no extra passes at other formats.
        - Where the text is ambiguous: ``log`` is natural; Eq. (4)'s ``log^2`` is the
          square; PushUp's final format is ``FL = min(FL_min + s, 32 - buff)``,
          ``WL = max(min(FL + buff, 32), WL_min)``; ``s1`` is capped at 32; the
          window restarts after each switch (the overhead model (9) amortises one
          switch over ``lb`` batches); the loss average of the strategy rule
          covers the ``lb_avg`` batches before the current one, and uses the full
          ASGD loss that Alg. 1's forward pass returns.
        - The penalty ``P = sum_l WL_l / 32 * sp_l`` is built from counts, so it
          gives the weights no gradient; its one effect is through the strategy
          rule, where a switch that raises ``WL`` raises the loss above its
          average and so escalates the strategy (more bits, not fewer).
          ``penalty = 0`` keeps it out. (On LeNet-5/MNIST, 3 epochs, the word
          lengths swung between about 16 and 26-32 bits with and without it: the
          per-batch loss noise drives the rule more than ``P`` does.)
        - The optimizer is SGD (AdaPT-SGD) with the spec's learning rate, momentum
          (Nesterov) and schedule (the paper: reduce-on-plateau); the spec's
          ``optimizer`` and ``weight_decay`` are not used (``l2`` is the decay).
        - AdaPT trains from scratch (``from_scratch``): its trials start from the
          seeded initialisation, re-drawn by TNVS, never from the study's float start.
        - A backend that widens a layer's word length keeps its FL (the host's
          legalisation through the quantizer): the stored weights are
          representable unchanged.
    """

    description = "AdaPT: per-layer fixed-point <WL, FL> switched by KL divergence and gradient diversity"

    label = "adapt"
    from_scratch = True
    parameters: ClassVar[Mapping[str, Param]] = {
        "lookback": Param(low=25, high=100, integer=True),
        "resolution": Param(low=50, high=150, integer=True),
        "buffer_bits": Param(choices=(4, 8)),
        "l1": Param(low=1e-6, high=1e-3, log=True),
        "l2": Param(low=1e-6, high=1e-3, log=True),
        "push_up_strategy": Param(choices=STRATEGIES),
        "lookback_lower": Param(value=25),
        "lookback_upper": Param(value=100),
        "resolution_lower": Param(value=50),
        "resolution_upper": Param(value=150),
        "lookback_momentum": Param(value=0.33),
        "initial_wl": Param(value=8),
        "initial_fl": Param(value=4),
        "kl_threshold": Param(value=0.01),
        "init_scale": Param(value=1.0),
        "penalty": Param(value=1.0),
        "sparse_assignment": Param(value=True),
    }

    @classmethod
    def check_space(cls, space: Mapping[str, Param], where: str) -> None:
        """Reject unknown names and values outside each parameter's domain."""
        super().check_space(space, where)
        merged = {**cls.parameters, **space}
        for name in INTEGERS:
            p = merged[name]
            if p.low is not None and not p.integer:
                raise SpecError(f"{where}.{name}: a range needs integer low and high.")
            lowest = 0 if name in ("buffer_bits", "initial_fl") else 1
            for v in p.values():
                if isinstance(v, bool) or not isinstance(v, int) or not lowest <= v <= 10_000:
                    raise SpecError(f"{where}.{name}: {v!r} must be an integer >= {lowest}.")
        for name in ("buffer_bits", "initial_wl", "initial_fl"):
            for v in merged[name].values():
                if v > MAX_BITS - (name == "buffer_bits"):
                    raise SpecError(f"{where}.{name}: {v!r} is more than a {MAX_BITS}-bit word allows.")
        for names, test, words in ((NON_NEGATIVE, lambda v: v >= 0, "a number >= 0"),
                                   (POSITIVE, lambda v: v > 0, "a positive number"),
                                   (("lookback_momentum",), lambda v: 0 <= v <= 1, "a number in [0, 1]")):
            for name in names:
                for v in merged[name].values():
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not test(v):
                        raise SpecError(f"{where}.{name}: {v!r} must be {words}.")
        for name, valid in (("push_up_strategy", STRATEGIES), ("sparse_assignment", (True, False))):
            for v in merged[name].values():
                if v not in valid or isinstance(v, bool) != isinstance(valid[0], bool):
                    raise SpecError(f"{where}.{name}: {v!r} is not one of {', '.join(map(str, valid))}.")

    @classmethod
    def resolve(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters with fixed defaults filled in, checked like a space and for consistent bounds.

        Raises:
            MpsearchError: a parameter without a fixed default is missing, or a value is invalid.
        """
        out = super().resolve(params)
        for name in ("lookback", "resolution"):
            low, high = out[f"{name}_lower"], out[f"{name}_upper"]
            if not low <= out[name] <= high:
                raise MpsearchError(f"strategy 'adapt': {name} {out[name]} must lie in "
                                    f"[{name}_lower, {name}_upper] = [{low}, {high}].")
        return out

    def search(self, context, params: Mapping[str, Any]) -> SearchResult:
        """Train from TNVS-initialised weights for every epoch, switching formats as it goes."""
        p = self.resolve(params)
        model, profile, device = context.model, context.profile, context.device
        rounding = torch.Generator(device=device)
        rounding.manual_seed((context.seed * 1_000_003 + ROUNDING_SALT) % 2**63)
        modules = dict(model.named_modules())
        for layer in profile:
            module = modules[layer.name]
            truncated_normal_variance_scaling_(module.weight, float(p["init_scale"]), rounding)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        start = FixedPoint(int(p["initial_wl"]), int(p["initial_fl"]))
        sparse = bool(p["sparse_assignment"])
        quantize_model(model, profile, lambda layer: FixedPointQuantizer(start, sparse), lambda layer: None)
        layers = quantized_layers(model)
        states = {name: LayerState(start, int(p["lookback"]), int(p["resolution"])) for name in layers}
        for layer in layers.values():
            layer.weight_quantizer.generator = rounding
            layer.weight_quantizer.requantize(layer.weight)

        loop = _AdaptLoop(context, p, layers, states)
        loop.train(context.epochs)
        for layer in layers.values():  # the stored copies are final; a generator would block copying
            layer.weight_quantizer.generator = None
        assignment = self._assignment(layers, profile, sparse)
        return SearchResult(model, assignment, 0.0, loop.attrs(context.legalise(assignment)))

    @staticmethod
    def _assignment(layers, profile, sparse: bool) -> PrecisionAssignment:
        """The final widths: WL per layer (0 for stored zeros with ``sparse``); inputs float."""
        bits: dict[str, Any] = {}
        for layer in profile:
            q = layers[layer.name].weight_quantizer
            bits[layer.weight_group] = q.integer_bits() if sparse else q.fmt.wl
            bits[layer.input_group] = MAX_BITS
        return PrecisionAssignment(bits, profile.group_shapes(), meta={"strategy": "adapt"})


class _AdaptLoop:
    """AdaPT-SGD (Alg. 1) with the precision switch (Alg. 2) between backward pass and update."""

    def __init__(self, context, p: Mapping[str, Any], layers, states: dict[str, LayerState]):
        self.context, self.p, self.layers, self.states = context, p, layers, states
        self.weights = {name: layer.weight for name, layer in layers.items()}
        model = context.model
        training = context.training
        self.optimizer = torch.optim.SGD(model.parameters(), lr=training.lr, momentum=training.momentum,
                                         nesterov=training.momentum > 0, weight_decay=0.0)
        total = context.epochs * steps_per_epoch(context.train, training.batch_size)
        self.schedule = make_schedule(training, self.optimizer, total)
        self.strategy = str(p["push_up_strategy"])
        self.losses: deque[float] = deque(maxlen=int(p["lookback_upper"]))
        self.costs = TrainingCostModel(context.profile)
        self.switches = 0
        self.strategy_steps = dict.fromkeys(STRATEGIES, 0)  # steps under each strategy this epoch
        self.history: dict[str, dict[str, list[float]]] = {k: {n: [] for n in layers} for k in
                                                           ("wl", "fl", "sparsity")}

    def train(self, epochs: int) -> None:
        for _ in range(epochs):
            metrics = self._epoch()
            metrics["val_accuracy"] = self.context.evaluate(self.context.model)
            for name, state in self.states.items():
                sparsity = 1.0 - self.layers[name].weight_quantizer.nonzero_share()
                self.history["wl"][name].append(state.fmt.wl)
                self.history["fl"][name].append(state.fmt.fl)
                self.history["sparsity"][name].append(sparsity)
                metrics.update({f"wl.{name}": state.fmt.wl, f"fl.{name}": state.fmt.fl,
                                f"sparsity.{name}": sparsity, f"lookback.{name}": state.lookback,
                                f"resolution.{name}": state.resolution})
            steps = max(sum(self.strategy_steps.values()), 1)
            metrics.update({f"strategy_share.{k}": v / steps for k, v in self.strategy_steps.items()})
            self.strategy_steps = dict.fromkeys(STRATEGIES, 0)
            metrics.update(switches=self.switches, strategy=STRATEGIES.index(self.strategy),
                           training_speedup=self.costs.speedup)
            self.context.report(phase="train", **metrics)

    def _epoch(self) -> dict[str, float]:
        context, p = self.context, self.p
        model = context.model
        model.train()
        l1, l2, penalty_weight = float(p["l1"]), float(p["l2"]), float(p["penalty"])
        task_sum = total_sum = 0.0
        correct = seen = 0
        for x, y in context.train.batches(context.training.batch_size, shuffle=True,
                                          generator=context.generator, augment=context.augment):
            shares = {n: layer.weight_quantizer.nonzero_share() for n, layer in self.layers.items()}
            logits = model(x)
            task = F.cross_entropy(logits, y)
            weights = list(self.weights.values())
            reg = (l1 * sum(w.abs().sum() for w in weights)
                   + 0.5 * l2 * sum(w.pow(2).sum() for w in weights))
            penalty = sum(self.states[n].fmt.wl / MAX_BITS * shares[n] for n in self.layers)
            loss = task + reg + penalty_weight * penalty
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialFailed("the training loss became NaN or infinite; lower the learning rate "
                                  "or the regulariser's weight.")
            self.costs.step(len(y), {n: LayerStep(s.fmt.wl, shares[n], s.lookback, s.resolution)
                                     for n, s in self.states.items()})
            self._precision_switch(value)
            self.optimizer.step()
            if self.schedule is not None:
                self.schedule.step()
            for name, layer in self.layers.items():
                layer.weight_quantizer.requantize(self.weights[name])
            task_sum += float(task.detach()) * len(y)
            total_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        context.epochs_trained += 1.0
        seen = max(seen, 1)
        return {"loss": task_sum / seen, "total_loss": total_sum / seen, "train_accuracy": correct / seen}

    def _precision_switch(self, loss: float) -> None:
        """Alg. 2: adapt the strategy, collect and normalise gradients, switch full windows."""
        p = self.p
        lb_avg = max(1, round(sum(s.lookback for s in self.states.values()) / len(self.states)))
        if self.losses:
            recent = list(self.losses)[-lb_avg:]
            self.strategy = adapt_strategy(self.strategy, sum(recent) / len(recent), loss)
        self.losses.append(loss)
        self.strategy_steps[self.strategy] += 1
        names = list(self.states)
        grads = [self.weights[n].grad for n in names]
        norms = torch.stack([g.norm() for g in grads]).tolist()
        for name, grad, norm in zip(names, grads, norms):
            self.states[name].collect(grad, norm)
        sums = torch.stack([self.states[n].grad_sum.norm() for n in names]).tolist()
        lower, upper = int(p["lookback_lower"]), int(p["lookback_upper"])
        for name, grad, norm, total in zip(names, grads, norms, sums):
            if norm > 0:  # gradient normalisation (Sec. 3.3)
                grad.div_(norm)
            s = self.states[name]
            s.diversity = gradient_diversity(s.norm_sum, total)
            s.lookback = adapt_lookback(s.lookback, s.diversity, lower, upper,
                                        float(p["lookback_momentum"]))
            s.resolution = adapt_resolution(s.resolution, s.lookback, lower, upper,
                                            int(p["resolution_lower"]), int(p["resolution_upper"]))
            if s.count >= s.lookback:
                minimum = push_down(self.weights[name], s.resolution, float(p["kl_threshold"]))
                new = push_up(minimum, s.diversity, self.strategy, int(p["buffer_bits"]))
                if new != s.fmt:
                    self.switches += 1
                s.fmt = new
                self.layers[name].weight_quantizer.fmt = new
                s.reset()

    def attrs(self, legal: PrecisionAssignment) -> dict[str, Any]:
        profile = self.context.profile
        final = {n: self.layers[n].weight_quantizer for n in self.layers}
        zeros = sum(float((q.quantized == 0).sum()) for q in final.values())
        total = sum(q.quantized.numel() for q in final.values())
        out: dict[str, Any] = {
            "wl": {n: q.fmt.wl for n, q in final.items()},
            "fl": {n: q.fmt.fl for n, q in final.items()},
            "sparsity": {n: 1.0 - q.nonzero_share() for n, q in final.items()},
            "model_sparsity": zeros / total if total else 0.0,
            "wl_history": self.history["wl"], "fl_history": self.history["fl"],
            "sparsity_history": self.history["sparsity"],
            "switches": self.switches, "final_push_up_strategy": self.strategy,
            "inference_speedup": InferenceSpeedup().evaluate(profile, legal),
            "size_ratio": SizeRatio().evaluate(profile, legal),
        }
        out.update(self.costs.summary())
        return out


@hookimpl
def register_strategies(register):
    register("adapt", AdaptStrategy)
