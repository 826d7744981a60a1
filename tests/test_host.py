"""The plugin host: registration, errors, lifecycle notifications, and the hooks' own docs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from mpsearch import hookimpl, hookspecs
from mpsearch.errors import DuplicateNameError, PluginError, UnknownNameError
from mpsearch.host import DEFAULT_PLUGINS, PluginHost
from mpsearch.objectives import Objective

TESTS = Path(__file__).parent


class Halved(Objective):
    """Half the bits of one group, a throwaway objective."""

    unit = "bits"

    def differentiable(self, profile, bits, scale_bits=None):
        return bits[profile.layers[0].weight_group].sum() / 2


class Recorder:
    """A throwaway plugin: registers an objective and records lifecycle events."""

    def __init__(self):
        self.events = []

    @hookimpl
    def register_objectives(self, register):
        register("halved", Halved())

    @hookimpl
    def on_trial_start(self, study, trial, params):
        self.events.append(("start", study, trial, dict(params)))

    @hookimpl
    def on_epoch_end(self, study, trial, epoch, metrics):
        self.events.append(("epoch", study, trial, epoch, dict(metrics)))

    @hookimpl
    def on_trial_end(self, study, trial, state, values, attrs):
        self.events.append(("end", study, trial, state, dict(values), dict(attrs)))


@pytest.fixture
def recorder(host):
    plugin = Recorder()
    host.add_plugin(plugin, "recorder")
    yield plugin
    host.remove_plugin("recorder")
    assert "halved" not in host.objectives


def test_builtins_register_with_their_module_names(host):
    assert set(DEFAULT_PLUGINS) <= set(host.plugin_names())
    assert host.objectives.entry("bitops").plugin == "mpsearch.plugins.objective_bitops"
    assert host.backends.entry("generic").plugin == "mpsearch.plugins.backend_generic"
    assert {"bitops", "size", "memory", "memory@128"} <= set(host.objectives)


def test_a_throwaway_plugin_registers_and_observes(host, recorder):
    assert host.objectives.entry("halved").plugin == "recorder"
    host.trial_started("s", 3, {"strategy": "uniform"})
    host.epoch_ended("s", 3, 0, {"loss": 1.5})
    host.trial_ended("s", 3, "COMPLETE", {"accuracy": 0.9}, {"test_accuracy": 0.89})
    assert recorder.events == [
        ("start", "s", 3, {"strategy": "uniform"}),
        ("epoch", "s", 3, 0, {"loss": 1.5}),
        ("end", "s", 3, "COMPLETE", {"accuracy": 0.9}, {"test_accuracy": 0.89}),
    ]


def test_duplicate_names_name_both_plugins(host):
    class Clash:
        @hookimpl
        def register_objectives(self, register):
            register("bitops", Halved())

    with pytest.raises(DuplicateNameError, match="'bitops' is registered twice: by "
                                                 "'mpsearch.plugins.objective_bitops' and by 'clash'"):
        host.add_plugin(Clash(), "clash")


def test_unknown_names_suggest_close_matches(host):
    with pytest.raises(UnknownNameError) as info:
        host.objectives.get("bitop")
    message = str(info.value)
    assert "unknown objective 'bitop'. Did you mean 'bitops'?" in message
    available = message.split("Available: ")[1].rstrip(".").split(", ")
    assert available == sorted(available) and {"bitops", "size", "memory"} <= set(available)
    assert "\n" not in message


@pytest.mark.parametrize("name, obj, message", [
    ("fine", object(), "expected an instance of mpsearch.objectives.Objective"),
    ("has space", Halved(), "invalid name"),
    ("", Halved(), "invalid name"),
])
def test_registrations_are_type_and_name_checked(host, name, obj, message):
    class Bad:
        @hookimpl
        def register_objectives(self, register):
            register(name, obj)

    with pytest.raises(PluginError, match=message):
        host.add_plugin(Bad(), "bad")


def test_a_misspelled_hook_fails_at_load(host):
    class Misspelled:
        @hookimpl
        def register_objective(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError, match="implements a hook that does not exist"):
        host.add_plugin(Misspelled(), "misspelled")


def test_a_plugin_that_raises_while_registering(host):
    class Broken:
        @hookimpl
        def register_backends(self, register):
            raise RuntimeError("no accelerator here")

    with pytest.raises(PluginError, match="'broken' failed in register_backends: RuntimeError"):
        host.add_plugin(Broken(), "broken")


def test_plugin_files(tmp_path):
    good = tmp_path / "good_plugin.py"
    good.write_text(
        "from mpsearch import hookimpl\n"
        "from mpsearch.models import ModelSpec\n"
        "import torch.nn as nn\n"
        "@hookimpl\n"
        "def register_models(register):\n"
        "    register('mine', ModelSpec(build=lambda c, s: nn.Linear(4, c), input_shape=(4,)))\n")
    host = PluginHost([str(good)], entry_points=False)
    assert host.models.entry("mine").plugin == str(good)
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match="failed to import: ModuleNotFoundError"):
        PluginHost([str(broken)], entry_points=False)
    with pytest.raises(PluginError, match="does not exist"):
        PluginHost([str(tmp_path / "missing.py")], entry_points=False)
    with pytest.raises(PluginError, match="failed to import"):
        PluginHost(["no_such_module_here"], entry_points=False)


def test_every_hook_is_documented_and_tested():
    hooks = [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith(("register_", "on_"))]
    assert len(hooks) == 9
    tests_text = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    for name in hooks:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"hook {name} has no docstring"
        assert re.search(rf"\b{name}\b", tests_text), f"hook {name} is not exercised by any test"


def test_strategies_and_datasets_register_through_their_hooks(host):
    from mpsearch.data import DatasetSource
    from mpsearch.strategy import Strategy

    class Constant(Strategy):
        """Always the same widths: a throwaway strategy."""

        def suggest(self, trial, space):
            return {}

        def search(self, context, params):
            return None

    class NoData(DatasetSource):
        """Nothing at all: a throwaway dataset."""

        def load(self, root, split, **options):
            raise NotImplementedError

    class Both:
        @hookimpl
        def register_strategies(self, register):
            register("constant", Constant)

        @hookimpl
        def register_datasets(self, register):
            register("nothing", NoData())

    host.add_plugin(Both(), "both")
    assert host.strategies.get("constant") is Constant
    assert host.strategies.entry("constant").description == "Always the same widths: a throwaway strategy."
    assert host.datasets.entry("nothing").plugin == "both"
    host.remove_plugin("both")

    class NotAStrategy:
        @hookimpl
        def register_strategies(self, register):
            register("plain", Constant())  # an instance, not the class

    with pytest.raises(PluginError, match="expected a subclass of mpsearch.strategy.Strategy"):
        host.add_plugin(NotAStrategy(), "not-a-strategy")
