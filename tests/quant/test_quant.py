"""The quantization engine: the papers' quantizers, fractional widths, layer swapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.assignment import PrecisionAssignment
from mpsearch.quant import (DoReFaQuantizer, FixedBits, LearnableBits, MinMaxQuantizer,
                            PACTQuantizer, assignment_from_model, bit_parameters, bits_shape,
                            fake_quant, freeze_bits, quantize_model, quantized_layers, quantizers, project_bits,
                            restore_model)
from mpsearch.testing import TINY_INPUT, tiny_model, tiny_profile

torch.manual_seed(0)


def reference(kind: str, x: torch.Tensor, n: int, alpha: float = 2.0) -> torch.Tensor:
    """The papers' integer quantizers, written directly from their equations."""
    levels = 2**n - 1
    if kind == "minmax":  # BitPruning Sec. II-A
        lo, hi = x.min(), x.max()
        scale = (hi - lo) / levels
        return lo + torch.round((x - lo) / scale) * scale
    if kind == "dorefa":  # FracBits Eq. 3 with DoReFa's transform
        t = torch.tanh(x)
        w = t / (2 * t.abs().max()) + 0.5
        return 2 * torch.round(levels * w) / levels - 1
    y = x.clamp(0, alpha)  # PACT
    return alpha * torch.round(levels * y / alpha) / levels


def quantizer(kind: str, bits, alpha: float = 2.0):
    if kind == "minmax":
        return MinMaxQuantizer(bits)
    if kind == "dorefa":
        return DoReFaQuantizer(bits, rescale=False)
    return PACTQuantizer(bits, alpha=alpha)


