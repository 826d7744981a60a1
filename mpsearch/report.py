"""Reading a study back: trials and Pareto fronts as pandas frames, hypervolume, exports.

Everything here reads an Optuna study as the study runner stores it (see
:mod:`mpsearch.storage` and :mod:`mpsearch.trial`): objective values in the order
of the study attribute ``objectives``, and the trial's facts as user attributes.
Plots are in :mod:`mpsearch.plots`; the hypervolume algorithm in
:mod:`mpsearch.hypervolume`.

Column names of :func:`trials_frame` (and of every export):
``number, state, strategy``, one column per objective (``accuracy``, ``bitops``, …),
``test_accuracy, average_weight_bits, average_activation_bits, epochs_trained,
seconds, seed``, the hyperparameters as ``<strategy>.<param>`` (Optuna's own
parameter names; the strategy's fixed values included, so one column never mixes
two strategies' meanings of a name), ``artefacts, fail_reason``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pandas as pd
from optuna.trial import TrialState

from mpsearch import record as R
from mpsearch.errors import MpsearchError
from mpsearch.hypervolume import hypervolume
from mpsearch.storage import OBJECTIVES_ATTR, SPEC_ATTR, UNITS_ATTR

__all__ = ["ACCURACY", "FORMATS", "Hypervolume", "Reference", "cost_names", "directions", "export",
           "export_format", "front_frame", "history_frame", "hypervolume", "objective_names",
           "reference_point", "strategy_summary", "study_hypervolume", "trials_frame", "units"]

ACCURACY = "accuracy"
FORMATS = {"csv": ".csv", "json": ".json", "parquet": ".parquet"}
WORST_MARGIN = 0.1  # the fallback reference lies 10% beyond the worst completed cost
FLOAT_BITS = 32

_ATTR_COLUMNS = (R.ATTR_TEST_ACCURACY, R.ATTR_WEIGHT_BITS, R.ATTR_ACT_BITS, R.ATTR_EPOCHS,
                 R.ATTR_SECONDS, R.ATTR_SEED)


# -- what the study says about itself -----------------------------------------------------


def objective_names(study: optuna.Study) -> list[str]:
    """The objectives in the order of the study's values (``objectives`` attribute first)."""
    names = study.user_attrs.get(OBJECTIVES_ATTR)
    if not names:
        names = study.metric_names
    n = len(study.directions)
    if not names or len(names) != n:
        return [f"value{i}" for i in range(n)]
    return [o["name"] if isinstance(o, Mapping) else str(o) for o in names]


def directions(study: optuna.Study) -> dict[str, str]:
    """Objective name -> ``"maximize"`` or ``"minimize"``."""
    return {n: d.name.lower() for n, d in zip(objective_names(study), study.directions)}


def cost_names(study: optuna.Study) -> list[str]:
    """The objectives other than accuracy, in study order."""
    return [n for n in objective_names(study) if n != ACCURACY]


def units(study: optuna.Study) -> dict[str, str]:
    """Cost name -> unit, from the study attribute, else from the first trial that records them."""
    found = dict(study.user_attrs.get(UNITS_ATTR) or {})
    if not found:
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get(R.ATTR_UNITS):
                found = dict(t.user_attrs[R.ATTR_UNITS])
                break
    return {n: str(found.get(n, "")) for n in cost_names(study)}


# -- frames -------------------------------------------------------------------------------


def _row(t: optuna.trial.FrozenTrial, names: list[str]) -> dict[str, Any]:
    attrs = t.user_attrs
    strategy = attrs.get(R.ATTR_STRATEGY, t.params.get("strategy"))
    values = t.values if t.values is not None and len(t.values) == len(names) else [math.nan] * len(names)
    row: dict[str, Any] = {"number": t.number, "state": t.state.name, "strategy": strategy}
    row.update(zip(names, (float(v) for v in values)))
    row.update({k: attrs.get(k, math.nan) for k in _ATTR_COLUMNS})
    params = {f"{strategy}.{k}": v for k, v in (attrs.get(R.ATTR_PARAMS) or {}).items()}
    params.update({k: v for k, v in t.params.items() if k != "strategy"})
    row.update(params)
    row[R.ATTR_ARTEFACTS] = attrs.get(R.ATTR_ARTEFACTS)
    row[R.ATTR_FAIL] = attrs.get(R.ATTR_FAIL)
    return row


