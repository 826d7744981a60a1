"""``mpsearch study list|show|export|plot``: reading studies back from their storage.

These are plain commands; the ``study`` group attaches :data:`COMMANDS`. Every
error a user can act on is a one-line :class:`~mpsearch.errors.MpsearchError`.

Reading a study never imports code it names: the plugin files its spec lists are
not loaded (only installed plugins and ``--plugin`` files are), and files are never
overwritten unless ``--force`` says so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from mpsearch.errors import MpsearchError
from mpsearch.storage import DEFAULT_STORAGE, STORAGE_ENV

storage_option = click.option("--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
                              envvar=STORAGE_ENV, show_envvar=True,
                              help="Optuna storage (SQLAlchemy URL) holding the study.")
force_option = click.option("--force", is_flag=True, help="Overwrite files that exist.")


def _fresh(path: Path, force: bool) -> Path:
    """``path``, unless it exists and ``force`` is off."""
    if path.exists() and not force:
        raise MpsearchError(f"{str(path)!r} exists; give another name, or --force to overwrite it.")
    return path


def _file_name(name: str) -> str:
    """A study name read from a database, checked before it names a file."""
    from mpsearch.spec import check_study_name

    return check_study_name(name, "study name")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _accuracy(value: Any) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _table(columns: dict[str, list[str]], left: tuple[str, ...] = ()) -> str:
    """A plain text table: the ``left`` columns aligned left, the others (numbers) right."""
    widths = {h: max([len(h), *map(len, v)]) for h, v in columns.items()}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(c.ljust(widths[h]) if h in left else c.rjust(widths[h])
                         for h, c in cells.items()).rstrip()

    rows = len(next(iter(columns.values()), []))
    out = [line({h: h for h in columns})]
    out += [line({h: v[i] for h, v in columns.items()}) for i in range(rows)]
    return "\n".join(out)


def _params(row: Any, columns: list[str]) -> str:
    """``bits=4, lr=0.01`` from the row's own strategy's hyperparameter columns."""
    prefix = f"{row['strategy']}."
    return ", ".join(f"{c[len(prefix):]}={_fmt(row[c])}" for c in columns
                     if c.startswith(prefix) and _fmt(row[c]) != "-")


def _trials_table(study, frame, show_state: bool) -> str:
    from mpsearch import report
    from mpsearch import record as R

    unit = report.units(study)
    names = report.objective_names(study)
    fixed = {"number", "state", "strategy", *names, R.ATTR_TEST_ACCURACY, R.ATTR_WEIGHT_BITS,
             R.ATTR_ACT_BITS, R.ATTR_EPOCHS, R.ATTR_SECONDS, R.ATTR_SEED, R.ATTR_ARTEFACTS, R.ATTR_FAIL}
    params = [c for c in frame.columns if c not in fixed]
    out = {"trial": [str(n) for n in frame["number"]]}
    if show_state:
        out["state"] = list(frame["state"])
    out["strategy"] = [_fmt(v) for v in frame["strategy"]]
    for n in names:
        header = f"{n} [{unit[n]}]" if unit.get(n) else n
        out[header] = [(_accuracy if n == report.ACCURACY else _fmt)(v) for v in frame[n]]
    out["test accuracy"] = [_accuracy(v) for v in frame[R.ATTR_TEST_ACCURACY]]
    out["weight bits"] = [_fmt(v, 3) for v in frame[R.ATTR_WEIGHT_BITS]]
    out["act. bits"] = [_fmt(v, 3) for v in frame[R.ATTR_ACT_BITS]]
    out["hyperparameters"] = [_params(r, params) for _, r in frame.iterrows()]
    if show_state:
        out["fail reason"] = ["" if not isinstance(v, str) else v for v in frame[R.ATTR_FAIL]]
    return _table(out, left=("state", "strategy", "hyperparameters", "fail reason"))


@click.command("list")
@storage_option
@click.pass_obj
def list_studies(state, storage: str) -> None:
    """List every study in the storage: trials by state, objectives, best accuracy."""
    from mpsearch.report import ACCURACY
    from mpsearch.storage import OBJECTIVES_ATTR, open_storage, shown_url

    store = open_storage(state.storage(storage))
    studies = store.get_all_studies()
    if not studies:
        click.echo(f"no studies in {shown_url(storage)}")
        return
    rows = []
    for s in sorted(studies, key=lambda s: s.study_name):
        trials = store.get_all_trials(store.get_study_id_from_name(s.study_name), deepcopy=False)
        states = [t.state.name for t in trials]
        names = s.user_attrs.get(OBJECTIVES_ATTR) or [f"value{i}" for i in range(len(s.directions))]
        names = [o["name"] if isinstance(o, dict) else str(o) for o in names]
        best = math.nan
        if ACCURACY in names:
            i = names.index(ACCURACY)
            acc = [t.values[i] for t in trials if t.state.name == "COMPLETE" and t.values]
            best = max(acc) if acc else math.nan
        rows.append({"study": s.study_name, "complete": str(states.count("COMPLETE")),
                     "failed": str(states.count("FAIL")), "running": str(states.count("RUNNING")),
                     "objectives": ", ".join(names), "best accuracy": _accuracy(best)})
    columns = {h: [r[h] for r in rows] for h in rows[0]}
    click.echo(_table(columns, left=("study", "objectives")))


@click.command("show")
@click.argument("name")
@storage_option
@click.option("--all", "show_all", is_flag=True, help="Show every trial, not only the Pareto front.")
@click.pass_obj
def show(state, name: str, storage: str, show_all: bool) -> None:
    """Show study NAME: its Pareto front, hypervolume and a summary per strategy."""
    from mpsearch.storage import load_study

    print_front(load_study(state.storage(storage), name), show_all=show_all, host=state.host)


def print_front(study, show_all: bool = False, host=None) -> None:
    """Print a study's Pareto front (or every trial), its hypervolume and a per-strategy summary.

    Args:
        host: the plugins that compute the reference point's float-model costs
            (default: the built-ins and installed plugins; never the study's own files).
    """
    from mpsearch import report

    name = study.study_name
    frame = report.trials_frame(study) if show_all else report.front_frame(study)
    counts = frame["state"].value_counts() if show_all else None
    title = (f"study {name}: all {len(frame)} trials" if show_all else
             f"study {name}: Pareto front, {len(frame)} trial(s)")
    if counts is not None and len(counts):
        title += " (" + ", ".join(f"{v} {k.lower()}" for k, v in counts.items()) + ")"
    click.echo(title)
    from mpsearch import record as R
    from mpsearch.float_start import FLOAT_START_ATTR, describe
    from mpsearch.strategy import START_FLOAT

    start = study.user_attrs.get(FLOAT_START_ATTR)
    if isinstance(start, dict) and "val_accuracy" in start:
        from optuna.trial import TrialState

        shared = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.user_attrs.get(R.ATTR_START) == START_FLOAT)
        click.echo(f"float start: {describe(start, shared)}")
    if len(frame):
        click.echo(_trials_table(study, frame, show_all))
    else:
        click.echo("  no completed trials yet")
    reference = report.reference_point(study, host)
    hv = report.study_hypervolume(study, reference)
    click.echo(f"\nhypervolume {hv.value:.6g}; reference: {reference.describe(report.units(study))}")
    summary = report.strategy_summary(study, reference)
    if len(summary):
        click.echo("\nper strategy:")
        table = summary.reset_index()
        cell = {c: _accuracy if c == f"best_{report.ACCURACY}" else _fmt for c in table.columns}
        columns = {c.replace("_", " "): [cell[c](v) if isinstance(v, float) else str(v) for v in table[c]]
                   for c in table.columns}
        click.echo(_table(columns, left=("strategy",)))


@click.command("export")
@click.argument("name")
@storage_option
@click.option("--format", "format_", type=click.Choice(["csv", "json", "parquet"]), default=None,
              help="File format (default: from the -o suffix, else csv).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: NAME.<format> in the working directory).")
@force_option
@click.pass_obj
def export(state, name: str, storage: str, format_: str | None, output: str | None,
           force: bool) -> None:
    """Export every trial of study NAME, one row each, as csv, json or parquet."""
    from mpsearch import report
    from mpsearch.storage import load_study

    study = load_study(state.storage(storage), name)
    format_ = report.export_format(output, format_)
    path = Path(output) if output else Path(f"{_file_name(name)}{report.FORMATS[format_]}")
    rows = report.export(study, _fresh(path, force), format_)
    click.echo(f"wrote {rows} row(s) to {path}")


@click.command("plot")
@click.argument("name")
@storage_option
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for the PNG files (created if missing).")
@click.option("--trial", "trial_number", type=int, default=None,
              help="Also plot this trial's bits per layer, how its widths moved during the search (and a hawq trial's sensitivities).")
@force_option
@click.pass_obj
def plot(state, name: str, storage: str, output_dir: str, trial_number: int | None,
         force: bool) -> None:
    """Plot study NAME's accuracy-cost front and hypervolume history; with --trial, one trial's widths."""
    from mpsearch import plots
    from mpsearch.storage import load_study

    study = load_study(state.storage(storage), name)
    folder = Path(output_dir)
    front = _fresh(folder / f"{_file_name(name)}-front.png", force)
    history = _fresh(folder / f"{_file_name(name)}-hypervolume.png", force)
    bits = folder / f"{name}-trial{trial_number}-bits.png"
    if trial_number is not None:
        plots.artefacts_of(study, trial_number)  # fail before drawing anything
        _fresh(bits, force)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MpsearchError(f"cannot create the folder {str(folder)!r}: {exc.strerror or exc}.") from exc
    click.echo(f"wrote {plots.plot_front(study, front)}")
    click.echo(f"wrote {plots.plot_hypervolume_history(study, history)}")
    if trial_number is not None:
        click.echo(f"wrote {plots.plot_layer_bits(study, trial_number, bits)}")
        # a trial that recorded a sensitivity table (hawq): Ω per layer and width, too
        sensitivity = folder / f"{_file_name(name)}-trial{trial_number}-sensitivity.png"
        drawn = plots.plot_sensitivity(study, trial_number, _fresh(sensitivity, force))
        if drawn is not None:
            click.echo(f"wrote {drawn}")
        widths = folder / f"{_file_name(name)}-trial{trial_number}-widths.png"
        drawn = plots.plot_widths(study, trial_number, _fresh(widths, force))
        click.echo(f"wrote {drawn}" if drawn else f"trial {trial_number} recorded no widths per epoch")


COMMANDS = (list_studies, show, export, plot)
