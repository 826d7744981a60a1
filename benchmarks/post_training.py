"""Post-training quantization of a float start against quantization-aware training at the same widths.

Trains LeNet-5's float start once (as a study does), then runs uniform trials from it at
8, 4 and 3 bits (weights and activations; DoReFa weights, PACT activations) twice: with
``epochs = 0`` (post-training: PACT's clips calibrated on 512 training images, nothing
trained) and with ``--qat-epochs`` of quantization-aware training. Prints validation and
test accuracy of each beside the float start's.

    MPSEARCH_DATA=DIR python benchmarks/post_training.py --data mnist --pretrain-epochs 4
    python benchmarks/post_training.py                      # the embedded MNIST subset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mpsearch.float_start import make_float_start
from mpsearch.host import PluginHost
from mpsearch.spec import parse_spec
from mpsearch.trial import run_trial


def spec(data: str, pretrain: int, epochs: int, weights: str | None = None):
    return parse_spec({
        "study": {"name": "post-training", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 0},
        "model": {"name": "lenet5", **({"weights": weights} if weights else {})},
        "data": {"name": data},
        "training": {"pretrain_epochs": pretrain, "epochs": epochs, "batch_size": 128, "device": "cpu"},
        "strategy": [{"name": "uniform"}],
        "resources": {"executor": "local"},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist-mini", help="mnist-mini (embedded) or mnist ($MPSEARCH_DATA)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--bits", default="8,4,3")
    args = parser.parse_args()
    host = PluginHost(entry_points=False)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        record = make_float_start(spec(args.data, args.pretrain_epochs, 0), host, Path(tmp))
        print(f"# LeNet-5 on {args.data}: float start of {args.pretrain_epochs} epoch(s) in "
              f"{time.perf_counter() - started:.0f} s: validation {record['val_accuracy']:.4f}, "
              f"test {record['test_accuracy']:.4f}")
        print("| bits | PTQ val | PTQ test | PTQ - float (val, points) | "
              f"QAT {args.qat_epochs} ep val | QAT test | QAT - float (val, points) |")
        print("|---|---|---|---|---|---|---|")
        for bits in (int(b) for b in args.bits.split(",")):
            row = []
            for epochs in (0, args.qat_epochs):
                out = run_trial(spec(args.data, 0, epochs, record["path"]), 0, "uniform", {"bits": bits})
                if out.failed:
                    raise SystemExit(f"{bits}-bit, {epochs} epoch(s): {out.attrs['fail_reason']}")
                val, test = out.values["accuracy"], out.attrs["test_accuracy"]
                row += [f"{val:.4f}", f"{test:.4f}", f"{100 * (val - record['val_accuracy']):+.2f}"]
            print(f"| {bits} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
