"""Export: ONNX (checked by ONNX Runtime), packed files (rebuilt bit for bit), trials' models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.export import (layer_forms, load_packed, read_packed, save_onnx, save_packed, to_onnx)
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.plugins.adapt.fixedpoint import FixedPoint, FixedPointQuantizer
from mpsearch.plugins.alq.quantizers import ALQWeightQuantizer, MultiBitActivationQuantizer, choose_grouping
from mpsearch.plugins.smol.quantizers import SmolPACTQuantizer, SmolWeightQuantizer
from mpsearch.quant import (DoReFaQuantizer, FixedBits, MinMaxQuantizer, PACTQuantizer, assignment_from_model,
                            freeze_bits, quantize_at, quantize_model)
from mpsearch.quant.integer import AffineGrid
from mpsearch.quant.quantizers import Quantizer
from mpsearch.testing import TINY_INPUT, tiny_model, tiny_profile

TP = onnx.TensorProto


@pytest.fixture(scope="module")
def host():
    return PluginHost(entry_points=False)


def ort_run(proto, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def torch_run(model, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_outputs(model, shape, batch=64, seed=0, ties: bool = False):
    """ONNX Runtime computes what torch computes, within float rounding.

    With ``ties``, a few samples may differ by a quantization step: a two-sided PACT grid
    has an odd number of steps, so 0 lies on a rounding tie, and a sum that is 0 up to
    float rounding (it cancels exactly on these coarse grids) rounds to either level
    depending on the order ONNX Runtime and torch add in.
    """
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    proto = to_onnx(model, shape, {"mpsearch.test": "yes"})
    expected = torch_run(model, x).numpy()
    got = ort_run(proto, x)
    close = np.isclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max()).all(1)
    if ties:
        assert close.mean() >= 0.9 and (got.argmax(1) == expected.argmax(1)).mean() >= 0.95, close.mean()
    else:
        assert close.all(), np.abs(got - expected).max()
        assert (got.argmax(1) == expected.argmax(1)).all()
    return proto


def weight_types(proto) -> dict[str, set[int]]:
    """Layer -> the element types of its weight's stored codes."""
    found: dict[str, set[int]] = {}
    for init in proto.graph.initializer:
        if ".weight_q." in init.name and "codes" in init.name:
            found.setdefault(init.name.split(".weight_q.")[0], set()).add(init.data_type)
    return found


# -- ONNX ---------------------------------------------------------------------------------------

MIXED = [8, 5, 1, 2, 3, 5, 8, 16, 2, 3, 16, 8]  # TinyNet's 12 groups, weights and inputs interleaved


@pytest.mark.parametrize("family", ["minmax", "dorefa-pact"])
def test_onnx_at_mixed_widths_matches_torch(family):
    profile = tiny_profile()
    groups = list(profile.group_shapes())
    bits = dict(zip(groups, MIXED))
    # 0 bits: half of the stem's output channels pruned
    stem = torch.full((8, 1, 1, 1), 3)
    stem[::2] = 0
    bits["stem:weight"] = stem
    model = tiny_model()
    quantize_at(model, profile, PrecisionAssignment(bits, profile.group_shapes()), family)
    for q in model.modules():
        if isinstance(q, PACTQuantizer):
            q.alpha.data.fill_(1.7)
    proto = assert_same_outputs(model, TINY_INPUT, ties=family != "minmax")
    assert proto.opset_import[0].version >= 21
    types = weight_types(proto)
    container = {1: TP.UINT4, 2: TP.UINT4, 3: TP.UINT4, 5: TP.UINT8, 8: TP.UINT8, 16: TP.UINT16}
    for layer in profile:
        if layer.name != "stem":
            assert types[layer.name] == {container[bits[layer.weight_group]]}, layer.name
    assert types["stem"] == {TP.UINT4}
    assert not any(i.name.endswith(".weight") for i in proto.graph.initializer)  # no float weights left
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Clip"} <= ops
    if family == "minmax":
        assert {"ReduceMin", "ReduceMax"} <= ops  # per-batch ranges, as mpsearch computes them
    assert {p.key: p.value for p in proto.metadata_props}["mpsearch.test"] == "yes"


@pytest.mark.parametrize("shape", ["channel", "kernel"])
def test_onnx_with_widths_per_group(shape):
    profile = tiny_profile()
    g = torch.Generator().manual_seed(3)

    def bits(layer):
        s = layer.weight_shape
        if shape == "channel":  # some channels pruned
            return FixedBits(torch.randint(0, 7, (s[0],) + (1,) * (len(s) - 1), generator=g))
        return FixedBits(torch.randint(2, 9, s[:2] + (1,) * (len(s) - 2), generator=g))

    model = tiny_model()
    quantize_model(model, profile, weight=lambda layer: DoReFaQuantizer(bits(layer)),
                   activation=lambda layer: PACTQuantizer(FixedBits(4), alpha=2.0, two_sided=layer.input_signed))
    assert_same_outputs(model, TINY_INPUT, ties=True)


