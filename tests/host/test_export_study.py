"""A finished study's trials out: ``mpsearch export``, ``mpsearch.load_trial``, Optuna's artifacts and dashboard."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from click.testing import CliRunner

import mpsearch
from mpsearch.cli import cli
from mpsearch.export import assignment_from_metadata, load_packed, read_packed
from mpsearch.host import PluginHost
from mpsearch.optuna_private import study_storage
from mpsearch.spec import load_spec
from mpsearch.study import create_study, run_study
from mpsearch.training import evaluate

SPEC = """\
[study]
name = "exp"
objectives = ["accuracy", "bitops", "size"]
sampler = "random"
n_trials = 2
seed = 0
[model]
name = "lenet5"
[data]
name = "mnist-mini"
train_subset = 1000
[training]
epochs = 1
batch_size = 100
[[strategy]]
name = "uniform"
space.bits = [2, 8]
space.quantizer = ["minmax", "dorefa-pact"]
enqueue = [{bits = 2, quantizer = "minmax"}, {bits = 8, quantizer = "dorefa-pact"}]
[resources]
executor = "local"
"""


@pytest.fixture(autouse=True)
def _no_installed_plugins(monkeypatch):
    import importlib.metadata

    every = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [] if kw.get("group") == "mpsearch" else every(**kw))


@pytest.fixture(scope="module")
def study_db(tmp_path_factory) -> tuple[Path, str]:
    """Study ``exp``: LeNet-5 on MNIST-mini at 2 bits (min-max) and 8 bits (DoReFa + PACT)."""
    folder = tmp_path_factory.mktemp("exp")
    (folder / "exp.toml").write_text(SPEC)
    url = f"sqlite:///{folder / 'mpsearch.db'}"
    host = PluginHost(entry_points=False)
    create_study(load_spec(folder / "exp.toml", host), url, host)
    run_study("exp", url, host, progress=False)
    return folder, url


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def test_split():
    return PluginHost(entry_points=False).datasets.get("mnist-mini").load(None, "test")


def onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """ONNX Runtime's accuracy, from the file and the raw uint8 images alone (its metadata's preprocessing)."""
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    mean = np.array(json.loads(meta["mpsearch.input_mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.array(json.loads(meta["mpsearch.input_std"]), np.float32).reshape(1, -1, 1, 1)
    batch = int(meta["mpsearch.eval_batch_size"])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = []
    for start in range(0, len(images), batch):
        x = (images[start:start + batch].astype(np.float32) / 255 - mean) / std
        predicted.append(session.run(None, {"input": x})[0].argmax(1))
    predicted = np.concatenate(predicted)
    return float((predicted == labels).mean()), predicted


@pytest.mark.parametrize("number", [0, 1])
def test_an_exported_onnx_model_scores_the_recorded_test_accuracy(number, study_db, test_split, tmp_path):
    folder, url = study_db
    out = tmp_path / "model.onnx"
    result = run("export", "exp", "--trial", str(number), "-o", str(out), "--storage", url)
    assert result.exit_code == 0, result.output
    assert f"trial {number} (uniform)" in result.output
    trial = optuna.load_study(study_name="exp", storage=url).trials[number]
    accuracy, predicted = onnx_accuracy(out, test_split.images.numpy(), test_split.labels.numpy())
    assert abs(accuracy - trial.user_attrs["test_accuracy"]) <= 0.002
    loaded = mpsearch.load_trial("exp", number, storage=url)
    with torch.no_grad():
        torch_predicted = torch.cat([loaded.model(x).argmax(1) for x, _ in test_split.batches(512)]).numpy()
    assert (torch_predicted == predicted).mean() >= 0.995
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["mpsearch.study"] == "exp" and json.loads(meta["mpsearch.trial"]) == number
    assert json.loads(meta["mpsearch.input_shape"]) == [1, 28, 28]
    assert json.loads(meta["mpsearch.test_accuracy"]) == trial.user_attrs["test_accuracy"]
    assert json.loads(meta["mpsearch.bitops"]) == trial.values[1]
    assert assignment_from_metadata(meta) == loaded.assignment


def test_load_trial_gives_the_trials_model(study_db, test_split):
    folder, url = study_db
    study = optuna.load_study(study_name="exp", storage=url)
    for trial in study.trials:
        loaded = mpsearch.load_trial(study, trial.number)
        assert evaluate(loaded.model, test_split) == trial.user_attrs["test_accuracy"]
        assert loaded.metadata["mpsearch.strategy"] == "uniform"
        assert loaded.assignment.average_weight_bits() == trial.user_attrs["average_weight_bits"]


def test_the_packed_file_takes_the_size_the_study_recorded(study_db):
    """The weights take the recorded ``size`` (to 0.1 %: the uniform strategy records 32 scale bits
    per layer where min-max stores 64); biases, the header and the inputs' grids come on top."""
    folder, url = study_db
    for trial in optuna.load_study(study_name="exp", storage=url).trials:
        path = Path(trial.user_attrs["artefacts"]) / "model.mpq"
        header, payload = read_packed(path)
        start, end = header["sections"]["weights"]
        recorded = trial.values[2] * 1e6
        assert abs((end - start) - recorded) / recorded < 0.001
        assert header["sections"]["float"][1] - header["sections"]["float"][0] == (20 + 50 + 500 + 10) * 4
        assert trial.user_attrs["packed_bytes"] == path.stat().st_size == len(payload) + 8 + int.from_bytes(
            path.read_bytes()[4:8], "little")


