"""HAQ's linear quantizer and the clips chosen from data (KL divergence, squared error)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mpsearch.assignment import PrecisionAssignment
from mpsearch.quant import (FixedBits, LinearQuantizer, calibrate_model, kl_clip, mse_clip, quantize_at,
                            quantized_layers, quantizers)
from mpsearch.quant.calibration import BINS_PER_STEP, grid_levels, linear_quantize
from mpsearch.testing import TINY_INPUT, tiny_model, tiny_profile


def haq(x: torch.Tensor, c: float, bits: int, signed: bool) -> torch.Tensor:
    """HAQ Sec. 3.3 and its code: clamp, then round onto steps of c / (2^(b-1) - 1) or c / (2^b - 1)."""
    if signed:
        s = c / (2 ** (bits - 1) - 1)
        return torch.round(x.clamp(-c, c) / s) * s
    s = c / (2**bits - 1)
    return torch.round(x.clamp(0, c) / s) * s


def gaussian(n: int = 100_000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_linear_quantizer_is_haqs(bits, signed):
    x = gaussian(5000) * 2.0
    q = LinearQuantizer(FixedBits(bits), signed=signed)
    q.set_clip(1.7)
    out = q(x)
    assert torch.allclose(out, haq(x, 1.7, bits, signed), atol=1e-6)
    # zero is on the grid, and the grid has 2^b - 1 points signed, 2^b unsigned
    assert float(q(torch.zeros(3)).abs().max()) == 0.0
    assert out.unique().numel() <= (2**bits - 1 if signed else 2**bits)
    assert grid_levels(bits, signed) == (2 ** (bits - 1) - 1 if signed else 2**bits - 1)


def test_one_signed_bit_is_plus_or_minus_the_clip():
    q = LinearQuantizer(FixedBits(1), signed=True)
    q.set_clip(0.5)
    assert q(torch.tensor([-3.0, -0.1, 0.2, 4.0])).tolist() == [-0.5, -0.5, 0.5, 0.5]


def test_gradients_pass_straight_through_inside_the_clip_and_reach_a_learned_clip():
    x = torch.tensor([-3.0, -0.4, 0.3, 0.9, 2.5], requires_grad=True)
    q = LinearQuantizer(FixedBits(3), signed=True, learn_clip=True)
    q.set_clip(1.0)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert float(q.clip.grad) == pytest.approx(1.0 - 1.0)  # PACT: +1 above the clip, -1 below -clip
    weights = LinearQuantizer(FixedBits(3), signed=True)  # HAQ keeps weight clips fixed
    assert not weights.clip.requires_grad


def test_uncalibrated_it_passes_through_in_evaluation_and_clips_at_the_first_maximum_in_training():
    x = gaussian(200)
    q = LinearQuantizer(FixedBits(2), signed=False).eval()
    assert torch.equal(q(x), x)
    q.train()
    q(x)
    assert float(q.clip) == pytest.approx(float(x.abs().max()))
    restored = LinearQuantizer(FixedBits(2), signed=False)
    restored.load_state_dict(q.state_dict())
    assert bool(restored.calibrated) and torch.equal(restored.eval()(x), q.eval()(x))


def test_32_bits_is_float_and_fractional_widths_are_refused():
    x = gaussian(100)
    assert torch.equal(LinearQuantizer(FixedBits(32), signed=True).train()(x), x)
    from mpsearch.quant import LearnableBits

    with pytest.raises(ValueError, match="fixed"):
        LinearQuantizer(LearnableBits(4.0), signed=True)


# -- choosing the clip -----------------------------------------------------------------------


def test_the_mse_clip_of_a_gaussian_at_two_signed_bits_is_max_1960():
    # Three levels {-c, 0, c} on N(0, 1): Max's (1960) optimal quantizer has thresholds at
    # +-0.612 and outputs +-1.224. The search steps by 2.5 % of the largest magnitude (~0.11).
    assert mse_clip(gaussian(), 2, True) == pytest.approx(1.224, abs=0.12)


def kl_reference(x: torch.Tensor, bits: int, signed: bool, bins: int) -> float:
    """The documented algorithm, one candidate at a time, with numpy."""
    a = (x.abs() if signed else x.clamp_min(0)).numpy().astype(np.float64)
    a = a[a > 0]
    top = a.max()
    levels = grid_levels(bits, signed)
    hist, _ = np.histogram(a, bins=bins, range=(0.0, top))
    width = top / bins
    best, best_d = None, math.inf
    for i in np.unique(np.round(np.linspace(levels + 1, bins, min(256, bins - levels)))).astype(int):
        c = i * width
        kept = hist[:i].astype(np.float64)
        p = kept.copy()
        p[-1] += hist[i:].sum()
        level = np.minimum(np.round((np.arange(i) + 0.5) * width / (c / levels)), levels).astype(int)
        q = np.zeros(i)
        for g in np.unique(level):
            members = (level == g) & (kept > 0)
            if members.any():
                q[members] = kept[level == g].sum() / members.sum()
        q[(p > 0) & (q <= 0)] = 1e-4 * hist.sum() / bins
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        d = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if d < best_d:
            best, best_d = c, d
    return float(best)


@pytest.mark.parametrize("bits, signed", [(2, True), (3, True), (4, False), (3, False)])
def test_the_kl_clip_is_the_documented_divergence_minimum(bits, signed):
    x = gaussian(20_000, seed=bits)
    if not signed:
        x = torch.relu(x)
    assert kl_clip(x, bits, signed, bins=200) == pytest.approx(kl_reference(x, bits, signed, 200), rel=1e-9)


def test_kl_clips_grow_with_the_width_and_ignore_far_outliers():
    x = gaussian()
    clips = [kl_clip(x, b, True) for b in (2, 3, 4, 6)]
    assert clips == sorted(clips) and clips[0] > 1.0 and clips[-1] < float(x.abs().max())
    spiked = torch.cat([x, torch.full((100,), 60.0)])  # 0.1 % of the values at 60 sigma
    assert kl_clip(spiked, 3, True) < 8.0
    # A ReLU's zeros sit on the grid: half the values at exactly 0 do not change the clip much.
    relu = torch.relu(x)
    assert kl_clip(relu, 3, False) == pytest.approx(kl_clip(relu[relu > 0], 3, False), rel=0.05)


def test_a_grid_finer_than_the_histogram_keeps_the_largest_magnitude():
    x = gaussian(400)  # 64 bins: 8 signed bits have 127 levels, more than 64 / BINS_PER_STEP
    assert 64 < BINS_PER_STEP * grid_levels(8, True)
    assert kl_clip(x, 8, True) == pytest.approx(float(x.abs().max()))
    assert kl_clip(torch.zeros(10), 4, True) > 0


def test_linear_quantize_matches_the_quantizer():
    x = gaussian(1000)
    q = LinearQuantizer(FixedBits(4), signed=True)
    q.set_clip(2.0)
    assert torch.equal(linear_quantize(x, 2.0, 4, True), q(x))


# -- calibrating a model ----------------------------------------------------------------------


def _batches(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, *TINY_INPUT, generator=g) for _ in range(n)]


def test_calibration_sees_the_float_network_and_is_the_same_twice():
    profile = tiny_profile()
    model = quantize_at(tiny_model(), profile, PrecisionAssignment.uniform(profile, 3, 3), "linear")
    calibrate_model(model, _batches())
    first = {g: float(q.clip.detach()) for g, q in quantizers(model).items()}
    calibrate_model(model, _batches())
    assert {g: float(q.clip.detach()) for g, q in quantizers(model).items()} == first
    # Each input clip is the least-squared-error clip (quantize_at's default) of that layer's
    # input in the float network.
    float_model, seen = tiny_model().eval(), {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=name: seen.setdefault(_n, []).append(args[0]))
             for name, m in float_model.named_modules() if name in quantized_layers(model)]
    with torch.no_grad():
        for x in _batches():
            float_model(x)
    for h in hooks:
        h.remove()
    for layer in profile:
        x = torch.cat([t.flatten() for t in seen[layer.name]])
        assert first[layer.input_group] == pytest.approx(mse_clip(x, 3, layer.input_signed))
        w = dict(float_model.named_modules())[layer.name].weight
        assert first[layer.weight_group] == pytest.approx(mse_clip(w, 3, True))


def test_the_linear_family_quantizes_signed_inputs_symmetrically():
    profile = tiny_profile()
    model = quantize_at(copy.deepcopy(tiny_model()), profile, PrecisionAssignment.uniform(profile, 4, 4),
                        "linear")
    for layer in profile:
        module = quantized_layers(model)[layer.name]
        assert isinstance(module.weight_quantizer, LinearQuantizer) and module.weight_quantizer.signed
        assert module.input_quantizer.signed == layer.input_signed
        assert module.input_quantizer.clip.requires_grad and module.weight_quantizer.scale_bits() == 32
