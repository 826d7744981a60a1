"""The plugin host: loads built-in, installed and one-off plugins into typed registries.

Order of loading: the built-ins in :data:`DEFAULT_PLUGINS` (ordinary hook
implementations under ``plugins/``), then every entry point of the group
``mpsearch`` of installed distributions, then the modules named with
``--plugin`` (a dotted module name or a path to a ``.py`` file). The rest of the
code reaches hooks only through the methods of :class:`PluginHost`.

A plugin file is pinned by its content: :attr:`PluginHost.sources` names each one
as ``/absolute/path.py#sha256=<hex>``, the form a study stores and its trials load.
Given in that form, a file whose content changed is refused, and the bytes that
were hashed are the bytes that run.

Lifecycle hooks never break a trial: an implementation that raises is recorded as
a warning naming its plugin (see :meth:`PluginHost.trial_ended`), and the others
are still called.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from mpsearch import hookspecs
from mpsearch.errors import MpsearchError, PluginError
from mpsearch.record import ATTR_HOOK_WARNINGS as HOOK_WARNINGS
from mpsearch.registry import Registry

ENTRY_POINT_GROUP = "mpsearch"
PIN = "#sha256="  # a plugin file pinned by its content: /path/to/plugin.py#sha256=<hex>
LIFECYCLE_HOOKS = ("on_trial_start", "on_epoch_end", "on_trial_end")
# objective names a plugin may not register: what every study already records
RESERVED_OBJECTIVES = {"accuracy": "the validation accuracy every trial records"}

DEFAULT_PLUGINS: tuple[str, ...] = (
    "mpsearch.plugins.strategy_uniform",
    "mpsearch.plugins.strategy_random",
    "mpsearch.plugins.strategy_bitpruning",
    "mpsearch.plugins.strategy_fracbits",
    "mpsearch.plugins.smol.strategy",
    "mpsearch.plugins.alq.strategy",
    "mpsearch.plugins.adapt.strategy",
    "mpsearch.plugins.rl.strategy",
    "mpsearch.plugins.strategy_hawq",
    "mpsearch.plugins.objective_bitops",
    "mpsearch.plugins.objective_size",
    "mpsearch.plugins.objective_memory",
    "mpsearch.plugins.objective_footprint",
    "mpsearch.plugins.adapt.objective",
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
    "mpsearch.execution.builtin",
)


def _is_strategy(obj: Any) -> bool:
    from mpsearch.strategy import Strategy

    return isinstance(obj, type) and issubclass(obj, Strategy)


def _is_executor(obj: Any) -> bool:
    from mpsearch.execution.base import Executor

    return isinstance(obj, type) and issubclass(obj, Executor) and not getattr(
        obj, "__abstractmethods__", None)


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
    "executors": ("executor", _is_executor,
                  "a subclass of mpsearch.execution.base.Executor that implements run"),
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
        self.objectives: Registry = Registry(*_KINDS["objectives"], reserved=RESERVED_OBJECTIVES)
        self.backends: Registry = Registry(*_KINDS["backends"])
        self.models: Registry = Registry(*_KINDS["models"])
        self.datasets: Registry = Registry(*_KINDS["datasets"])
        self.executors: Registry = Registry(*_KINDS["executors"])
        self.sources: tuple[str, ...] = ()  # the user plugins, as trials load them (pinned files)
        self._hook_warnings: dict[tuple[str, int], list[str]] = {}
        if builtins:
            for dotted in DEFAULT_PLUGINS:
                self._register(_import(dotted, origin="built-in"), dotted)
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = ep.dist.name if ep.dist is not None else "?"
                origin = f"entry point {ep.name!r} of {dist}"
                try:
                    module = ep.load()
                except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure is the plugin's
                    raise PluginError(f"plugin {origin} {_failed(exc, 'to import')}") from exc
                self._register(module, f"{dist} ({ep.value})")
        sources: dict[str, None] = {}
        for spec in plugins:
            module, name, source = _import_user_plugin(spec)
            self._register(module, name)
            sources[source] = None
        self.sources = tuple(sources)
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
        for hook in LIFECYCLE_HOOKS:  # called one by one (see _notify): no wrappers
            for impl in getattr(self.pm.hook, hook).get_hookimpls():
                if impl.hookwrapper or impl.wrapper:
                    raise PluginError(f"plugin {impl.plugin_name!r} implements {hook} as a wrapper; "
                                      f"lifecycle hooks are plain notifications.")
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
                except (Exception, SystemExit) as exc:  # noqa: BLE001
                    raise PluginError(f"plugin {impl.plugin_name!r} "
                                      f"{_failed(exc, f'in register_{attr}')}") from exc
        self._register_cost_objectives()

    def _register_cost_objectives(self) -> None:
        """Every backend's ``latency@<name>`` and ``energy@<name>``, in its plugin's name.

        The host registers them (:func:`mpsearch.backend_objectives.cost_objectives`), so
        no backend plugin repeats the same two registrations.
        """
        from mpsearch.backend_objectives import cost_objectives

        for entry in self.backends.entries():
            for name, objective in cost_objectives(entry.name, entry.obj).items():
                self.objectives.add(name, objective, entry.plugin)

    # -- typed wrappers around pm.hook -----------------------------------------------

    def add_commands(self, cli: Any) -> None:
        """Let plugins add subcommands to the ``mpsearch`` group."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = dict(cli.commands)
            try:
                impl.function(cli=cli)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                raise PluginError(f"plugin {impl.plugin_name!r} "
                                  f"{_failed(exc, 'in register_commands')}") from exc
            replaced = [n for n, c in before.items() if cli.commands.get(n) is not c]
            if replaced:
                raise PluginError(f"plugin {impl.plugin_name!r} registered command(s) "
                                  f"{', '.join(replaced)} that already exist; rename them.")

    def trial_started(self, study: str, trial: int, params: Mapping[str, Any]) -> None:
        self._hook_warnings[(study, trial)] = []
        self._notify("on_trial_start", (study, trial), study=study, trial=trial, params=dict(params))

    def epoch_ended(self, study: str, trial: int, epoch: int, metrics: Mapping[str, float]) -> None:
        self._notify("on_epoch_end", (study, trial), study=study, trial=trial, epoch=epoch,
                     metrics=dict(metrics))

    def trial_ended(self, study: str, trial: int, state: str, values: Mapping[str, float],
                    attrs: Mapping[str, Any]) -> list[str]:
        """Call ``on_trial_end``; return the warnings of the trial's hooks that raised.

        When any raised (in this hook or an earlier one of the trial), the warnings are
        also added to ``attrs`` under :data:`HOOK_WARNINGS`, if it is a mutable
        mapping: the trial's record, so the warning is stored with the trial.
        """
        key = (study, trial)
        self._notify("on_trial_end", key, study=study, trial=trial, state=state,
                     values=dict(values), attrs=dict(attrs))
        warnings = self._hook_warnings.pop(key, [])
        if warnings and isinstance(attrs, MutableMapping):
            attrs[HOOK_WARNINGS] = list(warnings)
        return warnings

    def _notify(self, hook: str, key: tuple[str, int], **kwargs: Any) -> None:
        """Call every implementation of a lifecycle hook, each on its own.

        One that raises (or calls ``sys.exit``) is recorded against the trial as a
        one-line warning naming its plugin; the trial and the other plugins go on.
        """
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):  # pluggy's order
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - an observer never fails a trial
                text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                self._hook_warnings.setdefault(key, []).append(
                    f"plugin {impl.plugin_name!r} raised in {hook}: {text}")


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith(("register_", "on_")))


