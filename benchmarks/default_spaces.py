"""What each strategy's default space gives: a few trials drawn from it, one float start.

Command (repository root; LeNet-5 on the embedded MNIST subset, about a minute a trial on one core)::

    python benchmarks/default_spaces.py --strategies fracbits,bitpruning,smol,alq --trials 4

    MPSEARCH_DATA=DIR python benchmarks/default_spaces.py --data mnist --epochs 1

Trains the float start once (``--pretrain-epochs``, into ``--cache``, a temporary
folder by default, reused by later runs with the same settings), then runs
``--trials`` trials per strategy with parameters drawn by Optuna's random sampler
from the strategy's default space (no ``space`` overrides; ``--params JSON`` fixes
some instead), each for ``--epochs`` epochs, as a study's trials are. Prints
each trial's parameters, validation accuracy, BitOPs and average weight and input
bits, the learned widths before discretisation where the strategy records them, and
per strategy the spread (smallest and largest) of average weight bits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import optuna

from mpsearch.float_start import make_float_start
from mpsearch.weights import FLOAT_START_FILE
from mpsearch.host import PluginHost
from mpsearch.spec import Param, parse_spec
from mpsearch.trial import run_trial


def make_spec(data: str, epochs: int, pretrain: int, weights: str | None = None):
    raw = {
        "study": {"name": "default-spaces", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 0},
        "model": {"name": "lenet5", **({"weights": weights} if weights else {})},
        "data": {"name": data, "validation_fraction": 0.1},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 0.05, "device": "cpu",
                     "pretrain_epochs": 0 if weights else pretrain},
        "strategy": [{"name": "uniform"}],
        "resources": {"executor": "local"},
    }
    if data == "mnist":
        raw["data"]["root"] = os.environ.get("MPSEARCH_DATA", "data")
    return parse_spec(raw, source="bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", default="fracbits,bitpruning,smol,alq")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--data", default="mnist-mini")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    ap.add_argument("--params", default="{}", help="JSON: parameters fixed instead of drawn")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "mpsearch-bench-float-start"))
    args = ap.parse_args()

    host = PluginHost(entry_points=False)
    key = hashlib.sha256(f"{args.data}-{args.pretrain_epochs}".encode()).hexdigest()[:12]
    folder = Path(args.cache) / key
    if not (folder / FLOAT_START_FILE).exists():
        started = time.perf_counter()
        record = make_float_start(make_spec(args.data, 1, args.pretrain_epochs), host, folder)
        print(f"float start: {args.pretrain_epochs} epochs, {100 * record['val_accuracy']:.1f} % validation, "
              f"{time.perf_counter() - started:.0f} s")
    spec = make_spec(args.data, args.epochs, args.pretrain_epochs, str(folder / FLOAT_START_FILE))
    for name in args.strategies.split(","):
        strategy = host.strategies.get(name)()
        fixed = {k: Param(value=v) for k, v in json.loads(args.params).items()}
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
        bits = []
        for _ in range(args.trials):
            params = strategy.suggest(study.ask(), fixed, name)
            drawn = {k: v for k, v in params.items() if k in fixed or not strategy.parameters.get(k) or
                     not strategy.parameters[k].fixed}
            outcome = run_trial(spec, 0, name, params)
            if outcome.failed:
                print(f"{name:10s} {json.dumps(drawn, default=str)}: FAILED {outcome.attrs['fail_reason']}")
                continue
            a = outcome.attrs
            bits.append(a["average_weight_bits"])
            print(f"{name:10s} {json.dumps(drawn, default=str)}: accuracy {outcome.values['accuracy']:.4f}, "
                  f"{outcome.values['bitops']:.4f} GBitOPs, {a['average_weight_bits']:.2f} weight / "
                  f"{a['average_activation_bits']:.2f} input bits, {a['seconds']:.0f} s", flush=True)
            if "search_widths" in a:  # the learned widths before discretisation, per group
                widths = a["search_widths"].items()
                print("           learned: " + ", ".join(f"{g} {w:.2f}" for g, w in widths))
        if bits:
            print(f"{name:10s} average weight bits over {len(bits)} trials: "
                  f"{min(bits):.2f} to {max(bits):.2f}", flush=True)


if __name__ == "__main__":
    main()
