"""Per strategy, how its trials compare with the study's uniform baseline: one table from a finished study.

Command (after a study ran, e.g. ``studies/mnist-lenet5.toml``)::

    python benchmarks/strategy_table.py mnist-lenet5 [--storage sqlite:///mpsearch.db]
        [--baseline-bits 4] [--accuracy 0.99] [--cost bitops]

Reads the study (nothing is imported from its spec) and prints, per strategy, over
its completed trials:

- the spread of average weight bits (smallest to largest), and of the cost;
- the best validation accuracy among trials that cost no more than the uniform
  ``--baseline-bits`` trial (the lowest-cost uniform trial at those widths);
- the lowest average weight bits among trials at or above ``--accuracy``;
- the hypervolume of its own trials (the study's reference point, as ``study show``);
- epochs trained and trial seconds, both summed, and the search's own seconds where
  the strategy records them (``rl``: ``search_seconds``; ``hawq``: Hessian + ILP);
- trials that failed, with the first failure's reason.

The float start and the uniform baseline are printed above the table.
"""

from __future__ import annotations

import argparse
import math
import os

import optuna

from mpsearch import report
from mpsearch import record as T


def _search_seconds(attrs: dict) -> float:
    if "search_seconds" in attrs:
        return float(attrs["search_seconds"])
    if "hessian_seconds" in attrs:
        return float(attrs["hessian_seconds"]) + float(attrs.get("ilp_seconds", 0.0))
    return math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--storage", default=os.environ.get("MPSEARCH_STORAGE", "sqlite:///mpsearch.db"))
    ap.add_argument("--baseline-bits", type=int, default=4)
    ap.add_argument("--accuracy", type=float, default=0.99)
    ap.add_argument("--cost", default="bitops")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    names = report.objective_names(study)
    cost = names.index(args.cost)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]

    start = study.user_attrs.get("float_start")
    if start:
        print(f"float start: {start.get('epochs')} epoch(s), validation {start.get('val_accuracy'):.4f}, "
              f"test {start.get('test_accuracy'):.4f}, {start.get('seconds'):.0f} s")
    uniform = [t for t in done if t.user_attrs.get(T.ATTR_STRATEGY) == "uniform"
               and t.user_attrs.get(T.ATTR_WEIGHT_BITS) == args.baseline_bits
               and t.user_attrs.get(T.ATTR_ACT_BITS) == args.baseline_bits]
    if not uniform:
        raise SystemExit(f"study {args.study!r} has no completed uniform {args.baseline_bits}-bit trial.")
    base = min(uniform, key=lambda t: t.values[cost])
    limit = base.values[cost]
    print(f"uniform {args.baseline_bits}-bit (trial {base.number}): accuracy {base.values[0]:.4f}, "
          f"{args.cost} {limit:.6g}")

    summary = report.strategy_summary(study)
    header = (f"{'strategy':<11} {'done':>4} {'fail':>4}  {'weight bits':>11}  {args.cost + ' spread':>17}  "
              f"{'best acc <= base':>16}  {'min w bits @' + format(args.accuracy, '.3g'):>15}  "
              f"{'hypervolume':>11}  {'epochs':>6}  {'seconds':>7}  {'search s':>8}")
    print(header)
    for strategy in summary.index:
        own = [t for t in done if t.user_attrs.get(T.ATTR_STRATEGY) == strategy]
        failed = [t for t in trials if t.user_attrs.get(T.ATTR_STRATEGY) == strategy
                  and t.state == optuna.trial.TrialState.FAIL]
        bits = [t.user_attrs[T.ATTR_WEIGHT_BITS] for t in own]
        costs = [t.values[cost] for t in own]
        under = [t.values[0] for t in own if t.values[cost] <= limit * (1 + 1e-9)]
        accurate = [t.user_attrs[T.ATTR_WEIGHT_BITS] for t in own if t.values[0] >= args.accuracy]
        search = [s for s in (_search_seconds(t.user_attrs) for t in own) if not math.isnan(s)]
        row = summary.loc[strategy]
        spread_b = f"{min(bits):.2f}-{max(bits):.2f}" if bits else "-"
        spread_c = f"{min(costs):.4g}-{max(costs):.4g}" if costs else "-"
        print(f"{strategy:<11} {len(own):>4} {len(failed):>4}  {spread_b:>11}  {spread_c:>17}  "
              f"{(f'{max(under):.4f}' if under else '-'):>16}  "
              f"{(f'{min(accurate):.3g}' if accurate else '-'):>15}  {row['hypervolume']:>11.5g}  "
              f"{row[T.ATTR_EPOCHS]:>6.3g}  {row[T.ATTR_SECONDS]:>7.0f}  "
              f"{(f'{sum(search):.0f}' if search else '-'):>8}")
        for t in failed[:1]:
            print(f"{'':<11} trial {t.number} failed: {t.user_attrs.get(T.ATTR_FAIL, '')[:150]}")


if __name__ == "__main__":
    main()
