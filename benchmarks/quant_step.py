"""How much a fake-quantized training step costs against the same model's float step.

For each model, one optimizer step (forward, backward, SGD update) at batch 128
is timed for the float network and for the network with every layer's weights
and input activations quantized: with fractional, learnable widths (min-max as
in BitPruning; DoReFa + PACT as in FracBits), with the fixed integer widths a
trial fine-tunes at once its widths are legalised (``-fixed``), and with
compiled kernels (``+compile``). Steps are interleaved across configurations
round by round, so drifting machine load affects every configuration alike; the
ratio to float is taken per round and its median reported, with the spread of
the middle half of the rounds (the noise). Peak memory: on CUDA the allocator's
peak during the steps; on the CPU (Linux) the growth of the process's peak
resident set (VmHWM) during the steps, each configuration in its own process.

With ``--against REF`` the quantization engine of git revision ``REF`` (its
``functional.py``, ``quantizers.py`` and ``modules.py``) runs beside this one, as
configurations ``NAME@REF`` interleaved in the same rounds: before and after, in one run.

    python benchmarks/quant_step.py                            # lenet5 and resnet20, CPU
    python benchmarks/quant_step.py --device cuda --batch 512  # on a GPU
    python benchmarks/quant_step.py --configs float,minmax --steps 40 --no-memory
    python benchmarks/quant_step.py --against d7c639f --configs minmax,dorefa-pact

Prints a table: median step, median ratio to float and its interquartile range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIGS = ("float", "minmax", "minmax-fixed", "minmax+compile", "dorefa-pact", "dorefa-pact-fixed",
           "dorefa-pact+compile")


ROOT = Path(__file__).resolve().parents[1]
_ENGINES: dict[str, types.SimpleNamespace] = {}


def engine(ref: str | None) -> types.SimpleNamespace:
    """The quantizers, ``quantize_model`` and ``set_compile`` of this checkout, or of git ``ref``."""
    if ref in _ENGINES:
        return _ENGINES[ref]
    if ref is None:
        import mpsearch.quant as q

        found = types.SimpleNamespace(**{n: getattr(q, n) for n in (
            "DoReFaQuantizer", "MinMaxQuantizer", "PACTQuantizer", "quantize_model", "set_compile")})
    else:
        tag = "".join(c if c.isalnum() else "_" for c in ref)
        loaded = {}
        for name in ("functional", "quantizers", "modules"):
            source = subprocess.run(["git", "show", f"{ref}:mpsearch/quant/{name}.py"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout
            for dep in ("functional", "quantizers"):
                source = source.replace(f"from mpsearch.quant.{dep} import", f"from _{tag}_{dep} import")
            module = types.ModuleType(f"_{tag}_{name}")
            sys.modules[module.__name__] = module
            exec(compile(source, f"{ref}:mpsearch/quant/{name}.py", "exec"), module.__dict__)
            loaded[name] = module
        q, m = loaded["quantizers"], loaded["modules"]
        found = types.SimpleNamespace(DoReFaQuantizer=q.DoReFaQuantizer,
                                      MinMaxQuantizer=q.MinMaxQuantizer, PACTQuantizer=q.PACTQuantizer,
                                      quantize_model=m.quantize_model,
                                      set_compile=loaded["functional"].set_compile)
    _ENGINES[ref] = found
    return found


def build(model_name: str, config: str, device: str, batch: int = 128):
    from mpsearch.host import PluginHost
    from mpsearch.models import model_profile
    from mpsearch.quant import FixedBits, LearnableBits

    config, _, ref = config.partition("@")
    e = engine(ref or None)
    DoReFaQuantizer, MinMaxQuantizer, PACTQuantizer = e.DoReFaQuantizer, e.MinMaxQuantizer, e.PACTQuantizer
    quantize_model, set_compile = e.quantize_model, e.set_compile
    spec = PluginHost(entry_points=False).models.get(model_name)
    model = spec.create(seed=0)
    profile = model_profile(spec)
    set_compile("on" if config.endswith("+compile") else "off")
    fixed = "-fixed" in config

    def bits():
        return FixedBits(4) if fixed else LearnableBits(4.5, min_bits=2, max_bits=8)

    if config.startswith("minmax"):
        quantize_model(model, profile, lambda l: MinMaxQuantizer(bits()),
                       lambda l: MinMaxQuantizer(bits()))
    elif config.startswith("dorefa"):
        quantize_model(model, profile, lambda l: DoReFaQuantizer(bits()),
                       lambda l: PACTQuantizer(bits(), two_sided=l.input_signed))
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *spec.input_shape), generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def time_steps(model_name: str, configs: tuple[str, ...], device: str, steps: int, warmup: int,
               batch: int) -> dict[str, list[float]]:
    """Seconds per step of every configuration, ``steps`` rounds interleaved."""
    runners = {c: build(model_name, c, device, batch) for c in configs}
    for c in configs:
        for _ in range(warmup):
            runners[c]()
    times: dict[str, list[float]] = {c: [] for c in configs}
    for r in range(steps):
        # Rotate the order every round: no configuration always follows the same one.
        for c in configs[r % len(configs):] + configs[:r % len(configs)]:
            t = time.perf_counter()
            runners[c]()
            times[c].append(time.perf_counter() - t)
    return times


def ratio_stats(times: list[float], base: list[float]) -> tuple[float, float, float]:
    """Median, first and third quartile of the per-round ratios ``times / base``."""
    ratios = sorted(t / b for t, b in zip(times, base))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(ratios), q[0], q[2]


def peak_memory(model_name: str, config: str, device: str, steps: int, batch: int) -> float:
    """Bytes: CUDA allocator peak, or the growth of peak RSS during the steps (own process)."""
    step = build(model_name, config, device, batch)
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
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--against", metavar="REF", help="also run git REF's quantization engine")
    parser.add_argument("--memory-of", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(peak_memory(*args.memory_of, args.device, 3, args.batch)))
        return
    configs = tuple(args.configs.split(","))
    if "float" not in configs:
        configs = ("float", *configs)
    if args.against:
        configs += tuple(f"{c}@{args.against}" for c in configs if c != "float")
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"# quantized training step vs float step, batch {args.batch}, {name}, "
          f"torch {torch.__version__}, {args.steps} interleaved rounds")
    print(f"{'model':<10} {'config':<28} {'step ms':>9} {'x float':>8} {'IQR':>12} {'peak MB':>9}")
    for model_name in args.models.split(","):
        times = time_steps(model_name, configs, args.device, args.steps, args.warmup, args.batch)
        for c in configs:
            peak = float("nan")
            if not args.no_memory:
                # Large buffers mmapped and unmapped on free, so the resident set follows
                # what is live rather than what glibc keeps for reuse.
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
                out = subprocess.run([sys.executable, __file__, "--device", args.device, "--threads",
                                      str(args.threads), "--batch", str(args.batch),
                                      "--memory-of", model_name, c],
                                     capture_output=True, text=True, check=True, env=env)
                peak = json.loads(out.stdout.strip().splitlines()[-1]) / 1e6
            median, q1, q3 = ratio_stats(times[c], times["float"])
            spread = f"{q1:.2f}-{q3:.2f}"
            print(f"{model_name:<10} {c:<28} {statistics.median(times[c]) * 1e3:>9.1f} "
                  f"{median:>8.2f} {spread:>12} {peak:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
