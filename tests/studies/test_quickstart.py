"""The quickstart study, as the README runs it: every strategy, a front of at least 5 points."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from mpsearch.cli import cli
from mpsearch.host import PluginHost
from mpsearch.spec import load_spec

QUICKSTART = Path(__file__).resolve().parents[2] / "studies" / "quickstart.toml"


def test_the_quickstart_names_every_strategy_mpsearch_ships():
    spec = load_spec(QUICKSTART, PluginHost(entry_points=False))
    assert {s.name for s in spec.strategies} == set(PluginHost(entry_points=False).strategies)
    assert spec.data.name == "mnist-mini" and spec.training.device in ("auto", "cpu")


@pytest.mark.slow
@pytest.mark.ray
def test_the_quickstart_leaves_a_front_of_five_distinct_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["study", "create", str(QUICKSTART), "--quiet"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="quickstart", storage="sqlite:///mpsearch.db")
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
    front = {tuple(t.values) for t in study.best_trials}
    assert len(front) >= 5, front
    assert "Pareto front" in result.output
