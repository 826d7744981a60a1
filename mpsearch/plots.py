"""Figures of a study: the accuracy-cost front, one trial's bits per layer, and its sensitivities.

Matplotlib is imported when a figure is drawn (with the non-interactive Agg
backend), never on ``import mpsearch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna

from mpsearch import report
from mpsearch import trial as T
from mpsearch.errors import MpsearchError

DPI = 120


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MpsearchError("plots need matplotlib: pip install matplotlib.") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _front_2d(acc: np.ndarray, cost: np.ndarray, minimise: bool) -> np.ndarray:
    """Indices of the points not dominated in (accuracy up, cost down or up), by cost."""
    c = cost if minimise else -cost
    order = np.lexsort((-acc, c))
    keep, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            keep.append(i)
            best = acc[i]
    return np.asarray(keep, dtype=int)


def plot_front(study: optuna.Study, path: str | Path) -> Path:
    """Accuracy against each cost, one panel per cost, one colour per strategy.

    Failed and running trials are left out. Each panel draws as a step line the
    front of its own two objectives (with one cost, the study's Pareto front).

    Raises:
        MpsearchError: the study has no cost objective or the file cannot be written.
    """
    plt = _pyplot()
    costs = report.cost_names(study)
    if not costs or report.ACCURACY not in report.objective_names(study):
        raise MpsearchError(f"study {study.study_name!r} has no accuracy-cost objectives to plot.")
    unit = report.units(study)
    dirs = report.directions(study)
    frame = report.trials_frame(study)
    done = frame[frame["state"] == "COMPLETE"]
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    strategies = list(dict.fromkeys(done["strategy"].fillna("?")))
    for ax, cost in zip(axes[0], costs):
        for k, strategy in enumerate(strategies):
            own = done[done["strategy"].fillna("?") == strategy]
            ax.scatter(own[cost], own[report.ACCURACY], s=22, color=colours(k % 10), label=strategy,
                       alpha=0.85, zorder=3)
        if len(done):
            acc, val = done[report.ACCURACY].to_numpy(float), done[cost].to_numpy(float)
            idx = _front_2d(acc, val, dirs[cost] == "minimize")
            ax.step(val[idx], acc[idx], where="post", color="black", linewidth=1.0,
                    label="Pareto front", zorder=2)
        ax.set_xlabel(f"{cost} [{unit[cost]}]" if unit.get(cost) else cost)
        ax.set_ylabel("validation accuracy")
        ax.grid(True, alpha=0.3)
    if strategies:
        axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{study.study_name}: {len(done)} completed trials")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_layer_bits(study: optuna.Study, trial_number: int, path: str | Path) -> Path:
    """Weight and activation bits of each layer of one trial's saved assignment, as bars.

    Raises:
        MpsearchError: no such trial, it saved no assignment, or the file cannot be written.
    """
    from mpsearch.assignment import PrecisionAssignment

    folder = artefacts_of(study, trial_number)
    assignment = PrecisionAssignment.load(folder / "assignment.json")
    table = assignment.to_frame()
    plt = _pyplot()
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(table) + 2), 4.2))
    width, top = 0.4, 1.0
    for offset, column, label in ((-width / 2, "weight_bits", "weights"),
                                  (width / 2, "input_bits", "activations (inputs)")):
        values = table[column].to_numpy(float) if column in table else np.full(len(table), np.nan)
        ax.bar(x + offset, np.nan_to_num(values), width, label=label)
        top = max(top, float(np.nanmax(values, initial=0.0)))
    ax.set_ylim(0, top * 1.2)  # room for the legend above the bars
    ax.set_xticks(x, table.index, rotation=60 if len(table) > 8 else 0, ha="right" if len(table) > 8 else "center",
                  fontsize="small")
    ax.set_ylabel("bits (mean over the layer)")
    ax.legend(fontsize="small", ncols=2, loc="upper center")
    strategy = assignment.meta.get("strategy") or ""
    ax.set_title(f"{study.study_name}, trial {trial_number} {strategy}".strip())
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_sensitivity(study: optuna.Study, trial_number: int, path: str | Path) -> Path | None:
    """Ω against the width for every layer of a trial that recorded a sensitivity table (``hawq``).

    One panel for the weights and, where the table has them, one for the input
    activations; the width the trial runs at is marked on each layer's line.

    Returns:
        The file written, or None when the trial recorded no sensitivity table.

    Raises:
        MpsearchError: no such trial, it saved no assignment, or the file cannot be written.
    """
    from mpsearch.assignment import PrecisionAssignment
    from mpsearch.sensitivity import SensitivityTable

    folder = artefacts_of(study, trial_number)
    recorded = next(t for t in study.get_trials(deepcopy=False)
                    if t.number == trial_number).user_attrs.get("sensitivity")
    if recorded is None:
        return None
    table = SensitivityTable.from_dict(recorded, f"trial {trial_number}'s sensitivity table")
    assignment = PrecisionAssignment.load(folder / "assignment.json")
    kinds = [("weight", "weights")] + ([("input", "input activations")]
                                       if any(r.input_omega for r in table.layers) else [])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.4), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (kind, label) in zip(axes[0], kinds):
        for k, row in enumerate(table.layers):
            omega = row.weight_omega if kind == "weight" else row.input_omega
            widths = sorted(omega)
            ax.plot(widths, [omega[b] for b in widths], marker=".", color=colours(k % 10), label=row.layer)
            chosen = assignment[f"{row.layer}:{kind}"]
            if isinstance(chosen, int) and chosen in omega:
                ax.plot([chosen], [omega[chosen]], marker="o", markersize=9, markerfacecolor="none",
                        color=colours(k % 10))
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel("bits")
        ax.set_ylabel("Ω = Tr(H)/n · ‖Q(x) − x‖²")
        ax.set_title(f"{label} (circled: the trial's widths)", fontsize="medium")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{study.study_name}, trial {trial_number}: sensitivity on {table.images} images")
    fig.tight_layout()
    return _save(fig, plt, path)


def artefacts_of(study: optuna.Study, trial_number: int) -> Path:
    """The folder holding trial ``trial_number``'s ``assignment.json``.

    Raises:
        MpsearchError: no such trial, or it saved no assignment (failed, or run without artefacts).
    """
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == trial_number]
    if not found:
        span = f"{trials[0].number}-{trials[-1].number}" if trials else "none yet"
        raise MpsearchError(f"study {study.study_name!r} has no trial {trial_number} "
                            f"(trials: {span}).")
    t: Any = found[0]
    folder = t.user_attrs.get(T.ATTR_ARTEFACTS)
    if not folder:
        why = f" (it failed: {t.user_attrs[T.ATTR_FAIL]})" if t.user_attrs.get(T.ATTR_FAIL) else ""
        raise MpsearchError(f"trial {trial_number} of study {study.study_name!r} saved no "
                            f"assignment{why}.")
    folder = Path(folder)
    if not (folder / "assignment.json").is_file():
        raise MpsearchError(f"trial {trial_number} of study {study.study_name!r}: "
                            f"{str(folder / 'assignment.json')!r} is missing.")
    return folder


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    except OSError as exc:
        raise MpsearchError(f"cannot write {str(path)!r}: {exc.strerror or exc}.") from exc
    finally:
        plt.close(fig)
    return path
