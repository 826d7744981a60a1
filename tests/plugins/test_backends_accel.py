"""Accelerator backends (Stripes, Loom, Bit Fusion, Proteus, A100, CPU int8) and the latency / energy objectives.

Every hand-computed case writes the paper's formula out here, on LeNet-5's
layer sizes derived by hand and on the tiny profile's layers, rather than calling
the backends' own code.
"""

from __future__ import annotations

import pytest
import torch

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.models import model_profile
from mpsearch.spec import SpecError, parse_spec
from mpsearch.testing import tiny_profile
from mpsearch.testing.backends import BackendTestCase
from mpsearch.testing.objectives import ObjectiveTestCase
from mpsearch.testing.strategies_suite import base_spec

NAMES = ("stripes", "loom", "bitfusion", "proteus", "gpu", "cpu-int8")

# LeNet-5 on 1x28x28 (20C5-MP2-50C5-MP2-500FC-10), by hand: MACs = outputs x fan-in.
LENET_MACS = {"conv1": 24 * 24 * 20 * (1 * 5 * 5),    # 288,000
              "conv2": 8 * 8 * 50 * (20 * 5 * 5),     # 1,600,000
              "fc1": 500 * 800,                       # 400,000
              "fc2": 10 * 500}                        # 5,000
LENET_CONV = LENET_MACS["conv1"] + LENET_MACS["conv2"]  # 1,888,000
LENET_FC = LENET_MACS["fc1"] + LENET_MACS["fc2"]        # 405,000
LENET_TOTAL = LENET_CONV + LENET_FC                     # 2,293,000
LENET_WEIGHTS = 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10  # 430,500
LENET_INPUTS = 28 * 28 + 20 * 12 * 12 + 800 + 500             # 4,964
# Horowitz (ISSCC 2014) as tabulated by Han et al. (ICLR 2016): pJ.
MULT_8BIT, ADD_32BIT, DRAM_32BIT_READ, SRAM_32BIT_READ = 0.2, 0.1, 640.0, 5.0


@pytest.fixture(scope="module")
def host():
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False)


@pytest.fixture(scope="module")
def lenet(host):
    profile = model_profile(host.models.get("lenet5"), 10, (1, 28, 28))
    assert {l.name: l.macs for l in profile} == LENET_MACS
    assert profile.weight_numel == LENET_WEIGHTS
    assert sum(l.input_numel for l in profile) == LENET_INPUTS
    return profile


HAND_WIDTHS = {"stripes": (16, 5), "loom": (3, 6), "bitfusion": (2, 8), "proteus": (9, 2),
               "gpu": (8, 4), "cpu-int8": (8, 8)}


def _hand_time(name, layer, w, a):
    """Each paper's time per layer relative to its baseline, for uniform legal widths."""
    conv = layer.kind == "conv2d"
    return {
        "stripes": a / 16 if conv else 1.0,
        "loom": w * a / 256 if conv else w / 16,
        "bitfusion": (w / 2) * (a / 2) / 64,
        "proteus": 1.0,
        "gpu": max(w, a) / 16,
        "cpu-int8": max(w, a) / 32,
    }[name]


def _backend_class(name):
    class Suite(BackendTestCase):
        @pytest.fixture
        def backend(self, host):
            return host.backends.get(name)

        def test_hand_computed_uniform_case(self, backend, host):
            # The tiny profile's layers with the paper's formula (_hand_time); LeNet-5's
            # hand-derived cases are the module-level tests below.
            w, a = HAND_WIDTHS[name]
            profile = tiny_profile()
            assignment = PrecisionAssignment.uniform(profile, w, a)
            assert backend.is_legal(assignment)
            time = sum(l.macs * _hand_time(name, l, w, a) for l in profile)
            assert backend.speedup(profile, assignment) == pytest.approx(profile.macs / time)
            latency = host.objectives.get("latency").evaluate(profile, assignment, backend)
            assert latency == pytest.approx(time / profile.macs)

    Suite.__name__ = Suite.__qualname__ = f"Test{name.title().replace('-', '')}Conformance"
    return Suite


