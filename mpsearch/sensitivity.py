"""Second-order sensitivity of each layer to quantization (HAWQ-v2).

For every quantizable layer, the trace of the Hessian of the loss with respect
to its weights, and to its input activations, is estimated by Hutchinson's
method; the sensitivity of a width ``b`` is then HAWQ-v2's

    Ω(b) = Tr(H) / n · ‖Q_b(x) − x‖²

(the average Hessian eigenvalue times the squared quantization perturbation),
with ``x`` the layer's ``n`` weights, or its inputs over the calibration images,
and ``Q_b`` the very quantizer the engine deploys at ``b`` bits
(:func:`mpsearch.quant.quantize_at`). Both kinds are in the loss's unit: to
second order quantizing ``x`` changes the loss by about Ω / 2. A trace estimated
below zero (a model far from a minimum, or too few iterations) gives Ω = 0: the
second-order model then predicts no loss, never a gain.

Z. Dong, Z. Yao, D. Arfeen, A. Gholami, M. W. Mahoney, K. Keutzer, "HAWQ-V2:
Hessian Aware trace-Weighted Quantization of Neural Networks", NeurIPS 2020.
The ``hawq`` strategy and ``mpsearch sensitivity`` read the same table.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.profile import ModelProfile

FORMAT = "mpsearch-sensitivity"
VERSION = 1
WEIGHT, INPUT = "weight", "input"
# Relative change of the running mean below which Hutchinson's estimate has converged
# (PyHessian's criterion, which HAWQ-v2 and v3 use), and the iterations at most.
DEFAULT_TOLERANCE = 1e-2
DEFAULT_MAX_ITERATIONS = 50


@dataclass
class TraceEstimate:
    """Hutchinson's estimates of the traces of some Hessian blocks.

    Attributes:
        traces: block -> Tr(H) (the mean over iterations).
        stderr: block -> the standard error of that mean (0 after one iteration).
        iterations: passes over the data; each draws fresh Rademacher vectors per batch.
        converged: whether every block's relative change fell below the tolerance.
    """

    traces: dict[str, float]
    stderr: dict[str, float]
    iterations: int
    converged: bool


def hutchinson_traces(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      weights: Mapping[str, torch.Tensor], inputs: Iterable[nn.Module] = (), *,
                      tolerance: float = DEFAULT_TOLERANCE,
                      max_iterations: int = DEFAULT_MAX_ITERATIONS,
                      generator: torch.Generator | None = None,
                      loss_fn=F.cross_entropy) -> TraceEstimate:
    """Traces of the Hessian blocks of the mean loss over ``batches``, by Hutchinson's method.

    ``Tr(H) = E[vᵀ H v]`` for Rademacher ``v``; ``H v`` is a Hessian-vector product
    by double back-propagation. Each block (one weight tensor, one layer's
    inputs) gets its own ``v`` and its own product, so its estimate has no
    cross-block terms. Every batch of an iteration draws fresh vectors, and its
    ``vᵀ H_b v`` is weighted by its share of the images: the mean loss's Hessian
    is the weighted mean of the batches' (activations: block-diagonal over
    samples, with the model in eval mode). Iterations stop once every block's
    running mean changes by less than ``tolerance`` (relative), or after
    ``max_iterations``.

    Args:
        batches: ``(inputs, labels)`` pairs on the model's device.
        weights: block name -> a parameter of ``model``.
        inputs: layers whose input activations are blocks too, named
            ``"<module name>:input"``.
        generator: the source of the Rademacher draws (CPU).

    Returns:
        The traces, their standard errors and the iterations run.
    """
    if max_iterations < 1:
        raise MpsearchError(f"max_iterations must be at least 1, not {max_iterations}.")
    names = {module: name for name, module in model.named_modules()}
    layers = list(inputs)
    blocks = [*weights, *(f"{names[m]}:input" for m in layers)]
    total = sum(len(y) for _, y in batches)
    generator = generator or torch.Generator().manual_seed(0)
    samples: dict[str, list[float]] = {b: [] for b in blocks}
    was_training = model.training
    model.eval()
    converged = False
    try:
        for _ in range(max_iterations):
            estimate = dict.fromkeys(blocks, 0.0)
            for x, y in batches:
                captured: dict[str, list[torch.Tensor]] = {}
                handles = [m.register_forward_pre_hook(_keeper(captured, f"{names[m]}:input"))
                           for m in layers]
                try:
                    # The first layer's input is the data: it needs a gradient to be a block.
                    loss = loss_fn(model(x.detach().requires_grad_(bool(layers))), y)
                finally:
                    for h in handles:
                        h.remove()
                tensors = {**{b: [w] for b, w in weights.items()}, **captured}
                flat = [t for b in blocks for t in tensors.get(b, [])]
                grads = iter(torch.autograd.grad(loss, flat, create_graph=True))
                share = len(y) / total
                for b in blocks:
                    for t in tensors.get(b, []):
                        g = next(grads)
                        v = _rademacher(t.shape, generator).to(t.device, t.dtype)
                        (hv,) = torch.autograd.grad(g, t, grad_outputs=v, retain_graph=True)
                        estimate[b] += share * float((hv * v).sum())
                del loss, grads, tensors, flat, captured
            previous = {b: _mean(samples[b]) for b in blocks}
            for b in blocks:
                samples[b].append(estimate[b])
            if len(samples[blocks[0]]) > 1 and all(
                    abs(_mean(samples[b]) - previous[b]) <= tolerance * (abs(previous[b]) + 1e-12)
                    for b in blocks):
                converged = True
                break
    finally:
        model.train(was_training)
    iterations = len(samples[blocks[0]]) if blocks else 0
    return TraceEstimate({b: _mean(s) for b, s in samples.items()},
                         {b: _stderr(s) for b, s in samples.items()}, iterations, converged)


def _keeper(store: dict[str, list[torch.Tensor]], name: str, detach: bool = False):
    """A forward pre-hook that appends the module's input to ``store[name]``."""
    def hook(module: nn.Module, args: tuple) -> None:
        store.setdefault(name, []).append(args[0].detach() if detach else args[0])

    return hook


