"""Reading studies back: frames, Pareto front, hypervolume, exports, plots and their commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from mpsearch import plots, report
from mpsearch.assignment import PrecisionAssignment
from mpsearch.cli import PluginGroup, State
from mpsearch.cli.study_report import COMMANDS
from mpsearch.errors import MpsearchError
from mpsearch.hypervolume import hypervolume
from mpsearch.spec import parse_spec
from mpsearch.storage import OBJECTIVES_ATTR, SPEC_ATTR, UNITS_ATTR, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

# LeNet-5 at 1x28x28 (test_cli.py): 288,000 + 1,600,000 + 400,000 + 5,000 MACs per sample.
LENET_MACS = 2_293_000
FLOAT_BITOPS = LENET_MACS * 32 * 32 / 1e9
PNG = b"\x89PNG\r\n\x1a\n"

# (strategy, its hyperparameter, accuracy, GBitOPs); None values: the trial failed
TRIALS = [
    ("uniform", 8, 0.98, 2.0),      # 0 front
    ("uniform", 4, 0.97, 0.6),      # 1 dominated by 4
    ("uniform", 2, 0.80, 0.2),      # 2 front
    ("bitpruning", 0.1, 0.96, 0.9),  # 3 dominated by 1 and 4
    ("bitpruning", 0.01, 0.975, 0.5),  # 4 front
    ("bitpruning", 1.0, None, None),  # 5 FAIL
]
FRONT = [2, 4, 0]  # by hand, sorted by bitops
FAIL_REASON = "objective(s) accuracy came out NaN or infinite."
DISTRIBUTIONS = {"strategy": CategoricalDistribution(["uniform", "bitpruning"]),
                 "uniform.bits": CategoricalDistribution([2, 4, 8]),
                 "bitpruning.lam": FloatDistribution(1e-3, 1.0, log=True)}


def spec_dict(name: str, objectives: list[str]) -> dict:
    return parse_spec({
        "study": {"name": name, "objectives": objectives, "n_trials": 6},
        "model": {"name": "lenet5"}, "data": {"name": "mnist-mini"},
        "strategy": [{"name": "uniform", "space": {"bits": [2, 4, 8]}},
                     {"name": "bitpruning", "space": {"lam": {"low": 1e-3, "high": 1.0, "log": True}}}],
    }).to_dict()


@pytest.fixture(scope="module")
def lenet_profile():
    from mpsearch.host import PluginHost
    from mpsearch.models import model_profile

    return model_profile(PluginHost(entry_points=False).models.get("lenet5"))


def build_study(folder: Path, profile, name: str = "demo", *, spec: bool = True,
                artefacts: bool = True) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{folder / 'studies.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), study_name=name,
                                directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["accuracy", "bitops"])
    study.set_user_attr(UNITS_ATTR, {"bitops": "GBitOPs"})
    if spec:
        study.set_user_attr(SPEC_ATTR, spec_dict(name, ["accuracy", "bitops"]))
    for number, (strategy, value, acc, bitops) in enumerate(TRIALS):
        key = "bits" if strategy == "uniform" else "lam"
        attrs = {"strategy": strategy, "strategy_params": {key: value}, "seed": 100 + number,
                 "seconds": 10.0 + number, "epochs_trained": 2.0}
        if acc is None:
            attrs["fail_reason"] = FAIL_REASON
        else:
            attrs.update(test_accuracy=acc - 0.01, average_weight_bits=float(number + 2),
                         average_activation_bits=8.0, units={"bitops": "GBitOPs"})
            if artefacts:
                art = folder / "art" / name / f"trial-{number:05d}"
                art.mkdir(parents=True)
                PrecisionAssignment.uniform(profile, number + 2, 8, first_last_bits=8,
                                            meta={"strategy": strategy}).save(art / "assignment.json")
                attrs["artefacts"] = str(art)
        study.add_trial(create_trial(
            params={"strategy": strategy, f"{strategy}.{key}": value},
            distributions={"strategy": DISTRIBUTIONS["strategy"],
                           f"{strategy}.{key}": DISTRIBUTIONS[f"{strategy}.{key}"]},
            values=None if acc is None else [acc, bitops], user_attrs=attrs,
            state=TrialState.FAIL if acc is None else TrialState.COMPLETE))
    return url, study


@pytest.fixture(scope="module")
def demo(tmp_path_factory, lenet_profile):
    return build_study(tmp_path_factory.mktemp("demo"), lenet_profile)


# -- frames and front ---------------------------------------------------------------------


def non_dominated(points: dict[int, tuple[float, float]]) -> set[int]:
    """(accuracy up, cost down), by brute force."""
    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b
    return {n for n, p in points.items() if not any(dominates(q, p) for q in points.values())}


def test_front_is_the_non_dominated_set_sorted_by_cost(demo):
    _, study = demo
    front = report.front_frame(study)
    assert list(front["number"]) == FRONT
    done = {n: (t[2], t[3]) for n, t in enumerate(TRIALS) if t[2] is not None}
    assert set(front["number"]) == non_dominated(done)
    assert (front["state"] == "COMPLETE").all()
    assert list(front["bitops"]) == [0.2, 0.5, 2.0]


def test_trials_frame_has_one_row_per_trial_with_its_values(demo):
    _, study = demo
    frame = report.trials_frame(study).set_index("number")
    assert list(frame.index) == list(range(len(TRIALS)))
    assert list(frame.columns[:4]) == ["state", "strategy", "accuracy", "bitops"]
    row = frame.loc[4]
    assert (row["strategy"], row["accuracy"], row["bitops"]) == ("bitpruning", 0.975, 0.5)
    assert row["test_accuracy"] == pytest.approx(0.965)
    assert (row["average_weight_bits"], row["seed"], row["seconds"]) == (6.0, 104, 14.0)
    assert row["bitpruning.lam"] == 0.01 and math.isnan(row["uniform.bits"])
    assert frame.loc[0, "uniform.bits"] == 8
    assert Path(row["artefacts"]).name == "trial-00004"
    failed = frame.loc[5]
    assert failed["state"] == "FAIL" and failed["fail_reason"] == FAIL_REASON
    assert math.isnan(failed["accuracy"]) and math.isnan(failed["bitops"])
    assert frame["fail_reason"].notna().sum() == 1


def test_empty_study_has_the_columns_and_no_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), study_name="empty",
                                directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["accuracy", "size"])
    assert list(report.trials_frame(study).columns[:4]) == ["number", "state", "strategy", "accuracy"]
    assert len(report.front_frame(study)) == 0
    hv = report.study_hypervolume(study)
    assert hv.value == 0.0 and hv.reference.values == {"accuracy": 0.0, "size": 0.0}


# -- hypervolume --------------------------------------------------------------------------


def test_hypervolume_of_a_staircase_by_hand():
    # strips x in [1,2], [2,3], [3,4] covered above y = 3, 2, 1: 1 + 2 + 3
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)
    # the same set with the first objective maximised (negated)
    assert hypervolume([[-1, 3], [-2, 2], [-3, 1]], [-4, 4], ["maximize", "minimize"]) == pytest.approx(6.0)
    # a cube minus nothing: one point in 3-D
    assert hypervolume([[1, 2, 3]], [2, 4, 6]) == pytest.approx(1 * 2 * 3)


def test_points_that_do_not_dominate_the_reference_add_nothing():
    assert hypervolume([[5, 1], [1, 5], [4, 4]], [4, 4]) == 0.0
    assert hypervolume(np.empty((0, 3)), [1, 1, 1]) == 0.0
    assert hypervolume([[1, 1], [9, 0], [float("nan"), 0]], [2, 2]) == pytest.approx(1.0)


def point_sets(dims: int):
    coords = st.floats(0, 1, allow_nan=False, width=32)
    return st.lists(st.tuples(*[coords] * dims), min_size=0, max_size=25)


@settings(max_examples=80, deadline=None)
@given(points=st.one_of(point_sets(2), point_sets(3), point_sets(4)))
def test_hypervolume_agrees_with_optuna(points):
    from optuna._hypervolume import compute_hypervolume

    dims = len(points[0]) if points else 2
    pts = np.asarray(points, dtype=float).reshape(-1, dims)
    ref = np.full(dims, 0.9)
    inside = pts[np.all(pts <= ref, axis=1)]
    assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(inside, ref), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(points=st.one_of(point_sets(2), point_sets(3)).filter(bool), data=st.data())
def test_adding_a_dominated_point_changes_nothing(points, data):
    pts = np.asarray(points, dtype=float)
    base = pts[data.draw(st.integers(0, len(pts) - 1))]
    worse = base + np.asarray(data.draw(st.lists(st.floats(0, 0.5), min_size=pts.shape[1],
                                                 max_size=pts.shape[1])))
    ref = np.full(pts.shape[1], 1.2)
    dirs = ["minimize"] * pts.shape[1]
    assert hypervolume(np.vstack([pts, worse]), ref, dirs) == pytest.approx(hypervolume(pts, ref, dirs))
    # and a point beyond the reference never counts, however good elsewhere
    beyond = np.zeros(pts.shape[1])
    beyond[-1] = 2.0
    assert hypervolume(np.vstack([pts, beyond]), ref) == pytest.approx(hypervolume(pts, ref))


def test_study_hypervolume_uses_the_float_model_as_reference(demo):
    _, study = demo
    hv = report.study_hypervolume(study)
    assert hv.reference.values["bitops"] == pytest.approx(FLOAT_BITOPS)
    assert hv.reference.sources == {"accuracy": "zero", "bitops": "float model"}
    # strips of bitops between front members, times the best accuracy reached so far
    area = (0.5 - 0.2) * 0.80 + (2.0 - 0.5) * 0.975 + (FLOAT_BITOPS - 2.0) * 0.98
    assert hv.value == pytest.approx(area)


def test_with_artefacts_the_float_reference_reads_no_data(demo, monkeypatch):
    from mpsearch.host import PluginHost

    _, study = demo
    host = PluginHost(entry_points=False)
    monkeypatch.setattr(host.datasets, "get", lambda name: pytest.fail(f"read dataset {name}"))
    ref = report.reference_point(study, host)
    assert ref.sources["bitops"] == "float model" and ref.values["bitops"] == pytest.approx(FLOAT_BITOPS)


def test_float_reference_reads_the_dataset_shape_without_artefacts(tmp_path, lenet_profile):
    _, study = build_study(tmp_path, lenet_profile, "bare", artefacts=False)
    assert report.reference_point(study).values["bitops"] == pytest.approx(FLOAT_BITOPS)


def test_without_a_spec_the_reference_is_past_the_worst_trial(tmp_path, lenet_profile):
    _, study = build_study(tmp_path, lenet_profile, "nospec", spec=False)
    ref = report.reference_point(study)
    assert ref.values == {"accuracy": 0.0, "bitops": pytest.approx(2.2)}
    assert ref.sources["bitops"] == "1.1 x worst trial"


def test_strategy_summary_compares_methods(demo):
    _, study = demo
    summary = report.strategy_summary(study)
    assert list(summary.index) == ["uniform", "bitpruning"]
    uni, bp = summary.loc["uniform"], summary.loc["bitpruning"]
    assert (uni["complete"], uni["failed"], uni["on_front"]) == (3, 0, 2)
    assert (bp["complete"], bp["failed"], bp["on_front"]) == (2, 1, 1)
    assert (uni["best_accuracy"], uni["best_bitops"]) == (0.98, 0.2)
    assert (bp["best_accuracy"], bp["best_bitops"]) == (0.975, 0.5)
    assert bp["hypervolume"] == pytest.approx((FLOAT_BITOPS - 0.5) * 0.975)
    assert bp["seconds"] == 13 + 14 + 15 and uni["epochs_trained"] == 6.0
    assert uni["hypervolume"] < report.study_hypervolume(study).value


def test_three_objectives(tmp_path, lenet_profile):
    url = f"sqlite:///{tmp_path / 'three.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), study_name="three",
                                directions=["maximize", "minimize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["accuracy", "bitops", "size"])
    study.set_user_attr(UNITS_ATTR, {"bitops": "GBitOPs", "size": "MB"})
    study.set_user_attr(SPEC_ATTR, spec_dict("three", ["accuracy", "bitops", "size"]))
    points = [[0.9, 1.0, 0.5], [0.8, 0.5, 1.0], [0.7, 1.5, 1.5]]  # the last is dominated
    for p in points:
        study.add_trial(create_trial(values=p, user_attrs={"strategy": "uniform"}))
    hv = report.study_hypervolume(study)
    ref = hv.reference.values
    assert ref["size"] == pytest.approx(lenet_profile.weight_numel * 32 / 8e6)
    expected = hypervolume(points[:2], [0, ref["bitops"], ref["size"]], ["maximize", "minimize", "minimize"])
    assert hv.value == pytest.approx(expected) and hv.value > 0
    path = plots.plot_front(study, tmp_path / "three.png")
    height, width = read_png(path).shape[:2]
    assert width > 1.8 * height  # one panel per cost


# -- exports ------------------------------------------------------------------------------


def assert_same(read: pd.DataFrame, frame: pd.DataFrame) -> None:
    assert list(read.columns) == list(frame.columns) and len(read) == len(frame)
    for column in frame.columns:
        a, b = frame[column], read[column]
        if pd.api.types.is_numeric_dtype(a):
            np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float), err_msg=column)
        else:
            assert list(a.fillna("")) == list(b.fillna("")), column


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_exports_read_back_with_the_same_values(demo, tmp_path, fmt):
    _, study = demo
    path = tmp_path / f"demo.{fmt}"
    assert report.export(study, path, fmt) == len(TRIALS)
    if fmt == "csv":
        read = pd.read_csv(path)
    elif fmt == "json":
        records = json.loads(path.read_text())
        assert records[5]["accuracy"] is None and records[5]["fail_reason"] == FAIL_REASON
        read = pd.DataFrame.from_records(records)
    else:
        read = pd.read_parquet(path)
    assert_same(read, report.trials_frame(study))


def test_parquet_takes_a_hyperparameter_of_mixed_types(tmp_path):
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), study_name="mixed",
                                directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["accuracy", "size"])
    choice = {"uniform.bits": CategoricalDistribution([4, "auto"])}
    for bits in (4, "auto"):
        study.add_trial(create_trial(values=[0.5, 1.0], params={"uniform.bits": bits}, distributions=choice,
                                     user_attrs={"strategy": "uniform"}))
    report.export(study, tmp_path / "m.parquet")
    assert list(pd.read_parquet(tmp_path / "m.parquet")["uniform.bits"]) == ["4", "auto"]


def test_export_format_comes_from_the_suffix(demo, tmp_path):
    _, study = demo
    report.export(study, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text())[0]["number"] == 0
    with pytest.raises(MpsearchError, match="xlsx"):
        report.export(study, tmp_path / "x.xlsx", "xlsx")


# -- plots --------------------------------------------------------------------------------


def read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert Path(path).read_bytes()[:8] == PNG
    return matplotlib.image.imread(path)


def test_front_and_layer_bits_plots_are_pngs(demo, tmp_path):
    _, study = demo
    front = read_png(plots.plot_front(study, tmp_path / "front.png"))
    assert front.shape[0] >= 300 and front.shape[1] >= 400 and front.shape[2] in (3, 4)
    bits = read_png(plots.plot_layer_bits(study, 4, tmp_path / "bits.png"))
    assert bits.shape[0] >= 300 and bits.shape[1] >= 400
    assert front[..., :3].std() > 0.05  # something was drawn


# (strategy, accuracy, GBitOPs, enqueued params): most points in the leftmost 3 % of a linear axis
WIDE = [("uniform", 0.985, 0.15, {"uniform.bits": 8}), ("uniform", 0.975, 0.04, {"uniform.bits": 4}),
        ("bitpruning", 0.98, 0.02, None), ("bitpruning", 0.97, 0.01, None), ("bitpruning", 0.96, 0.008, None),
        ("adapt", 0.99, 2.2, None), ("fracbits", 0.10, 0.005, None), ("fracbits", 0.95, 0.03, None)]


def test_the_front_reads_on_a_log_axis_fitted_to_the_front(tmp_path):
    url = f"sqlite:///{tmp_path / 'wide.db'}"
    study = optuna.create_study(storage=open_storage(url, create=True), study_name="wide",
                                directions=["maximize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["accuracy", "bitops"])
    study.set_user_attr(UNITS_ATTR, {"bitops": "GBitOPs"})
    for strategy, acc, bitops, fixed in WIDE:
        study.add_trial(create_trial(values=[acc, bitops], user_attrs={"strategy": strategy},
                                     system_attrs={"fixed_params": fixed} if fixed else {}))
    fig = plots.front_figure(study)
    try:
        (ax,) = fig.axes
        assert ax.get_xscale() == "log"
        low, high = ax.get_ylim()
        assert 0.9 < low < 0.96 and high <= 1.0 + 1e-9  # the collapsed trial does not stretch the axis
        hollow = [c for c in ax.collections if len(c.get_offsets()) and (c.get_facecolors().size == 0)]
        assert len(hollow) == 1 and hollow[0].get_offsets()[0][0] == 0.005  # drawn at the edge
        assert hollow[0].get_offsets()[0][1] >= low
        texts = [t.get_text() for t in ax.texts]
        assert "uniform bits=8" in texts and "uniform bits=4" in texts and len(texts) == 3
        assert any("1 trial(s) below" in t for t in texts), texts
        markers = {h.get_label(): h.get_paths()[0].vertices.round(3).tobytes() for h in ax.collections
                   if h.get_label() in
                   ("uniform", "bitpruning", "adapt", "fracbits")}
        assert len(set(markers.values())) == 4  # a marker shape per strategy, not only a colour
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    read_png(plots.plot_front(study, tmp_path / "wide.png"))


def test_hypervolume_history_ends_at_the_studys_hypervolume(demo, tmp_path):
    _, study = demo
    history = plots.hypervolume_history(study)
    assert list(history.index) == [n for n, t in enumerate(TRIALS) if t[2] is not None]
    assert (np.diff(history["all"]) >= 0).all()
    assert history["all"].iloc[-1] == pytest.approx(report.study_hypervolume(study).value)
    summary = report.strategy_summary(study)
    for strategy in ("uniform", "bitpruning"):
        assert history[strategy].iloc[-1] == pytest.approx(summary.loc[strategy, "hypervolume"])
    read_png(plots.plot_hypervolume_history(study, tmp_path / "hv.png"))


def test_layer_bits_of_a_trial_without_an_assignment_is_an_error(demo, tmp_path):
    _, study = demo
    with pytest.raises(MpsearchError, match="trial 5 .* saved no assignment .*it failed"):
        plots.plot_layer_bits(study, 5, tmp_path / "x.png")
    with pytest.raises(MpsearchError, match="has no trial 42 \\(trials: 0-5\\)"):
        plots.plot_layer_bits(study, 42, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# -- commands -----------------------------------------------------------------------------


def invoke(*args: str):
    group = PluginGroup(name="study")
    for command in COMMANDS:
        group.add_command(command)
    return CliRunner().invoke(group, list(args), obj=State((), False), catch_exceptions=False)


def table_numbers(output: str) -> list[int]:
    """Trial numbers of the first table (the lines after the header, up to a blank line)."""
    lines = output.splitlines()[2:]
    rows = lines[: lines.index("")] if "" in lines else lines
    return [int(line.split()[0]) for line in rows]


def test_show_prints_the_front_with_units_and_hypervolume(demo):
    url, _ = demo
    result = invoke("show", "demo", "--storage", url)
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[1]
    assert "bitops [GBitOPs]" in header and "test accuracy" in header
    assert table_numbers(result.output) == FRONT
    assert "lam=0.01" in result.output and "bits=8" in result.output
    assert "hypervolume 2.04" in result.output and "float model" in result.output
    assert "per strategy:" in result.output and "bitpruning" in result.output.split("per strategy:")[1]
    every = invoke("show", "demo", "--storage", url, "--all")
    assert table_numbers(every.output) == list(range(len(TRIALS)))
    assert FAIL_REASON in every.output and "1 fail" in every.output.splitlines()[0]


def test_list_names_the_study_and_its_counts(demo):
    url, _ = demo
    result = invoke("list", "--storage", url)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("demo"))
    assert row.split()[1:4] == ["5", "1", "0"] and "accuracy, bitops" in row and "0.98" in row


def test_export_command_writes_the_file(demo, tmp_path, monkeypatch):
    url, _ = demo
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "demo", "--storage", url, "--format", "json")
    assert result.output.strip() == "wrote 6 row(s) to demo.json"
    assert len(json.loads((tmp_path / "demo.json").read_text())) == len(TRIALS)
    result = invoke("export", "demo", "--storage", url, "-o", str(tmp_path / "t.parquet"))
    assert result.exit_code == 0 and len(pd.read_parquet(tmp_path / "t.parquet")) == len(TRIALS)


def test_plot_command_writes_pngs(demo, tmp_path):
    url, _ = demo
    result = invoke("plot", "demo", "--storage", url, "-o", str(tmp_path / "figs"), "--trial", "0")
    assert result.exit_code == 0, result.output
    written = [Path(line.removeprefix("wrote ")) for line in result.output.splitlines()
               if line.startswith("wrote ")]
    assert [p.name for p in written] == ["demo-front.png", "demo-hypervolume.png", "demo-trial0-bits.png"]
    for p in written:
        read_png(p)


@pytest.mark.parametrize("args, message", [
    (("show", "dem"), "unknown study 'dem'. Did you mean 'demo'?"),
    (("plot", "demo", "--trial", "5"), "saved no assignment"),
    (("plot", "demo", "--trial", "99"), "has no trial 99"),
])
def test_command_errors_are_one_line(demo, args, message):
    url, _ = demo
    result = invoke(*args, "--storage", url)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


def test_a_storage_that_does_not_exist_is_one_line(tmp_path):
    result = invoke("list", "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 1 and result.output.startswith("Error: storage") \
        and len(result.output.strip().splitlines()) == 1