TestStripesConformance = _backend_class("stripes")
TestLoomConformance = _backend_class("loom")
TestBitfusionConformance = _backend_class("bitfusion")
TestProteusConformance = _backend_class("proteus")
TestGpuConformance = _backend_class("gpu")
TestCpuInt8Conformance = _backend_class("cpu-int8")


# -- hand-computed cases ------------------------------------------------------------------

def test_stripes_lenet5_by_hand(host, lenet):
    stripes = host.backends.get("stripes")
    # Convolutions take a/16 of DaDianNao's time, fully connected layers all of it.
    # a = 8: 1,888,000 * 8/16 + 405,000 = 1,349,000 against 2,293,000: 1.700x.
    assert stripes.speedup(lenet, PrecisionAssignment.uniform(lenet, 8, 8)) == pytest.approx(
        2_293_000 / 1_349_000)
    # a = 4 (weights 3 are legalised to 16, which costs nothing extra): 472,000 + 405,000.
    a4 = PrecisionAssignment.uniform(lenet, 3, 4)
    assert stripes.speedup(lenet, a4) == pytest.approx(2_293_000 / 877_000)
    assert stripes.legalise(a4)["conv1:weight"] == 16
    # Storage stays 16-bit: no memory gain.
    assert stripes.memory_ratio(lenet, a4) == pytest.approx(1.0)


def test_loom_lenet5_by_hand(host, lenet):
    loom = host.backends.get("loom")
    # conv: w*a/256 of the time, FC: w/16.
    # 8/8: 1,888,000 * 64/256 + 405,000 * 8/16 = 472,000 + 202,500 = 674,500: 3.400x.
    assert loom.speedup(lenet, PrecisionAssignment.uniform(lenet, 8, 8)) == pytest.approx(
        2_293_000 / 674_500)
    # 4/4: 118,000 + 101,250 = 219,250: 10.458x.
    assert loom.speedup(lenet, PrecisionAssignment.uniform(lenet, 4, 4)) == pytest.approx(
        2_293_000 / 219_250)
    # w 4 / a 8: conv 1,888,000 * 32/256 = 236,000; FC (weights only) 101,250.
    a = PrecisionAssignment.uniform(lenet, 4, 8)
    assert loom.speedup(lenet, a) == pytest.approx(2_293_000 / 337_250)
    assert loom.memory_ratio(lenet, a) == pytest.approx(
        (4 * 430_500 + 8 * 4_964) / (16 * (430_500 + 4_964)))


def test_bitfusion_lenet5_by_hand(host, lenet):
    bitfusion = host.backends.get("bitfusion")
    # 3 and 5 bits legalise to 4 and 8: (4/2)*(8/2) = 8 bricks against 64 at 16x16, 8x.
    a = PrecisionAssignment.uniform(lenet, 3, 5)
    legal = bitfusion.legalise(a)
    assert legal["fc1:weight"] == 4 and legal["fc1:input"] == 8
    assert bitfusion.speedup(lenet, a) == pytest.approx(64 / 8)
    # 2x2 bits: one brick per multiply, 16 per Fusion Unit: 64x over 16x16.
    assert bitfusion.speedup(lenet, PrecisionAssignment.uniform(lenet, 2, 2)) == pytest.approx(64.0)
    # Energy at 8/8 bits, in pJ: 64 bit-products at 0.2/64 pJ and one 0.1 pJ add per MAC,
    # 8-bit weights from DRAM at 20 pJ/bit, 8-bit inputs from SRAM at 5/32 pJ/bit:
    # 2,293,000 * 0.3 + 3,444,000 * 20 + 39,712 * 5/32 = 687,900 + 68,880,000 + 6,205.
    energy = host.objectives.get("energy@bitfusion")
    expected_pj = (LENET_TOTAL * (MULT_8BIT + ADD_32BIT) + 8 * LENET_WEIGHTS * DRAM_32BIT_READ / 32
                   + 8 * LENET_INPUTS * SRAM_32BIT_READ / 32)
    assert expected_pj == pytest.approx(69_574_104.8)
    assert energy.evaluate(lenet, PrecisionAssignment.uniform(lenet, 8, 8)) == pytest.approx(
        expected_pj / 1e6)


