"""The GPU path: a trial on CUDA with its data on the device, several trials sharing one GPU.

Tests marked ``gpu`` skip where torch sees no CUDA device; the rest check, on the CPU,
what a spec asking for GPUs gets there.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from mpsearch.cli import cli
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.spec import SpecError, parse_spec
from mpsearch.trial import make_context, run_trial, trial_seed

GPU = pytest.mark.gpu


def cuda_spec(**training) -> dict:
    return {"study": {"name": "gpu", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 1},
            "model": {"name": "lenet5"}, "data": {"name": "mnist-mini"},
            "training": {"epochs": 1, "batch_size": 100, "device": "cuda", **training},
            "strategy": [{"name": "uniform", "space": {"bits": [4]}}],
            "resources": {"executor": "local"}}


@GPU
def test_a_trial_on_cuda_keeps_its_data_there_and_learns():
    spec = parse_spec(cuda_spec(), host=PluginHost(entry_points=False))
    host = PluginHost(entry_points=False)
    context = make_context(spec, 0, trial_seed(1, 0), host)
    assert context.device.type == "cuda"
    assert context.train.device.type == "cuda" and context.val.device.type == "cuda"
    outcome = run_trial(spec, 0, "uniform", {"bits": 4})
    assert not outcome.failed, outcome.attrs.get("fail_reason")
    assert outcome.values["accuracy"] > 0.6 and math.isfinite(outcome.values["bitops"])


@GPU
def test_float32_and_bf16_trials_agree_on_cuda():
    host = PluginHost(entry_points=False)
    accuracy = {}
    for mode in ("off", "auto"):  # auto is bf16 on CUDA
        spec = parse_spec(cuda_spec(autocast=mode), host=host)
        outcome = run_trial(spec, 0, "uniform", {"bits": 4})
        assert not outcome.failed, outcome.attrs.get("fail_reason")
        accuracy[mode] = outcome.values["accuracy"]
    assert abs(accuracy["off"] - accuracy["auto"]) < 0.05, accuracy


@GPU
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


def test_gpus_per_trial_is_a_share_of_one_gpu_or_whole_gpus():
    host = PluginHost(entry_points=False)
    for gpus in (0, 0.25, 0.5, 1, 2):
        raw = cuda_spec()
        raw["resources"] = {"gpus_per_trial": gpus}
        assert parse_spec(raw, host=host).resources.gpus_per_trial == gpus
    raw["resources"] = {"gpus_per_trial": 1.5}
    with pytest.raises(SpecError, match="fraction of one GPU"):
        parse_spec(raw, host=host)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_gpus_a_local_ray_runtime_lacks_are_refused_before_it_starts():
    from mpsearch.execution.ray_tune import run_with_ray

    raw = cuda_spec(device="auto")
    raw["resources"] = {"gpus_per_trial": 0.5, "executor": "ray"}
    spec = parse_spec(raw, source="gpu.toml", host=PluginHost(entry_points=False))
    with pytest.raises(MpsearchError, match="gpus_per_trial = 0.5, but this machine has no CUDA"):
        run_with_ray(None, spec, None, 2, None, Path("unused"))
