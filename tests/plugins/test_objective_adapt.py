"""AdaPT's performance model: hand-computed costs and the objective conformance suite."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mpsearch.plugins.adapt.objective import (
    InferenceSpeedup,
    LayerStep,
    SizeRatio,
    TrainingCostModel,
    pushdown_ops,
    pushup_ops,
)

from mpsearch.assignment import PrecisionAssignment
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.profile import LayerProfile, ModelProfile
from mpsearch.testing.objectives import FIXTURE_OK, PROFILE, ObjectiveTestCase
from mpsearch.testing.hypothesis import assignments, raised

LOG2_24 = 4.584962500721156  # log2(32 - 8) in Eq. (6)


@pytest.fixture(scope="module")
def host():
    return PluginHost(entry_points=False)


@pytest.fixture(scope="module")
def lenet(host):
    return model_profile(host.models.get("lenet5"))


def _lenet_assignment(profile):
    fc1 = torch.full((500, 800), 12)
    fc1[:250] = 0  # half of fc1's weights pruned: sp * WL = 6
    bits = {"conv1:weight": 8, "conv2:weight": 16, "fc1:weight": fc1, "fc2:weight": 32}
    bits.update({f"{layer.name}:input": 32 for layer in profile})
    return PrecisionAssignment(bits, profile.group_shapes())


def test_lenet5_inference_speedup_and_size_ratio_by_hand(host, lenet):
    a = _lenet_assignment(lenet)
    # MACs per sample: conv1 288,000, conv2 1,600,000, fc1 400,000, fc2 5,000
    ours = 288_000 * 8 + 1_600_000 * 16 + 400_000 * 6 + 5_000 * 32
    speedup = 32 * 2_293_000 / ours
    assert host.objectives.get("adapt-inference-speedup").evaluate(lenet, a) == pytest.approx(speedup)
    # sz = sum over layers of sp * WL, against 32 bits per layer
    assert host.objectives.get("adapt-size-ratio").evaluate(lenet, a) == pytest.approx(62 / 128)


def test_activation_widths_do_not_enter_the_model(lenet):
    a = _lenet_assignment(lenet)
    b = a.replace({f"{layer.name}:input": 4 for layer in lenet})
    for objective in (InferenceSpeedup(), SizeRatio()):
        assert objective.evaluate(lenet, a) == objective.evaluate(lenet, b)


def test_float32_costs_one_on_every_measure(lenet):
    a = PrecisionAssignment.uniform(lenet, 32, 32)
    assert InferenceSpeedup().evaluate(lenet, a) == pytest.approx(1.0)
    assert SizeRatio().evaluate(lenet, a) == pytest.approx(1.0)


def _two_layers() -> ModelProfile:
    def layer(name, macs, shape):
        return LayerProfile(name=name, kind="linear", weight_shape=shape, input_shape=(shape[1],),
                            output_shape=(shape[0],), macs=macs, in_channels=shape[1],
                            out_channels=shape[0])

    return ModelProfile(input_shape=(5,), layers=(layer("a", 100, (2, 5)), layer("b", 50, (4, 5))))


def test_overhead_bounds_are_equations_6_and_7():
    assert pushdown_ops(10, 50) == pytest.approx(2 * LOG2_24 * 50 * 3 * 10)
    assert pushup_ops(10, 25) == 26 * 10 + 1


def test_training_costs_by_hand():
    model = TrainingCostModel(_two_layers())
    model.step(2, {"a": LayerStep(wl=8, sp=1.0, lookback=25, resolution=50),
                   "b": LayerStep(wl=16, sp=0.5, lookback=50, resolution=100)})
    train = 2 * 100 * (8 + 32) + 2 * 50 * (0.5 * 16 + 32)  # (8), accs = 1
    float32 = 2 * 100 * 64 + 2 * 50 * 64
    overhead = (32 * (1.0 * 2 * LOG2_24 * 50 * 3 * 10 + 261) / 25
                + 32 * (0.5 * 2 * LOG2_24 * 100 * 3 * 20 + 1021) / 50)  # (9)
    assert model.train == pytest.approx(train)
    assert model.float32 == pytest.approx(float32)
    assert model.overhead == pytest.approx(overhead)
    assert model.speedup == pytest.approx(float32 / (train + overhead))
    assert model.speedup_without_overhead == pytest.approx(19_200 / 12_000)
    assert model.memory_ratio == pytest.approx(80 / 64)  # (8 + 32) + (8 + 32) against 32 + 32
    # A second step at float32 widths: the ratios move toward 1.
    model.step(2, {n: LayerStep(wl=32, sp=1.0, lookback=100, resolution=50) for n in "ab"})
    assert model.train == pytest.approx(train + float32)
    assert model.memory_ratio == pytest.approx((80 + 128) / 128)
    assert model.steps == 2


def test_gradient_accumulation_divides_the_backward_pass():
    model = TrainingCostModel(_two_layers(), accumulation=4)
    model.step(1, {"a": LayerStep(8, 1.0, 25, 50), "b": LayerStep(8, 1.0, 25, 50)})
    assert model.train == pytest.approx(100 * (8 + 8) + 50 * (8 + 8))
    with pytest.raises(ValueError):
        TrainingCostModel(_two_layers(), accumulation=0)


def test_no_steps_gives_no_speedup():
    assert math.isnan(TrainingCostModel(_two_layers()).speedup)


class TestSizeRatio(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, host):
        return host.objectives.get("adapt-size-ratio")


class TestInferenceSpeedup(ObjectiveTestCase):
    """A speed-up is maximised: it never rises with more bits, and its gradient is non-positive."""

    @pytest.fixture
    def objective(self, host):
        return host.objectives.get("adapt-inference-speedup")

    def test_declares_unit_and_direction(self, objective):
        super().test_declares_unit_and_direction(objective)
        assert objective.direction == "maximize"

    @settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
    @given(data=st.data())
    def test_non_decreasing_in_every_group(self, objective, data):
        a = data.draw(assignments(PROFILE))
        b = data.draw(raised(a))
        assert objective.evaluate(PROFILE, b) <= objective.evaluate(PROFILE, a) + 1e-12

    def test_gradient_reaches_the_widths_and_is_non_negative(self, objective):
        uniform = PrecisionAssignment.uniform(PROFILE, 4, 4)
        bits = {g: t.float().requires_grad_() for g, t in uniform.as_tensors().items()}
        objective.differentiable(PROFILE, bits).backward()
        grads = [bits[g].grad for g in bits]
        assert all(g is None or torch.all(g <= 0) for g in grads)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