def test_onnx_of_smol_weights_and_inputs():
    model, profile = tiny_model(), tiny_profile()
    modules = dict(model.named_modules())

    def weight(layer):
        q = SmolWeightQuantizer(modules[layer.name].weight, "parameter", 6)
        q.freeze(modules[layer.name].weight, zpa=True)
        return q

    quantize_model(model, profile, weight,
                   lambda layer: SmolPACTQuantizer(3, two_sided=layer.input_signed, alpha=1.5))
    freeze_bits(model)
    proto = assert_same_outputs(model, TINY_INPUT, ties=True)
    assert weight_types(proto)["stem"] <= {TP.INT8}  # 6-bit odd codes at 7 bits


def test_onnx_of_alq_bases_and_levels():
    model, profile = tiny_model(), tiny_profile()
    modules = dict(model.named_modules())

    def weight(layer):
        w = modules[layer.name].weight
        q = ALQWeightQuantizer(w, choose_grouping(w.shape), 3)
        q.remove(torch.arange(0, q.mask.numel(), 5))
        return q

    quantize_model(model, profile, weight, lambda layer: MultiBitActivationQuantizer(2))
    model.train()
    model(torch.randn(32, *TINY_INPUT))  # calibrates the activation levels
    proto = assert_same_outputs(model, TINY_INPUT)
    assert weight_types(proto)["fc1"] == {TP.INT4}
    assert "Gather" in {n.op_type for n in proto.graph.node}


def test_onnx_of_adapt_fixed_point():
    model, profile = tiny_model(), tiny_profile()
    modules = dict(model.named_modules())

    def weight(layer):
        q = FixedPointQuantizer(FixedPoint(6, 5))
        q.generator = torch.Generator().manual_seed(1)
        q.requantize(modules[layer.name].weight)
        return q

    quantize_model(model, profile, weight, lambda layer: None)
    proto = assert_same_outputs(model, TINY_INPUT)
    assert set().union(*weight_types(proto).values()) == {TP.INT8}


