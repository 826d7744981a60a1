"""The example third-party plugin in examples/: installed with pip, and loaded with --plugin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from mpsearch.hookspecs import hookimpl
from mpsearch.host import PluginHost
from mpsearch.models import ModelSpec, model_profile
from mpsearch.objectives import Objective

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mpsearch-example-plugin"
MODULE_FILE = EXAMPLE / "mpsearch_example_plugin" / "__init__.py"
NAMES = ("example:lenet-300-100", "example:weight-kib")


@pytest.mark.slow  # pip builds a wheel; test_an_installed_distribution_s_entry_point_is_loaded is the fast path
def test_pip_installed_plugin_is_found_through_its_entry_point(tmp_path):
    # Build from a copy: an in-tree build leaves build/ and *.egg-info in examples/.
    source = shutil.copytree(EXAMPLE, tmp_path / "src")
    target = tmp_path / "site"
    # Offline: --no-index, and --no-build-isolation so setuptools comes from this
    # environment instead of being downloaded; --no-deps keeps torch untouched.
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                    "--no-build-isolation", "--disable-pip-version-check", "--quiet",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    snippet = (
        "import json\n"
        "from mpsearch.host import PluginHost\n"
        "host = PluginHost()\n"
        "print(json.dumps({\n"
        "    'model': host.models.entry('example:lenet-300-100').plugin,\n"
        "    'objective': host.objectives.entry('example:weight-kib').plugin,\n"
        "}))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", snippet], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True)
    plugins = json.loads(out.stdout.strip().splitlines()[-1])
    expected = "mpsearch-example-plugin (mpsearch_example_plugin)"
    assert plugins == {"model": expected, "objective": expected}


def test_an_installed_distribution_s_entry_point_is_loaded(tmp_path, monkeypatch):
    """What pip leaves, written by hand: a ``.dist-info`` naming the entry point, found on sys.path."""
    info = tmp_path / "mpsearch_example_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mpsearch-example-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mpsearch]\nexample = mpsearch_example_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    try:
        host = PluginHost()
        expected = "mpsearch-example-plugin (mpsearch_example_plugin)"
        assert host.models.entry(NAMES[0]).plugin == expected
        assert host.objectives.entry(NAMES[1]).plugin == expected
    finally:
        sys.modules.pop("mpsearch_example_plugin", None)


@pytest.fixture(scope="module")
def one_off_host():
    """The example loaded the ``--plugin path.py`` way, nothing installed."""
    return PluginHost(plugins=[str(MODULE_FILE)], entry_points=False)


def test_plugin_file_registers_both_names(one_off_host):
    assert one_off_host.models.entry(NAMES[0]).plugin == str(MODULE_FILE)
    assert one_off_host.objectives.entry(NAMES[1]).plugin == str(MODULE_FILE)
    assert "lenet5" in one_off_host.models  # the built-ins are still there


def test_lenet_300_100_is_784_300_100_10_and_flattens_any_shape(one_off_host):
    spec = one_off_host.models.get("example:lenet-300-100")
    profile = model_profile(spec)
    assert [layer.weight_shape for layer in profile] == [(300, 784), (100, 300), (10, 100)]
    assert profile.weight_numel == 266_200
    model = spec.create(num_classes=5, input_shape=(3, 8, 8), seed=0)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    assert model.fc1.in_features == 192


def test_weight_kib_counts_weight_and_scale_bits(one_off_host):
    objective = one_off_host.objectives.get("example:weight-kib")
    assert isinstance(objective, Objective) and objective.unit == "KiB"
    profile = model_profile(one_off_host.models.get("example:lenet-300-100"))
    bits = {layer.weight_group: torch.tensor(4.0, requires_grad=True) for layer in profile}
    scale = {layer.weight_group: 32 for layer in profile}
    cost = objective.differentiable(profile, bits, scale)
    # (266,200 weights * 4 bits + 3 scales * 32 bits) / (8 * 1024) = 1,064,896 / 8192.
    assert cost.item() == pytest.approx(1_064_896 / 8192)
    cost.backward()
    assert bits["fc1:weight"].grad.item() == pytest.approx(784 * 300 / 8192)


def test_plugin_adds_the_example_hello_command(one_off_host):
    cli = click.Group("mpsearch")
    one_off_host.add_commands(cli)
    result = CliRunner().invoke(cli, ["example-hello"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        "Hello from mpsearch-example-plugin, the example mpsearch plugin."]


class _Throwaway:
    """A plugin object with hook methods, as a test or a notebook would write one."""

    @hookimpl
    def register_models(self, register):
        register("throwaway:tiny", ModelSpec(build=lambda n, s: torch.nn.Linear(4, n),
                                             input_shape=(4,), num_classes=2))

    @hookimpl
    def register_objectives(self, register):
        from mpsearch.objectives import weight_bits_total

        class Bits(Objective):
            unit = "bit"

            def differentiable(self, profile, bits, scale_bits=None):
                return weight_bits_total(profile, bits, scale_bits)

        register("throwaway:bits", Bits())


def test_added_plugin_appears_and_removed_plugin_disappears(host):
    assert "throwaway:tiny" not in host.models
    host.add_plugin(_Throwaway(), "throwaway")
    assert host.models.entry("throwaway:tiny").plugin == "throwaway"
    assert host.objectives.entry("throwaway:bits").plugin == "throwaway"
    assert "throwaway" in host.plugin_names()
    host.remove_plugin("throwaway")
    assert "throwaway:tiny" not in host.models
    assert "throwaway:bits" not in host.objectives
    assert "throwaway" not in host.plugin_names()
    assert "lenet5" in host.models  # rebuilding the registries kept the built-ins
