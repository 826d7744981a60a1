"""Seconds per epoch of a study's model on its data, float and quantized, from timed steps.

Loads the spec's training and validation splits exactly as a trial does, then times
training steps of the float model and of the same model quantized as the strategies
quantize it (learnable fractional widths: min-max as BitPruning, DoReFa + PACT as
FracBits; fixed 4-bit widths, as every strategy's fine-tuning), interleaved round by
round, and one evaluation pass over part of the validation split. An epoch is the
median step times the steps of one epoch of the training split, plus one evaluation
of the validation split (what ``fit`` does after every epoch). Use it to state how
long a study takes on a machine before running it.

    python benchmarks/epoch_time.py studies/cifar10-resnet20.toml [--steps 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--steps", type=int, default=10, help="steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mpsearch.host import PluginHost
    from mpsearch.models import model_profile
    from mpsearch.quant import (DoReFaQuantizer, FixedBits, LearnableBits, MinMaxQuantizer,
                                PACTQuantizer, quantize_model, set_compile)
    from mpsearch.spec import load_spec
    from mpsearch.training import evaluate, make_optimizer, steps_per_epoch, train_epoch
    from mpsearch.trial import load_data, pick_device

    host = PluginHost(entry_points=False)
    spec = load_spec(args.spec, host)
    device = pick_device(spec.training.device)
    set_compile(spec.training.compile)
    t = time.perf_counter()
    train, val, _ = load_data(spec)
    train, val = train.to(device), val.to(device)
    loaded = time.perf_counter() - t
    model_spec = host.models.get(spec.model.name)
    profile = model_profile(model_spec, train.num_classes, train.input_shape)
    augment = spec.data.augment
    augment = host.datasets.get(spec.data.name).augment if augment == "default" else augment
    augment = None if augment in (None, "none") else augment

    def learnable():
        return LearnableBits(4.5, min_bits=2, max_bits=8)

    families = {
        "float": None,
        "minmax learnable (BitPruning)": (lambda l: MinMaxQuantizer(learnable()),
                                          lambda l: MinMaxQuantizer(learnable())),
        "dorefa-pact learnable (FracBits)": (
            lambda l: DoReFaQuantizer(learnable()),
            lambda l: PACTQuantizer(learnable(), two_sided=l.input_signed)),
        "dorefa-pact 4-bit (fine-tuning)": (
            lambda l: DoReFaQuantizer(FixedBits(4)),
            lambda l: PACTQuantizer(FixedBits(4), two_sided=l.input_signed)),
    }
    runs = {}
    for name, factories in families.items():
        model = model_spec.create(train.num_classes, train.input_shape, seed=0)
        if factories is not None:
            quantize_model(model, profile, *factories)
        model.to(device)
        runs[name] = (model, make_optimizer(spec.training, model.parameters()))
    step_times: dict[str, list[float]] = {n: [] for n in runs}
    generator = torch.Generator().manual_seed(0)
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, (model, optimizer) in runs.items():
            t = time.perf_counter()
            train_epoch(model, train, optimizer, batch_size=spec.training.batch_size,
                        generator=generator, augment=augment, max_batches=args.steps)
            if r:
                step_times[name].append((time.perf_counter() - t) / args.steps)
    eval_images = min(len(val), 2048)
    model = runs["float"][0]
    t = time.perf_counter()
    evaluate(model, val.subset(torch.arange(eval_images)))
    eval_s = (time.perf_counter() - t) * len(val) / eval_images
    steps = steps_per_epoch(train, spec.training.batch_size)
    print(f"# {spec.model.name} on {spec.data.name}: {len(train)} training images ({steps} steps of "
          f"{spec.training.batch_size}), {len(val)} validation; {device}, {args.threads} threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; data loaded in {loaded:.0f} s")
    print(f"{'model':<36} {'s/step':>7} {'min/epoch':>10} {'x float':>8}")
    base = statistics.median(step_times["float"])
    for name, times in step_times.items():
        per_step = statistics.median(times)
        epoch = per_step * steps + eval_s
        print(f"{name:<36} {per_step:>7.3f} {epoch / 60:>10.1f} {per_step / base:>8.2f}")
    print(f"(one evaluation of the validation split: {eval_s:.0f} s, included)")
    if not math.isfinite(base):
        raise SystemExit("no steps were timed")


if __name__ == "__main__":
    main()
