"""Study wall time on this machine: the quickstart, Ray's start-up share, and 1 vs 2 concurrent trials.

1. Runs ``mpsearch study create studies/quickstart.toml`` exactly as the README
   does (in a temporary folder) and reports its wall time, the share of it that
   Ray's start-up took (recorded by the study itself in its ``runs`` attribute),
   the float start's seconds, and the front's hypervolume. Then runs the same
   quickstart without a float start (``pretrain_epochs = 0``: every trial from the
   seeded initialisation) and prints both ratios, shared float start against none.
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


def front(storage: str) -> tuple[float, int]:
    """The study's hypervolume (reference: accuracy 0, the float model's cost) and front size."""
    import optuna

    from mpsearch import report

    study = optuna.load_study(study_name="quickstart", storage=storage)
    return report.study_hypervolume(study).value, len(study.best_trials)


def float_start_seconds(storage: str) -> float:
    import optuna

    record = optuna.load_study(study_name="quickstart", storage=storage).user_attrs.get("float_start")
    return float(record["seconds"]) if record else 0.0


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
            quickstart = (ROOT / "studies" / "quickstart.toml").read_text()
            assert "pretrain_epochs = 2" in quickstart
            no_start = work / "no-start" / "quickstart.toml"
            no_start.parent.mkdir()
            no_start.write_text(quickstart.replace("pretrain_epochs = 2", "pretrain_epochs = 0"))
            results = {}
            for label, spec, folder in (("shared float start", ROOT / "studies" / "quickstart.toml", work),
                                        ("no float start", no_start, no_start.parent)):
                wall = run(mpsearch + ["study", "create", str(spec), "--quiet"], folder)
                url = f"sqlite:///{folder / 'mpsearch.db'}"
                record = last_run(url, "quickstart")
                results[label] = (wall, front(url))
                ray_start = record.get("ray_start_seconds", 0.0)
                start = float_start_seconds(url)
                print(f"quickstart, {label}: {wall:.1f} s wall for {record['trials']} trials (float start "
                      f"{start:.1f} s); Ray start-up {ray_start:.1f} s ({100 * ray_start / wall:.1f} %); "
                      f"front of {results[label][1][1]} trial(s), hypervolume {results[label][1][0]:.4f}")
            (w1, (h1, _)), (w0, (h0, _)) = results["shared float start"], results["no float start"]
            print(f"ratio shared float start vs none: wall {w1 / w0:.2f}x, hypervolume {h1 / h0:.4f}x")
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
