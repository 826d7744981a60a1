"""HAWQ-v2's sensitivity: Hutchinson against the exact trace, Ω's quantizer, the table, and the command."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from torch.func import functional_call

from mpsearch.assignment import PrecisionAssignment
from mpsearch.cli import cli
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.quant import quantize_at, quantizers
from mpsearch.sensitivity import SensitivityTable, hutchinson_traces, layer_sensitivity

HOST = PluginHost(entry_points=False)


def small_net() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A 6-5-3 ReLU network (its Hessians are positive semi-definite), two unequal batches of data."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 6, generator=g, dtype=torch.float64),
                torch.randint(0, 3, (n,), generator=g)) for n in (12, 7)]
    return net, batches


def exact_weight_trace(net: nn.Module, batches, name: str) -> float:
    """Tr of the explicit Hessian of the mean loss over all images with respect to one parameter."""
    params = dict(net.named_parameters())
    total = sum(len(y) for _, y in batches)

    def loss(w: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for x, y in batches:
            logits = functional_call(net, {**params, name: w}, (x,))
            out = out + F.cross_entropy(logits, y, reduction="sum")
        return out / total

    h = torch.autograd.functional.hessian(loss, params[name].detach())
    n = params[name].numel()
    return float(h.reshape(n, n).diagonal().sum())


def exact_input_trace(net: nn.Sequential, batches, index: int) -> float:
    """Tr of the explicit Hessian of the mean loss with respect to the input of ``net[index]``."""
    total = sum(len(y) for _, y in batches)
    trace = 0.0
    for x, y in batches:
        with torch.no_grad():
            a = net[:index](x)

        def loss(a_: torch.Tensor, y=y) -> torch.Tensor:
            return F.cross_entropy(net[index:](a_), y, reduction="sum") / total

        h = torch.autograd.functional.hessian(loss, a)
        trace += float(h.reshape(a.numel(), a.numel()).diagonal().sum())
    return trace


def test_hutchinson_matches_the_exact_trace_of_a_small_layer():
    net, batches = small_net()
    exact = {"0.weight": exact_weight_trace(net, batches, "0.weight"),
             "2.weight": exact_weight_trace(net, batches, "2.weight"),
             "2:input": exact_input_trace(net, batches, 2)}
    found = hutchinson_traces(net, batches, {"0.weight": net[0].weight, "2.weight": net[2].weight},
                              [net[2]], tolerance=0.0, max_iterations=400,
                              generator=torch.Generator().manual_seed(2))
    assert found.iterations == 400 and not found.converged
    for block, value in exact.items():
        estimate, stderr = found.traces[block], found.stderr[block]
        # Unbiased: within four standard errors, and a few per cent after 400 passes.
        assert abs(estimate - value) <= 4 * stderr, (block, estimate, value, stderr)
        assert abs(estimate - value) / abs(value) < 0.05, (block, estimate, value)


def test_a_few_iterations_are_further_off_than_many():
    net, batches = small_net()
    exact = exact_weight_trace(net, batches, "0.weight")
    error = {}
    for iterations in (2, 400):
        found = hutchinson_traces(net, batches, {"w": net[0].weight}, tolerance=0.0,
                                  max_iterations=iterations, generator=torch.Generator().manual_seed(5))
        error[iterations] = found.stderr["w"]
        assert abs(found.traces["w"] - exact) <= 4 * found.stderr["w"]
    assert error[400] < error[2] / 5  # the standard error shrinks like 1/sqrt(iterations)


def test_the_tolerance_stops_the_iterations():
    net, batches = small_net()
    loose = hutchinson_traces(net, batches, {"w": net[0].weight}, tolerance=10.0, max_iterations=50)
    assert loose.converged and loose.iterations == 2  # the first check is after the second pass
    tight = hutchinson_traces(net, batches, {"w": net[0].weight}, tolerance=0.0, max_iterations=7)
    assert not tight.converged and tight.iterations == 7


def test_the_model_is_left_as_it_was():
    net, batches = small_net()
    before = copy.deepcopy(net.state_dict())
    net.train()
    hutchinson_traces(net, batches, {"w": net[0].weight}, [net[0], net[2]], max_iterations=2)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


@pytest.fixture(scope="module")
def lenet():
    spec = HOST.models.get("lenet5")
    model = spec.create(10, (1, 28, 28), seed=0)
    profile = model_profile(spec, 10, (1, 28, 28))
    data = HOST.datasets.get("mnist-mini").load(None, "train")
    batches = [(x, y) for i, (x, y) in enumerate(data.batches(32)) if i < 2]
    table = layer_sensitivity(model, profile, batches, [2, 4, 8], input_widths=[3, 8], max_iterations=2,
                              generator=torch.Generator().manual_seed(0))
    return model, profile, batches, table


def test_omega_uses_the_quantizer_the_model_deploys(lenet):
    model, profile, _, table = lenet
    assert [r.layer for r in table.layers] == ["conv1", "conv2", "fc1", "fc2"]
    # LeNet-5's 430,500 weights (Han et al. 2016), layer by layer.
    assert [r.weights for r in table.layers] == [500, 25_000, 400_000, 5_000]
    for bits in (2, 4, 8):
        deployed = quantize_at(copy.deepcopy(model), profile, PrecisionAssignment.uniform(profile, bits, 8))
        for layer, q in quantizers(deployed).items():
            name, kind = layer.split(":")
            if kind != "weight":
                continue
            w = dict(model.named_modules())[name].weight.detach()
            row = table[name]
            expected = row.weight_trace / w.numel() * float((q(w) - w).square().sum())
            assert table.omega(layer, bits) == pytest.approx(expected, rel=1e-6)
    for row in table.layers:
        assert row.weight_omega[2] > row.weight_omega[8] > 0
        assert row.inputs == 64 * math.prod(profile[row.layer].input_shape)  # two batches of 32
        assert row.input_omega[3] > row.input_omega[8] >= 0


def test_the_table_round_trips_through_json(lenet):
    *_, table = lenet
    data = json.loads(json.dumps(table.to_dict(), allow_nan=False))
    again = SensitivityTable.from_dict(data)
    assert again == table
    frame = table.to_frame()
    assert list(frame.columns) == ["trace", "elements", "trace/n", "Ω@2", "Ω@3", "Ω@4", "Ω@8"]
    assert frame.loc[("fc1", "weight"), "elements"] == 400_000
    assert math.isnan(frame.loc[("fc1", "input"), "Ω@2"])  # inputs were tabulated at 3 and 8 only
    with pytest.raises(MpsearchError, match="not an mpsearch sensitivity table"):
        SensitivityTable.from_dict({"format": "something-else"})
    with pytest.raises(MpsearchError, match="malformed"):
        SensitivityTable.from_dict({**data, "layers": [{"layer": "conv1"}]})


def test_bad_widths_and_empty_data_are_refused(lenet):
    model, profile, batches, _ = lenet
    with pytest.raises(MpsearchError, match="1-32"):
        layer_sensitivity(model, profile, batches, [0, 4])
    with pytest.raises(MpsearchError, match="at least one calibration image"):
        layer_sensitivity(model, profile, [], [4])


# -- the command ----------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(autouse=True)
def _no_entry_points(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])


QUICK = ("--data", "mnist-mini", "--images", "48", "--batch-size", "24", "--max-iterations", "2")


def test_the_command_prints_every_layer_and_width(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(HOST.models.get("lenet5").create(10, (1, 28, 28), seed=4).state_dict(), weights)
    result = run("sensitivity", "lenet5", *QUICK, "--weights", str(weights))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"lenet5 from weights {weights}, on the first 48 training images "
                               f"of mnist-mini")
    assert "stopped after 2 iteration(s)" in lines[0]
    header = next(line for line in lines if line.lstrip().startswith("trace"))
    assert header.split() == ["trace", "elements", "trace/n", *[f"Ω@{b}" for b in range(2, 9)]]
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        assert any(line.startswith(layer) for line in lines), layer
    assert sum(" input " in line for line in lines) == 4


def test_the_command_as_json_takes_the_backends_widths():
    result = run("sensitivity", "lenet5", *QUICK, "--backend", "gpu", "--no-activations", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["weights"] is None and data["backend"] == "gpu" and data["images"] == 48
    table = SensitivityTable.from_dict(data)
    for row in table.layers:
        assert sorted(row.weight_omega) == [4, 8]  # the GPU runs 4, 8 and 16 bits: 4 and 8 are in 2-8
        assert row.input_trace is None and not row.input_omega
    assert data["seconds"] > 0 and data["iterations"] == 2


def test_the_same_seed_gives_the_same_table():
    first, second = (json.loads(run("sensitivity", "lenet5", *QUICK, "--json", "--seed", "3").output)
                     for _ in range(2))
    assert first["layers"] == second["layers"]
