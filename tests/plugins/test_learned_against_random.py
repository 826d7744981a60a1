"""The learned strategies against ``random`` on real MNIST, at equal trial epochs (slow).

Every trial starts from one float start (LeNet-5, 2 epochs on 12,000 MNIST training
images) and trains for 1 epoch of its own, as a study's trials do. Each learned
strategy runs three trials across its default space's cost range; ``random`` runs
three at budgets across the same range. A strategy must spread its trials over
the cost axis, and its best point must not be dominated by what ``random`` reaches
at or under that point's cost. Measured (accuracy at GBitOPs; ALQ at MB):

- random: 95.9 % at 0.022, 96.9 % at 0.038, 97.2 % at 0.070 (size: 94.9 % at 0.108 MB,
  96.6 % at 0.118, 96.5 % at 0.213);
- fracbits: 96.7 % at 0.022, 97.1 % at 0.043, 97.2 % at 0.074 (4.8 to 6.9 bits per weight);
- bitpruning: 93.9 % at 0.014, 96.4 % at 0.021, 97.0 % at 0.059 (3.0 to 5.9);
- smol: 96.4 % at 0.012, 97.3 % at 0.055, 97.3 % at 0.138 (2.0 to 7.1);
- alq: 96.0 % at 0.030 MB, 96.0 % at 0.059, 96.2 % at 0.117 (0.5 to 2.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpsearch.float_start import make_float_start
from mpsearch.host import PluginHost
from mpsearch.spec import parse_spec
from mpsearch.trial import run_trial

pytestmark = pytest.mark.slow

SUBSET = 12_000
RANDOM_BUDGETS = (0.15, 0.3, 0.5)  # of the all-8-bit cost; uniform 4-bit is 0.25 of it
# Three points of each strategy's default space, from its cheapest end to its dearest.
LEARNED = {
    "fracbits": [{"target_fraction": f} for f in (0.15, 0.3, 0.5)],
    "bitpruning": [{"gamma": g, "split": 0.8} for g in (5.0, 0.5, 0.05)],
    "smol": [{"lam": lam, "granularity": "parameter", "zpa": False, "split": 0.6}
             for lam in (1e-5, 1e-7, 1e-9)],
    "alq": [{"target_bits": b, "rounds": 2, "prune_ratio": 0.3, "i_max": 6, "activation_bits": 0}
            for b in (0.5, 1.0, 2.0)],
}
# Intra-op threads change the order of float sums, and so what a trial learns: the points are
# computed at a fixed count (the 2 cores of the machines the figures above come from), not at
# whatever count an earlier test's trial left the process at.
THREADS = 2
# ALQ's multi-bit weights are priced by storage (Eq. 26) with float activations: it is
# compared on size, the others on BitOPs.
OBJECTIVE = {"alq": "size"}


def _spec(root: Path, objective: str, weights: str | None = None, pretrain: int = 0):
    return parse_spec({
        "study": {"name": "learned-vs-random", "objectives": ["accuracy", objective], "n_trials": 1,
                  "seed": 0},
        "model": {"name": "lenet5", **({"weights": weights} if weights else {})},
        "data": {"name": "mnist", "root": str(root), "validation_fraction": 0.1, "train_subset": SUBSET},
        "training": {"epochs": 1, "batch_size": 128, "lr": 0.05, "device": "cpu",
                     "pretrain_epochs": pretrain},
        "strategy": [{"name": "uniform"}],
        "resources": {"executor": "local"},
    })


@pytest.fixture(scope="module", autouse=True)
def _fixed_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def float_start(shared_datasets, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mnist-float-start")
    record = make_float_start(_spec(shared_datasets, "bitops", pretrain=2), PluginHost(entry_points=False),
                              folder)
    assert record["val_accuracy"] > 0.95
    return record["path"]


@pytest.fixture(scope="module")
def points(shared_datasets, float_start):
    """``points(strategy, objective)``: (cost, accuracy, average weight bits) of its trials, run once."""
    cache: dict[tuple[str, str], list[tuple[float, float, float]]] = {}

    def get(strategy: str, objective: str) -> list[tuple[float, float, float]]:
        if (strategy, objective) not in cache:
            spec = _spec(shared_datasets, objective, weights=float_start)
            runs = ([{"budget": b, "candidates": 4} for b in RANDOM_BUDGETS] if strategy == "random"
                    else LEARNED[strategy])
            found = []
            for params in runs:
                outcome = run_trial(spec, 0, strategy, params)
                assert not outcome.failed, (strategy, params, outcome.attrs.get("fail_reason"))
                found.append((outcome.values[objective], outcome.values["accuracy"],
                              outcome.attrs["average_weight_bits"]))
            print(strategy, objective, json.dumps(found))
            cache[strategy, objective] = found
        return cache[strategy, objective]

    return get


@pytest.mark.parametrize("strategy", sorted(LEARNED))
def test_a_learned_strategy_spreads_its_trials_and_is_not_dominated_by_random(points, strategy):
    objective = OBJECTIVE.get(strategy, "bitops")
    mine, theirs = points(strategy, objective), points("random", objective)
    bits = [b for _, _, b in mine]
    assert max(bits) - min(bits) >= 1.5, mine  # its default space spreads over the cost axis
    cost, accuracy, _ = max(mine, key=lambda p: p[1])

    def random_best(at_most: float) -> float:
        return max((a for c, a, _ in theirs if c <= at_most), default=0.0)

    # Not dominated: random reaches no higher accuracy at or under the best point's cost
    # (within 0.1 %, 6 of the 6,000 validation images, a tie that counts for the strategy).
    assert accuracy >= random_best(cost) - 0.001, (mine, theirs)
    assert all(a > 0.9 for _, a, _ in mine), mine
