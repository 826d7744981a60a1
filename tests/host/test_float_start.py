"""A study's float start: trained weights in, pretrained once per study, shared by every trial,
resumed after a kill, and post-training quantization from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from mpsearch.cli import cli
from mpsearch.float_start import CHECKPOINT_DIR, FLOAT_START_ATTR
from mpsearch.weights import FLOAT_START_FILE, sha256_file
from mpsearch.strategy import START_FLOAT

TOY = Path(__file__).resolve().parents[1] / "toy_plugin.py"


def write_spec(folder: Path, name: str, *, weights: str | None = None, pretrain: int = 0,
               epochs: int = 1, strategy: str = "uniform", space: str = "space.bits = 8",
               n_trials: int = 1, train_subset: int | None = 2000, plugins: bool = False) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(
        (f'plugins = ["{TOY}"]\n' if plugins else "")
        + f'[study]\nname = "{name}"\nobjectives = ["accuracy", "bitops"]\nsampler = "random"\n'
        f"n_trials = {n_trials}\nseed = 3\n"
        f'[model]\nname = "lenet5"\n' + (f'weights = "{weights}"\n' if weights else "")
        + '[data]\nname = "mnist-mini"\n' + (f"train_subset = {train_subset}\n" if train_subset else "")
        + f"[training]\npretrain_epochs = {pretrain}\nepochs = {epochs}\nbatch_size = 100\n"
        f'[[strategy]]\nname = "{strategy}"\n{space}\n[resources]\nexecutor = "local"\n')
    return path


def create(spec: Path, url: str, *extra: str):
    result = CliRunner().invoke(cli, ["study", "create", str(spec), "--storage", url, "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return optuna.load_study(study_name=spec.stem, storage=url)


def driver(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mpsearch.cli", *args], cwd=cwd,
                            env={**os.environ, "MPSEARCH_COMPILE": "off"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_weights_given_to_a_second_study_reproduce_the_float_accuracy_post_training(tmp_path):
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    first = create(write_spec(tmp_path, "first", pretrain=2, epochs=0), url)
    record = first.user_attrs[FLOAT_START_ATTR]
    float_accuracy = record["val_accuracy"]
    assert float_accuracy > 0.85 and record["source"] == "pretrained" and record["epochs"] == 2
    assert sha256_file(record["path"]) == record["sha256"]
    (trial,) = first.trials
    assert trial.user_attrs["start"] == START_FLOAT and trial.user_attrs["epochs_trained"] == 0
    assert trial.user_attrs["start_accuracy"] == pytest.approx(float_accuracy)
    assert abs(trial.values[0] - float_accuracy) <= 0.005  # 8-bit PTQ keeps the float accuracy

    # The float start of one study is a weights file for the next (a relative path, from the
    # spec's folder); its trials start there, untrained: random weights would score ~10 %.
    weights = tmp_path / "trained.pt"
    weights.write_bytes(Path(record["path"]).read_bytes())
    second = create(write_spec(tmp_path, "second", weights="trained.pt", epochs=0), url)
    given = second.user_attrs[FLOAT_START_ATTR]
    assert given["source"] == "weights" and given["epochs"] == 0
    assert given["val_accuracy"] == pytest.approx(float_accuracy)
    assert second.user_attrs["mpsearch_spec"]["model"]["weights_sha256"] == sha256_file(weights)
    (trial,) = second.trials
    assert abs(trial.values[0] - float_accuracy) <= 0.005

    shown = CliRunner().invoke(cli, ["study", "show", "second", "--storage", url])
    assert shown.exit_code == 0, shown.output
    assert f"float start: the given weights, {100 * float_accuracy:.1f} % validation" in shown.output
    assert "shared by 1 trial(s)" in shown.output


def test_two_drivers_train_the_float_start_once_and_both_use_it(storage_url, tmp_path):
    # what is checked is who trains the float start, not how well: 1,000 images do
    spec = write_spec(tmp_path, "duo", pretrain=1, strategy="toy", space="", n_trials=4, plugins=True,
                      train_subset=1000)
    created = CliRunner().invoke(cli, ["study", "create", str(spec), "--storage", storage_url, "--no-run"])
    assert created.exit_code == 0, created.output
    drivers = [driver(["study", "run", "duo", "--storage", storage_url, "--executor", "local",
                       "--trust-spec-plugins"], tmp_path) for _ in range(2)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    for d, (_, err) in zip(drivers, outputs):
        assert d.returncode == 0, err[-3000:]
    trained = [err for _, err in outputs if "training the float start" in err]
    assert len(trained) == 1, [err[-1000:] for _, err in outputs]

    study = optuna.load_study(study_name="duo", storage=storage_url)
    record = study.user_attrs[FLOAT_START_ATTR]
    folder = Path(record["path"]).parent
    assert sorted(p.name for p in folder.glob("float-start*")) == [FLOAT_START_FILE]
    assert sha256_file(record["path"]) == record["sha256"]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert all(t.user_attrs["start"] == START_FLOAT for t in study.trials)
    for t in study.trials:
        assert t.user_attrs["start_accuracy"] == pytest.approx(record["val_accuracy"])


@pytest.mark.slow
def test_a_driver_killed_while_pretraining_is_resumed_by_the_next_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'mpsearch.db'}"
    spec = write_spec(tmp_path, "killed", pretrain=4, strategy="toy", space="", n_trials=2, plugins=True,
                      train_subset=None)
    assert CliRunner().invoke(cli, ["study", "create", str(spec), "--storage", url, "--no-run"]).exit_code == 0
    first = driver(["study", "run", "killed", "--storage", url, "--executor", "local", "--trust-spec-plugins"],
                   tmp_path)
    deadline = time.monotonic() + 300
    saved = tmp_path / "mpsearch-studies"
    while not list(saved.glob(f"killed-*/{CHECKPOINT_DIR}/last.pt")):  # pretraining's first epoch is saved
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    (checkpoint,) = saved.glob(f"killed-*/{CHECKPOINT_DIR}/last.pt")
    study = optuna.load_study(study_name="killed", storage=url)
    assert FLOAT_START_ATTR not in study.user_attrs and study.trials == []
    assert not (checkpoint.parent.parent / FLOAT_START_FILE).exists()  # nothing half-written

    second = driver(["study", "run", "killed", "--storage", url, "--executor", "local", "--trust-spec-plugins"],
                    tmp_path)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "resumed from its last checkpoint" in err
    record = optuna.load_study(study_name="killed", storage=url).user_attrs[FLOAT_START_ATTR]
    epochs = [row["epoch"] for row in record["history"]]
    assert epochs == [0, 1, 2, 3]  # each epoch trained once, across the two drivers
    assert not checkpoint.parent.exists()
    assert torch.load(record["path"], weights_only=True)["fc2.weight"].shape == (10, 500)
