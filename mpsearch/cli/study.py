"""``mpsearch study``: create and run studies; list, show, export and plot them."""

from __future__ import annotations

import os
import shlex
import sys
import tomllib
from pathlib import Path

import click

from mpsearch.errors import MpsearchError
from mpsearch.execution.heartbeat import DEFAULT_GRACE, DEFAULT_INTERVAL
from mpsearch.spec import SpecError, load_spec
from mpsearch.storage import DEFAULT_STORAGE, STORAGE_ENV

STORAGE_HELP = (f"SQLAlchemy URL of the study storage (default: ${STORAGE_ENV}, else the spec's, "
                f"else {DEFAULT_STORAGE}).")
TRUST_FLAG = "--trust-spec-plugins"


@click.group()
def study() -> None:
    """Create, run and inspect studies (Optuna studies in a database)."""


def _run_options(fn):
    fn = click.option("--grace", type=click.FloatRange(0, min_open=True), default=DEFAULT_GRACE,
                      show_default=True, metavar="SECONDS",
                      help="A RUNNING trial whose heartbeat is older than this has lost its "
                           "driver: it is failed and re-queued.")(fn)
    fn = click.option("--heartbeat", type=click.FloatRange(0, min_open=True),
                      default=DEFAULT_INTERVAL, show_default=True, metavar="SECONDS",
                      help="Seconds between this driver's heartbeats for the trials it runs.")(fn)
    fn = click.option("--quiet", is_flag=True, help="No live progress display.")(fn)
    fn = click.option("--address", default=None, metavar="HOST:PORT",
                      help="Run on an existing Ray cluster ('auto' to find a local one).")(fn)
    fn = click.option("--executor", default=None, metavar="NAME",
                      help="Where trials run: 'ray' (Ray Tune trials), 'local' (in this process, "
                           "one after another) or an executor a plugin registered "
                           "(default: the spec's).")(fn)
    fn = click.option("--n-trials", type=click.IntRange(1), default=None,
                      help="Run this many more trials (default: up to the spec's n_trials).")(fn)
    return fn


@study.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--storage", default=None, envvar=STORAGE_ENV, show_envvar=True, help=STORAGE_HELP)
@click.option("--no-run", is_flag=True, help="Only create the study.")
@_run_options
@click.pass_obj
def create(state, spec_file: str, storage: str | None, no_run: bool, n_trials: int | None,
           executor: str | None, address: str | None, quiet: bool, heartbeat: float,
           grace: float) -> None:
    """Create the study a TOML SPEC describes, then run it and print its Pareto front."""
    from dataclasses import replace

    from mpsearch.host import PluginHost
    from mpsearch.storage import shown_url
    from mpsearch.study import create_study

    extra = _spec_plugins(Path(spec_file))
    host = PluginHost(tuple(state.plugins) + extra)
    _check_executor(host, executor)
    spec = load_spec(spec_file, host)
    # the study records every plugin it was checked with, each file with its sha256
    spec = replace(spec, plugins=host.sources)
    url = state.storage(storage or spec.study.storage or DEFAULT_STORAGE)
    if not no_run:
        _check_data(spec, host, address)  # before anything is written
    spec = _check_weights(spec, host, address)
    created = create_study(spec, url, host)
    click.echo(f"created study {spec.name!r} in {shown_url(url)} "
               f"({spec.study.n_trials} trials of {', '.join(s.name for s in spec.strategies)})")
    if not no_run:
        _run(host, created.study_name, url, n_trials, executor, address, quiet, heartbeat, grace,
             trusted=bool(extra))


@study.command()
@click.argument("name")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, envvar=STORAGE_ENV,
              show_envvar=True, help="SQLAlchemy URL.")
@click.option(TRUST_FLAG, "trust", is_flag=True,
              help="Also load the plugin files the study's spec lists, if each still has the "
                   "sha256 the study recorded (by default only installed plugins and --plugin "
                   "files are loaded).")
@_run_options
@click.pass_obj
def run(state, name: str, storage: str, trust: bool, n_trials: int | None, executor: str | None,
        address: str | None, quiet: bool, heartbeat: float, grace: float) -> None:
    """Continue study NAME: more trials, or the rest after an interruption."""
    from mpsearch.host import PluginHost
    from mpsearch.storage import SPEC_ATTR, load_study
    from mpsearch.study import stored_spec

    found = load_study(state.storage(storage), name)
    listed = tuple((found.user_attrs.get(SPEC_ATTR) or {}).get("plugins", ()))
    if trust:
        _check_pinned(name, listed)
    host = PluginHost(tuple(state.plugins) + (listed if trust else ()))
    _check_executor(host, executor)
    try:
        spec = stored_spec(found, host)
    except MpsearchError as exc:
        if trust or not listed:
            raise
        from mpsearch.host import PIN

        shown = ", ".join(repr(p.partition(PIN)[0]) for p in listed)
        raise MpsearchError(f"{exc} The study's spec lists plugin(s) {shown}, "
                            f"which are not loaded unless you pass {TRUST_FLAG} (each is checked "
                            f"against the sha256 the study recorded) or give them with --plugin.") from None
    _check_data(spec, host, address)
    from mpsearch.float_start import check_unchanged

    check_unchanged(spec)
    _run(host, name, storage, n_trials, executor, address, quiet, heartbeat, grace, trusted=trust)


