"""Learn a layer-wise precision assignment with BitPruning, for the backend table.

The assignments in ``benchmarks/assignments/`` were made with these commands, from
the repository root, on 2 CPU cores (each a few minutes; data as torchvision
unpacks it under ``$MPSEARCH_DATA``)::

    MPSEARCH_DATA=.data nice -n 19 python benchmarks/learn_assignment.py lenet5
    MPSEARCH_DATA=.data nice -n 19 python benchmarks/learn_assignment.py resnet18
    MPSEARCH_DATA=.data nice -n 19 python benchmarks/learn_assignment.py mobilenet_v2

One real BitPruning trial (``mpsearch.trial.run_trial``, layer granularity, first
and last layers searched too, the bit loss weighted by each group's BitOPs, the
paper's Sec. III-A5 variant: with the uniform criterion Adam moves every width at
the same rate and a short run ends uniform) trains the model
from scratch for a short budget: LeNet-5 on an MNIST subset at 1x28x28;
ResNet-18 and MobileNetV2 (torchvision, ImageNet stems) on a CIFAR-10 subset at
3x32x32. A layer-wise width does not depend on the input resolution or on the
classifier's number of outputs, so the CIFAR-10 assignment is re-homed onto the
ImageNet profile (3x224x224, 1000 classes) the table costs: the script checks
that both profiles have exactly the same groups and that every width is one
integer per group, then saves the assignment with the 224 profile's shapes.
These short runs show what a learned, uneven assignment costs on each backend;
they are not accuracy results (the printed validation accuracy says how far
each got).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mpsearch.assignment import PrecisionAssignment
from mpsearch.errors import AssignmentError
from mpsearch.host import PluginHost
from mpsearch.models import model_profile
from mpsearch.spec import parse_spec
from mpsearch.trial import run_trial

HERE = Path(__file__).resolve().parent

# model key: (registered model, dataset, train images, validation fraction, batch size,
#             the table's input shape and classes). CIFAR-10 validates on 2 % of its training
# set (1,000 images): the trial evaluates the 10,000 test images anyway, and on 2 CPU
# cores evaluation, not the 2,000 training images, dominates these runs.
RUNS = {
    "lenet5": ("lenet5", "mnist", 6000, 0.1, 64, (1, 28, 28), 10),
    "resnet18": ("torchvision:resnet18", "cifar10", 2000, 0.02, 64, (3, 224, 224), 1000),
    "mobilenet_v2": ("torchvision:mobilenet_v2", "cifar10", 2000, 0.02, 64, (3, 224, 224), 1000),
}
# BitPruning: gamma and lr_bits within the strategy's ranges; lr_bits at most 0.2,
# the cap the shipped MNIST study found necessary (faster widths diverged).
PARAMS = {"gamma": 0.5, "lr_bits": 0.1, "split": 0.8, "criterion": "bitops", "granularity": "layer"}


def rehome(assignment: PrecisionAssignment, profile, where: str) -> PrecisionAssignment:
    """The same layer-wise widths on another profile of the same network.

    Raises:
        AssignmentError: the groups differ, or a group holds more than one width.
    """
    groups, expected = set(assignment), set(profile.group_shapes())
    if groups != expected:
        raise AssignmentError(f"{where}: groups differ from the target profile's "
                              f"(only here: {sorted(groups - expected)[:3]}, "
                              f"only there: {sorted(expected - groups)[:3]}).")
    bits = {}
    for group in assignment:
        value = assignment[group]
        if not isinstance(value, int):
            raise AssignmentError(f"{where}: group {group!r} holds per-element widths; only a "
                                  f"layer-wise assignment carries over to another input size.")
        bits[group] = value
    moved = PrecisionAssignment(bits, profile.group_shapes(),
                                {g: assignment.scale_bits(g) for g in assignment}, dict(assignment.meta))
    moved.validate(profile)
    return moved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(RUNS))
    parser.add_argument("--out", type=Path, help="where to write the assignment JSON "
                        "(default: benchmarks/assignments/<model>-bitpruning.json)")
    parser.add_argument("--train-subset", type=int, help="training images (default per model)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    name, dataset, subset, validation, batch, shape, classes = RUNS[args.model]
    out = args.out or HERE / "assignments" / f"{args.model}-bitpruning.json"
    host = PluginHost(entry_points=False)
    spec = parse_spec({
        "study": {"name": f"learn-{args.model}", "objectives": ["accuracy", "bitops"], "n_trials": 1,
                  "seed": args.seed},
        "model": {"name": name},
        "data": {"name": dataset, "train_subset": args.train_subset or subset,
                 "validation_fraction": validation},
        "training": {"epochs": args.epochs, "batch_size": batch, "device": "cpu"},
        "strategy": [{"name": "bitpruning"}],
        "resources": {"executor": "local"},
    }, source="learn_assignment", host=host)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_trial(spec, 0, "bitpruning", PARAMS, artefacts=Path(tmp))
        if outcome.failed:
            print(f"trial failed: {outcome.attrs['fail_reason']}", file=sys.stderr)
            return 1
        learned = PrecisionAssignment.load(Path(outcome.attrs["artefacts"]) / "assignment.json")
    seconds = time.perf_counter() - started
    target = model_profile(host.models.get(name), classes, shape)
    moved = rehome(learned, target, f"{args.model} assignment")
    moved = moved.replace(model=name, strategy="bitpruning", trained_on=dataset,
                          params=dict(PARAMS), train_subset=args.train_subset or subset,
                          validation_fraction=validation,
                          epochs=args.epochs, val_accuracy=outcome.values["accuracy"],
                          test_accuracy=outcome.attrs.get("test_accuracy"),
                          profile_input=list(shape))
    out.parent.mkdir(parents=True, exist_ok=True)
    moved.save(out)
    print(json.dumps({"model": name, "out": str(out), "seconds": round(seconds, 1),
                      "val_accuracy": outcome.values["accuracy"],
                      "test_accuracy": outcome.attrs.get("test_accuracy"),
                      "avg_weight_bits": round(moved.average_weight_bits(), 3),
                      "avg_act_bits": round(moved.average_activation_bits(), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