def _frame(trials: Sequence[optuna.trial.FrozenTrial], names: list[str]) -> pd.DataFrame:
    fixed = ["number", "state", "strategy", *names, *_ATTR_COLUMNS]
    rows = [_row(t, names) for t in trials]
    params = sorted({k for r in rows for k in r} - set(fixed) - {R.ATTR_ARTEFACTS, R.ATTR_FAIL})
    frame = pd.DataFrame(rows, columns=[*fixed, *params, R.ATTR_ARTEFACTS, R.ATTR_FAIL])
    numeric = [*names, *_ATTR_COLUMNS]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    return frame.astype({"number": "int64"})


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, every state, in trial order (columns: see the module docstring)."""
    return _frame(study.get_trials(deepcopy=False), objective_names(study))


def front_frame(study: optuna.Study) -> pd.DataFrame:
    """The Pareto front as Optuna computes it (``study.best_trials``), sorted by the first cost.

    Failed and running trials are never on it; the columns are those of :func:`trials_frame`.
    """
    names = objective_names(study)
    frame = _frame(study.best_trials, names)
    costs = cost_names(study)
    keys = [costs[0], "number"] if costs else ["number"]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def history_frame(study: optuna.Study) -> pd.DataFrame:
    """Per-epoch metrics of every trial that recorded them, long form (one row per epoch)."""
    rows = [{"number": t.number, "strategy": t.user_attrs.get(R.ATTR_STRATEGY), **h}
            for t in study.get_trials(deepcopy=False) for h in t.user_attrs.get(R.ATTR_HISTORY) or ()]
    return pd.DataFrame(rows, columns=None if rows else ["number", "strategy", "epoch", "phase"])


# -- hypervolume --------------------------------------------------------------------------


class Reference(NamedTuple):
    """The reference point of a study's hypervolume: a value per objective and where it came from."""

    values: dict[str, float]
    sources: dict[str, str]

    def describe(self, unit_of: Mapping[str, str] | None = None) -> str:
        """``accuracy 0 (zero), bitops 2.348 GBitOPs (float model)``."""
        unit_of = unit_of or {}
        return ", ".join(f"{n} {v:.6g}{' ' + unit_of[n] if unit_of.get(n) else ''} ({self.sources[n]})"
                         for n, v in self.values.items())


class Hypervolume(NamedTuple):
    value: float
    reference: Reference


def reference_point(study: optuna.Study, host: Any = None) -> Reference:
    """The reference point that :func:`study_hypervolume` and :func:`strategy_summary` use.

    The rule: accuracy 0; each cost at the cost of the *float model* — the spec's
    model profiled at the spec's dataset's input shape and class count, every weight
    and activation group at 32 bits with no quantizer storage, evaluated by that
    objective on the spec's backend. A cost it cannot give (no spec, a plugin that
    is not installed, a dataset that cannot be read, an objective that raises) is
    set 10% beyond the worst value among completed trials instead (``1.1 x`` the
    largest cost for a minimised one); with no completed trial, to 0.

    Args:
        host: a :class:`~mpsearch.host.PluginHost` (default: the built-in and installed
            plugins; the plugin files a study's spec lists are never imported to read it).
    """
    dirs = directions(study)
    floats = _float_costs(study, host)
    complete = trials_frame(study).query("state == 'COMPLETE'")
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name, direction in dirs.items():
        if name == ACCURACY:
            values[name], sources[name] = 0.0, "zero"
        elif name in floats and math.isfinite(floats[name]):
            values[name], sources[name] = floats[name], "float model"
        else:
            column = complete[name].dropna()
            worst = (column.max() if direction == "minimize" else column.min()) if len(column) else 0.0
            step = WORST_MARGIN * abs(worst) * (1 if direction == "minimize" else -1)
            values[name], sources[name] = float(worst + step), f"{1 + WORST_MARGIN:g} x worst trial"
    return Reference(values, sources)


def _float_costs(study: optuna.Study, host: Any) -> dict[str, float]:
    """Each cost of the float model, or {} when the spec or its plugins are unavailable."""
    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.spec import parse_spec

    raw = study.user_attrs.get(SPEC_ATTR)
    if not raw:
        return {}
    try:
        spec = parse_spec(raw, source=f"study {study.study_name!r}")
        if host is None:  # reading a study runs none of the code it names
            from mpsearch.host import PluginHost

            host = PluginHost()
        profile = _float_profile(study, spec, host)
        floats = PrecisionAssignment.uniform(profile, FLOAT_BITS, FLOAT_BITS, scale_bits=0)
        backend = host.backends.get(spec.backend)
    except Exception:  # noqa: BLE001 - any failure means: use the fallback rule, which says so
        return {}
    out = {}
    for name in cost_names(study):
        try:
            out[name] = float(host.objectives.get(name).evaluate(profile, floats, backend))
        except Exception:  # noqa: BLE001 - as above, per objective
            pass
    return out