class Symmetric(Quantizer):
    """A third party's quantizer: symmetric integers, one scale per output channel."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def _scale(self, w):
        return w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / (2 ** (self.bits - 1) - 1)

    def forward(self, w):
        s = self._scale(w)
        q = torch.clamp(torch.round(w / s), -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1)
        return (q * s).detach() + (w - w.detach())

    def integer_bits(self):
        return self.bits

    def integer_form(self, w):
        return AffineGrid(bits=torch.tensor(self.bits), scale=self._scale(w)).encode(w)


def test_a_third_party_quantizer_exports_unchanged(tmp_path, host):
    spec = host.models.get("lenet5")
    profile = model_profile(spec)
    model = spec.create(seed=0)
    quantize_model(model, profile, lambda layer: Symmetric(5), lambda layer: MinMaxQuantizer(FixedBits(6)))
    proto = assert_same_outputs(model, (1, 28, 28), batch=16)
    assert weight_types(proto)["conv1"] == {TP.INT8}
    x = torch.randn(16, 1, 28, 28)
    save_packed(model, tmp_path / "m.mpq", model_name="lenet5", num_classes=10, input_shape=(1, 28, 28))
    assert torch.equal(torch_run(load_packed(tmp_path / "m.mpq", host), x), torch_run(model, x))


def test_a_model_whose_quantizer_has_no_integer_form_is_refused():
    class Opaque(Quantizer):
        def forward(self, x):
            return x.round()

        def integer_bits(self):
            return 8

    model = tiny_model()
    quantize_model(model, tiny_profile(), lambda layer: Opaque() if layer.name == "fc1" else None,
                   lambda layer: None)
    with pytest.raises(MpsearchError, match="layer 'fc1' weight: quantizer Opaque has no integer form"):
        to_onnx(model, TINY_INPUT)


# -- packed files -------------------------------------------------------------------------------


def lenet(host, kind: str):
    spec = host.models.get("lenet5")
    profile = model_profile(spec)
    model = spec.create(seed=0)
    modules = dict(model.named_modules())
    if kind in ("minmax", "dorefa-pact"):
        bits = {g: b for g, b in zip(profile.group_shapes(), [2, 8, 3, 4, 1, 3, 5, 2])}
        bits["fc1:weight"] = torch.randint(0, 4, (500, 1), generator=torch.Generator().manual_seed(0))
        quantize_at(model, profile, PrecisionAssignment(bits, profile.group_shapes()), kind)
    elif kind == "smol":
        def weight(layer):
            q = SmolWeightQuantizer(modules[layer.name].weight, "parameter", 4)
            q.freeze(modules[layer.name].weight, zpa=True)
            return q

        quantize_model(model, profile, weight, lambda layer: SmolPACTQuantizer(3, two_sided=layer.input_signed))
        freeze_bits(model)
    elif kind == "alq":
        def weight(layer):
            w = modules[layer.name].weight
            q = ALQWeightQuantizer(w, choose_grouping(w.shape), 2)
            q.remove(torch.arange(0, q.mask.numel(), 3))
            return q

        quantize_model(model, profile, weight, lambda layer: MultiBitActivationQuantizer(2))
        model.train()
        model(torch.randn(8, 1, 28, 28))
    else:
        def weight(layer):
            q = FixedPointQuantizer(FixedPoint(5, 4))
            q.requantize(modules[layer.name].weight)
            return q

        quantize_model(model, profile, weight, lambda layer: None)
    return model.eval(), profile


KINDS = ["minmax", "dorefa-pact", "smol", "alq", "adapt"]


@pytest.mark.parametrize("kind", KINDS)
def test_packed_files_rebuild_the_model_exactly(kind, host, tmp_path):
    model, profile = lenet(host, kind)
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    size = save_packed(model, tmp_path / "m.mpq", model_name="lenet5", num_classes=10, input_shape=(1, 28, 28),
                       metadata={"mpsearch.trial": 3})
    back = load_packed(tmp_path / "m.mpq", host)
    assert torch.equal(torch_run(back, x), torch_run(model, x))
    assert assignment_from_model(back, profile) == assignment_from_model(model, profile)
    assert size.total == (tmp_path / "m.mpq").stat().st_size
    # a rebuilt model exports again, to the same file
    save_packed(back, tmp_path / "again.mpq", model_name="lenet5", num_classes=10, input_shape=(1, 28, 28),
                metadata={"mpsearch.trial": 3})
    assert (tmp_path / "again.mpq").read_bytes() == (tmp_path / "m.mpq").read_bytes()


@pytest.mark.parametrize("kind", ["minmax", "dorefa-pact", "alq"])
def test_packed_weights_take_what_the_size_objective_counts(kind, host, tmp_path):
    """Each quantized weight takes its codes at their widths plus its quantizer's scale_bits (each
    field padded to a byte), and a width map where widths vary inside a tensor (fc1 here; the size
    objective leaves it out). ALQ's slot mask is Eq. 26's width table at 2 bases."""
    model, profile = lenet(host, kind)
    size = save_packed(model, tmp_path / "m.mpq", model_name="lenet5", num_classes=10, input_shape=(1, 28, 28))
    assignment = assignment_from_model(model, profile)
    header, _ = read_packed(tmp_path / "m.mpq")
    padding, maps = 0, 0
    for layer in profile:
        stored = header["layers"][layer.name]["weight"]
        widths = stored["bits"]
        if isinstance(widths, dict):  # each channel's index into the distinct widths
            maps += int(np.prod(widths["shape"])) * int(np.ceil(np.log2(len(widths["distinct"]))))
        padding += 8 * len(stored["fields"])
    objective = host.objectives.get("size").evaluate(profile, assignment) * 1e6 * 8
    assert objective + maps <= size.weights * 8 < objective + maps + padding
    assert maps == (500 * 2 if kind != "alq" else 0)


def test_a_damaged_packed_file_is_one_line(tmp_path, host):
    (tmp_path / "x.mpq").write_bytes(b"not a model")
    with pytest.raises(MpsearchError, match="is not an mpsearch packed model"):
        load_packed(tmp_path / "x.mpq", host)
    model, _ = lenet(host, "minmax")
    save_packed(model, tmp_path / "m.mpq", model_name="lenet5", num_classes=10, input_shape=(1, 28, 28))
    data = (tmp_path / "m.mpq").read_bytes()
    (tmp_path / "cut.mpq").write_bytes(data[: len(data) // 2])
    with pytest.raises(MpsearchError, match="is truncated"):
        load_packed(tmp_path / "cut.mpq", host)


def test_layer_forms_capture_every_quantized_layer():
    model = tiny_model()
    quantize_at(model, tiny_profile(), PrecisionAssignment.uniform(tiny_profile(), 4, 4), "minmax")
    forms = layer_forms(model, TINY_INPUT)
    assert set(forms) == {layer.name for layer in tiny_profile()}
    assert all(f.weight is not None and f.input is not None and f.input.is_template for f in forms.values())


def test_save_onnx_writes_a_checked_file(tmp_path):
    model = tiny_model()
    quantize_at(model, tiny_profile(), PrecisionAssignment.uniform(tiny_profile(), 4, 4), "dorefa-pact")
    size = save_onnx(model, tmp_path / "m.onnx", TINY_INPUT, {"mpsearch.assignment": {"a": 1}})
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert size == (tmp_path / "m.onnx").stat().st_size
    assert json.loads({p.key: p.value for p in proto.metadata_props}["mpsearch.assignment"]) == {"a": 1}
