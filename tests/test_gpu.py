"""The GPU path: a trial on CUDA with its data on the device, several trials sharing one GPU.

Every test here is marked ``gpu`` and skips where torch sees no CUDA device.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from mpsearch.cli import cli
from mpsearch.host import PluginHost
from mpsearch.spec import parse_spec
from mpsearch.trial import make_context, run_trial, trial_seed

pytestmark = pytest.mark.gpu


def cuda_spec(**training) -> dict:
    return {"study": {"name": "gpu", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 1},
            "model": {"name": "lenet5"}, "data": {"name": "mnist-mini"},
            "training": {"epochs": 1, "batch_size": 100, "device": "cuda", **training},
            "strategy": [{"name": "uniform", "space": {"bits": [4]}}],
            "resources": {"executor": "local"}}


def test_a_trial_on_cuda_keeps_its_data_there_and_learns():
    spec = parse_spec(cuda_spec(), host=PluginHost(entry_points=False))
    host = PluginHost(entry_points=False)
    context = make_context(spec, 0, trial_seed(1, 0), host)
    assert context.device.type == "cuda"
    assert context.train.device.type == "cuda" and context.val.device.type == "cuda"
    outcome = run_trial(spec, 0, "uniform", {"bits": 4})
    assert not outcome.failed, outcome.attrs.get("fail_reason")
    assert outcome.values["accuracy"] > 0.6 and math.isfinite(outcome.values["bitops"])


def test_float32_and_bf16_trials_agree_on_cuda():
    host = PluginHost(entry_points=False)
    accuracy = {}
    for mode in ("off", "auto"):  # auto is bf16 on CUDA
        spec = parse_spec(cuda_spec(autocast=mode), host=host)
        outcome = run_trial(spec, 0, "uniform", {"bits": 4})
        assert not outcome.failed, outcome.attrs.get("fail_reason")
        accuracy[mode] = outcome.values["accuracy"]
    assert abs(accuracy["off"] - accuracy["auto"]) < 0.05, accuracy


@pytest.mark.ray
@pytest.mark.slow
def test_two_trials_share_one_gpu_through_a_fraction(tmp_path: Path):
    spec = tmp_path / "shared.toml"
    spec.write_text(textwrap.dedent("""\
        [study]
        name = "shared"
        objectives = ["accuracy", "bitops"]
        n_trials = 2
        seed = 0
        [model]
        name = "lenet5"
        [data]
        name = "mnist-mini"
        [training]
        epochs = 2
        batch_size = 100
        device = "cuda"
        [[strategy]]
        name = "uniform"
        space.bits = [4, 8]
        [resources]
        gpus_per_trial = 0.5
        max_concurrent = 2
        executor = "ray"
        """))
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    result = CliRunner().invoke(cli, ["study", "create", str(spec), "--storage", url, "--quiet"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="shared", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    first, second = sorted(trials, key=lambda t: t.datetime_start)
    assert second.datetime_start < first.datetime_complete  # both on the one GPU at once
