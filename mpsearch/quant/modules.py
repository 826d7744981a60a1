"""Swapping a model's layers for quantized ones and back, and reading its assignment.

:func:`quantize_model` turns every profiled ``nn.Conv2d``/``nn.Linear`` into a
:class:`QuantConv2d`/:class:`QuantLinear` in place: the same module object, with
the same parameters and name, gains a ``weight_quantizer`` and an
``input_quantizer``. :func:`restore_model` undoes it. Only plain ``nn.Conv2d`` and
``nn.Linear`` are swapped; other subclasses raise, because their ``forward``
cannot be known to use ``self.weight``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.assignment import MAX_BITS, PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.profile import LayerProfile, ModelProfile
from mpsearch.quant.bitwidth import BitWidth, FixedBits
from mpsearch.quant.quantizers import Quantizer

QuantizerFactory = Callable[[LayerProfile], Quantizer | None]


class _QuantMixin:
    weight_quantizer: Quantizer | None
    input_quantizer: Quantizer | None

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _weight(self) -> torch.Tensor:
        w = self.weight
        return w if self.weight_quantizer is None else self.weight_quantizer(w)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """An ``nn.Conv2d`` whose weights and input pass through quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self._inputs(x)
        if xq.requires_grad and not x.requires_grad and _InputConv.applies(self, xq):
            return _InputConv.apply(xq, self._weight(), self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)
        return self._conv_forward(xq, self._weight(), self.bias)


class QuantLinear(_QuantMixin, nn.Linear):
    """An ``nn.Linear`` whose weights and input pass through quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._inputs(x), self._weight(), self.bias)


class _InputConv(torch.autograd.Function):
    """A convolution of the network's input, whose input gradient feeds only the input
    quantizer's parameters (a learned width, PACT's clip).

    The float network never computes that gradient. On the CPU, oneDNN computes it
    for a few input channels about four times slower than ATen's own kernel (LeNet-5's
    first layer: 56 ms against 14 ms at batch 128, one thread), so it is taken from
    ATen's; the weight's gradient stays with oneDNN.
    """

    @staticmethod
    def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str) and not torch.is_autocast_enabled("cpu"))

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (None if bias is None else list(bias.shape), stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        bias_sizes, stride, padding, dilation, groups = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        args = (g, x, weight, bias_sizes, list(stride), list(padding), list(dilation), False,
                [0, 0], groups)
        dx = dw = db = None
        if need_w or need_b:
            _, dw, db = torch.ops.aten.convolution_backward(*args, [False, need_w, need_b])
        if need_x:
            onednn = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False
            try:
                dx = torch.ops.aten.convolution_backward(*args, [True, False, False])[0]
            finally:
                torch.backends.mkldnn.enabled = onednn
        return dx, dw, db, None, None, None, None


_SWAP = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
_BACK = {v: k for k, v in _SWAP.items()}


def quantize_model(model: nn.Module, profile: ModelProfile, weight: QuantizerFactory,
                   activation: QuantizerFactory) -> nn.Module:
    """Give every profiled layer the quantizers the factories make (None: leave float).

    The model is changed in place and returned. Quantizers are created on the
    device of the layer's weight.
    """
    modules = dict(model.named_modules())
    for layer in profile:
        module = modules.get(layer.name)
        if module is None:
            raise MpsearchError(f"layer {layer.name!r} of the profile is not in the model.")
        cls = type(module)
        if cls in _BACK:
            raise MpsearchError(f"layer {layer.name!r} is already quantized; restore_model() first.")
        if cls not in _SWAP:
            raise MpsearchError(f"layer {layer.name!r} is a {cls.__name__}; only plain nn.Conv2d "
                                f"and nn.Linear layers can be quantized.")
        device = module.weight.device
        wq, aq = weight(layer), activation(layer)
        module.__class__ = _SWAP[cls]
        module.weight_quantizer = wq.to(device) if wq is not None else None
        module.input_quantizer = aq.to(device) if aq is not None else None
    return model


def restore_model(model: nn.Module) -> nn.Module:
    """Turn quantized layers back into plain ones (parameters kept, quantizers dropped)."""
    for module in model.modules():
        if type(module) in _BACK:
            del module.weight_quantizer
            del module.input_quantizer
            module.__class__ = _BACK[type(module)]
    return model


def quantized_layers(model: nn.Module) -> dict[str, _QuantMixin]:
    """Layer name -> quantized layer, in module order."""
    return {name: m for name, m in model.named_modules() if type(m) in _BACK}


def quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Group name (``"layer:weight"``, ``"layer:input"``) -> its quantizer."""
    found: dict[str, Quantizer] = {}
    for name, layer in quantized_layers(model).items():
        if layer.weight_quantizer is not None:
            found[f"{name}:weight"] = layer.weight_quantizer
        if layer.input_quantizer is not None:
            found[f"{name}:input"] = layer.input_quantizer
    return found


def assignment_from_model(model: nn.Module, profile: ModelProfile, **meta) -> PrecisionAssignment:
    """The precision assignment a quantized model runs at now.

    Groups without a quantizer are float: 32 bits. Each weight group records its
    quantizer's ``scale_bits``.
    """
    qs = quantizers(model)
    bits, scale = {}, {}
    for group in profile.group_shapes():
        q = qs.get(group)
        bits[group] = MAX_BITS if q is None else q.integer_bits()
        if q is not None and q.scale_bits():
            scale[group] = q.scale_bits()
    return PrecisionAssignment(bits, profile.group_shapes(), scale, meta)


