"""Hutchinson's trace estimate against the exact trace of one layer's Hessian block, in one run.

    python benchmarks/hutchinson_trace.py --weights float-start.pt            # LeNet-5's fc2 (5,000 weights)
    python benchmarks/hutchinson_trace.py --weights float-start.pt --layer conv1

The exact trace is the sum of the Hessian's diagonal, read from one
Hessian-vector product per weight (batched, ``is_grads_batched``); the estimates
are :func:`mpsearch.sensitivity.hutchinson_traces` after 1 to 100 passes over the
same images. Prints each estimate, its relative error and its standard error.
Without ``--weights``, LeNet-5 is first trained for 2 epochs on 1,000 images of
mnist-mini (the conformance suite's float start).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from mpsearch.weights import load_weights
from mpsearch.host import PluginHost
from mpsearch.sensitivity import hutchinson_traces


def exact_trace(model, weight, batches, chunk: int = 500) -> float:
    """Σ_b (n_b / N) Σ_i (H_b)_ii, the diagonal read from batched Hessian-vector products."""
    total = sum(len(y) for _, y in batches)
    n = weight.numel()
    trace = 0.0
    for x, y in batches:
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), weight, create_graph=True)
        diagonal = 0.0
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n))
            basis = torch.zeros(len(idx), n)
            basis[torch.arange(len(idx)), idx] = 1.0
            (rows,) = torch.autograd.grad(g, weight, grad_outputs=basis.view(len(idx), *weight.shape),
                                          retain_graph=True, is_grads_batched=True)
            diagonal += float(rows.reshape(len(idx), n)[torch.arange(len(idx)), idx].sum())
        trace += len(y) / total * diagonal
    return trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="LeNet-5's state dict (default: train one)")
    ap.add_argument("--layer", default="fc2")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    host = PluginHost(entry_points=False)
    model = host.models.get("lenet5").create(10, (1, 28, 28), seed=0)
    weights = args.weights
    if weights is None:
        from mpsearch.testing.strategies_suite import train_float_start

        weights = train_float_start(tempfile.mkdtemp())
    model.load_state_dict(load_weights(weights, model))
    model.eval()
    data = host.datasets.get("mnist-mini").load(None, "train")
    batches, kept = [], 0
    for x, y in data.batches(args.batch_size):
        if kept >= args.images:
            break
        batches.append((x[:args.images - kept], y[:args.images - kept]))
        kept += len(batches[-1][1])
    weight = dict(model.named_modules())[args.layer].weight
    started = time.perf_counter()
    exact = exact_trace(model, weight, batches)
    print(f"lenet5 {args.layer}: {weight.numel()} weights, {kept} images; exact trace {exact:.6g} "
          f"({time.perf_counter() - started:.1f} s, {weight.numel()} Hessian-vector products per batch)")
    print(f"{'passes':>6}  {'estimate':>10}  {'rel. error':>10}  {'std. error':>10}  seconds")
    for passes in (1, 5, 20, 100):
        started = time.perf_counter()
        found = hutchinson_traces(model, batches, {args.layer: weight}, tolerance=0.0, max_iterations=passes,
                                  generator=torch.Generator().manual_seed(args.seed))
        estimate, stderr = found.traces[args.layer], found.stderr[args.layer]
        print(f"{passes:>6}  {estimate:>10.6g}  {abs(estimate - exact) / abs(exact):>10.2%}  "
              f"{stderr / abs(exact):>10.2%}  {time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
