"""What uniform and learned assignments cost on every registered backend: a markdown table.

Command (repository root; a few seconds, no data needed)::

    python benchmarks/backend_table.py

which reads the learned assignments in ``benchmarks/assignments/`` (made by
``benchmarks/learn_assignment.py``, whose docstring has the commands); name
others with ``--lenet5 / --resnet18 / --mobilenet-v2 PATH``.

For LeNet-5 (MNIST, 1x28x28, 10 classes), ResNet-18 and MobileNetV2 (torchvision,
3x224x224, 1000 classes) and for uniform 8-bit, uniform 4-bit (every layer,
first and last included, weights and inputs alike) and the learned assignment,
each backend legalises the assignment (rounding widths up) and reports, against
its own stated baseline: the speed-up (baseline time / time, summed over
layers), the memory ratio (weights + input activations stored, batch 1) and the
energy ratio (first-order, Horowitz ISSCC 2014 constants). Each backend's
docstring states its model and baseline (``mpsearch plugins list``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import MpsearchError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile

HERE = Path(__file__).resolve().parent

# option: (registered model, input shape, classes, label)
MODELS = {
    "lenet5": ("lenet5", (1, 28, 28), 10, "LeNet-5 (MNIST 1x28x28)"),
    "resnet18": ("torchvision:resnet18", (3, 224, 224), 1000, "ResNet-18 (3x224x224)"),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (3, 224, 224), 1000, "MobileNetV2 (3x224x224)"),
}


def assignments(profile, learned: Path | None, model: str) -> dict[str, PrecisionAssignment]:
    out = {"uniform 8-bit": PrecisionAssignment.uniform(profile, 8, 8),
           "uniform 4-bit": PrecisionAssignment.uniform(profile, 4, 4)}
    if learned is not None:
        a = PrecisionAssignment.load(learned)
        a.validate(profile, source=f"assignment file {str(learned)!r}", model=model)
        out[f"learned ({a.average_weight_bits():.2f} w / {a.average_activation_bits():.2f} a bits)"] = a
    return out


def table(host: PluginHost, key: str, learned: Path | None) -> str:
    name, shape, classes, label = MODELS[key]
    profile = model_profile(host.models.get(name), classes, shape)
    cases = assignments(profile, learned, name)
    lines = [f"### {label}: {profile.macs / 1e6:.1f} M MACs, {profile.weight_numel / 1e6:.3f} M weights", ""]
    header = "| backend | " + " | ".join(f"{c}: speed-up / memory / energy" for c in cases) + " |"
    lines += [header, "|---" * (len(cases) + 1) + "|"]
    for backend_name in host.backends.names():
        backend = host.backends.get(backend_name)
        cells = []
        for a in cases.values():
            try:
                cells.append(f"{backend.speedup(profile, a):.2f}x / {backend.memory_ratio(profile, a):.3f}"
                             f" / {backend.energy_ratio(profile, a):.3f}")
            except MpsearchError as exc:  # e.g. a width the backend cannot run
                cells.append(f"n/a ({exc})")
        lines.append(f"| {backend_name} | " + " | ".join(cells) + " |")
    if learned is None:
        lines += ["", f"(no learned assignment for {key}: run benchmarks/learn_assignment.py {key})"]
    else:
        meta = PrecisionAssignment.load(learned).meta
        shown = learned.relative_to(HERE.parent) if learned.is_relative_to(HERE.parent) else learned
        lines += ["", (f"Learned: {shown}, BitPruning on {meta.get('trained_on', '?')} "
                       f"({meta.get('train_subset', '?')} images, {meta.get('epochs', '?')} epoch), "
                       f"validation accuracy {meta.get('val_accuracy', float('nan')):.3f}.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key in MODELS:
        parser.add_argument(f"--{key.replace('_', '-')}", type=Path, dest=key,
                            help=f"learned assignment JSON for {key} "
                                 f"(default: benchmarks/assignments/{key}-bitpruning.json if present)")
    args = parser.parse_args(argv)
    host = PluginHost(entry_points=False)
    print("Speed-up (x, higher is better), memory and energy (fraction of the backend's baseline, "
          "lower is better) of each assignment after the backend legalises it.\n")
    for key in MODELS:
        path = getattr(args, key)
        if path is None:
            default = HERE / "assignments" / f"{key}-bitpruning.json"
            path = default if default.is_file() else None
        try:
            print(table(host, key, path), end="\n\n")
        except MpsearchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
