"""``mpsearch cost``: what an assignment of bits costs on a model, by every objective."""

from __future__ import annotations

import json

import click

from mpsearch.assignment import MAX_BITS, PrecisionAssignment
from mpsearch.models import model_profile, parse_shape
from mpsearch.objectives import evaluate_all

BITS = click.IntRange(0, MAX_BITS)


@click.command()
@click.argument("model")
@click.option("--weight-bits", type=BITS, default=8, show_default=True,
              help="Width of every weight group.")
@click.option("--act-bits", type=BITS, default=8, show_default=True,
              help="Width of every input-activation group.")
@click.option("--first-last-bits", type=BITS, default=None,
              help="Override the first and last quantized layers (weights and inputs).")
@click.option("--assignment", "assignment_file", type=click.Path(dir_okay=False),
              help="Evaluate a saved assignment (JSON) instead of a uniform one.")
@click.option("--input-shape", default=None, metavar="C,H,W",
              help="Per-sample input shape (default: the model's own).")
@click.option("--num-classes", type=click.IntRange(1), default=None,
              help="Number of outputs (default: the model's own).")
@click.option("--backend", default="generic", show_default=True,
              help="Legalise for this backend, then cost.")
@click.option("--objective", "objective_names", multiple=True,
              help="Only these objectives (repeatable; default: all registered, except "
                   "those bound to another backend by name, such as latency@loom).")
@click.option("--save-assignment", type=click.Path(dir_okay=False),
              help="Also write the (legalised) assignment to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def cost(state, model: str, weight_bits: int, act_bits: int, first_last_bits: int | None,
         assignment_file: str | None, input_shape: str | None, num_classes: int | None,
         backend: str, objective_names: tuple[str, ...], save_assignment: str | None,
         as_json: bool) -> None:
    """Print every cost objective of a precision assignment on MODEL.

    MODEL is a registered model name, e.g. lenet5, resnet20, torchvision:resnet18.
    """
    host = state.host
    spec = host.models.get(model)
    back = host.backends.get(backend)
    names = objective_names or tuple(  # latency@loom and the like: the --backend's own suffice
        n for n in host.objectives.names() if getattr(host.objectives.get(n), "backend", None) is None)
    objectives = {n: host.objectives.get(n) for n in names}
    shape = parse_shape(input_shape) if input_shape else spec.input_shape
    profile = model_profile(spec, num_classes, shape)
    if assignment_file:
        assignment = PrecisionAssignment.load(assignment_file)
        assignment.validate(profile, f"assignment file {assignment_file!r}", model)
    else:
        assignment = PrecisionAssignment.uniform(profile, weight_bits, act_bits,
                                                 first_last_bits=first_last_bits,
                                                 meta={"model": model})
    costs = evaluate_all(profile, assignment, objectives, back)
    legal = back.legalise(assignment)
    if save_assignment:
        legal.save(save_assignment)
    summary = {
        "model": model, "input_shape": list(shape), "backend": backend,
        "layers": len(profile), "macs": profile.macs, "weights": profile.weight_numel,
        "average_weight_bits": legal.average_weight_bits(),
        "average_activation_bits": legal.average_activation_bits(),
        "objectives": {n: {"value": c.value, "unit": c.unit} for n, c in costs.items()},
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    source = (f"assignment {assignment_file}" if assignment_file else
              f"weights {weight_bits} bits, activations {act_bits} bits"
              + (f", first/last layers {first_last_bits} bits" if first_last_bits is not None else ""))
    click.echo(f"{model} at input {'x'.join(map(str, shape))}, backend {backend}: {source}")
    click.echo(f"  {len(profile)} quantizable layers, {profile.weight_numel:,} weights, "
               f"{profile.macs:,} MACs per sample; average bits: weights "
               f"{summary['average_weight_bits']:.3g}, activations "
               f"{summary['average_activation_bits']:.3g}")
    width = max(len(n) for n in costs)
    for n, c in costs.items():
        click.echo(f"  {n:<{width}}  {c.value:>14.6g}  {c.unit}")
