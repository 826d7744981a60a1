"""studies/cifar10-resnet20.toml: what it runs, and that its first trial starts on the real data.

Running the study itself takes hours (its header says how many); this checks the spec
and runs its float start and first trial on a few hundred real CIFAR-10 images.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

import optuna
import pytest

from mpsearch.assignment import PrecisionAssignment
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.spec import load_spec, parse_spec
from mpsearch.execution.space import STRATEGY_PARAM, define_space
from mpsearch.study import create_study, run_study

SPEC = Path(__file__).resolve().parents[2] / "studies" / "cifar10-resnet20.toml"


@pytest.fixture
def host():
    return PluginHost(entry_points=False)


def test_every_strategy_gets_two_trials_at_equal_epochs_after_the_two_baselines(host, tmp_path):
    spec = load_spec(SPEC, host)
    assert (spec.model.name, spec.data.name) == ("resnet20", "cifar10")
    assert {s.name for s in spec.strategies} == set(host.strategies)  # every strategy
    assert 10 <= spec.training.pretrain_epochs <= 15 and spec.training.epochs >= 1
    assert spec.study.strategy_choice == "round-robin"
    # The trials Optuna would hand out, drawn through the study's own space.
    study = create_study(spec, f"sqlite:///{tmp_path / 'plan.db'}", host)
    space = define_space(spec, host)
    plan = []
    for _ in range(spec.study.n_trials):
        trial = study.ask()
        plan.append(space(trial))
        study.tell(trial, [0.5, 1.0])
    assert [(p["strategy"], p["params"]["bits"]) for p in plan[:2]] == [("uniform", 4), ("uniform", 2)]
    counts = Counter(p["strategy"] for p in plan)
    assert set(counts) == set(host.strategies) and min(counts.values()) >= 2, counts
    smol = next(p["params"] for p in plan if p["strategy"] == "smol")
    assert smol["activations"] == "float"  # SMOL's Table 1 quantizes weights only


@pytest.mark.slow
def test_its_float_start_and_first_trial_run_on_real_cifar10(host, shared_datasets, tmp_path,
                                                            monkeypatch):
    """The spec as written, on 512 training images: pretrained once, then trial 0 (uniform 4-bit)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPSEARCH_CACHE", str(tmp_path / "cache"))  # never the user's
    raw = tomllib.loads(SPEC.read_text())
    raw["data"].update(root=str(shared_datasets), train_subset=512, validation_fraction=0.02)
    raw["training"].update(pretrain_epochs=1, epochs=1)
    raw["resources"].update(executor="local")
    spec = parse_spec(raw, source=str(SPEC), host=host)
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    create_study(spec, url, host)
    study = run_study(spec.name, url, host, n_trials=1, progress=False)
    trial, *rest = study.trials
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    assert [t.state.name for t in rest] == ["WAITING"]  # the 2-bit baseline, queued next
    assert trial.user_attrs[STRATEGY_PARAM] == "uniform" and trial.params["uniform.bits"] == 4
    assert trial.user_attrs["start"] == "float-start"
    float_start = study.user_attrs["float_start"]
    assert float_start["epochs"] == 1 and 0.0 <= float_start["val_accuracy"] <= 1.0
    accuracy, bitops = trial.values
    assert 0.0 <= accuracy <= 1.0
    profile = model_profile(host.models.get("resnet20"))
    expected = host.objectives.get("bitops").evaluate(
        profile, PrecisionAssignment.uniform(profile, 4, 4), host.backends.get("generic"))
    assert bitops == pytest.approx(expected, rel=1e-6)
    assert optuna.load_study(study_name=spec.name, storage=url).user_attrs["float_start"]