def test_export_packed_and_the_best_trial_under_a_cost(study_db, tmp_path):
    folder, url = study_db
    study = optuna.load_study(study_name="exp", storage=url)
    cheap, dear = sorted(study.trials, key=lambda t: t.values[1])
    limit = (cheap.values[1] + dear.values[1]) / 2
    out = tmp_path / "best.mpq"
    result = run("export", "exp", "--trial", "best", "--where", f"bitops<={limit}", "--by", "accuracy",
                 "-o", str(out), "--storage", url)
    assert result.exit_code == 0, result.output
    assert f"trial {cheap.number} " in result.output
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_packed(out)(x), mpsearch.load_trial(study, cheap.number).model(x))
    # the most accurate trial under no cost limit, by the lowest size
    assert "trial" in run("export", "exp", "--trial", "best", "--by", "size", "-o", str(tmp_path / "s.onnx"),
                          "--storage", url).output
    names = {a.filename for a in optuna.artifacts.get_all_artifact_meta(study)}
    assert f"trial-{cheap.number:05d}-best.mpq" in names
    # --force replaces; without it the file stays
    before = out.read_bytes()
    assert run("export", "exp", "--trial", str(dear.number), "-o", str(out), "--storage", url).exit_code == 1
    assert out.read_bytes() == before
    assert run("export", "exp", "--trial", str(dear.number), "-o", str(out), "--storage", url,
               "--force").exit_code == 0
    assert out.read_bytes() != before


def test_objectives_are_named_for_optunas_tools(study_db):
    folder, url = study_db
    study = optuna.load_study(study_name="exp", storage=url)
    assert study.metric_names == ["accuracy", "bitops", "size"]


def test_trial_artefacts_are_in_optunas_artifact_store(study_db, tmp_path):
    folder, url = study_db
    study = optuna.load_study(study_name="exp", storage=url)
    store = optuna.artifacts.FileSystemArtifactStore(str(_store(folder)))
    for trial in study.trials:
        metas = {m.filename: m for m in optuna.artifacts.get_all_artifact_meta(trial, storage=study_storage(study))}
        assert set(metas) == {"assignment.json", "model.mpq"}
        target = tmp_path / f"{trial.number}.mpq"
        optuna.artifacts.download_artifact(artifact_store=store, artifact_id=metas["model.mpq"].artifact_id,
                                           file_path=str(target))
        assert target.read_bytes() == (Path(trial.user_attrs["artefacts"]) / "model.mpq").read_bytes()


def _store(folder: Path) -> Path:
    """The study's artifact store: ``mpsearch-studies/exp-<id>/optuna-artifacts``."""
    (found,) = (folder / "mpsearch-studies").glob("exp-*/optuna-artifacts")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
        return response.read()


def test_optuna_dashboard_reads_the_study(study_db):
    """Optuna Dashboard, started on the study, serves the named objectives, the front and the artefacts."""
    folder, url = study_db
    port = _free_port()
    store = _store(folder)
    script = textwrap.dedent("""\
        import sys
        from optuna_dashboard._cli import main
        sys.argv = ["optuna-dashboard", *sys.argv[1:]]
        main()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, url, "--host", "127.0.0.1", "--port", str(port),
                             "--artifact-dir", str(store), "--server", "wsgiref", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.3)
        (entry,) = [s for s in studies if s["study_name"] == "exp"]
        detail = json.loads(_get(f"{base}/api/studies/{entry['study_id']}"))
        assert detail["objective_names"] == ["accuracy", "bitops", "size"]
        study = optuna.load_study(study_name="exp", storage=url)
        assert sorted(t["number"] for t in detail["best_trials"]) == sorted(t.number for t in study.best_trials)
        for shown in detail["best_trials"]:
            files = {a["filename"]: a for a in shown["artifacts"]}
            assert set(files) >= {"assignment.json", "model.mpq"}
            body = _get(f"{base}/artifacts/{entry['study_id']}/{shown['trial_id']}/"
                        f"{files['assignment.json']['artifact_id']}")
            folder_of = Path(study.trials[shown["number"]].user_attrs["artefacts"])
            assert body == (folder_of / "assignment.json").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
