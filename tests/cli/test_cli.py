"""The command line: plugins list, cost, and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpsearch.cli import cli

from helpers import run


@pytest.fixture(autouse=True)
def _no_entry_points(monkeypatch):
    # keep installed third-party plugins out of these tests
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])


def test_plugins_list_names_every_kind_and_plugin():
    result = run("plugins", "list")
    assert result.exit_code == 0
    for heading in ("strategies", "objectives", "backends", "models", "datasets"):
        assert heading in result.output
    assert "bitops" in result.output and "mpsearch.plugins.objective_bitops" in result.output
    data = json.loads(run("plugins", "list", "--json").output)
    rows = {(r["kind"], r["name"]): r["plugin"] for r in data["registered"]}
    assert rows[("backend", "generic")] == "mpsearch.plugins.backend_generic"
    assert rows[("model", "torchvision:resnet18")] == "mpsearch.plugins.model_torchvision"


def test_cost_of_a_uniform_assignment():
    result = run("cost", "lenet5", "--weight-bits", "4", "--act-bits", "4",
                 "--first-last-bits", "8", "--json")
    data = json.loads(result.output)
    bitops = (288_000 * 64 + (1_600_000 + 400_000) * 16 + 5_000 * 64) / 1e9
    assert data["objectives"]["bitops"] == {"value": pytest.approx(bitops), "unit": "GBitOPs"}
    assert data["objectives"]["size"]["unit"] == "MB"
    assert set(data["objectives"]) >= {"bitops", "size", "memory", "memory@128"}
    text = run("cost", "lenet5", "--weight-bits", "4", "--act-bits", "4", "--first-last-bits", "8")
    assert "GBitOPs" in text.output and "lenet5 at input 1x28x28" in text.output


def test_saved_assignments_evaluate_the_same(tmp_path):
    path = tmp_path / "a.json"
    first = json.loads(run("cost", "resnet20", "--weight-bits", "3", "--act-bits", "5", "--json",
                           "--save-assignment", str(path)).output)
    again = json.loads(run("cost", "resnet20", "--assignment", str(path), "--json").output)
    assert again["objectives"] == first["objectives"]
    assert again["average_weight_bits"] == 3


def test_input_shape_changes_the_cost():
    small = json.loads(run("cost", "resnet20", "--input-shape", "3,32,32", "--json").output)
    large = json.loads(run("cost", "resnet20", "--input-shape", "3,64,64", "--json").output)
    assert large["objectives"]["bitops"]["value"] == pytest.approx(
        4 * small["objectives"]["bitops"]["value"], rel=1e-3)


@pytest.mark.parametrize("args, message", [
    (["cost", "lenet"], "unknown model 'lenet'. Did you mean 'lenet5'"),
    (["cost", "lenet5", "--backend", "gneric"], "unknown backend 'gneric'. Did you mean 'generic'?"),
    (["cost", "lenet5", "--objective", "bitop"], "unknown objective 'bitop'"),
    (["cost", "lenet5", "--assignment", "/no/such.json"], "does not exist"),
    (["cost", "lenet5", "--input-shape", "3,x"], "is not a list of positive integers"),
    (["--plugin", "/no/such/plugin.py", "plugins", "list"], "plugin file '/no/such/plugin.py' does not exist"),
])
def test_bad_input_is_one_line(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_mismatched_assignment(tmp_path):
    path = tmp_path / "lenet.json"
    run("cost", "lenet5", "--save-assignment", str(path))
    result = CliRunner().invoke(cli, ["cost", "resnet20", "--assignment", str(path)])
    assert result.exit_code == 1 and "does not match the model" in result.output


def test_debug_shows_the_traceback():
    from mpsearch.errors import UnknownNameError

    result = CliRunner().invoke(cli, ["--debug", "cost", "lenet"])
    assert isinstance(result.exception, UnknownNameError)


def test_plugins_add_commands(tmp_path):
    plugin = tmp_path / "cmd_plugin.py"
    plugin.write_text(
        "import click\n"
        "from mpsearch import hookimpl\n"
        "@hookimpl\n"
        "def register_commands(cli):\n"
        "    @cli.command('hello')\n"
        "    def hello():\n"
        "        click.echo('hello from a plugin')\n")
    result = CliRunner().invoke(cli, ["--plugin", str(plugin), "hello"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"
    clash = tmp_path / "clash_plugin.py"
    clash.write_text(
        "from mpsearch import hookimpl\n"
        "@hookimpl\n"
        "def register_commands(cli):\n"
        "    @cli.command('cost')\n"
        "    def cost():\n"
        "        pass\n")
    result = CliRunner().invoke(cli, ["--plugin", str(clash), "nothing-here"])
    assert result.exit_code == 1 and "registered command(s) cost that already exist" in result.output
