"""SMOL's quantizers: the paper's initialisation, grid, noise, clip and zero-precision allocation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.quant import (FixedBits, PACTQuantizer, assignment_from_model, fractional_bits,
                            freeze_bits, quantize_model, quantizers)
from mpsearch.plugins.smol.quantizers import (NoiseBits, SmolPACTQuantizer, SmolWeightQuantizer, initial_s,
                                 noise_parameters, precision, smol_levels, smol_quantize,
                                 zero_precision)
from mpsearch.testing import TINY_INPUT, tiny_model, tiny_profile


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- initialisation (Sec. 3.1) ---------------------------------------------------------------

@pytest.mark.parametrize("p_init", range(2, 17))
def test_initial_noise_is_two_to_the_one_minus_p_init_and_maps_back_to_p_init(p_init):
    bits = NoiseBits(p_init, (5, 3))
    assert torch.allclose(bits.sigma(), torch.full((5, 3), 2.0 ** (1 - p_init)), rtol=1e-5)
    assert torch.equal(bits.precision(), torch.full((5, 3), float(p_init)))
    assert torch.allclose(bits(), torch.full((5, 3), float(p_init)), atol=1e-5)


def test_the_papers_initial_value_for_eight_bits():
    # "s_init = -ln(2^7 - 1) ~ -4.84" (Sec. 4), sigma = 2^-7 (Sec. 3.1)
    assert initial_s(8) == pytest.approx(-math.log(127)) == pytest.approx(-4.844, abs=1e-3)
    with pytest.raises(ValueError):
        initial_s(1)


def test_precision_is_one_plus_floor_of_log2_one_plus_exp_minus_s():
    s = torch.tensor([-4.84, -4.0, -1.0, 0.0, 0.5, 3.0])
    expected = 1 + torch.floor(torch.log2(1 + torch.exp(-s)))
    assert torch.equal(precision(s), expected)
    assert precision(s).tolist() == [7.0, 6.0, 2.0, 2.0, 1.0, 1.0]


def test_widths_are_fractional_and_carry_gradients_to_s():
    bits = NoiseBits(8, (4,))
    bits().sum().backward()
    # d/ds (1 + log2(1 + e^-s)) = -(1 - sigmoid(s)) / ln 2
    expected = -(1 - torch.sigmoid(bits.s.detach())) / math.log(2)
    assert torch.allclose(bits.s.grad, expected)


# -- the grid (Sec. 3.2) ---------------------------------------------------------------------

@pytest.mark.parametrize("p", range(1, 9))
def test_grid_has_two_to_the_p_symmetric_levels_of_odd_multiples(p):
    levels = smol_levels(p)
    assert levels.numel() == 2**p
    assert torch.equal(levels, -levels.flip(0))
    step = 2.0 ** (1 - p)
    odd = levels / step
    assert torch.equal(odd, odd.round()) and bool((odd.round() % 2 != 0).all())
    assert float(levels.max()) == 2 - step


def test_grid_has_the_papers_one_and_two_bit_values():
    assert smol_levels(1).tolist() == [-1.0, 1.0]
    assert smol_levels(2).tolist() == [-1.5, -0.5, 0.5, 1.5]
    assert float(smol_quantize(torch.tensor(0.2), 2)) == 0.5  # Sec. 3.2's example


@settings(max_examples=200, deadline=None)
@given(u=st.floats(-3.0, 3.0, allow_nan=False), p=st.integers(1, 10))
def test_quantization_picks_the_nearest_grid_value(u, p):
    levels = smol_levels(p)
    q = float(smol_quantize(torch.tensor(u, dtype=torch.float64), p))
    assert q in levels.tolist()
    assert abs(u - q) <= float((levels - u).abs().min()) + 1e-12


@settings(max_examples=200, deadline=None)
@given(u=st.floats(-3.0, 3.0, allow_nan=False), p=st.integers(1, 10))
def test_zero_precision_allocation_never_increases_the_error(u, p):
    x = torch.tensor([u], dtype=torch.float64)
    plain = torch.tensor([float(p)], dtype=torch.float64)
    zpa = zero_precision(x, plain)
    assert abs(u - float(smol_quantize(x, zpa))) <= abs(u - float(smol_quantize(x, plain)))
    assert int(zpa) in (0, p)


def test_zero_precision_allocation_on_the_papers_example():
    # w = 0.2 at 2 bits: q = 0.5 (error 0.3) -> 0 bits (error 0.2), freeing 2 bits.
    assert zero_precision(torch.tensor([0.2, 0.7]), torch.tensor(2.0)).tolist() == [0.0, 2.0]
    assert float(smol_quantize(torch.tensor(0.2), 0)) == 0.0


# -- the weight quantizer ----------------------------------------------------------------------

def _weight_quantizer(granularity="parameter", p_init=8, seed=0):
    w = torch.randn(6, 4, 3, 3, generator=_generator(seed)) * 0.1
    return SmolWeightQuantizer(w, granularity, p_init), w


def test_scale_maps_the_largest_initial_weight_to_the_largest_p_init_level():
    q, w = _weight_quantizer(p_init=4)
    assert float(w.abs().max() / q.scale) == pytest.approx(2 - 2**-3)
    assert q.scale_bits() == 32


def test_noise_is_uniform_within_sigma_and_fresh_each_step():
    q, _ = _weight_quantizer(p_init=3)
    with torch.no_grad():
        q.bits.s.copy_(torch.linspace(-3.0, 2.0, q.bits.s.numel()).reshape(q.bits.s.shape))
    q.generator = _generator(1)
    w = torch.zeros(q.bits.s.shape)
    first, second = q(w), q(w)
    bound = q.scale * q.bits.sigma()
    for out in (first, second):
        assert bool((out.abs() <= bound + 1e-7).all())
    assert not torch.equal(first, second)
    # Many draws of one element: eps ~ U(-1, 1) has mean 0, variance 1/3, and fills [-1, 1].
    with torch.no_grad():
        eps = torch.stack([q(w) for _ in range(2000)]) / bound
    assert abs(float(eps.mean())) < 0.01
    assert float(eps.var()) == pytest.approx(1 / 3, rel=0.03)
    counts = torch.histc(eps, bins=10, min=-1.0, max=1.0)
    assert float(counts.min()) > 0.9 * eps.numel() / 10


def test_noise_is_reproducible_from_its_generator():
    q, w = _weight_quantizer()
    q.generator = _generator(7)
    a = q(w)
    q.generator = _generator(7)
    assert torch.equal(a, q(w))


def test_clipping_keeps_weights_within_two_minus_sigma():
    q, w = _weight_quantizer(p_init=2)
    with torch.no_grad():
        q.bits.s.uniform_(-2.0, 3.0, generator=_generator(2))
    w = w * 30  # far outside
    q.clip_(w)
    bound = q.scale * (2 - q.bits.sigma())
    assert bool((w.abs() <= bound * (1 + 1e-6)).all())
    assert bool(((w.abs() - bound).abs() < 1e-6).any())  # clipped to the bound, not zeroed


def test_evaluation_during_the_search_quantizes_at_the_current_precisions():
    q, w = _weight_quantizer(p_init=3)
    q.eval()
    out = q(w) / q.scale
    assert torch.allclose(out, smol_quantize(w / q.scale, 3.0))
    assert out.detach().round(decimals=5).unique().numel() <= 8


@pytest.mark.parametrize("zpa", [False, True])
def test_frozen_weights_lie_on_the_grid_with_straight_through_gradients(zpa):
    q, w = _weight_quantizer(p_init=2)
    q.freeze(w, zpa=zpa)
    assert isinstance(q.bits, FixedBits)
    w = w.clone().requires_grad_(True)
    out = q(w)
    values = set((out.detach() / q.scale).round(decimals=5).unique().tolist())
    assert values <= set(smol_levels(2).tolist()) | ({0.0} if zpa else set())
    assert (0.0 in values) == zpa  # uniform-ish weights: some fall below a quarter of a level
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # dL/dw = dL/dw_q


def test_layer_granularity_shares_one_s_and_zpa_makes_it_per_weight():
    q, w = _weight_quantizer("layer", p_init=3)
    assert q.bits.s.shape == ()
    assert q.integer_bits() == 3
    bits = q.frozen_bits(w, zpa=True)
    assert isinstance(bits, torch.Tensor) and bits.shape == w.shape
    assert set(bits.unique().tolist()) == {0, 3}


# -- SMOL-A ------------------------------------------------------------------------------------

@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_activation_noise_is_as_wide_as_the_deployed_grids_worst_rounding_error(p, two_sided):
    # At the s of precision p the noise may move an input exactly as far as PACT's p-bit
    # grid, which it is deployed on, may round it (the paper's (M / 2) sigma is twice that).
    q = SmolPACTQuantizer(p_init=p, two_sided=two_sided, alpha=1.5)
    q.generator = _generator(3)
    low = -1.5 if two_sided else 0.0
    dense = torch.linspace(low, 1.5, 20_001)
    pact = PACTQuantizer(FixedBits(p), alpha=1.5, two_sided=two_sided)
    worst = float((pact(dense) - dense).abs().max())
    assert worst == pytest.approx((1.5 - low) / (2 * (2**p - 1)), rel=1e-3)
    x = torch.randn(256, 64, generator=_generator(4)) * 2
    x.requires_grad_(True)
    out = q(x)
    noise = out.detach() - x.detach().clamp(low, 1.5)
    assert float(noise.abs().max()) <= worst * (1 + 1e-3)
    assert float(noise.abs().max()) > 0.99 * worst
    assert not torch.equal(out, q(x))  # fresh noise every step
    out.sum().backward()
    assert q.alpha.grad is not None and float(q.alpha.grad) != 0  # PACT's clip keeps learning
    assert q.bits.s.grad is not None  # s is trained through the noise term
    assert noise_parameters(q) == [q.bits.s]


def test_frozen_activation_quantizer_is_pact_at_the_learned_width():
    q = SmolPACTQuantizer(p_init=3, alpha=2.0)
    pact = PACTQuantizer(FixedBits(3), alpha=2.0)
    x = torch.randn(50, 7, generator=_generator(5)) * 2
    q.eval()  # evaluation during the search: PACT at the current precision
    assert torch.allclose(q(x), pact(x))
    q.bits = FixedBits(q.integer_bits())  # what freeze_bits() does to each quantizer
    assert q.integer_bits() == 3
    q.train()
    assert torch.equal(q(x), pact(x))


# -- on a model -------------------------------------------------------------------------------

def _smol_tiny(granularity="parameter"):
    model, profile = tiny_model(), tiny_profile()
    modules = dict(model.named_modules())
    quantize_model(model, profile,
                   lambda l: SmolWeightQuantizer(modules[l.name].weight, granularity, 4),
                   lambda l: SmolPACTQuantizer(4, two_sided=l.input_signed))
    return model, profile


def test_assignment_and_fractional_bits_read_a_smol_model():
    model, profile = _smol_tiny()
    assignment = assignment_from_model(model, profile)
    assignment.validate(profile)
    assert assignment.average_weight_bits() == 4.0 and assignment.average_activation_bits() == 4.0
    assert all(assignment.scale_bits(l.weight_group) == 32 for l in profile)
    widths = fractional_bits(model, profile)
    sum(w.sum() for w in widths.values()).backward()
    assert all(s.grad is not None for s in noise_parameters(model))


def test_freezing_a_model_with_zpa_records_pruned_weights_as_zero_bits():
    model, profile = _smol_tiny("layer")
    for layer in model.modules():
        if isinstance(getattr(layer, "weight_quantizer", None), SmolWeightQuantizer):
            layer.weight_quantizer.freeze(layer.weight, zpa=True)
    freeze_bits(model)
    assignment = assignment_from_model(model, profile)
    zeros = sum(int((assignment[l.weight_group] == 0).sum()) for l in profile)
    assert 0 < zeros < profile.weight_numel
    assert all(isinstance(assignment[l.input_group], int) for l in profile)
    model.eval()
    model(torch.randn(2, *TINY_INPUT))
    for group, q in quantizers(model).items():
        assert isinstance(q.bits, FixedBits), group
