"""How much a fake-quantized training step costs against the same model's float step.

For each model, one optimizer step (forward, backward, SGD update) at batch 128
is timed for the float network and for the network with fractional, learnable
bit-widths on every layer's weights and input activations (min-max as in
BitPruning; DoReFa + PACT as in FracBits), with eager and compiled kernels.
Steps are interleaved across configurations and the median is reported, so
drifting machine load affects every configuration alike. Peak memory: on CUDA
the allocator's peak during the steps; on the CPU (Linux) the growth of the
process's peak resident set (VmHWM) during the steps, each configuration in its
own process.

    python benchmarks/quant_step.py                # lenet5 and resnet20, CPU
    python benchmarks/quant_step.py --device cuda  # on a GPU

Prints a table and the ratios quantized / float.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CONFIGS = ("float", "minmax", "minmax+compile", "dorefa-pact", "dorefa-pact+compile")


def build(model_name: str, config: str, device: str):
    from mpsearch.host import PluginHost
    from mpsearch.quant import (DoReFaQuantizer, LearnableBits, MinMaxQuantizer, PACTQuantizer,
                                quantize_model, set_compile)
    from mpsearch.models import model_profile

    spec = PluginHost(entry_points=False).models.get(model_name)
    model = spec.create(seed=0)
    profile = model_profile(spec)
    set_compile("on" if config.endswith("+compile") else "off")
    if config.startswith("minmax"):
        quantize_model(model, profile, lambda l: MinMaxQuantizer(LearnableBits(4.5)),
                       lambda l: MinMaxQuantizer(LearnableBits(4.5)))
    elif config.startswith("dorefa"):
        quantize_model(model, profile, lambda l: DoReFaQuantizer(LearnableBits(4.5, min_bits=2, max_bits=8)),
                       lambda l: PACTQuantizer(LearnableBits(4.5, min_bits=2, max_bits=8),
                                               two_sided=l.input_signed))
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((128, *spec.input_shape), generator=gen).to(device)
    y = torch.randint(0, 10, (128,), generator=gen).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def time_steps(model_name: str, configs: tuple[str, ...], device: str, steps: int, warmup: int):
    runners = {c: build(model_name, c, device) for c in configs}
    for c in configs:
        for _ in range(warmup):
            runners[c]()
    times = {c: [] for c in configs}
    for _ in range(steps):
        for c in configs:
            t = time.perf_counter()
            runners[c]()
            times[c].append(time.perf_counter() - t)
    return {c: statistics.median(v) for c, v in times.items()}


def peak_memory(model_name: str, config: str, device: str, steps: int) -> float:
    """Bytes: CUDA allocator peak, or the growth of peak RSS during the steps (own process)."""
    step = build(model_name, config, device)
    step()  # warm-up: compilation and allocator growth are not part of a step
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(steps):
            step()
        return float(torch.cuda.max_memory_allocated() - base)
    # ru_maxrss is inherited from the parent across exec on Linux, so read this
    # process's own high-water mark (VmHWM), reset just before the steps.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _status_kib("VmRSS")
    for _ in range(steps):
        step()
    return float(_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--memory-of", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(peak_memory(*args.memory_of, args.device, 3)))
        return
    configs = tuple(args.configs.split(","))
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# quantized training step vs float step, batch 128, {name}, torch {torch.__version__}")
    print(f"{'model':<10} {'config':<20} {'step ms':>9} {'x float':>8} {'peak MB':>9}")
    for model_name in args.models.split(","):
        medians = time_steps(model_name, configs, args.device, args.steps, args.warmup)
        for c in configs:
            # Large buffers mmapped and unmapped on free, so the resident set follows
            # what is live rather than what glibc keeps for reuse.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--threads",
                                  str(args.threads), "--memory-of", model_name, c],
                                 capture_output=True, text=True, check=True, env=env)
            peak = json.loads(out.stdout.strip().splitlines()[-1]) / 1e6
            ratio = medians[c] / medians["float"] if "float" in medians else float("nan")
            print(f"{model_name:<10} {c:<20} {medians[c] * 1e3:>9.1f} {ratio:>8.2f} {peak:>9.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
