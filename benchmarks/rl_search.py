"""HAQ's search as ``rl`` runs it: cost per episode, the greedy policy learning, the result beside random's.

    python benchmarks/rl_search.py                          # LeNet-5 on the embedded MNIST subset
    python benchmarks/rl_search.py --budgets 0.15,0.25,0.4  # one rl and one random trial per budget

Trains a float start once (2 epochs of LeNet-5 on the embedded MNIST subset, as the
quickstart does) into a temporary folder, then, in one process on ``--threads``
threads, prints the post-training accuracy of a few uniform widths under HAQ's
linear quantizer with clips by least squared error (``rl``'s default) and by KL
divergence (HAQ's), and for each budget (a fraction of the all-8-bit BitOPs) runs:

1. an ``rl`` trial at its defaults: HAQ's reward without fine-tuning, every episode
   one evaluation of the calibrated candidate;
2. an ``rl`` trial whose candidates each fine-tune one epoch over 2,000 training
   images before their reward (HAQ's other reward, and ``rl``'s default before),
   for ``--finetuned-episodes`` episodes (only at the first budget: its cost per
   episode does not depend on the budget);
3. a ``random`` trial at the same budget, drawing 6 candidates (the middle of its range).

Every trial then fine-tunes its chosen widths for ``[training] epochs = 1``. Printed:
seconds per episode of 1 and 2 and their ratio, the greedy policy's reward at each
of its checks (it rises as the agent learns), and each trial's validation accuracy,
BitOPs and average weight and activation bits.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mpsearch.float_start import make_float_start
from mpsearch.host import PluginHost
from mpsearch.spec import parse_spec
from mpsearch.record import ATTR_ACT_BITS, ATTR_FAIL, ATTR_WEIGHT_BITS
from mpsearch.trial import run_trial


def make_spec(strategy: str):
    return parse_spec({
        "study": {"name": "rl-bench", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 0},
        "model": {"name": "lenet5"}, "data": {"name": "mnist-mini", "validation_fraction": 0.1},
        "training": {"pretrain_epochs": 2, "epochs": 1, "batch_size": 128, "lr": 0.05, "device": "cpu"},
        "strategy": [{"name": strategy}], "resources": {"executor": "local"}}, source="bench")


def trial(strategy: str, params: dict, artefacts: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    out = run_trial(make_spec(strategy), 0, strategy, params, artefacts=artefacts)
    if out.failed:
        raise SystemExit(f"{strategy} {params}: {out.attrs[ATTR_FAIL]}")
    return {**out.attrs, **out.values}, time.perf_counter() - started


def calibrations(artefacts: Path) -> None:
    """Post-training accuracy of uniform widths, linear quantizer, clips by each calibration."""
    import copy

    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.quant import LinearQuantizer, quantize_at, quantizers
    from mpsearch.strategy import START_FLOAT
    from mpsearch.trial import make_context, plugin_host

    context = make_context(make_spec("rl"), 0, 0, plugin_host(()), start=START_FLOAT, artefacts=artefacts)
    print("post-training accuracy, linear quantizer (weight bits / activation bits):")
    for w, a in ((8, 2), (2, 2), (2, 8), (3, 3), (4, 4)):
        scores = []
        for method in ("mse", "kl"):
            model = quantize_at(copy.deepcopy(context.model), context.profile,
                                PrecisionAssignment.uniform(context.profile, w, a), "linear")
            for q in quantizers(model).values():
                if isinstance(q, LinearQuantizer):
                    q.calibration = method
            context.calibrate(model)
            scores.append(f"{method} {context.evaluate(model):.4f}")
        print(f"  {w}/{a}: " + ", ".join(scores))


def line(name: str, attrs: dict, seconds: float) -> str:
    return (f"  {name:<22} accuracy {attrs['accuracy']:.4f}  {attrs['bitops']:.5f} GBitOPs  "
            f"weights {attrs[ATTR_WEIGHT_BITS]:.2f} b  activations {attrs[ATTR_ACT_BITS]:.2f} b  "
            f"trial {seconds:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="0.25", help="comma-separated fractions of the 8-bit BitOPs")
    ap.add_argument("--episodes", type=int, default=None, help="rl's episodes (default: its own)")
    ap.add_argument("--finetuned-episodes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        artefacts = Path(tmp)
        record = make_float_start(make_spec("rl"), PluginHost(entry_points=False), artefacts)
        print(f"float start: {record['val_accuracy']:.4f} validation accuracy, {record['seconds']:.0f} s")
        calibrations(artefacts)
        own = {} if args.episodes is None else {"episodes": args.episodes}
        for k, budget in enumerate(budgets):
            print(f"budget {budget} of the 8-bit BitOPs")
            rl, rl_seconds = trial("rl", {"budget": budget, **own}, artefacts)
            print(line("rl", rl, rl_seconds))
            print(f"    {rl['episodes']} episodes, {rl['seconds_per_episode']:.3f} s each "
                  f"({rl['agent_seconds'] / (rl['episodes'] + len(rl['greedy_reward'])):.3f} s of it the "
                  f"agent's), calibration {rl['calibration_seconds']:.1f} s")
            print("    greedy reward:", ", ".join(f"{e}: {r:+.4f}" for e, r in
                                                  zip(rl["greedy_episode"], rl["greedy_reward"])))
            tenth = max(1, len(rl["episode_reward"]) // 10)
            rewards = rl["episode_reward"]
            print("    mean reward per tenth of the episodes:", ", ".join(
                f"{sum(rewards[i:i + tenth]) / len(rewards[i:i + tenth]):+.4f}"
                for i in range(0, len(rewards), tenth)))
            if k == 0:
                tuned, tuned_seconds = trial("rl", {"budget": budget, "episodes": args.finetuned_episodes,
                                                    "warmup": 2, "finetune_epochs": 1.0}, artefacts)
                per = tuned["seconds_per_episode"]
                print(line("rl, fine-tuned reward", tuned, tuned_seconds))
                print(f"    {tuned['episodes']} episodes, {per:.3f} s each; an episode without "
                      f"fine-tuning costs {rl['seconds_per_episode'] / per:.3f} of one with it "
                      f"({per / rl['seconds_per_episode']:.1f}x more episodes per second)")
            rnd, rnd_seconds = trial("random", {"budget": budget, "candidates": 6}, artefacts)
            print(line(f"random ({rnd['n_candidates']} candidates)", rnd, rnd_seconds))


if __name__ == "__main__":
    main()
