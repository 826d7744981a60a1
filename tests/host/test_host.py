"""The plugin host: registration, errors, lifecycle notifications, and the hooks' own docs."""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path

import pytest

from mpsearch import hookimpl, hookspecs
from mpsearch.errors import DuplicateNameError, PluginError, UnknownNameError
from mpsearch.host import DEFAULT_PLUGINS, PluginHost
from mpsearch.objectives import Objective

TESTS = Path(__file__).resolve().parents[1]  # the support files: toy and bad plugins


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
    assert len(hooks) == 10
    tests_text = "\n".join(p.read_text() for p in TESTS.rglob("test_*.py"))
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


def test_executors_register_through_their_hook_in_a_strict_registry(host):
    from mpsearch.errors import DuplicateNameError, UnknownNameError
    from mpsearch.execution import Execution, Executor
    from mpsearch.execution.local import LocalExecutor

    class Nowhere(Executor):
        """Runs nothing: a throwaway executor."""

        def run(self, execution: Execution) -> dict[str, float]:
            return {}

    class Incomplete(Executor):
        """No run method."""

    class Plugin:
        def __init__(self, name, obj):
            self.name, self.obj = name, obj

        @hookimpl
        def register_executors(self, register):
            register(self.name, self.obj)

    assert {"local", "ray"} <= set(host.executors.names())
    assert host.executors.get("local") is LocalExecutor
    host.add_plugin(Plugin("nowhere", Nowhere), "nowhere")
    assert host.executors.get("nowhere") is Nowhere and host.executors.entry("nowhere").plugin == "nowhere"
    host.remove_plugin("nowhere")
    with pytest.raises(UnknownNameError, match="unknown executor 'locl'. Did you mean 'local'?"):
        host.executors.get("locl")
    for obj in (Nowhere(), Incomplete):
        with pytest.raises(PluginError, match="expected a subclass of mpsearch.execution.base.Executor"):
            host.add_plugin(Plugin("bad", obj), "bad")
        host.remove_plugin("bad")
    with pytest.raises(DuplicateNameError, match="executor 'local' is registered twice"):
        host.add_plugin(Plugin("local", Nowhere), "twice")
    host.remove_plugin("twice")


def test_a_hook_that_raises_is_a_warning_on_the_trial_and_the_others_still_run(host, recorder):
    class Loud:
        @hookimpl
        def on_trial_start(self, study, trial, params):
            raise ValueError("no logger\nconfigured")

        @hookimpl
        def on_epoch_end(self, study, trial):  # a subset of the arguments, as pluggy allows
            raise SystemExit(3)

        @hookimpl
        def on_trial_end(self, study, trial, state, values, attrs):
            attrs["mine"] = True  # a copy: the trial's record is not the plugin's to change
            raise RuntimeError("disk full")

    host.add_plugin(Loud(), "loud")
    try:
        host.trial_started("s", 1, {"strategy": "uniform"})
        host.epoch_ended("s", 1, 0, {"loss": 1.0})
        record = {"test_accuracy": 0.5}
        warnings = host.trial_ended("s", 1, "COMPLETE", {"accuracy": 0.6}, record)
    finally:
        host.remove_plugin("loud")
    assert warnings == ["plugin 'loud' raised in on_trial_start: ValueError: no logger configured",
                        "plugin 'loud' raised in on_epoch_end: SystemExit: 3",
                        "plugin 'loud' raised in on_trial_end: RuntimeError: disk full"]
    assert record == {"test_accuracy": 0.5, "hook_warnings": warnings}
    assert [e[0] for e in recorder.events] == ["start", "epoch", "end"]  # called all the same
    # the next trial starts with no warnings of its own
    assert host.trial_ended("s", 2, "COMPLETE", {}, {}) == []


def test_a_lifecycle_hook_may_not_be_a_wrapper(host):
    class Wrapping:
        @hookimpl(wrapper=True)
        def on_trial_end(self, study, trial, state, values, attrs):
            return (yield)

    with pytest.raises(PluginError, match="'wrapping' implements on_trial_end as a wrapper"):
        host.add_plugin(Wrapping(), "wrapping")


def test_no_plugin_may_register_the_accuracy_objective(host):
    class Shadow:
        @hookimpl
        def register_objectives(self, register):
            register("accuracy", Halved())

    with pytest.raises(PluginError, match="'shadow' registered the objective name 'accuracy', which is "
                                          "reserved for the validation accuracy"):
        host.add_plugin(Shadow(), "shadow")


def test_a_name_with_a_trailing_newline_is_refused(host):
    class Newline:
        @hookimpl
        def register_objectives(self, register):
            register("halved\n", Halved())

    with pytest.raises(PluginError, match="invalid name"):
        host.add_plugin(Newline(), "newline")


def test_plugin_files_are_pinned_by_their_content(tmp_path):
    from mpsearch.host import pin_plugin

    path = tmp_path / "pinned_plugin.py"
    path.write_text("from pathlib import Path\nPath(__file__).with_suffix('.ran').write_text('1')\n")
    pinned = pin_plugin(str(path))
    assert pinned == f"{path}#sha256={hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert pin_plugin("some.module") == "some.module" and pin_plugin(pinned) == pinned
    host = PluginHost([pinned], entry_points=False)
    assert host.sources == (pinned,) and (tmp_path / "pinned_plugin.ran").read_text() == "1"
    (tmp_path / "pinned_plugin.ran").unlink()
    path.write_text(path.read_text() + "# edited\n")
    with pytest.raises(PluginError, match="pinned_plugin.py' changed since the study recorded it"):
        PluginHost([pinned], entry_points=False)
    assert not (tmp_path / "pinned_plugin.ran").exists()  # refused before any of it ran
    # given unpinned, the edited file is a new module: it runs as it is now
    assert PluginHost([str(path)], entry_points=False).sources == (pin_plugin(str(path)),)
    assert pin_plugin(str(path)) != pinned and (tmp_path / "pinned_plugin.ran").exists()


def test_a_plugin_that_exits_is_an_error(tmp_path):
    path = tmp_path / "exits.py"
    path.write_text("import sys\nsys.exit('bye')\n")
    with pytest.raises(PluginError, match=r"exits.py' called sys.exit\('bye'\) while importing"):
        PluginHost([str(path)], entry_points=False)