def _float_profile(study: optuna.Study, spec: Any, host: Any):
    """The model's profile at the shape its trials ran at.

    The model's own input shape is tried first and accepted when a trial's saved
    assignment has exactly its groups and shapes (no data to read); otherwise the
    dataset's test split is read for its shape and class count, as the trials did.
    """
    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.data import resolve_root
    from mpsearch.models import model_profile

    model = host.models.get(spec.model.name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        folder = t.user_attrs.get(R.ATTR_ARTEFACTS)
        path = Path(folder) / "assignment.json" if folder else None
        if path is not None and path.is_file():
            saved = PrecisionAssignment.load(path)
            guess = model_profile(model)
            if guess.group_shapes() == {g: saved.shape(g) for g in saved}:
                return guess
            break
    source = host.datasets.get(spec.data.name)
    data = source.load(resolve_root(spec.data.root) if source.needs_root else None, "test",
                       **spec.data.options)
    return model_profile(model, data.num_classes, data.input_shape)


def _points(frame: pd.DataFrame, names: list[str]) -> Any:
    done = frame[frame["state"] == "COMPLETE"]
    return done[names].to_numpy(dtype=float)


def study_hypervolume(study: optuna.Study, reference: Reference | None = None,
                      host: Any = None) -> Hypervolume:
    """Hypervolume of the study's completed trials, with the reference used (see :func:`reference_point`)."""
    reference = reference or reference_point(study, host)
    names = objective_names(study)
    dirs = directions(study)
    value = hypervolume(_points(trials_frame(study), names), [reference.values[n] for n in names],
                        [dirs[n] for n in names])
    return Hypervolume(value, reference)


def strategy_summary(study: optuna.Study, reference: Reference | None = None,
                     host: Any = None) -> pd.DataFrame:
    """Per strategy: trials by state, best value of each objective, hypervolume, search cost.

    Columns: ``complete, failed, running, on_front`` (trials on the study's Pareto
    front), ``best_<objective>`` (highest accuracy, lowest cost), ``hypervolume``
    (of the strategy's own completed trials, with the study's reference),
    ``epochs_trained, seconds`` (summed over all its trials). Indexed by strategy, in
    the spec's order and then any other strategy found.
    """
    reference = reference or reference_point(study, host)
    names = objective_names(study)
    dirs = directions(study)
    frame = trials_frame(study)
    front = {t.number for t in study.best_trials}
    order = [s["name"] for s in (study.user_attrs.get(SPEC_ATTR) or {}).get("strategy", [])]
    order += [s for s in frame["strategy"].dropna().unique() if s not in order]
    rows = []
    for strategy in order:
        own = frame[frame["strategy"] == strategy]
        done = own[own["state"] == "COMPLETE"]
        row: dict[str, Any] = {
            "strategy": strategy, "complete": len(done), "failed": int((own["state"] == "FAIL").sum()),
            "running": int((own["state"] == "RUNNING").sum()),
            "on_front": int(own["number"].isin(front).sum())}
        for n in names:
            best = done[n].max() if dirs[n] == "maximize" else done[n].min()
            row[f"best_{n}"] = float(best) if len(done) else math.nan
        row["hypervolume"] = hypervolume(_points(own, names), [reference.values[n] for n in names],
                                         [dirs[n] for n in names])
        row[R.ATTR_EPOCHS] = float(own[R.ATTR_EPOCHS].sum())
        row[R.ATTR_SECONDS] = float(own[R.ATTR_SECONDS].sum())
        rows.append(row)
    columns = ["strategy", "complete", "failed", "running", "on_front", *(f"best_{n}" for n in names),
               "hypervolume", R.ATTR_EPOCHS, R.ATTR_SECONDS]
    return pd.DataFrame(rows, columns=columns).set_index("strategy")


# -- exports ------------------------------------------------------------------------------


def export_format(path: str | Path | None, format: str | None) -> str:
    """The format to write: ``format`` if given, else the path's suffix, else (no suffix) csv.

    Raises:
        MpsearchError: an unknown format, or a suffix that names none of them.
    """
    if format is None:
        suffix = Path(path).suffix.lower() if path else ""
        format = next((f for f, ext in FORMATS.items() if ext == suffix), None if suffix else "csv")
        if format is None:
            raise MpsearchError(f"cannot tell the export format of {str(path)!r} from its suffix "
                                f"{suffix!r}; name the file .csv, .json or .parquet, or give "
                                f"--format.")
    if format not in FORMATS:
        raise MpsearchError(f"export format {format!r} is not one of {', '.join(FORMATS)}.")
    return format


def export(study: optuna.Study, path: str | Path, format: str | None = None) -> int:
    """Write :func:`trials_frame` (one row per trial) as csv, json or parquet; return the row count.

    JSON is a list of records, one per trial, with NaN written as ``null``. Parquet
    needs ``pyarrow``.

    Raises:
        MpsearchError: an unknown format, pyarrow missing, or a path that cannot be written.
    """
    format = export_format(path, format)
    frame = trials_frame(study)
    path = Path(path)
    try:
        if format == "csv":
            frame.to_csv(path, index=False)
        elif format == "json":
            records = [{k: R.json_safe(v, cell=True) for k, v in r.items()} for r in frame.to_dict("records")]
            path.write_text(json.dumps(records, indent=1, allow_nan=False) + "\n")
        else:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise MpsearchError("export to parquet needs pyarrow: pip install pyarrow.") from None
            _parquet_safe(frame).to_parquet(path, engine="pyarrow", index=False)
    except OSError as exc:
        raise MpsearchError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    return len(frame)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Hyperparameter columns whose choices mix types (``[2, "auto"]``) become strings."""
    frame = frame.copy()
    for column in frame.columns[frame.dtypes == object]:
        kinds = {type(v) for v in frame[column].dropna()}
        if len(kinds) > 1:
            frame[column] = frame[column].map(lambda v: None if v is None or v != v else str(v))
    return frame