def _check_executor(host, executor: str | None) -> None:
    """Refuse an unknown ``--executor`` in one line, before anything is written."""
    from mpsearch.errors import UnknownNameError

    if executor is not None:
        try:
            host.executors.entry(executor)
        except UnknownNameError as exc:
            raise MpsearchError(f"--executor: {exc}") from None


def _check_pinned(name: str, listed: tuple) -> None:
    """Refuse a stored plugin file without the sha256 it had when the study was created."""
    from mpsearch.host import PIN

    for plugin in listed:
        if not isinstance(plugin, str) or (PIN not in plugin and (plugin.endswith(".py")
                                                                  or "/" in plugin)):
            raise MpsearchError(f"study {name!r} lists the plugin file {plugin!r} without the sha256 "
                                f"it had when the study was created, so {TRUST_FLAG} cannot check "
                                f"it; read the file, then give it with --plugin.")


def _run(host, name: str, url: str, n_trials, executor, address, quiet: bool, heartbeat: float,
         grace: float, trusted: bool = False) -> None:
    import signal

    from mpsearch.storage import password_of
    from mpsearch.study import run_study

    def terminated(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)  # a SIGTERM stops the driver as Ctrl-C does
    try:
        result = run_study(name, url, host, n_trials=n_trials, executor=executor, address=address,
                           progress=not quiet, heartbeat=heartbeat, grace=grace)
    except KeyboardInterrupt as stop:
        click.echo(("\n" if sys.stderr.isatty() else "")  # ends a live progress line
                   + f"{'terminated' if isinstance(stop, _Terminated) else 'interrupted'} "
                   f"(completed trials are kept, trials in progress are re-queued); "
                   + ("with the storage password in PGPASSWORD or ~/.pgpass, " if password_of(url)
                      and os.environ.get(STORAGE_ENV) != url else "")
                   + f"continue the study with: {_continue_command(name, url, executor, trusted)}",
                   err=True)
        sys.exit(143 if isinstance(stop, _Terminated) else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    from mpsearch.cli.study_report import print_front

    click.echo("")
    print_front(result, host=host)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so the driver re-queues its trials at once."""


def _continue_command(name: str, url: str, executor: str | None, trusted: bool) -> str:
    """The command that continues the study as this run did: its plugins, executor, storage
    (without a password: the driver reads it from PGPASSWORD or ~/.pgpass; none when
    $MPSEARCH_STORAGE gave it)."""
    from mpsearch.storage import url_without_password

    plugins = [a for p in click.get_current_context().obj.plugins for a in ("--plugin", p)]
    storage = [] if os.environ.get(STORAGE_ENV) == url else ["--storage", url_without_password(url)]
    return shlex.join(["mpsearch", *plugins, "study", "run", name, *storage]
                      + ([TRUST_FLAG] if trusted else [])
                      + (["--executor", executor] if executor else []))


def _check_data(spec, host, address: str | None) -> None:
    """Refuse a dataset that is not where the spec says, when trials will run on this machine.

    On an existing cluster (``--address``) the workers may see other files than
    this driver, so a missing dataset fails each trial there instead (with the message).
    """
    if address is None:
        from mpsearch.data import check_data

        check_data(spec, host)


def _check_weights(spec, host, address: str | None):
    """The spec with its ``[model] weights`` checked and their sha256 stored, before anything is written.

    On an existing cluster (``--address``) this machine may not hold the dataset: the
    file is then only read, and its fit to the model is checked when the float start is made.
    """
    if spec.model.weights is None:
        return spec
    from dataclasses import replace

    from mpsearch.float_start import check_weights
    from mpsearch.weights import WeightsError, read_state_dict, sha256_file

    if address is None:
        digest = check_weights(spec, host)
    else:
        read_state_dict(spec.model.weights)
        digest = sha256_file(spec.model.weights)
        if spec.model.weights_sha256 not in (None, digest):
            raise WeightsError(f"weights file {spec.model.weights!r} has sha256 {digest}, not the "
                               f"{spec.model.weights_sha256} the spec pins.")
    return replace(spec, model=replace(spec.model, weights_sha256=digest))


def _spec_plugins(path: Path) -> tuple[str, ...]:
    """The spec's ``plugins`` list, .py paths made absolute relative to the spec's folder."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ()  # load_spec reports it properly
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SpecError(f"{path}: plugins must be a list of module names or .py paths.")
    return tuple(str((path.parent / p).resolve()) if p.endswith(".py") else p for p in plugins)


def _add_report_commands() -> None:
    from mpsearch.cli.study_report import COMMANDS

    for command in COMMANDS:
        study.add_command(command)


_add_report_commands()

__all__ = ["MpsearchError", "study"]
