"""Exported models against what their study recorded: ONNX Runtime's accuracy, packed size, CPU time.

    mpsearch study create studies/quickstart.toml --executor local --n-trials 16   # 2 trials per strategy
    python benchmarks/onnx_accuracy.py quickstart                                    # one trial per strategy

For each strategy, its most accurate completed trial (validation accuracy) is
exported with ``mpsearch export`` to ONNX. Then, per trial:

- ONNX Runtime's test accuracy, from the ONNX file and the raw uint8 test images
  alone: the preprocessing is read from the file's ``metadata_props``, and images
  go in batches of its ``mpsearch.eval_batch_size`` in the split's order (min-max
  input ranges are per batch, as the trial evaluated them); against the trial's
  recorded test accuracy (points = percentage points);
- the share of test images where ONNX Runtime and the torch model
  (``mpsearch.load_trial``) predict the same class;
- the packed file's bytes (``model.mpq``: all, and its weights section) against the
  ``size`` objective of the trial's assignment, in bytes;
- ONNX Runtime's CPU time for the test split, the quantized (QDQ) model against the
  float model's ONNX export (the same network and weights, no quantization), median
  of ``--repeats`` interleaved passes, and their ratio (above 1: QDQ is slower).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import mpsearch
from mpsearch.export import EVAL_BATCH, export_trial, float_onnx, read_packed
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.report import trials_frame
from mpsearch.storage import load_study
from mpsearch.study import stored_spec


def session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnx_predictions(path: Path, images: np.ndarray, threads: int) -> np.ndarray:
    """Classes ONNX Runtime predicts, from the file and the raw images alone."""
    proto = onnx.load(str(path))
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props if p.key.startswith("mpsearch.input")
            or p.key == "mpsearch.eval_batch_size"}
    mean = np.array(meta["mpsearch.input_mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.array(meta["mpsearch.input_std"], np.float32).reshape(1, -1, 1, 1)
    batch = int(meta["mpsearch.eval_batch_size"])
    run = session(proto, threads)
    out = [run.run(None, {"input": (images[i:i + batch].astype(np.float32) / 255 - mean) / std})[0].argmax(1)
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def timed(run: ort.InferenceSession, batches: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for x in batches:
        run.run(None, {"input": x})
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--storage", default="sqlite:///mpsearch.db")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime's intra-op threads")
    ap.add_argument("-o", "--output", default=None, help="folder to keep the ONNX files in")
    args = ap.parse_args()
    host = PluginHost()
    study = load_study(args.storage, args.study)
    spec = stored_spec(study, host)
    source = host.datasets.get(spec.data.name)
    from mpsearch.data import resolve_root

    test = source.load(resolve_root(spec.data.root) if source.needs_root else None, "test", **spec.data.options)
    images, labels = test.images.numpy(), test.labels.numpy()
    profile = model_profile(host.models.get(spec.model.name), test.num_classes, test.input_shape)
    size_objective = host.objectives.get("size")
    backend = host.backends.get(spec.backend)
    frame = trials_frame(study).query("state == 'COMPLETE'")
    chosen = [int(rows.sort_values(["accuracy", "number"], ascending=[False, True])["number"].iloc[0])
              for _, rows in frame.groupby("strategy", sort=False)]
    folder = Path(args.output or tempfile.mkdtemp(prefix="onnx-accuracy-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"study {args.study}: {len(images)} test images, ONNX Runtime {ort.__version__}, "
          f"{args.threads} threads, batch {EVAL_BATCH}")
    header = (f"{'trial':>5} {'strategy':<10} {'recorded':>8} {'ORT':>7} {'diff pt':>7} {'agree':>7} "
              f"{'size obj B':>10} {'weights B':>9} {'file B':>8} {'file/obj':>8} {'QDQ s':>6} {'float s':>7} "
              f"{'ratio':>5}")
    print(header)
    worst_diff, worst_agree = 0.0, 1.0
    for number in sorted(chosen):
        t = study.trials[number]
        path, _ = export_trial(study, t, folder / f"trial-{number:05d}.onnx", force=True, host=host)
        predicted = onnx_predictions(path, images, args.threads)
        accuracy = float((predicted == labels).mean())
        loaded = mpsearch.load_trial(study, number, host=host)
        with torch.no_grad():
            torch_predicted = torch.cat([loaded.model(x).argmax(1) for x, _ in test.batches(EVAL_BATCH)]).numpy()
        agree = float((torch_predicted == predicted).mean())
        recorded = float(t.user_attrs["test_accuracy"])
        packed = Path(t.user_attrs["artefacts"]) / "model.mpq"
        header_, _ = read_packed(packed)
        weights = header_["sections"]["weights"][1] - header_["sections"]["weights"][0]
        objective = size_objective.evaluate(profile, loaded.assignment, backend) * 1e6
        file_bytes = packed.stat().st_size
        # time: the QDQ model against the same network's float export, interleaved
        quantized = session(onnx.load(str(path)), args.threads)
        plain = session(float_onnx(loaded.model, test.input_shape), args.threads)
        batches = [x.numpy() for x, _ in test.batches(EVAL_BATCH)]
        timed(quantized, batches), timed(plain, batches)  # warm-up
        q_times, f_times = [], []
        for _ in range(args.repeats):
            q_times.append(timed(quantized, batches))
            f_times.append(timed(plain, batches))
        q, f = statistics.median(q_times), statistics.median(f_times)
        diff = 100 * (accuracy - recorded)
        worst_diff, worst_agree = max(worst_diff, abs(diff)), min(worst_agree, agree)
        print(f"{number:>5} {t.user_attrs['strategy']:<10} {recorded:>8.4f} {accuracy:>7.4f} {diff:>+7.2f} "
              f"{agree:>7.2%} {objective:>10.0f} {weights:>9} {file_bytes:>8} {file_bytes / objective:>8.3f} "
              f"{q:>6.3f} {f:>7.3f} {q / f:>5.2f}")
    print(f"largest accuracy difference {worst_diff:.2f} points; lowest agreement {worst_agree:.2%}; "
          f"ONNX files in {folder}")


if __name__ == "__main__":
    main()
