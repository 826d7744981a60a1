"""``mpsearch study``: create and run studies; list, show, export and plot them."""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path

import click

from mpsearch.errors import MpsearchError
from mpsearch.heartbeat import DEFAULT_GRACE, DEFAULT_INTERVAL
from mpsearch.spec import EXECUTORS, SpecError, load_spec
from mpsearch.storage import DEFAULT_STORAGE

STORAGE_HELP = f"SQLAlchemy URL of the study storage (default: the spec's, else {DEFAULT_STORAGE})."


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
    fn = click.option("--executor", type=click.Choice(EXECUTORS), default=None,
                      help="Ray Tune trials, or in this process one after another "
                           "(default: the spec's).")(fn)
    fn = click.option("--n-trials", type=click.IntRange(1), default=None,
                      help="Run this many more trials (default: up to the spec's n_trials).")(fn)
    return fn


@study.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--storage", default=None, help=STORAGE_HELP)
@click.option("--no-run", is_flag=True, help="Only create the study.")
@_run_options
@click.pass_obj
def create(state, spec_file: str, storage: str | None, no_run: bool, n_trials: int | None,
           executor: str | None, address: str | None, quiet: bool, heartbeat: float,
           grace: float) -> None:
    """Create the study a TOML SPEC describes, then run it and print its Pareto front."""
    from mpsearch.host import PluginHost
    from mpsearch.study import create_study

    extra = _spec_plugins(Path(spec_file))
    host = PluginHost(tuple(state.plugins) + extra)
    spec = load_spec(spec_file, host)
    if extra:  # store them absolute, so `study run` finds them from anywhere
        from dataclasses import replace

        spec = replace(spec, plugins=tuple(dict.fromkeys(extra)))
    url = storage or spec.study.storage or DEFAULT_STORAGE
    if not no_run:
        _check_data(spec, host, address)  # before anything is written
    spec = _check_weights(spec, host, address)
    created = create_study(spec, url, host)
    click.echo(f"created study {spec.name!r} in {url} "
               f"({spec.study.n_trials} trials of {', '.join(s.name for s in spec.strategies)})")
    if not no_run:
        _run(host, created.study_name, url, n_trials, executor, address, quiet, heartbeat, grace)


@study.command()
@click.argument("name")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, help="SQLAlchemy URL.")
@_run_options
@click.pass_obj
def run(state, name: str, storage: str, n_trials: int | None, executor: str | None,
        address: str | None, quiet: bool, heartbeat: float, grace: float) -> None:
    """Continue study NAME: more trials, or the rest after an interruption."""
    from mpsearch.host import PluginHost
    from mpsearch.storage import load_study

    found = load_study(storage, name)
    plugins = tuple(found.user_attrs.get("mpsearch_spec", {}).get("plugins", ()))
    host = PluginHost(tuple(state.plugins) + plugins)
    from mpsearch.study import stored_spec

    spec = stored_spec(found, host)
    _check_data(spec, host, address)
    from mpsearch.float_start import check_unchanged

    check_unchanged(spec)
    _run(host, name, storage, n_trials, executor, address, quiet, heartbeat, grace)


def _run(host, name: str, url: str, n_trials, executor, address, quiet: bool, heartbeat: float,
         grace: float) -> None:
    from mpsearch.study import run_study

    try:
        result = run_study(name, url, host, n_trials=n_trials, executor=executor, address=address,
                           progress=not quiet, heartbeat=heartbeat, grace=grace)
    except KeyboardInterrupt:
        # the same plugins and executor as this run, so the command runs as given
        plugins = [a for p in click.get_current_context().obj.plugins for a in ("--plugin", p)]
        command = shlex.join(["mpsearch", *plugins, "study", "run", name, "--storage", url]
                             + (["--executor", executor] if executor else []))
        click.echo(("\n" if sys.stderr.isatty() else "")  # ends a live progress line
                   + f"interrupted (completed trials are kept, trials in progress are re-queued); "
                   f"continue the study with: {command}", err=True)
        sys.exit(130)
    from mpsearch.cli.study_report import print_front

    click.echo("")
    print_front(result)


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

    from mpsearch.float_start import WeightsError, check_weights, read_state_dict, sha256_file

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