def _rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).mul_(2).sub_(1).float()


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _stderr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


@dataclass
class LayerSensitivity:
    """One layer's row of a :class:`SensitivityTable`.

    Attributes:
        weight_trace / input_trace: Tr(H) of the loss with respect to the layer's
            weights / its input activations over the calibration images (None: not
            estimated, the activations' widths are not searched).
        weights / inputs: n, the elements of each (inputs: per sample x images).
        weight_omega / input_omega: width -> Ω.
    """

    layer: str
    weights: int
    weight_trace: float
    weight_omega: dict[int, float]
    inputs: int = 0
    input_trace: float | None = None
    input_omega: dict[int, float] = field(default_factory=dict)


@dataclass
class SensitivityTable:
    """HAWQ-v2's per-layer sensitivities of a model, with how they were measured.

    Serialises to a JSON-safe dict (:meth:`to_dict`): a trial records it, and
    ``mpsearch study plot`` draws it back.
    """

    layers: list[LayerSensitivity]
    quantizer: str
    images: int
    iterations: int
    converged: bool
    tolerance: float
    max_iterations: int
    seconds: float = 0.0

    def __getitem__(self, layer: str) -> LayerSensitivity:
        for row in self.layers:
            if row.layer == layer:
                return row
        raise KeyError(layer)

    def omega(self, group: str, bits: int) -> float:
        """Ω of one group (``"conv1:weight"``, ``"conv1:input"``) at ``bits``."""
        layer, _, kind = group.rpartition(":")
        row = self[layer]
        return (row.weight_omega if kind == WEIGHT else row.input_omega)[int(bits)]

    def total(self, assignment: PrecisionAssignment) -> float:
        """Σ Ω over every group of ``assignment`` this table has widths for."""
        out = 0.0
        for row in self.layers:
            out += row.weight_omega[int(assignment[f"{row.layer}:weight"])]
            if row.input_omega:
                out += row.input_omega[int(assignment[f"{row.layer}:input"])]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (widths as string keys)."""
        rows = []
        for r in self.layers:
            row: dict[str, Any] = {"layer": r.layer, "weights": r.weights, "weight_trace": r.weight_trace,
                                   "weight_omega": {str(b): v for b, v in r.weight_omega.items()}}
            if r.input_trace is not None:
                row.update(inputs=r.inputs, input_trace=r.input_trace,
                           input_omega={str(b): v for b, v in r.input_omega.items()})
            rows.append(row)
        return {"format": FORMAT, "version": VERSION, "quantizer": self.quantizer, "images": self.images,
                "iterations": self.iterations, "converged": self.converged, "tolerance": self.tolerance,
                "max_iterations": self.max_iterations, "seconds": self.seconds, "layers": rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sensitivity table") -> SensitivityTable:
        """Read :meth:`to_dict`'s form back.

        Raises:
            MpsearchError: ``data`` is not such a table.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise MpsearchError(f"{source} is not an mpsearch sensitivity table of version {VERSION}.")
        try:
            layers = [LayerSensitivity(
                layer=r["layer"], weights=int(r["weights"]), weight_trace=float(r["weight_trace"]),
                weight_omega={int(b): float(v) for b, v in r["weight_omega"].items()},
                inputs=int(r.get("inputs", 0)),
                input_trace=None if r.get("input_trace") is None else float(r["input_trace"]),
                input_omega={int(b): float(v) for b, v in r.get("input_omega", {}).items()})
                for r in data["layers"]]
            return cls(layers, str(data["quantizer"]), int(data["images"]), int(data["iterations"]),
                       bool(data["converged"]), float(data["tolerance"]), int(data["max_iterations"]),
                       float(data.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MpsearchError(f"{source} is malformed: {type(exc).__name__}: {exc}.") from None

    def to_frame(self):
        """One row per layer and kind: trace, elements, Tr/n, and Ω at each width (columns ``Ω@b``)."""
        import pandas as pd

        rows = []
        for r in self.layers:
            kinds = [(WEIGHT, r.weights, r.weight_trace, r.weight_omega)]
            if r.input_trace is not None:
                kinds.append((INPUT, r.inputs, r.input_trace, r.input_omega))
            for kind, n, trace, omega in kinds:
                rows.append({"layer": r.layer, "kind": kind, "trace": trace, "elements": n,
                             "trace/n": trace / n if n else math.nan,
                             **{f"Ω@{b}": v for b, v in sorted(omega.items())}})
        frame = pd.DataFrame(rows).set_index(["layer", "kind"])
        widths = sorted({int(c[2:]) for c in frame.columns if c.startswith("Ω@")})
        return frame[["trace", "elements", "trace/n", *(f"Ω@{b}" for b in widths)]]


def layer_sensitivity(model: nn.Module, profile: ModelProfile,
                      batches: Sequence[tuple[torch.Tensor, torch.Tensor]], widths: Iterable[int], *,
                      input_widths: Iterable[int] = (), quantizer: str = "dorefa-pact",
                      tolerance: float = DEFAULT_TOLERANCE,
                      max_iterations: int = DEFAULT_MAX_ITERATIONS,
                      generator: torch.Generator | None = None) -> SensitivityTable:
    """HAWQ-v2's sensitivity table of a float model's quantizable layers.

    Args:
        model: the float model (not changed; its mode is restored).
        batches: the calibration images with their labels, on the model's device.
        widths: the weight widths to tabulate Ω at.
        input_widths: the input widths; empty: no activation Hessian (inputs
            stay out of the table).
        quantizer: the engine's family (``dorefa-pact`` or ``minmax``) whose
            quantizers give ``Q_b``.
        generator: the source of Hutchinson's draws.

    Raises:
        MpsearchError: no calibration images, or a width outside 1-32.
    """
    started = time.perf_counter()
    widths, input_widths = _checked_widths(widths, input_widths)
    if not batches:
        raise MpsearchError("the sensitivity needs at least one calibration image.")
    modules = dict(model.named_modules())
    weights = {layer.weight_group: modules[layer.name].weight for layer in profile}
    layers = [modules[layer.name] for layer in profile] if input_widths else []
    estimate = hutchinson_traces(model, batches, weights, layers, tolerance=tolerance,
                                 max_iterations=max_iterations, generator=generator)
    qs = _deployed_quantizers(model, profile, quantizer)
    inputs = _layer_inputs(model, profile, batches) if input_widths else {}
    images = sum(len(y) for _, y in batches)
    rows = []
    with torch.no_grad():
        for layer in profile:
            w = weights[layer.weight_group].detach()
            trace = estimate.traces[layer.weight_group]
            row = LayerSensitivity(layer.name, w.numel(), trace,
                                   _weight_omegas(w, trace, qs[layer.weight_group], widths))
            if input_widths:
                trace = estimate.traces[f"{layer.name}:input"]
                n, omega = _input_omegas(inputs.get(layer.name, []), trace, qs[layer.input_group],
                                         input_widths)
                row.inputs, row.input_trace, row.input_omega = n, trace, omega
            rows.append(row)
    return SensitivityTable(rows, quantizer, images, estimate.iterations, estimate.converged,
                            float(tolerance), int(max_iterations), time.perf_counter() - started)


def _checked_widths(widths: Iterable[int], input_widths: Iterable[int]) -> tuple[list[int], list[int]]:
    """The weight and input widths, sorted and without repeats.

    Raises:
        MpsearchError: a width outside 1-32, or no weight width.
    """
    widths = sorted({int(b) for b in widths})
    input_widths = sorted({int(b) for b in input_widths})
    bad = [b for b in (*widths, *input_widths) if not 1 <= b <= 32]
    if bad or not widths:
        raise MpsearchError(f"sensitivity widths must be integers in 1-32, not {bad or widths}.")
    return widths, input_widths


def _deployed_quantizers(model: nn.Module, profile: ModelProfile, quantizer: str) -> dict[str, Any]:
    """Group -> the quantizer the engine deploys for it, on a copy of ``model`` (``model`` unchanged).

    Q_b is the engine's own quantizer at b bits: a copy of the model quantized
    by the family, its quantizers frozen at each width in turn as the host does.
    """
    from mpsearch.quant import quantize_at, quantizers

    quantized = quantize_at(copy.deepcopy(model), profile,
                            PrecisionAssignment.uniform(profile, 8, 8), quantizer).eval()
    return quantizers(quantized)


def _layer_inputs(model: nn.Module, profile: ModelProfile,
                  batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Layer name -> its inputs over ``batches`` (eval mode, no gradients; the mode is restored)."""
    modules = dict(model.named_modules())
    inputs: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    handles = [modules[layer.name].register_forward_pre_hook(_keeper(inputs, layer.name, detach=True))
               for layer in profile]
    try:
        with torch.no_grad():
            model.eval()
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return inputs


def _weight_omegas(w: torch.Tensor, trace: float, q: Any, widths: Sequence[int]) -> dict[int, float]:
    """Ω(b) of one layer's weights ``w`` at every width, with ``q`` its deployed quantizer."""
    omega = {}
    for b in widths:
        q.set_bits(b)
        omega[b] = max(trace, 0.0) / w.numel() * float((q(w) - w).square().sum())
    return omega


def _input_omegas(seen: Sequence[torch.Tensor], trace: float, q: Any, widths: Sequence[int]
                  ) -> tuple[int, dict[int, float]]:
    """The number of one layer's input values ``seen``, and their Ω(b) at every width.

    ``q`` is the layer's deployed input quantizer, calibrated at each width in turn.
    """
    n = sum(t.numel() for t in seen)
    flat = torch.cat([t.flatten() for t in seen]) if seen else torch.zeros(0)
    omega = {}
    for b in widths:
        q.set_bits(b)
        q.calibrate(flat)  # the clip the host's calibration would choose at b bits
        error = sum(float((q(t) - t).square().sum()) for t in seen)
        omega[b] = max(trace, 0.0) / n * error if n else 0.0
    return n, omega