def test_proteus_lenet5_by_hand(host, lenet):
    proteus = host.backends.get("proteus")
    a = PrecisionAssignment.uniform(lenet, 5, 7)
    assert proteus.speedup(lenet, a) == pytest.approx(1.0)
    assert proteus.memory_ratio(lenet, a) == pytest.approx(
        (5 * 430_500 + 7 * 4_964) / (16 * 435_464))
    # Compute stays 16x16; only the memory traffic shrinks with the widths.
    base = PrecisionAssignment.uniform(lenet, 16, 16)
    saved = (16 - 5) * LENET_WEIGHTS * 20 + (16 - 7) * LENET_INPUTS * 5 / 32
    energy = host.objectives.get("energy@proteus")
    assert (energy.evaluate(lenet, base) - energy.evaluate(lenet, a)) * 1e6 == pytest.approx(saved)


def test_gpu_follows_the_a100_peak_ratios(host, lenet):
    from mpsearch.plugins.backend_gpu import PEAK_TOPS

    gpu = host.backends.get("gpu")
    # A100 whitepaper dense peaks: INT4 1,248 and INT8 624 TOPS against FP16 312 TFLOPS.
    assert PEAK_TOPS[4] / PEAK_TOPS[16] == 4 and PEAK_TOPS[8] / PEAK_TOPS[16] == 2
    assert gpu.speedup(lenet, PrecisionAssignment.uniform(lenet, 4, 4)) == pytest.approx(4.0)
    # int4 weights with 8-bit inputs run as int8; 3 and 12 bits legalise to 4 and 16: fp16.
    assert gpu.speedup(lenet, PrecisionAssignment.uniform(lenet, 4, 8)) == pytest.approx(2.0)
    assert gpu.speedup(lenet, PrecisionAssignment.uniform(lenet, 3, 12)) == pytest.approx(1.0)
    # Storage is at each group's own legal width.
    assert gpu.memory_ratio(lenet, PrecisionAssignment.uniform(lenet, 4, 8)) == pytest.approx(
        (4 * 430_500 + 8 * 4_964) / (16 * 435_464))


def test_cpu_int8_by_hand(host, lenet):
    cpu = host.backends.get("cpu-int8")
    # 64 int8 MACs per VNNI instruction against 16 fp32 FMAs: 4x, and a quarter of the storage.
    a = PrecisionAssignment.uniform(lenet, 5, 8)
    assert cpu.legalise(a)["conv2:weight"] == 8
    assert cpu.speedup(lenet, a) == pytest.approx(4.0)
    assert cpu.memory_ratio(lenet, a) == pytest.approx(0.25)
    # One 9-bit input group puts its layer (fc1, 400,000 of 2,293,000 MACs) in fp32.
    mixed = a.replace({"fc1:input": 9})
    assert cpu.speedup(lenet, mixed) == pytest.approx(2_293_000 / (1_893_000 / 4 + 400_000))
    # Energy per int8 MAC 0.2 + 0.1 pJ, per fp32 MAC 3.7 + 0.9 pJ (Horowitz).
    costs = cpu.layer_costs(lenet, cpu.legalise(a))
    assert costs["energy_pj"]["conv2"] == pytest.approx(
        1_600_000 * 0.3 + 8 * 25_000 * 20 + 8 * 2_880 * 5 / 32)
    assert costs["baseline_energy_pj"]["conv2"] == pytest.approx(
        1_600_000 * 4.6 + 32 * 25_000 * 20 + 32 * 2_880 * 5 / 32)


