"""``mpsearch export``: a trial's model as ONNX (QDQ) or packed integers."""

from __future__ import annotations

from pathlib import Path

import click

from mpsearch.storage import DEFAULT_STORAGE


@click.command("export")
@click.argument("study_name", metavar="STUDY")
@click.option("--trial", "trial", required=True, metavar="N|best",
              help="The trial number, or 'best': the front's best --by under every --where.")
@click.option("-o", "--output", required=True, type=click.Path(), metavar="FILE",
              help="model.onnx (ONNX, opset 21, QuantizeLinear/DequantizeLinear) or model.mpq "
                   "(packed integers, read with mpsearch.export.load_packed).")
@click.option("--where", multiple=True, metavar="CONDITION",
              help="With --trial best: keep front trials with e.g. \"bitops<=0.03\" (<, <=, >, >=, ==; "
                   "an objective, test_accuracy or average_weight_bits). Repeatable.")
@click.option("--by", default=None, metavar="NAME",
              help="With --trial best: the objective to optimise among them (default: accuracy).")
@click.option("--storage", default=DEFAULT_STORAGE, show_default=True, metavar="URL",
              help="Optuna storage (SQLAlchemy URL) holding the study.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.pass_obj
def export(state, study_name: str, trial: str, output: str, where: tuple[str, ...], by: str | None,
           storage: str, force: bool) -> None:
    """Write a trial's quantized model to FILE, for a runtime to run.

    \b
    mpsearch export quickstart --trial 7 -o model.onnx
    mpsearch export quickstart --trial best --where "bitops<=0.03" --by accuracy -o model.mpq
    """
    from mpsearch.export import check_output, export_trial, pick_trial
    from mpsearch.storage import load_study

    check_output(Path(output), force)  # before opening anything
    study = load_study(storage, study_name)
    chosen = pick_trial(study, trial, where, by)
    path, size = export_trial(study, chosen, output, force=force, host=state.host, storage_url=storage)
    values = ", ".join(f"{k} {v:.4g}" for k, v in zip(_names(study), chosen.values))
    click.echo(f"wrote {path} ({size:,} bytes): trial {chosen.number} "
               f"({chosen.user_attrs.get('strategy', '?')}), {values}")


def _names(study) -> list[str]:
    from mpsearch.report import objective_names

    return objective_names(study)
