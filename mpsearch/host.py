"""The plugin host: loads built-in, installed and one-off plugins into typed registries.

Order of loading: the built-ins in :data:`DEFAULT_PLUGINS` (ordinary hook
implementations under ``plugins/``), then every entry point of the group
``mpsearch`` of installed distributions, then the modules named with
``--plugin`` (a dotted module name or a path to a ``.py`` file). The rest of the
code reaches hooks only through the methods of :class:`PluginHost`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from mpsearch import hookspecs
from mpsearch.errors import MpsearchError, PluginError
from mpsearch.registry import Registry

ENTRY_POINT_GROUP = "mpsearch"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "mpsearch.plugins.strategy_uniform",
    "mpsearch.plugins.strategy_random",
    "mpsearch.plugins.strategy_bitpruning",
    "mpsearch.plugins.strategy_fracbits",
    "mpsearch.plugins.strategy_smol",
    "mpsearch.plugins.strategy_alq",
    "mpsearch.plugins.strategy_adapt",
    "mpsearch.plugins.strategy_rl",
    "mpsearch.plugins.strategy_hawq",
    "mpsearch.plugins.objective_bitops",
    "mpsearch.plugins.objective_size",
    "mpsearch.plugins.objective_memory",
    "mpsearch.plugins.objective_footprint",
    "mpsearch.plugins.objective_adapt",
    "mpsearch.plugins.objective_latency",
    "mpsearch.plugins.objective_energy",
    "mpsearch.plugins.backend_generic",
    "mpsearch.plugins.backend_stripes",
    "mpsearch.plugins.backend_loom",
    "mpsearch.plugins.backend_bitfusion",
    "mpsearch.plugins.backend_proteus",
    "mpsearch.plugins.backend_gpu",
    "mpsearch.plugins.backend_cpu_int8",
    "mpsearch.plugins.model_lenet5",
    "mpsearch.plugins.model_resnet20",
    "mpsearch.plugins.model_torchvision",
    "mpsearch.plugins.dataset_mnist",
    "mpsearch.plugins.dataset_cifar10",
    "mpsearch.plugins.dataset_imagefolder",
    "mpsearch.plugins.dataset_mnist_mini",
)


def _is_strategy(obj: Any) -> bool:
    from mpsearch.strategy import Strategy

    return isinstance(obj, type) and issubclass(obj, Strategy)


def _instance_of(dotted: str) -> Callable[[Any], bool]:
    module, _, name = dotted.rpartition(".")

    def check(obj: Any) -> bool:
        return isinstance(obj, getattr(importlib.import_module(module), name))

    return check


_KINDS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    # attribute: (kind in messages, check, what was expected)
    "strategies": ("strategy", _is_strategy, "a subclass of mpsearch.strategy.Strategy"),
    "objectives": ("objective", _instance_of("mpsearch.objectives.Objective"),
                   "an instance of mpsearch.objectives.Objective"),
    "backends": ("backend", _instance_of("mpsearch.backends.Backend"),
                 "an instance of mpsearch.backends.Backend"),
    "models": ("model", _instance_of("mpsearch.models.ModelSpec"),
               "an instance of mpsearch.models.ModelSpec"),
    "datasets": ("dataset", _instance_of("mpsearch.data.DatasetSource"),
                 "an instance of mpsearch.data.DatasetSource"),
}


class PluginHost:
    """Holds the pluggy manager and one registry per kind of plugin.

    Args:
        plugins: extra plugin modules, as dotted names or ``.py`` paths (``--plugin``).
        builtins: load :data:`DEFAULT_PLUGINS` (tests turn this off to start empty).
        entry_points: load installed distributions' ``mpsearch`` entry points.

    Raises:
        PluginError: a plugin failed to import, implements an unknown hook
            (``check_pending``) or registered something invalid.
    """

    def __init__(self, plugins: Iterable[str] = (), *, builtins: bool = True,
                 entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strategies: Registry = Registry(*_KINDS["strategies"])
        self.objectives: Registry = Registry(*_KINDS["objectives"])
        self.backends: Registry = Registry(*_KINDS["backends"])
        self.models: Registry = Registry(*_KINDS["models"])
        self.datasets: Registry = Registry(*_KINDS["datasets"])
        if builtins:
            for dotted in DEFAULT_PLUGINS:
                self._register(_import(dotted, origin="built-in"), dotted)
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = ep.dist.name if ep.dist is not None else "?"
                origin = f"entry point {ep.name!r} of {dist}"
                try:
                    module = ep.load()
                except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's
                    raise PluginError(f"plugin {origin} failed to import: "
                                      f"{type(exc).__name__}: {exc}") from exc
                self._register(module, f"{dist} ({ep.value})")
        for spec in plugins:
            module, name = _import_user_plugin(spec)
            self._register(module, name)
        self.reload()

    # -- plugins ---------------------------------------------------------------------

    def _register(self, module: object, name: str) -> None:
        if self.pm.has_plugin(name) or self.pm.is_registered(module):
            return
        try:
            self.pm.register(module, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc

    def add_plugin(self, plugin: object, name: str) -> None:
        """Register a plugin object or module after loading (tests, notebooks)."""
        self._register(plugin, name)
        self.reload()

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin by the name it was registered under."""
        self.pm.unregister(name=name)
        self.reload()

    def plugin_names(self) -> list[str]:
        return [name for name, _ in self.pm.list_name_plugin()]

    def reload(self) -> None:
        """Check every hook implementation and rebuild the registries from scratch."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {exc.plugin!r} implements a hook that does not exist: "
                              f"{exc}. Hooks: {', '.join(_hook_names())}.") from exc
        for attr in _KINDS:
            registry: Registry = getattr(self, attr)
            registry.clear()
            hook = getattr(self.pm.hook, f"register_{attr}")
            for impl in hook.get_hookimpls():
                def register(name: str, obj: Any, *, _r=registry, _p=impl.plugin_name) -> None:
                    _r.add(name, obj, _p)

                try:
                    impl.function(register=register)
                except MpsearchError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in register_{attr}: "
                                      f"{type(exc).__name__}: {exc}") from exc

    # -- typed wrappers around pm.hook -----------------------------------------------

    def add_commands(self, cli: Any) -> None:
        """Let plugins add subcommands to the ``mpsearch`` group."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"plugin {impl.plugin_name!r} failed in register_commands: "
                                  f"{type(exc).__name__}: {exc}") from exc
            replaced = [n for n, c in before.items() if cli.commands.get(n) is not c]
            if replaced:
                raise PluginError(f"plugin {impl.plugin_name!r} registered command(s) "
                                  f"{', '.join(replaced)} that already exist; rename them.")

    def trial_started(self, study: str, trial: int, params: Mapping[str, Any]) -> None:
        self.pm.hook.on_trial_start(study=study, trial=trial, params=dict(params))

    def epoch_ended(self, study: str, trial: int, epoch: int, metrics: Mapping[str, float]) -> None:
        self.pm.hook.on_epoch_end(study=study, trial=trial, epoch=epoch, metrics=dict(metrics))

    def trial_ended(self, study: str, trial: int, state: str, values: Mapping[str, float],
                    attrs: Mapping[str, Any]) -> None:
        self.pm.hook.on_trial_end(study=study, trial=trial, state=state, values=dict(values),
                                  attrs=dict(attrs))


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith(("register_", "on_")))


def _import(dotted: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"{origin} plugin {dotted!r} failed to import: "
                          f"{type(exc).__name__}: {exc}") from exc


def _import_user_plugin(spec: str) -> tuple[ModuleType, str]:
    """Import a ``--plugin`` given as a ``.py`` path or a dotted module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist.")
        name = f"mpsearch_user_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        if name in sys.modules:
            return sys.modules[name], str(path)
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            del sys.modules[name]
            raise PluginError(f"plugin file {spec!r} failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc
        return module, str(path)
    return _import(spec, origin="--plugin"), spec