def _failed(exc: BaseException, where: str) -> str:
    """``failed to import: ValueError: ...`` or ``called sys.exit(3) ...``, on one line."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) {where.replace('to import', 'while importing')}."
    return " ".join(f"failed {where}: {type(exc).__name__}: {exc}".split())


def _import(dotted: str, origin: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise PluginError(f"{origin} plugin {dotted!r} {_failed(exc, 'to import')}") from exc


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pin_plugin(spec: str) -> str:
    """A plugin as a study stores it: a ``.py`` path made absolute with ``#sha256=`` of its
    content (an already pinned one is checked); a dotted module name as it is.

    Raises:
        PluginError: the file is missing, or differs from the digest it is pinned to.
    """
    path, expected = _split_pin(spec)
    if path is None:
        return spec
    data = _read_plugin_file(spec, path)
    digest = hashlib.sha256(data).hexdigest()
    _check_digest(spec, path, digest, expected)
    return f"{path.resolve()}{PIN}{digest}"


def _split_pin(spec: str) -> tuple[Path | None, str | None]:
    """``(path, expected sha256)`` of a plugin file, or ``(None, None)`` for a module name."""
    text, pin, expected = spec.partition(PIN)
    path = Path(text)
    if pin or text.endswith(".py") or path.exists():
        return path, (expected.lower() if pin else None)
    return None, None


def _read_plugin_file(spec: str, path: Path) -> bytes:
    if not path.is_file():
        raise PluginError(f"plugin file {str(path)!r} does not exist.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PluginError(f"plugin file {str(path)!r} is not readable: {exc.strerror or exc}.") from None


def _check_digest(spec: str, path: Path, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise PluginError(f"plugin file {str(path)!r} changed since the study recorded it (sha256 "
                          f"{digest[:16]}..., recorded {expected[:16]}...); it is not loaded. Read "
                          f"it, then give it with --plugin to run it as it is now.")


def _import_user_plugin(spec: str) -> tuple[ModuleType, str, str]:
    """Import a ``--plugin`` given as a ``.py`` path (pinned or not) or a dotted module name.

    Returns:
        The module, the name it is registered under, and its source for trials
        (``/absolute/path.py#sha256=<hex>`` for a file).
    """
    path, expected = _split_pin(spec)
    if path is None:
        return _import(spec, origin="--plugin"), spec, spec
    data = _read_plugin_file(spec, path)
    digest = hashlib.sha256(data).hexdigest()
    _check_digest(spec, path, digest, expected)
    resolved = path.resolve()
    source = f"{resolved}{PIN}{digest}"
    shown = str(path) if expected is None else str(resolved)
    # keyed by place and content: an edited file is a new module, never a stale one
    name = (f"mpsearch_user_plugin_{_identifier(path.stem)}_"
            f"{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}_{digest[:12]}")
    if name in sys.modules:
        return sys.modules[name], shown, source
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    assert module_spec is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:  # run the very bytes that were hashed
        exec(compile(data, str(resolved), "exec"), module.__dict__)  # noqa: S102 - a plugin is code
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        del sys.modules[name]
        raise PluginError(f"plugin file {str(path)!r} {_failed(exc, 'to import')}") from exc
    return module, shown, source


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
