"""Studies end to end: creation, local and Ray execution, failures, resume, reproducibility."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from mpsearch.cli import cli
from mpsearch.host import PluginHost
from mpsearch.spec import load_spec
from mpsearch.study import create_study, run_study, stored_spec
from mpsearch.record import ATTR_WEIGHT_BITS

from helpers import TOY, toy_spec

@pytest.fixture
def host():
    return PluginHost([str(TOY)], entry_points=False)


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mpsearch.db'}"


def test_a_local_study_is_an_ordinary_optuna_study(tmp_path, host):
    spec = load_spec(toy_spec(tmp_path, n_trials=3), host)
    create_study(spec, url(tmp_path), host)
    run_study("toy", url(tmp_path), host, progress=False)
    study = optuna.load_study(study_name="toy", storage=url(tmp_path))
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                optuna.study.StudyDirection.MINIMIZE]
    for t in study.trials:
        accuracy, bitops = t.values
        assert 0 <= accuracy <= 1 and bitops > 0
        assert 0 <= t.user_attrs["test_accuracy"] <= 1
        assert t.user_attrs["strategy"] == "toy"
        folder = Path(t.user_attrs["artefacts"])
        assert (folder / "assignment.json").is_file() and (folder / "model.pt").is_file()
        assert t.user_attrs["history"] and "val_accuracy" in t.user_attrs["history"][-1]
    assert study.user_attrs["objectives"] == ["accuracy", "bitops"]
    assert study.user_attrs["units"] == {"bitops": "GBitOPs"}
    # a finished study runs nothing more; --n-trials adds more, numbering continues
    run_study("toy", url(tmp_path), host, progress=False)
    assert len(optuna.load_study(study_name="toy", storage=url(tmp_path)).trials) == 3
    run_study("toy", url(tmp_path), host, n_trials=1, progress=False)
    assert [t.number for t in optuna.load_study(study_name="toy", storage=url(tmp_path)).trials] == [0, 1, 2, 3]


def test_failures_are_recorded_and_the_study_goes_on(tmp_path, host):
    spec = load_spec(toy_spec(tmp_path, n_trials=3,
                              space='space.behaviour = ["ok", "raise", "nan"]'), host)
    study = create_study(spec, url(tmp_path), host)
    for behaviour in ("raise", "nan", "ok"):
        study.enqueue_trial({"toy.bits": 4, "toy.behaviour": behaviour})
    run_study("toy", url(tmp_path), host, progress=False)
    trials = optuna.load_study(study_name="toy", storage=url(tmp_path)).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "the toy strategy was told to raise" in trials[0].user_attrs["fail_reason"]
    assert "NaN" in trials[1].user_attrs["fail_reason"]
    assert "fail_reason" not in trials[2].user_attrs


def test_same_spec_and_seed_give_the_same_first_trial(tmp_path, host):
    accuracies = []
    for name in ("first", "second"):
        spec = load_spec(toy_spec(tmp_path, name=name, n_trials=1), host)
        create_study(spec, url(tmp_path), host)
        study = run_study(name, url(tmp_path), host, progress=False)
        accuracies.append((study.trials[0].params, study.trials[0].values))
    (p1, (a1, c1)), (p2, (a2, c2)) = accuracies
    assert p1 == p2 and abs(a1 - a2) <= 1e-6 and c1 == c2


@pytest.mark.ray
def test_ray_study_with_two_concurrent_trials(tmp_path):
    # the strategy and a logger only on the command line: Ray's workers load them too
    # three trials, two at a time: the third is suggested once a result has come back
    spec = toy_spec(tmp_path, n_trials=3, executor="ray", concurrent=2, space="enqueue = [{bits = 2}]",
                    plugins=False)
    logger = tmp_path / "logger.py"
    logger.write_text("from mpsearch import hookimpl\n\n\n@hookimpl\n"
                      "def on_trial_end(study, trial, state, values, attrs):\n"
                      "    raise RuntimeError(f'logged {state}')\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["--plugin", str(TOY), "--plugin", str(logger), "study", "create",
                                 str(spec), "--storage", url(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="toy", storage=url(tmp_path))
    assert len(study.trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    assert study.trials[0].params == {"toy.bits": 2}  # the enqueued point ran first
    front = study.best_trials
    for a in front:  # non-dominated
        for b in complete:
            assert not (b.values[0] >= a.values[0] and b.values[1] <= a.values[1]
                        and b.values != a.values)
    assert all(t.user_attrs["history"] for t in complete)  # per-epoch metrics kept
    assert all(t.user_attrs["hook_warnings"] == [f"plugin '{logger}' raised in on_trial_end: "
                                                 f"RuntimeError: logged COMPLETE"] for t in complete)
    shown = runner.invoke(cli, ["study", "show", "toy", "--storage", url(tmp_path)])
    assert shown.exit_code == 0 and "GBitOPs" in shown.output
    out = tmp_path / "toy.csv"
    exported = runner.invoke(cli, ["study", "export", "toy", "--storage", url(tmp_path),
                                   "--format", "csv", "-o", str(out)])
    assert exported.exit_code == 0 and len(out.read_text().strip().splitlines()) == 4
    plotted = runner.invoke(cli, ["study", "plot", "toy", "--storage", url(tmp_path),
                                  "-o", str(tmp_path), "--trial", str(front[0].number)])
    assert plotted.exit_code == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [  # front, hypervolume history, bits, widths
        "toy-front.png", "toy-hypervolume.png", f"toy-trial{front[0].number}-bits.png",
        f"toy-trial{front[0].number}-widths.png"]


BAD_SPECS = [
    ("[study\nname=", "not valid TOML"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\ncolour='red'\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"),
     "unknown key(s) colour in [study]"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials='ten'\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"),
     "[study] n_trials must be an integer >= 1"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitop']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"),
     "unknown objective 'bitop'. Did you mean 'bitops'"),
    (("[study]\nname='x'\nobjectives=['bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"),
     "must include \"accuracy\""),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\nsampler='cmaes'\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"),
     "sampler must be one of tpe, nsga2, nsga3, random, gp"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet6'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"),
     "unknown model 'lenet6'"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='bitprunning'\n"),
     "unknown strategy 'bitprunning'"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\nvalidation_fraction=1.5\n"
     "[[strategy]]\nname='uniform'\n"), "validation_fraction must lie strictly between 0 and 1"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "space.colour=[1,2]\n"), "unknown parameter(s) colour"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "space.bits={low=8, high=2}\n"), "low (8) must be below high (2)"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "[training]\ndevice='tpu'\n"), "[training] device must be one of auto, cpu, cuda"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "[backend]\nname='strypes'\n"), "unknown backend 'strypes'"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n[model]\nname='lenet5'\n"
     "[data]\nname='mnist-mini'\n"), "is missing strategy"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "space.bits=[2,4]\nenqueue=[{bits=3}]\n"), "enqueue[0].bits: 3 is not one of the choices [2, 4]"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "enqueue=[{quantizer='minmax'}]\n"), "fixed at 'dorefa-pact' in this space"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "enqueue=[{bitz=4}]\n"), "enqueue[0].bitz: not a hyperparameter of strategy 'uniform'"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='bitpruning'\n"
     "enqueue=[{gamma=50.0}]\n"), "enqueue[0].gamma: 50.0 is outside the range 0.05-5.0"),
    (("[study]\nname='x'\nobjectives=['accuracy','bitops']\nn_trials=2\n"
     "[model]\nname='lenet5'\n[data]\nname='mnist-mini'\n[[strategy]]\nname='uniform'\n"
     "enqueue={bits=4}\n"), "enqueue: give a list of tables"),
]


@pytest.mark.parametrize("text, message", BAD_SPECS)
def test_bad_specs_give_one_line_errors_and_create_nothing(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["study", "create", str(path), "--storage", url(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "mpsearch.db").exists()


def test_create_without_running_then_run(tmp_path):
    spec = toy_spec(tmp_path, n_trials=1)
    runner = CliRunner()
    created = runner.invoke(cli, ["study", "create", str(spec), "--storage", url(tmp_path), "--no-run"])
    assert created.exit_code == 0 and "created study 'toy'" in created.output
    assert optuna.load_study(study_name="toy", storage=url(tmp_path)).trials == []
    again = runner.invoke(cli, ["study", "create", str(spec), "--storage", url(tmp_path), "--no-run"])
    assert again.exit_code == 1 and "already exists" in again.output
    # the stored spec's plugin file is loaded only when asked for
    refused = runner.invoke(cli, ["study", "run", "toy", "--storage", url(tmp_path), "--quiet"])
    assert refused.exit_code == 1 and "unknown strategy 'toy'" in refused.output
    assert f"lists plugin(s) '{TOY}'" in refused.output and "--trust-spec-plugins" in refused.output
    ran = runner.invoke(cli, ["study", "run", "toy", "--storage", url(tmp_path), "--quiet",
                              "--trust-spec-plugins"])
    assert ran.exit_code == 0, ran.output
    assert len(optuna.load_study(study_name="toy", storage=url(tmp_path)).trials) == 1
    unknown = runner.invoke(cli, ["study", "run", "tyo", "--storage", url(tmp_path)])
    assert unknown.exit_code == 1 and "Did you mean 'toy'" in unknown.output


def test_round_robin_gives_every_strategy_its_share(tmp_path, host):
    path = toy_spec(tmp_path, n_trials=4, extra='\n[[strategy]]\nname = "uniform"\nspace.bits = 8\n')
    text = path.read_text().replace('sampler = "random"', 'sampler = "random"\nstrategy_choice = "round-robin"')
    path.write_text(text)
    spec = load_spec(path, host)
    create_study(spec, url(tmp_path), host)
    run_study("toy", url(tmp_path), host, progress=False)
    trials = optuna.load_study(study_name="toy", storage=url(tmp_path)).trials
    assert [t.user_attrs["strategy"] for t in trials] == ["toy", "uniform", "toy", "uniform"]
    assert all("strategy" not in t.params for t in trials)
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_enqueued_points_run_first_and_the_spec_keeps_them(tmp_path, host):
    path = toy_spec(tmp_path, n_trials=3, space="enqueue = [{bits = 8}]",
                    extra='\n[[strategy]]\nname = "uniform"\nspace.bits = [2, 3, 4]\n'
                          'enqueue = [{bits = 3}]\n')
    spec = load_spec(path, host)
    assert [s.enqueue for s in spec.strategies] == [({"bits": 8},), ({"bits": 3},)]
    study = create_study(spec, url(tmp_path), host)
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 2
    run_study("toy", url(tmp_path), host, progress=False)
    trials = optuna.load_study(study_name="toy", storage=url(tmp_path)).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"strategy": "toy", "toy.bits": 8}
    assert trials[1].params == {"strategy": "uniform", "uniform.bits": 3}
    assert trials[1].user_attrs[ATTR_WEIGHT_BITS] == 3
    assert stored_spec(optuna.load_study(study_name="toy", storage=url(tmp_path)), host).strategies == spec.strategies


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_study_spec_parses_and_is_named_after_its_file(path):
    spec = load_spec(path, PluginHost(entry_points=False))
    assert spec.name == path.stem
    assert spec.strategies and spec.cost_objectives


def test_the_storage_may_come_from_the_environment(tmp_path):
    spec = toy_spec(tmp_path, n_trials=1)
    runner = CliRunner(env={"MPSEARCH_STORAGE": url(tmp_path)})
    created = runner.invoke(cli, ["study", "create", str(spec), "--no-run"])
    assert created.exit_code == 0 and f"in {url(tmp_path)} " in created.output, created.output
    listed = runner.invoke(cli, ["study", "list"])
    assert listed.exit_code == 0 and listed.output.splitlines()[1].startswith("toy "), listed.output