def fractional_bits(model: nn.Module, profile: ModelProfile) -> dict[str, torch.Tensor]:
    """Group -> the current widths of a quantized model, as tensors carrying gradients.

    The input of a cost objective's differentiable form: learnable widths stay
    attached to the graph; fixed ones are constants; groups without a quantizer
    are float (32 bits).
    """
    qs = quantizers(model)
    device = next(model.parameters()).device
    out = {}
    for group in profile.group_shapes():
        q = qs.get(group)
        out[group] = (torch.tensor(float(MAX_BITS), device=device) if q is None
                      else q.widths().to(device))
    return out


def freeze_bits(model: nn.Module) -> None:
    """Replace every learnable width by its integer value (shared widths stay shared).

    Read the result with :func:`assignment_from_model`.
    """
    frozen: dict[int, BitWidth] = {}
    for q in quantizers(model).values():
        bits = getattr(q, "bits", None)
        if isinstance(bits, BitWidth) and bits.fractional:
            if id(bits) not in frozen:
                frozen[id(bits)] = FixedBits(bits.discrete()).to(bits().device)
            q.bits = frozen[id(bits)]


def apply_assignment(model: nn.Module, profile: ModelProfile, assignment: PrecisionAssignment) -> None:
    """Freeze every quantizer of ``model`` at the widths of ``assignment`` (the host's legalisation).

    Each quantizer's :meth:`~mpsearch.quant.Quantizer.set_bits` takes its group's
    widths; learnable widths become fixed ones (shared ones stay shared when they
    get equal widths).

    Raises:
        MpsearchError: a group without a quantizer is not at 32 bits (float), or a
            quantizer cannot take its widths.
    """
    assignment.validate(profile)
    qs = quantizers(model)
    frozen: dict[tuple[int, bytes], BitWidth] = {}
    for group in profile.group_shapes():
        bits = assignment[group]
        q = qs.get(group)
        if q is None:
            if not (isinstance(bits, int) and bits >= MAX_BITS):
                raise MpsearchError(f"group {group!r} has no quantizer but the assignment gives it "
                                    f"{bits if isinstance(bits, int) else 'per-element'} bits.")
            continue
        shared = getattr(q, "bits", None)
        key = (id(shared), torch.as_tensor(bits).numpy().tobytes())
        if isinstance(shared, BitWidth) and key in frozen:
            q.bits = frozen[key]
            continue
        try:
            q.set_bits(bits)
        except (NotImplementedError, ValueError) as exc:
            raise MpsearchError(f"group {group!r}: its quantizer cannot run at the legal widths "
                                f"({exc}).") from None
        if isinstance(shared, BitWidth) and isinstance(getattr(q, "bits", None), BitWidth):
            frozen[key] = q.bits


@torch.no_grad()
def calibrate_model(model: nn.Module, batches) -> None:
    """Calibrate every quantizer's ranges on ``batches`` of inputs (post-training quantization).

    The model runs in evaluation mode (batch-norm statistics untouched) with every
    quantizer passing its input through, so each input quantizer sees the float
    network's activations over all batches (as TensorRT's and HAQ's calibration
    do, and the same whatever the quantizers' state: calibrating twice gives the
    same ranges); each is handed to its :meth:`~mpsearch.quant.Quantizer.calibrate`.
    Weight quantizers see the weights.
    """
    was_training = model.training
    model.eval()
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for group, q in quantizers(model).items():
        handles.append(q.register_forward_hook(lambda module, args, out: args[0]))  # float pass
        if group.endswith(":input"):
            handles.append(q.register_forward_pre_hook(
                lambda module, args, _g=group: seen.setdefault(_g, []).append(args[0].detach())))
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    layers = quantized_layers(model)
    for group, q in quantizers(model).items():
        if group in seen:
            q.calibrate(torch.cat([t.flatten() for t in seen[group]]))
        elif group.endswith(":weight"):
            q.calibrate(layers[group.rsplit(":", 1)[0]].weight.detach())
    model.train(was_training)


QUANTIZER_FAMILIES = ("dorefa-pact", "minmax", "linear")


def quantize_at(model: nn.Module, profile: ModelProfile, assignment: PrecisionAssignment,
                family: str = "dorefa-pact") -> nn.Module:
    """Quantize ``model`` in place at the fixed widths of ``assignment``.

    Args:
        family: ``"dorefa-pact"`` (DoReFa weights, PACT inputs, two-sided where a
            layer's inputs are signed), ``"minmax"`` (min-max for both) or
            ``"linear"`` (HAQ's linear quantizer for both, clips by the least squared
            error when calibrated, learnable for inputs). Groups at 32 bits stay float.
    """
    from mpsearch.quant.linear import LinearQuantizer
    from mpsearch.quant.quantizers import DoReFaQuantizer, MinMaxQuantizer, PACTQuantizer

    if family not in QUANTIZER_FAMILIES:
        raise MpsearchError(f"unknown quantizer family {family!r}; choose one of "
                            f"{', '.join(QUANTIZER_FAMILIES)}.")
    assignment.validate(profile)

    def weight(layer: LayerProfile) -> Quantizer | None:
        bits = assignment[layer.weight_group]
        if isinstance(bits, int) and bits >= MAX_BITS:
            return None
        if family == "linear":
            return LinearQuantizer(FixedBits(bits), signed=True)
        cls = DoReFaQuantizer if family == "dorefa-pact" else MinMaxQuantizer
        return cls(FixedBits(bits))

    def activation(layer: LayerProfile) -> Quantizer | None:
        bits = assignment[layer.input_group]
        if isinstance(bits, int) and bits >= MAX_BITS:
            return None
        if family == "linear":
            return LinearQuantizer(FixedBits(bits), signed=layer.input_signed, learn_clip=True)
        if family == "dorefa-pact":
            return PACTQuantizer(FixedBits(bits), two_sided=layer.input_signed)
        return MinMaxQuantizer(FixedBits(bits))

    return quantize_model(model, profile, weight, activation)
