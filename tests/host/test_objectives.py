"""Cost objectives: numbers from the papers, hand counts, and the conformance suite."""

from __future__ import annotations

import pytest
import torch

from mpsearch.assignment import PrecisionAssignment
from mpsearch.models import model_profile
from mpsearch.objectives import evaluate_all
from mpsearch.testing import tiny_profile
from mpsearch.testing.objectives import ObjectiveTestCase


@pytest.fixture(scope="module")
def objectives():
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False).objectives


@pytest.fixture(scope="module")
def models():
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False).models


@pytest.mark.parametrize("bits, paper", [(4, 34.70), (3, 22.83)])
def test_resnet18_bitops_match_fracbits_table_3(objectives, models, bits, paper):
    # FracBits (Yang & Jin), Table 3: uniform PACT/SAT ResNet-18 on ImageNet with the
    # first and last layers at 8 bits costs 34.70 GBitOPs at 4 bits and 22.83 at 3 bits.
    profile = model_profile(models.get("torchvision:resnet18"), 1000, (3, 224, 224))
    a = PrecisionAssignment.uniform(profile, bits, bits, first_last_bits=8)
    assert objectives.get("bitops").evaluate(profile, a) == pytest.approx(paper, rel=0.005)


@pytest.mark.parametrize("bits, paper", [(2, 1.83), (3, 2.11)])
def test_mobilenet_v2_size_matches_fracbits_table_4(objectives, models, bits, paper):
    # FracBits, Table 4: uniform SAT MobileNetV2 weights at 2 / 3 bits (first and last
    # layers at 8) take 1.83 / 2.11 MB; no quantizer storage counted.
    profile = model_profile(models.get("torchvision:mobilenet_v2"), 1000, (3, 224, 224))
    a = PrecisionAssignment.uniform(profile, bits, 32, first_last_bits=8, scale_bits=0)
    assert objectives.get("size").evaluate(profile, a) == pytest.approx(paper, rel=0.005)


def test_lenet5_costs_by_hand(objectives, models):
    profile = model_profile(models.get("lenet5"))
    a = PrecisionAssignment.uniform(profile, 4, 6, first_last_bits=8, scale_bits=32)
    # MACs per sample: conv1 20*25*24*24, conv2 50*20*25*8*8, fc1 800*500, fc2 500*10
    macs = {"conv1": 288_000, "conv2": 1_600_000, "fc1": 400_000, "fc2": 5_000}
    bitops = macs["conv1"] * 64 + (macs["conv2"] + macs["fc1"]) * 24 + macs["fc2"] * 64
    assert objectives.get("bitops").evaluate(profile, a) == pytest.approx(bitops / 1e9, rel=1e-12)
    weights = {"conv1": 500, "conv2": 25_000, "fc1": 400_000, "fc2": 5_000}
    weight_bits = (weights["conv1"] + weights["fc2"]) * 8 + (weights["conv2"] + weights["fc1"]) * 4
    size = (weight_bits + 4 * 32) / 8 / 1e6
    assert objectives.get("size").evaluate(profile, a) == pytest.approx(size, rel=1e-12)
    # the largest activation: conv2's input, 20x12x12 values at 6 bits, vs conv1's 1x28x28 at 8
    largest = max(20 * 12 * 12 * 6, 28 * 28 * 8, 800 * 6, 500 * 8)
    assert objectives.get("memory").evaluate(profile, a) == pytest.approx(
        (weight_bits + 4 * 32 + largest) / 8 / 1e6, rel=1e-12)
    assert objectives.get("memory@128").evaluate(profile, a) == pytest.approx(
        (weight_bits + 4 * 32 + 128 * largest) / 8 / 1e6, rel=1e-12)
    every = 28 * 28 * 8 + (20 * 12 * 12 + 800) * 6 + 500 * 8  # all inputs, first/last at 8
    assert objectives.get("footprint").evaluate(profile, a) == pytest.approx(
        (weight_bits + 4 * 32 + every) / 8 / 1e6, rel=1e-12)
    assert objectives.get("footprint@128").evaluate(profile, a) == pytest.approx(
        (weight_bits + 4 * 32 + 128 * every) / 8 / 1e6, rel=1e-12)


def test_bitops_gradient_is_macs_times_activation_bits(objectives):
    profile = tiny_profile()
    bits = {g: t.float().requires_grad_() for g, t in
            PrecisionAssignment.uniform(profile, 4, 6).as_tensors().items()}
    objectives.get("bitops").differentiable(profile, bits).backward()
    for layer in profile:
        assert float(bits[layer.weight_group].grad) == pytest.approx(layer.macs * 6 / 1e9, rel=1e-5)
        assert float(bits[layer.input_group].grad) == pytest.approx(layer.macs * 4 / 1e9, rel=1e-5)


def test_per_channel_bits_cost_what_their_channels_use(objectives):
    profile = tiny_profile()
    layer = profile["pointwise"]  # 16 output channels of 8 weights each, 4x4 outputs
    base = PrecisionAssignment.uniform(profile, 8, 8)
    per_channel = torch.full((16, 1, 1, 1), 8)
    per_channel[:4] = 2
    mixed = base.replace({layer.weight_group: per_channel})
    saved = 4 * 8 * (8 - 2) * 16 * 8  # channels x weights x bits saved x uses x act bits
    bitops = objectives.get("bitops")
    assert (bitops.evaluate(profile, base) - bitops.evaluate(profile, mixed)) * 1e9 == pytest.approx(saved)


def test_evaluate_all_validates_the_assignment(objectives, models):
    from mpsearch.errors import AssignmentError

    lenet = model_profile(models.get("lenet5"))
    wrong = PrecisionAssignment.uniform(tiny_profile(), 8, 8)
    with pytest.raises(AssignmentError, match="does not match the model"):
        evaluate_all(lenet, wrong, {"bitops": objectives.get("bitops")}, _generic())


def _generic():
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False).backends.get("generic")


class TestBitops(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, objectives):
        return objectives.get("bitops")


class TestSize(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, objectives):
        return objectives.get("size")


class TestMemory(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, objectives):
        return objectives.get("memory")


class TestMemoryBatch128(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, objectives):
        return objectives.get("memory@128")


class TestFootprint(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, objectives):
        return objectives.get("footprint")


class TestFootprintBatch128(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, objectives):
        return objectives.get("footprint@128")
