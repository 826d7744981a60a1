"""The ``adapt`` strategy: conformance, fixed point and stochastic rounding, PushDown, PushUp, records."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from mpsearch.plugins.adapt.objective import InferenceSpeedup, SizeRatio
from mpsearch.plugins.adapt.strategy import AdaptStrategy

from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.quant import apply_assignment, quantize_model, quantized_layers
from mpsearch.plugins.adapt.fixedpoint import (
    FixedPoint,
    FixedPointQuantizer,
    adapt_lookback,
    adapt_resolution,
    adapt_strategy,
    binned_kl,
    gradient_diversity,
    push_down,
    push_up,
    push_up_step,
    round_nearest,
    stochastic_round,
    truncated_normal_variance_scaling_,
)
from mpsearch.spec import Param, SpecError
from mpsearch.testing.strategies_suite import StrategyTestCase, TrialRun

optuna = pytest.importorskip("optuna")

# The suite's trial has 16 steps: lookbacks of 2-8 batches let the precision switch
# run a few times in it (the paper's 25-100 would never fill a window).
FAST = {"lookback": 4, "resolution": 100, "buffer_bits": 4, "l1": 1e-5, "l2": 1e-4,
        "push_up_strategy": "mean", "lookback_lower": 2, "lookback_upper": 8}
LAYERS = ("conv1", "conv2", "fc1", "fc2")


class TestAdaptConformance(StrategyTestCase):
    @pytest.fixture
    def strategy_name(self):
        return "adapt"

    @pytest.fixture
    def params(self):
        return FAST

    # Buffer bits are AdaPT's direct price of range: WL = FL + buff (above PushDown's
    # minimum). Fewer of them must cost fewer BitOPs. (The L1 weight is no such knob
    # in one epoch: behind the per-layer gradient normalisation it moves sparsity by
    # a few per cent, less than the word lengths vary between runs.)
    @pytest.fixture
    def weaker_params(self):
        return FAST

    @pytest.fixture
    def stronger_params(self):
        return {**FAST, "buffer_bits": 2}

    def test_precision_switched_and_every_epoch_records_formats(self, trial: TrialRun):
        attrs = trial.outcome.attrs
        assert attrs["switches"] > 0
        (row,) = attrs["history"]
        for layer in LAYERS:
            assert row[f"wl.{layer}"] == attrs["wl"][layer] == attrs["wl_history"][layer][-1]
            assert row[f"fl.{layer}"] == attrs["fl"][layer] == attrs["fl_history"][layer][-1]
            assert row[f"sparsity.{layer}"] == pytest.approx(attrs["sparsity"][layer])
            assert 2 <= row[f"lookback.{layer}"] <= 8 and 50 <= row[f"resolution.{layer}"] <= 150
        # Every layer left <8, 4>: PushDown finds far more fractional bits are needed.
        assert all(attrs["fl"][layer] > 4 for layer in LAYERS)
        assert all(attrs["wl"][layer] >= attrs["fl"][layer] + 4 for layer in LAYERS)
        assert attrs["epochs_trained"] == pytest.approx(1.0)
        shares = [row[f"strategy_share.{k}"] for k in ("min", "mean", "max")]
        assert sum(shares) == pytest.approx(1.0) and all(0 <= s <= 1 for s in shares)
        assert attrs["final_push_up_strategy"] == ("min", "mean", "max")[int(row["strategy"])]

    def test_assignment_holds_the_word_lengths_and_the_sparsity(self, trial: TrialRun, context_of):
        profile, _, _ = context_of(trial)
        assignment = trial.assignment()
        attrs = trial.outcome.attrs
        zeros = 0
        for layer in LAYERS:
            bits = assignment[f"{layer}:weight"]
            bits = torch.as_tensor(bits)
            assert set(bits.unique().tolist()) <= {0, attrs["wl"][layer]}
            share = float((bits == 0).double().mean()) if bits.dim() else 0.0
            assert share == pytest.approx(attrs["sparsity"][layer])
            zeros += share * assignment.numel(f"{layer}:weight")
            assert assignment[f"{layer}:input"] == 32  # activations stay float
        assert attrs["model_sparsity"] == pytest.approx(zeros / 430_500)
        assert attrs["inference_speedup"] == pytest.approx(InferenceSpeedup().evaluate(profile, assignment))
        assert attrs["size_ratio"] == pytest.approx(SizeRatio().evaluate(profile, assignment))

    def test_performance_model_is_recorded(self, trial: TrialRun):
        attrs = trial.outcome.attrs
        assert attrs["training_steps"] == 16  # 1,000 images in batches of 64
        assert attrs["training_cost"] < attrs["float32_training_cost"]
        assert attrs["training_speedup"] == pytest.approx(
            attrs["float32_training_cost"] / (attrs["training_cost"] + attrs["adapt_overhead"]))
        assert attrs["training_speedup_without_overhead"] > 1
        # The quantized copy comes on top of the float32 master copy: sp * WL + 32 bits.
        assert 1 < attrs["training_memory_ratio"] < 2


# -- fixed point and stochastic rounding ------------------------------------------------------

def test_format_range_and_resolution():
    fmt = FixedPoint(8, 4)
    assert (fmt.resolution, fmt.lowest, fmt.highest) == (1 / 16, -8.0, 8 - 1 / 16)
    assert (FixedPoint(1, 0).lowest, FixedPoint(1, 0).highest) == (-1.0, 0.0)
    assert (FixedPoint(4, 6).lowest, FixedPoint(4, 6).highest) == (-8 / 64, 7 / 64)
    x = torch.tensor([100.0, -100.0, 7.95, -8.01])
    assert stochastic_round(x, fmt).tolist() == [8 - 1 / 16, -8.0, 8 - 1 / 16, -8.0]
    for wl, fl in ((0, 0), (33, 4), (8, -1), (8, 33)):
        with pytest.raises(ValueError):
            FixedPoint(wl, fl)


def test_stochastic_rounding_is_unbiased_and_stays_on_the_grid():
    gen = torch.Generator().manual_seed(0)
    fmt = FixedPoint(8, 4)
    values = torch.tensor([0.3 / 16, 1.7 / 16, -2.55 / 16, 3.0 + 0.9 / 16, -5.0 - 0.1 / 16])
    draws = stochastic_round(values.repeat(40_000, 1), fmt, gen)
    k = draws * 16
    assert torch.equal(k, k.round())  # on the grid
    assert torch.all((k == torch.floor(values * 16)) | (k == torch.floor(values * 16) + 1))
    # Standard error of the mean: at most 0.5 / 16 / sqrt(40,000) = 1.6e-4.
    assert torch.allclose(draws.mean(0), values, atol=8e-4)
    nearest = round_nearest(values, 4)
    assert (nearest - values).abs().max() > 5e-3  # rounding to nearest would be biased here


def test_truncated_normal_variance_scaling():
    w = torch.empty(500, 800)
    truncated_normal_variance_scaling_(w, 2.0, torch.Generator().manual_seed(0))
    sigma, bound = math.sqrt(2 / 800), math.sqrt(3 * 2 / 800)
    assert float(w.abs().max()) <= bound
    # A normal truncated at +-sqrt(3) sigma has standard deviation 0.8139 sigma.
    assert float(w.std()) == pytest.approx(0.8139 * sigma, rel=0.01)
    assert abs(float(w.mean())) < 1e-3 * sigma * 10


# -- PushDown ---------------------------------------------------------------------------------

def test_binned_kl_by_hand():
    q, ref = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    assert binned_kl(q, ref, 2, pseudocount=0) == pytest.approx(1.0)  # P = (1, 0), Q = (1/2, 1/2)
    p1, p2, q1 = 2.5 / 3, 0.5 / 3, 1.5 / 3
    assert binned_kl(q, ref, 2) == pytest.approx(p1 * math.log2(p1 / q1) + p2 * math.log2(p2 / q1))
    # P fills the third of four bins, which Q leaves empty.
    assert binned_kl(torch.tensor([0.6, 0.6]), ref, 4, pseudocount=0) == math.inf
    assert binned_kl(torch.tensor([0.6, 0.6]), ref, 4) < math.inf
    assert binned_kl(torch.tensor([1.02, -0.01]), ref, 4, pseudocount=0) == 0.0  # edge bins
    assert binned_kl(ref, ref, 50) == 0.0


@pytest.mark.parametrize("seed, numel, fan_in, resolution, threshold", [
    (0, 500, 25, 50, 0.01), (1, 3_000, 300, 100, 0.003), (2, 2_000, 50, 150, 0.05),
])
def test_push_down_is_the_coarsest_lossless_format_by_brute_force(seed, numel, fan_in, resolution,
                                                                  threshold):
    w = torch.empty(numel // fan_in, fan_in)
    truncated_normal_variance_scaling_(w, 1.0, torch.Generator().manual_seed(seed))
    w[0, :3] = torch.tensor([1.3, -0.9, 0.7])  # a few large weights
    grids = [fl for fl in range(33) if binned_kl(round_nearest(w, fl), w, resolution) < threshold]
    found = push_down(w, resolution, threshold)
    assert found.fl == min(grids)  # the coarsest grid that loses nothing
    words = [wl for wl in range(1, 33)
             if binned_kl(round_nearest(w, found.fl, wl), w, resolution) < threshold]
    assert found.wl == min(words)  # the fewest word bits that keep it so


def test_push_down_needs_more_bits_at_a_finer_resolution_or_threshold():
    w = torch.empty(50, 100)
    truncated_normal_variance_scaling_(w, 1.0, torch.Generator().manual_seed(4))
    assert push_down(w, 50, 0.01).fl < push_down(w, 150, 0.01).fl
    assert push_down(w, 100, 0.05).fl < push_down(w, 100, 0.0005).fl


# -- PushUp and the adaptation rules ----------------------------------------------------------

def _diversity(grads: torch.Tensor) -> float:
    return gradient_diversity(float(grads.norm(dim=1).sum()), float(grads.sum(0).norm()))


def test_push_up_raises_precision_as_gradient_diversity_asks():
    gen = torch.Generator().manual_seed(0)
    aligned = torch.randn(1, 1000, generator=gen).repeat(25, 1) * torch.rand(25, 1, generator=gen)
    diverse = torch.randn(25, 1000, generator=gen)  # independent: ||sum|| ~ ||g|| sqrt(25)
    assert _diversity(aligned) == pytest.approx(1.0)
    assert _diversity(diverse) == pytest.approx(5.0, rel=0.05)
    minimum = FixedPoint(9, 10)
    # Aligned gradients: one more fractional bit (log 1 = 0), then 4 buffer bits.
    assert push_up(minimum, _diversity(aligned), "max", 4) == FixedPoint(15, 11)
    # Diverse ones: log 5 = 1.61, s1 = ceil(1 / 0.61) = 2, s2 = min(32 * 2.59 - 1, 32) - 10 = 22.
    assert push_up_step(_diversity(diverse), 10, "min") == 2
    assert push_up_step(_diversity(diverse), 10, "mean") == 12
    assert push_up_step(_diversity(diverse), 10, "max") == 22
    assert push_up(minimum, _diversity(diverse), "min", 4) == FixedPoint(16, 12)
    assert push_up(minimum, _diversity(diverse), "max", 4) == FixedPoint(32, 28)  # FL <= 32 - buff
    # PushDown's word length wins where it needs more range than FL + buff.
    assert push_up(FixedPoint(20, 10), 1.0, "min", 4) == FixedPoint(20, 11)


def test_push_up_degenerate_windows():
    assert math.isnan(gradient_diversity(0.0, 0.0))
    assert gradient_diversity(3.0, 0.0) == math.inf
    # Not finite: log is replaced by 1, so s1 = 32 (1 / 0) and s2 = 31 - FL_min.
    assert push_up_step(math.inf, 10, "min") == 21
    assert push_up_step(math.nan, 10, "max") == 32
    with pytest.raises(ValueError):
        push_up_step(2.0, 10, "median")


def test_lookback_and_resolution_adaptation():
    # Δs = 1: lb_new = lb_upr = 100; momentum 0.33: ceil(33 + 0.67 * 25) = 50
    assert adapt_lookback(25, 1.0, 25, 100, 0.33) == 50
    # Δs = 10: lb_new = max(ceil(100 / 10), 25) = 25; ceil(8.25 + 0.67 * 50) = 42
    assert adapt_lookback(50, 10.0, 25, 100, 0.33) == 42
    assert adapt_lookback(50, math.inf, 25, 100, 1.0) == 25
    assert adapt_lookback(50, math.nan, 25, 100, 1.0) == 100
    assert adapt_resolution(100, 100, 25, 100, 50, 150) == 101
    assert adapt_resolution(100, 25, 25, 100, 50, 150) == 99
    assert adapt_resolution(100, 60, 25, 100, 50, 150) == 100
    assert adapt_resolution(150, 100, 25, 100, 50, 150) == 150
    assert adapt_resolution(50, 25, 25, 100, 50, 150) == 50


def test_strategy_adaptation_follows_the_loss():
    assert adapt_strategy("max", average_loss=2.0, loss=1.0) == "min"  # falling loss
    assert adapt_strategy("min", average_loss=1.0, loss=1.5) == "mean"
    assert adapt_strategy("mean", average_loss=1.0, loss=1.0) == "max"
    assert adapt_strategy("max", average_loss=1.0, loss=1.5) == "max"


# -- the quantizer and the final assignment ---------------------------------------------------

def test_quantizer_uses_its_stored_copy_and_passes_gradients_straight_through():
    q = FixedPointQuantizer(FixedPoint(8, 2))
    q.generator = torch.Generator().manual_seed(0)
    w = torch.tensor([0.1, 0.3, -0.6, 1.0], requires_grad=True)
    stored = q.requantize(w).clone()
    assert torch.equal(stored * 4, (stored * 4).round())
    out = q(w)
    assert torch.equal(out, stored)
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]
    q.quantized = torch.tensor([0.0, 0.25, -0.5, 1.0])
    assert q.integer_bits().tolist() == [0, 8, 8, 8] and q.nonzero_share() == 0.75
    q.sparse = False
    assert q.integer_bits() == 8


def test_final_widths_record_word_lengths_and_widened_formats_keep_their_fractional_bits():
    host = PluginHost(entry_points=False)
    spec = host.models.get("lenet5")
    model, profile = spec.create(10, (1, 28, 28), seed=0), model_profile(spec, 10, (1, 28, 28))
    quantize_model(model, profile, lambda layer: FixedPointQuantizer(FixedPoint(7, 5)), lambda layer: None)
    layers = quantized_layers(model)
    for layer in layers.values():
        layer.weight_quantizer.requantize(layer.weight)
    stored = {n: layer.weight_quantizer.quantized.clone() for n, layer in layers.items()}

    def even(assignment):
        return assignment.map(lambda g, b: b + b % 2)

    plain = even(AdaptStrategy._assignment(layers, profile, sparse=False))
    apply_assignment(model, profile, plain)  # the trial's legalisation, through the quantizers
    assert all(plain[f"{n}:weight"] == 8 and plain[f"{n}:input"] == 32 for n in LAYERS)
    assert all(layers[n].weight_quantizer.fmt == FixedPoint(8, 5) for n in LAYERS)
    assert all(torch.equal(layers[n].weight_quantizer.quantized, stored[n]) for n in LAYERS)
    sparse = AdaptStrategy._assignment(layers, profile, sparse=True)
    fc1 = sparse["fc1:weight"]  # <8, 5> rounds weights under 1/64 to 0 at times
    assert fc1.shape == (500, 800) and 0 < int((fc1 == 0).sum()) < fc1.numel()
    assert torch.equal(fc1 == 0, stored["fc1"] == 0)


# -- parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("space, message", [
    ({"lookback": Param(low=2.5, high=9.0)}, "integer low and high"),
    ({"buffer_bits": Param(value=32)}, "32-bit word"),
    ({"l1": Param(value=-1.0)}, ">= 0"),
    ({"kl_threshold": Param(value=0.0)}, "positive"),
    ({"lookback_momentum": Param(value=1.5)}, r"\[0, 1\]"),
    ({"push_up_strategy": Param(value="median")}, "not one of"),
    ({"sparse_assignment": Param(value=1)}, "not one of"),
    ({"lookbak": Param(value=3)}, "unknown parameter"),
])
def test_invalid_space_is_a_spec_error(space, message):
    with pytest.raises(SpecError, match=message):
        AdaptStrategy.check_space(space, "spec: strategy[0].space")


def test_inconsistent_bounds_are_an_error():
    from mpsearch.errors import MpsearchError

    with pytest.raises(MpsearchError, match=r"lookback 4 must lie in \[lookback_lower"):
        AdaptStrategy.resolve({**FAST, "lookback_lower": 5})
    with pytest.raises(MpsearchError, match="needs parameter"):
        AdaptStrategy.resolve({"lookback": 30})


def test_default_space_draws_the_papers_knobs_with_its_fixed_values():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    drawn = AdaptStrategy().suggest(trial, {}, "adapt")
    assert set(trial.params) == {"adapt.lookback", "adapt.resolution", "adapt.buffer_bits", "adapt.l1",
                                 "adapt.l2", "adapt.push_up_strategy"}
    assert 25 <= drawn["lookback"] <= 100 and 50 <= drawn["resolution"] <= 150
    assert drawn["buffer_bits"] in (4, 8)
    assert (drawn["lookback_lower"], drawn["lookback_upper"], drawn["lookback_momentum"]) == (25, 100, 0.33)
    assert (drawn["resolution_lower"], drawn["resolution_upper"]) == (50, 150)
    assert (drawn["initial_wl"], drawn["initial_fl"]) == (8, 4)
    AdaptStrategy.resolve(copy.deepcopy(drawn))
    json.dumps(drawn)
