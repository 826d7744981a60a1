"""Study wall time on this machine: the quickstart, Ray's start-up share, and 1 vs 2 concurrent trials.

1. Runs ``mpsearch study create studies/quickstart.toml`` exactly as the README
   does (in a temporary folder) and reports its wall time and the share of it
   that Ray's start-up took (recorded by the study itself in its ``runs`` attribute).
2. Runs the same small, fixed workload (uniform 4-bit QAT of LeNet-5 on the
   embedded MNIST, identical trials) with ``max_concurrent`` 1 and then 2 and
   reports trials per hour of each and their ratio. Trials per hour count the
   time after Ray started, so the ratio compares execution, not start-up.

    python benchmarks/study_throughput.py [--trials 6] [--skip-quickstart]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIXED = """\
[study]
name = "throughput-{c}"
objectives = ["accuracy", "bitops"]
sampler = "random"
n_trials = {n}
[model]
name = "lenet5"
[data]
name = "mnist-mini"
[training]
epochs = 1
[[strategy]]
name = "uniform"
space.bits = 4
[resources]
cpus_per_trial = 1
max_concurrent = {c}
executor = "ray"
"""


def run(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - started


def last_run(storage: str, name: str) -> dict:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return study.user_attrs["runs"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--skip-quickstart", action="store_true")
    args = parser.parse_args()
    mpsearch = [sys.executable, "-m", "mpsearch.cli"]
    print(f"# study throughput, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        storage = f"sqlite:///{work / 'mpsearch.db'}"
        if not args.skip_quickstart:
            wall = run(mpsearch + ["study", "create", str(ROOT / "studies" / "quickstart.toml"),
                                   "--quiet"], work)
            record = last_run(f"sqlite:///{work / 'mpsearch.db'}", "quickstart")
            ray_start = record.get("ray_start_seconds", 0.0)
            print(f"quickstart: {wall:.1f} s wall for {record['trials']} trials; Ray start-up "
                  f"{ray_start:.1f} s ({100 * ray_start / wall:.1f} %)")
        per_hour = {}
        for concurrent in (1, 2):
            spec = work / f"fixed-{concurrent}.toml"
            spec.write_text(textwrap.dedent(FIXED.format(c=concurrent, n=args.trials)))
            wall = run(mpsearch + ["study", "create", str(spec), "--storage", storage, "--quiet"], work)
            record = last_run(storage, f"throughput-{concurrent}")
            busy = record["seconds"] - record.get("ray_start_seconds", 0.0)
            per_hour[concurrent] = 3600 * args.trials / busy
            print(f"max_concurrent={concurrent}: {args.trials} trials in {busy:.1f} s after Ray "
                  f"started ({wall:.1f} s wall) -> {per_hour[concurrent]:.0f} trials/hour")
        print(f"ratio 2 vs 1 concurrent: {per_hour[2] / per_hour[1]:.2f}x")


if __name__ == "__main__":
    main()