def test_pruned_layers_cost_nothing(host):
    profile = tiny_profile()
    first = profile.layers[0]
    for name in NAMES:
        backend = host.backends.get(name)
        a = backend.legalise(PrecisionAssignment.uniform(profile, 8, 8)).replace(
            {first.weight_group: 0})
        assert backend.legalise(a)[first.weight_group] == 0
        assert backend.layer_costs(profile, a)["time"][first.name] == 0, name


# -- objectives ---------------------------------------------------------------------------

def _bound(name, quantity):
    class Suite(ObjectiveTestCase):
        @pytest.fixture
        def objective(self, host):
            return host.objectives.get(f"{quantity}@{name}")

    Suite.__name__ = Suite.__qualname__ = f"Test{quantity.title()}{name.title().replace('-', '')}"
    return Suite


for _name in ("generic", *NAMES):
    for _quantity in ("latency", "energy"):
        _cls = _bound(_name, _quantity)
        globals()[_cls.__name__] = _cls
del _name, _quantity, _cls


class TestLatencyBoundWithForBackend(ObjectiveTestCase):
    @pytest.fixture
    def objective(self, host):
        return host.objectives.get("latency").for_backend(host.backends.get("bitfusion"))


def test_latency_is_the_reciprocal_speedup_on_the_study_backend(host, lenet):
    a = PrecisionAssignment.uniform(lenet, 5, 3)
    for name in NAMES:
        backend = host.backends.get(name)
        legal = backend.legalise(a)
        for objective in (host.objectives.get("latency"), host.objectives.get(f"latency@{name}")):
            assert objective.evaluate(lenet, legal, backend) == pytest.approx(
                1 / backend.speedup(lenet, a))
        assert host.objectives.get("energy").evaluate(lenet, legal, backend) * 1e6 == pytest.approx(
            backend.layer_costs(lenet, legal)["energy_pj"].sum())


def test_a_bound_objective_legalises_for_its_own_backend(host, lenet):
    # A Bit Fusion study's 2-bit assignment, costed on the A100: it runs at int4.
    bitfusion = host.backends.get("bitfusion")
    legal = bitfusion.legalise(PrecisionAssignment.uniform(lenet, 2, 2))
    assert host.objectives.get("latency@gpu").evaluate(lenet, legal, bitfusion) == pytest.approx(0.25)
    # A width the bound backend cannot run is a one-line error naming the objective.
    wide = PrecisionAssignment.uniform(lenet, 32, 32)
    with pytest.raises(MpsearchError, match=r"objective 'latency@stripes': .* exceeds the widest width 16"):
        host.objectives.get("latency@stripes").evaluate(lenet, wide, host.backends.get("generic"))


def test_unbound_objectives_need_a_backend_and_have_no_gradient(host, lenet):
    a = PrecisionAssignment.uniform(lenet, 8, 8)
    for name in ("latency", "energy"):
        objective = host.objectives.get(name)
        assert not objective.has_differentiable
        with pytest.raises(MpsearchError, match=rf"{name}@<backend>"):
            objective.evaluate(lenet, a)
        with pytest.raises(MpsearchError, match="no differentiable form"):
            objective.differentiable(lenet, a.as_tensors())
    # Proteus's time does not change with the widths: nothing to differentiate.
    assert not host.objectives.get("latency@proteus").has_differentiable
    assert host.objectives.get("energy@proteus").has_differentiable


def test_fractional_latency_interpolates_between_legal_widths(host, lenet):
    # The pre-legalisation model: Bit Fusion at 3 fractional bits lies between 2 and 4.
    objective = host.objectives.get("latency@bitfusion")

    def at(bits):
        return float(objective.differentiable(lenet, {g: torch.tensor(float(bits)) for g in
                                                      lenet.group_shapes()}))

    assert at(2) < at(3) < at(4)
    assert at(4) == pytest.approx(16 / 256)


# -- study specs and strategies -------------------------------------------------------------

def _spec(backend="bitfusion", objectives=("accuracy", "latency", "energy"), strategy="uniform"):
    raw = base_spec(strategy)
    raw["study"]["objectives"] = list(objectives)
    raw["backend"] = {"name": backend}
    return raw


