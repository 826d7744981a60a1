"""Overhead of per-epoch checkpoints: the same trial with and without them, in one run.

    python benchmarks/checkpoint_overhead.py                       # LeNet-5 on the embedded MNIST subset
    MPSEARCH_DATA=DIR python benchmarks/checkpoint_overhead.py --model resnet20 --data cifar10

Runs a uniform 4-bit QAT trial (a resumable strategy) ``--repeats`` times each way,
alternating, and prints the median wall time of each, their ratio, the size of one
checkpoint and the number written. Checkpoints go to a temporary folder on the
same disk as the study's artefacts would.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mpsearch.checkpoint import LAST
from mpsearch.spec import parse_spec
from mpsearch.record import ATTR_CHECKPOINTS
from mpsearch.checkpoint import checkpoint_folder
from mpsearch.trial import run_trial

PARAMS = {"weight_bits": 4, "act_bits": 4}


def make_spec(model: str, data: str, epochs: int, subset: int, checkpoint: bool, device: str):
    return parse_spec({
        "study": {"name": "ck-bench", "objectives": ["accuracy", "bitops"], "n_trials": 1},
        "model": {"name": model}, "data": {"name": data, "train_subset": subset},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 0.05, "device": device},
        "strategy": [{"name": "uniform"}], "resources": {"checkpoint": checkpoint}}, source="bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--data", default="mnist-mini")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--subset", type=int, default=5000, help="training images per epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    specs = {on: make_spec(args.model, args.data, args.epochs, args.subset, on, args.device)
             for on in (False, True)}
    run_trial(specs[False], 0, "uniform", PARAMS)  # warm-up: data loading, allocator, kernels
    times: dict[bool, list[float]] = {False: [], True: []}
    saved, size = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for on in (False, True):
                artefacts = Path(tmp) / f"{r}-{on}"
                folder = checkpoint_folder(artefacts, 0)

                def probe(epoch, metrics, folder=folder):  # one checkpoint's size, as written
                    nonlocal size
                    if (folder / LAST).exists():
                        size = (folder / LAST).stat().st_size
                t = time.perf_counter()
                out = run_trial(specs[on], 0, "uniform", PARAMS, artefacts=artefacts, reporter=probe if on else None)
                times[on].append(time.perf_counter() - t)
                if on:
                    saved = out.attrs[ATTR_CHECKPOINTS]["saved"]
    plain, ck = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.model} on {args.data}, {args.epochs} epochs of {args.subset} images, "
          f"{args.repeats} runs each (median)")
    print(f"  without checkpoints: {plain:.2f} s")
    print(f"  with checkpoints:    {ck:.2f} s  ({saved} written, {size / 1e6:.2f} MB each)")
    print(f"  ratio with/without:  {ck / plain:.3f}")


if __name__ == "__main__":
    main()
