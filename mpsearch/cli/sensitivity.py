"""``mpsearch sensitivity``: HAWQ-v2's per-layer Hessian sensitivity of a model, as a table."""

from __future__ import annotations

import json
import time

import click

from mpsearch.assignment import MAX_BITS
from mpsearch.sensitivity import DEFAULT_MAX_ITERATIONS, DEFAULT_TOLERANCE

BITS = click.IntRange(1, MAX_BITS)


@click.command()
@click.argument("model")
@click.option("--data", "dataset", required=True, metavar="NAME",
              help="Registered dataset whose training split calibrates (e.g. mnist-mini, mnist, cifar10).")
@click.option("--root", default=None, metavar="DIR",
              help="Data root for datasets on disk (default: $MPSEARCH_DATA, else ./data).")
@click.option("--weights", "weights", type=click.Path(dir_okay=False), default=None,
              help="The model's trained state dict (default: its seeded random initialisation).")
@click.option("--images", type=click.IntRange(1), default=512, show_default=True,
              help="Training images the Hessian is estimated on (the first ones, in order).")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--min-bits", type=BITS, default=2, show_default=True)
@click.option("--max-bits", type=BITS, default=8, show_default=True)
@click.option("--backend", default="generic", show_default=True,
              help="Tabulate only the widths this backend accepts.")
@click.option("--activations/--no-activations", default=True, show_default=True,
              help="Also the input activations' Hessian and Ω.")
@click.option("--quantizer", type=click.Choice(["dorefa-pact", "minmax"]), default="dorefa-pact",
              show_default=True, help="The quantizer family whose Q_b gives the perturbation.")
@click.option("--tolerance", type=click.FloatRange(0), default=DEFAULT_TOLERANCE, show_default=True,
              help="Stop when every trace's running mean changes by less than this (relative).")
@click.option("--max-iterations", type=click.IntRange(1), default=DEFAULT_MAX_ITERATIONS,
              show_default=True, help="Hutchinson passes over the images at most.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initialisation (without --weights) and the Rademacher draws.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def sensitivity(state, model: str, dataset: str, root: str | None, weights: str | None, images: int,
                batch_size: int, min_bits: int, max_bits: int, backend: str, activations: bool,
                quantizer: str, tolerance: float, max_iterations: int, seed: int, device: str,
                as_json: bool) -> None:
    """Print each layer's Hessian trace, size and Ω at every width for MODEL.

    Ω(b) = Tr(H)/n · ‖Q_b(x) − x‖² (HAWQ-v2), x the layer's n weights or its
    inputs over the images; to second order, quantizing x at b bits raises the
    loss by about Ω/2. The ``hawq`` strategy records the same table on its trials.
    """
    import torch

    from mpsearch.data import resolve_root
    from mpsearch.errors import MpsearchError
    from mpsearch.weights import load_weights
    from mpsearch.models import model_profile
    from mpsearch.sensitivity import layer_sensitivity
    from mpsearch.trial import pick_device

    host = state.host
    if min_bits > max_bits:
        raise MpsearchError(f"--min-bits {min_bits} exceeds --max-bits {max_bits}.")
    spec = host.models.get(model)
    back = host.backends.get(backend)
    source = host.datasets.get(dataset)
    path = resolve_root(root) if source.needs_root else None
    try:
        source.check(path)
    except MpsearchError as exc:
        raise MpsearchError(f"dataset {dataset!r}: {str(exc).rstrip('.')}; give its folder with --root "
                            f"or $MPSEARCH_DATA.") from None
    widths = {kind: [b for b in (back.supported(kind) or range(1, MAX_BITS + 1)) if min_bits <= b <= max_bits]
              for kind in ("weight", "input")}
    for kind, found in widths.items():
        if not found:
            raise MpsearchError(f"backend {backend!r} accepts no {kind} width in {min_bits}-{max_bits}; "
                                f"widen --min-bits/--max-bits.")
    target = pick_device(device)
    train = source.load(path, "train").to(target)
    net = spec.create(train.num_classes, train.input_shape, seed=seed)
    if weights is not None:
        net.load_state_dict(load_weights(weights, net))
    net = net.to(target)
    profile = model_profile(spec, train.num_classes, train.input_shape)
    batches, kept = [], 0
    for x, y in train.batches(batch_size):
        if kept >= images:
            break
        x, y = x[:images - kept], y[:images - kept]
        batches.append((x, y))
        kept += len(y)
    started = time.perf_counter()
    table = layer_sensitivity(net, profile, batches, widths["weight"],
                              input_widths=widths["input"] if activations else (), quantizer=quantizer,
                              tolerance=tolerance, max_iterations=max_iterations,
                              generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - started
    summary = {"model": model, "weights": weights, "data": dataset, "backend": backend,
               "device": str(target), "seconds": seconds, **table.to_dict()}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    start = f"weights {weights}" if weights else f"its random initialisation (seed {seed})"
    how = (f"converged after {table.iterations} iteration(s)" if table.converged
           else f"stopped after {table.iterations} iteration(s), short of the tolerance")
    click.echo(f"{model} from {start}, on the first {table.images} training images of {dataset}: "
               f"Hutchinson {how} (tolerance {tolerance:g}), {seconds:.1f} s on {target}")
    if not weights:
        click.echo("  (untrained: give --weights for the sensitivity of a trained model)")
    click.echo(f"  Ω(b) = Tr(H)/n · ‖Q_b(x) − x‖², Q_b the {quantizer} quantizer; backend {backend}")
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 100):
        click.echo(table.to_frame().to_string(float_format=lambda v: f"{v:.3g}"))