def test_a_spec_names_a_backend_and_its_objectives(host):
    spec = parse_spec(_spec(), host=host)
    assert spec.backend == "bitfusion"
    assert spec.cost_objectives == ["latency", "energy"]
    assert [o.direction for o in spec.study.objectives] == ["maximize", "minimize", "minimize"]
    with pytest.raises(SpecError, match=r"\[backend\] name: unknown backend 'bitfusoin'\. "
                                        r"Did you mean 'bitfusion'\?"):
        parse_spec(_spec(backend="bitfusoin"), host=host)
    with pytest.raises(SpecError, match="Did you mean 'latency'"):
        parse_spec(_spec(objectives=("accuracy", "latencyy")), host=host)
    raw = _spec()
    raw["backend"] = "bitfusion"  # short for [backend] name = "bitfusion"
    assert parse_spec(raw, host=host).backend == "bitfusion"
    raw["backend"] = 3
    with pytest.raises(SpecError, match=r"\[backend\] must be a table"):
        parse_spec(raw, host=host)


def test_a_bitfusion_study_trial_reports_latency_and_energy(host, lenet):
    from mpsearch.trial import run_trial

    spec = parse_spec(_spec(), host=host)
    outcome = run_trial(spec, 0, "uniform", {"bits": 3})
    assert not outcome.failed, outcome.attrs
    # 3 bits run as 4 on Bit Fusion: (4/2)^2 = 4 bricks against 64.
    assert outcome.values["latency"] == pytest.approx(4 / 64)
    bitfusion = host.backends.get("bitfusion")
    legal = bitfusion.legalise(PrecisionAssignment.uniform(lenet, 4, 4))
    assert outcome.values["energy"] == pytest.approx(
        bitfusion.layer_costs(lenet, legal)["energy_pj"].sum() / 1e6)
    assert outcome.values["accuracy"] > 0.5


def test_bitpruning_weighs_its_bit_loss_by_a_bound_latency(host):
    from mpsearch.trial import run_trial

    spec = parse_spec(_spec(backend="loom", objectives=("accuracy", "latency@loom"),
                            strategy="bitpruning"), host=host)
    params = {"gamma": 0.3, "lr_bits": 0.2, "split": 0.8, "criterion": "latency@loom"}
    outcome = run_trial(spec, 0, "bitpruning", params)
    assert not outcome.failed, outcome.attrs
    assert 0 < outcome.values["latency@loom"] < (8 * 8) / 256 + 0.2
    # A trial binds the unbound objective to the study's backend: the same run, to the bit.
    bound = run_trial(spec, 0, "bitpruning", {**params, "criterion": "latency"})
    assert bound.values == outcome.values


def test_fracbits_meets_a_latency_target_on_loom(host, lenet):
    from mpsearch.trial import run_trial

    spec = parse_spec(_spec(backend="loom", objectives=("accuracy", "latency@loom"),
                            strategy="fracbits"), host=host)
    params = {"objective": "latency@loom", "target_fraction": 0.5, "kappa": 10.0}
    outcome = run_trial(spec, 0, "fracbits", params)
    assert not outcome.failed, outcome.attrs
    # Half of the all-8-bit latency on Loom, 674,500 / 2,293,000 of the 16-bit baseline's
    # (conv 1,888,000 x 64/256 + FC 405,000 x 8/16), within FracBits' 1 % threshold search.
    target = 0.5 * 674_500 / 2_293_000
    assert outcome.values["latency@loom"] <= target * 1.01
    # Named without a backend, it is bound to the study's: the same differentiable cost.
    loom, bits = host.backends.get("loom"), PrecisionAssignment.uniform(lenet, 5, 7)
    bound = host.objectives.get("latency").for_backend(loom, "loom")
    assert bound.has_differentiable and bound.name == "latency@loom"
    assert float(bound.differentiable(lenet, bits.as_tensors(torch.float64))) == \
        pytest.approx(float(host.objectives.get("latency@loom").differentiable(
            lenet, bits.as_tensors(torch.float64))))