KINDS = ["minmax", "dorefa", "pact"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_integer_quantizers_match_the_papers(kind, n):
    x = torch.randn(64, 33) * 1.5
    fixed = quantizer(kind, FixedBits(n))(x)
    assert torch.allclose(fixed, reference(kind, x, n), atol=1e-5)
    assert fixed.unique().numel() <= 2**n


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_fractional_equals_integer_at_integer_bits(kind, n):
    x = torch.randn(40, 17)
    fractional = quantizer(kind, LearnableBits(n))(x)
    assert torch.allclose(fractional, reference(kind, x, n), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_fractional_is_linear_between_neighbours(kind):
    x = torch.randn(30, 11)
    lo, hi = reference(kind, x, 3), reference(kind, x, 4)
    for a in (0.1, 0.25, 0.5, 0.9):
        out = quantizer(kind, LearnableBits(3 + a))(x)
        assert torch.allclose(out, (1 - a) * lo + a * hi, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [2.0, 3.3, 4.75])  # an integer too: the gradient must not vanish
def test_gradient_wrt_bits_is_the_difference_of_neighbours(kind, n):
    x = torch.randn(25, 9)
    g = torch.randn(25, 9)
    bits = LearnableBits(n)
    quantizer(kind, bits)(x).backward(g)
    b = int(n)
    expected = (g * (reference(kind, x, b + 1) - reference(kind, x, b))).sum()
    assert float(bits.value.grad) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_straight_through_gradients():
    x = (torch.randn(50, 7) * 3).requires_grad_()
    g = torch.randn(50, 7)
    MinMaxQuantizer(FixedBits(3))(x).backward(g)
    assert torch.equal(x.grad, g)  # every value lies in [min, max]

    x.grad = None
    pact = PACTQuantizer(FixedBits(3), alpha=1.5)
    pact(x).backward(g)
    inside = (x >= 0) & (x <= 1.5)
    assert torch.allclose(x.grad, torch.where(inside, g, 0.0))
    assert float(pact.alpha.grad) == pytest.approx(float(g[x.detach() > 1.5].sum()), rel=1e-5)

    x.grad = None
    w = torch.randn(20, 5, requires_grad=True)
    DoReFaQuantizer(FixedBits(4), rescale=False)(w).backward(torch.ones(20, 5))
    t = torch.tanh(w.detach())
    # d(2 q(tanh(w) / 2m + 1/2) - 1)/dw = (1 - tanh^2) / m under the straight-through estimate
    assert torch.allclose(w.grad, (1 - t * t) / t.abs().max(), atol=1e-5)


def test_rescaled_dorefa_keeps_the_mean_weight_magnitude():
    w = torch.randn(30, 8) * 0.05
    q = DoReFaQuantizer(FixedBits(3))(w)
    plain = DoReFaQuantizer(FixedBits(3), rescale=False)(w)
    assert torch.allclose(q, plain * (w.abs().mean() / plain.abs().mean()))
    assert float(q.abs().mean()) == pytest.approx(float(w.abs().mean()), rel=1e-5)
    binary = DoReFaQuantizer(FixedBits(1))(w)  # XNOR-Net: sign(w) * mean|w|
    assert torch.allclose(binary, torch.sign(w) * w.abs().mean(), atol=1e-7)
    assert DoReFaQuantizer(FixedBits(3)).scale_bits() == 32


def test_pact_clip_starts_at_the_first_batch():
    x = torch.rand(64, 10) * 1.5  # below half of the first 2-bit step of PACT's constant 10
    fixed = PACTQuantizer(FixedBits(2), alpha=10.0)
    assert torch.all(fixed(x) == 0)  # every value rounds to 0: no gradient anywhere
    calibrated = PACTQuantizer(FixedBits(2))
    out = calibrated(x)
    assert float(calibrated.alpha.detach()) == pytest.approx(float(x.max()))
    assert out.unique().numel() == 4
    restored = PACTQuantizer(FixedBits(2))
    restored.load_state_dict(calibrated.state_dict())
    restored(x * 5)  # a later, larger batch does not re-calibrate a loaded clip
    assert float(restored.alpha.detach()) == pytest.approx(float(x.max()))


def test_two_sided_pact_for_signed_inputs():
    x = torch.linspace(-3, 3, 601, requires_grad=True)
    pact = PACTQuantizer(FixedBits(2), alpha=2.0, two_sided=True)
    out = pact(x)
    assert out.min() == -2.0 and out.max() == 2.0
    assert out.unique().numel() == 4
    out.sum().backward()
    assert float(pact.alpha.grad) == pytest.approx(float((x > 2).sum() - (x < -2).sum()))


def test_zero_bits_prune():
    w = torch.randn(6, 4, requires_grad=True)
    bits = torch.tensor([[0], [2], [0], [8], [1], [0]])
    out = MinMaxQuantizer(FixedBits(bits))(w)
    assert torch.all(out[bits.squeeze() == 0] == 0)
    out.sum().backward()
    assert torch.all(w.grad[bits.squeeze() == 0] == 0)


@pytest.mark.parametrize("granularity", ["layer", "channel", "kernel", "pixel", "parameter"])
def test_granularities_give_each_group_its_own_width(granularity):
    w = torch.randn(4, 3, 2, 2)
    shape = bits_shape(granularity, tuple(w.shape))
    bits = torch.randint(1, 4, shape) if shape else torch.tensor(2)
    out = MinMaxQuantizer(FixedBits(bits))(w)
    per_element = bits.expand(w.shape) if shape else bits.expand(w.shape)
    lo, hi = w.min(), w.max()
    steps = (out - lo) / (hi - lo) * (2.0**per_element - 1)
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # on each element's own grid
    # fractional widths of the same shape take one gradient per group
    learn = LearnableBits(2.5, shape)
    MinMaxQuantizer(learn)(w).sum().backward()
    assert learn.value.grad.shape == learn.value.shape


def test_bits_shapes_for_every_granularity():
    conv, linear = (8, 4, 3, 3), (10, 6)
    assert bits_shape("layer", conv) == () and bits_shape("network", linear) == ()
    assert bits_shape("channel", conv) == (8, 1, 1, 1) and bits_shape("channel", linear) == (10, 1)
    assert bits_shape("kernel", conv) == (8, 4, 1, 1) and bits_shape("kernel", linear) == (10, 6)
    assert bits_shape("pixel", conv) == (8, 1, 3, 3) and bits_shape("pixel", linear) == (10, 1)
    assert bits_shape("parameter", conv) == conv


def _quantized_tiny(weight_bits, act_bits):
    model, profile = tiny_model(), tiny_profile()
    return quantize_model(model, profile, lambda l: MinMaxQuantizer(weight_bits(l)),
                          lambda l: MinMaxQuantizer(act_bits(l))), profile


def test_swap_and_restore_keep_the_model():
    model, profile = tiny_model(), tiny_profile()
    x = torch.randn(5, *TINY_INPUT)
    expected = model(x)
    params = {n: p for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    quantize_model(model, profile, lambda l: MinMaxQuantizer(FixedBits(2)),
                   lambda l: MinMaxQuantizer(FixedBits(2)))
    assert set(quantized_layers(model)) == set(profile.names)
    assert not torch.allclose(model(x), expected, atol=1e-3)  # 2 bits changes the output
    restore_model(model)
    assert torch.equal(model(x), expected)
    assert set(model.state_dict()) == keys
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(type(m) in (nn.Conv2d, nn.Linear) for n, m in model.named_modules() if n in profile.names)


def test_sixteen_bits_is_close_to_float():
    model, profile = tiny_model(), tiny_profile()
    x = torch.randn(5, *TINY_INPUT)
    expected = model(x)
    quantize_model(model, profile, lambda l: MinMaxQuantizer(FixedBits(16)),
                   lambda l: MinMaxQuantizer(FixedBits(16)))
    assert torch.allclose(model(x), expected, atol=1e-3)


def test_assignment_read_from_a_model_and_frozen_with_shared_widths():
    shared_w, shared_a = LearnableBits(3.2), LearnableBits(5.6)  # network granularity
    model, profile = _quantized_tiny(lambda l: shared_w, lambda l: shared_a)
    assert len(bit_parameters([model])) == 2
    x = torch.randn(4, *TINY_INPUT)
    model(x).sum().backward()
    assert shared_w.value.grad is not None and shared_a.value.grad is not None
    a = assignment_from_model(model, profile, strategy="test")
    assert a.average_weight_bits() == 4 and a.average_activation_bits() == 6  # ceil
    assert a.meta["strategy"] == "test"
    assert all(a.scale_bits(g) == 64 for g in a)
    freeze_bits(model)
    qs = quantizers(model)
    weight_bits = {id(q.bits) for g, q in qs.items() if g.endswith(":weight")}
    assert len(weight_bits) == 1 and isinstance(next(iter(qs.values())).bits, FixedBits)
    assert bit_parameters([model]) == []
    assert assignment_from_model(model, profile) == a  # freezing keeps the widths
    a.validate(profile)


def test_layer_bits_from_an_assignment_round_trip_through_a_model():
    profile = tiny_profile()
    a = PrecisionAssignment.uniform(profile, 3, 5, first_last_bits=8, scale_bits=64)
    per_channel = torch.randint(1, 9, (16, 1, 1, 1))
    a = a.replace({"pointwise:weight": per_channel})
    model = quantize_model(tiny_model(), profile, lambda l: MinMaxQuantizer(FixedBits(a[l.weight_group])),
                           lambda l: MinMaxQuantizer(FixedBits(a[l.input_group])))
    read = assignment_from_model(model, profile)
    assert all(torch.equal(torch.as_tensor(read[g]), torch.as_tensor(a[g])) for g in a)
    # min-max keeps its two float32 extremes per tensor, for weights and for inputs alike
    assert all(read.scale_bits(g) == 64 for g in read)


def test_unquantized_groups_read_as_32_bits():
    model, profile = tiny_model(), tiny_profile()
    quantize_model(model, profile, lambda l: MinMaxQuantizer(FixedBits(4)), lambda l: None)
    a = assignment_from_model(model, profile)
    assert a.average_weight_bits() == 4 and a.average_activation_bits() == 32


def test_only_plain_layers_are_swapped():
    from mpsearch.errors import MpsearchError
    from mpsearch.profile import profile_model

    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(MyConv(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    profile = profile_model(model, TINY_INPUT)
    with pytest.raises(MpsearchError, match="only plain nn.Conv2d"):
        quantize_model(model, profile, lambda l: None, lambda l: None)


def test_learnable_bits_pass_gradients_at_their_bounds_and_project():
    bits = LearnableBits(1.0, min_bits=1.0, max_bits=8.0)
    (bits() * -1.0).backward()  # a loss that wants more bits
    assert float(bits.value.grad) == -1.0  # not stopped at the bound
    with torch.no_grad():
        bits.value.fill_(0.4)
    assert float(bits().detach()) == 1.0  # the forward pass clips
    project_bits([bits])
    assert float(bits.value.detach()) == 1.0


def test_learnable_bits_clamp_and_round():
    bits = LearnableBits(0.3, min_bits=1.0, max_bits=8.0)
    assert float(bits().detach()) == 1.0 and bits.discrete() == 1
    assert LearnableBits(4.2).discrete() == 5
    assert LearnableBits(4.2, rounding="round").discrete() == 4
    assert LearnableBits(4.0).discrete() == 4
    with pytest.raises(ValueError):
        FixedBits(2.5)


def test_fake_quant_rejects_nothing_silently():
    x = torch.randn(3, 4)
    out = fake_quant(x, torch.tensor(2.0), x.min(), x.max() - x.min(), x.min(), x.max() - x.min(),
                     fractional=False)
    assert out.unique().numel() <= 4
