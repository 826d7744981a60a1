"""Figures of a study: the accuracy-cost front, one trial's bits per layer, their trajectory and its sensitivities.

Matplotlib is imported when a figure is drawn (with the non-interactive Agg
backend), never on ``import mpsearch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna

from mpsearch import report
from mpsearch import record as R
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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
FIT_MARGIN = 1.0  # below the front's lowest accuracy, as much again as the front spans stays in view
COLLAPSED = 0.5  # a front point below this share of the best accuracy is an outlier, not fitted


def _style(k: int, plt) -> dict[str, Any]:
    """Strategy ``k``'s colour and marker shape: told apart in greyscale too."""
    return {"color": plt.get_cmap("tab10")(k % 10), "marker": MARKERS[k % len(MARKERS)]}


def _enqueued(study: optuna.Study) -> dict[int, str]:
    """Trial number -> a label for the points the spec enqueued (the baselines a front is read against)."""
    labels = {}
    trials = study.get_trials(deepcopy=False)
    fixed_of = {t.number: t.system_attrs.get("fixed_params") for t in trials}
    for t in trials:
        fixed = fixed_of[t.number]
        retry_of = t.user_attrs.get(R.ATTR_RETRY_OF)  # a re-queued trial is a baseline only if its original was
        if fixed and (retry_of is None or fixed_of.get(int(retry_of))):
            strategy = t.user_attrs.get(R.ATTR_STRATEGY) or fixed.get("strategy", "")
            params = ", ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in fixed.items() if k != "strategy")
            labels[t.number] = f"{strategy} {params}".strip()
    return labels


def front_figure(study: optuna.Study):
    """The figure :func:`plot_front` saves (the caller closes it)."""
    plt = _pyplot()
    costs = report.cost_names(study)
    if not costs or report.ACCURACY not in report.objective_names(study):
        raise MpsearchError(f"study {study.study_name!r} has no accuracy-cost objectives to plot.")
    unit = report.units(study)
    dirs = report.directions(study)
    frame = report.trials_frame(study)
    done = frame[frame["state"] == "COMPLETE"]
    labels = _enqueued(study)
    fig, axes = plt.subplots(1, len(costs), figsize=(5.6 * len(costs), 4.4), squeeze=False)
    strategies = list(dict.fromkeys(done["strategy"].fillna("?")))
    for ax, cost in zip(axes[0], costs):
        acc, val = done[report.ACCURACY].to_numpy(float), done[cost].to_numpy(float)
        idx = _front_2d(acc, val, dirs[cost] == "minimize") if len(done) else np.array([], int)
        floor = -np.inf
        if len(idx):
            hi = acc[idx].max()
            kept = acc[idx][acc[idx] >= COLLAPSED * hi]  # a collapsed trial may be the cheapest on the front
            lo = kept.min()
            span = max(hi - lo, 0.01)
            floor = lo - FIT_MARGIN * span
            ax.set_ylim(floor - 0.04 * span, min(hi + 0.08 * span, 1.0 + 0.02 * span))
            ax.step(val[idx], acc[idx], where="post" if dirs[cost] == "minimize" else "pre", color="black",
                    linewidth=1.0, label="Pareto front", zorder=2)
        below = 0
        for k, strategy in enumerate(strategies):
            own = done["strategy"].fillna("?").to_numpy() == strategy
            style = _style(k, plt)
            inside, out = own & (acc >= floor), own & (acc < floor)
            ax.scatter(val[inside], acc[inside], s=30, color=style["color"], marker=style["marker"],
                       edgecolors="black", linewidths=0.4, label=strategy, zorder=3)
            if out.any():  # an outlier (a collapsed trial) drawn at the edge, hollow
                ax.scatter(val[out], np.full(int(out.sum()), floor), s=30, marker=style["marker"],
                           facecolors="none", edgecolors=style["color"], linewidths=1.0, zorder=3, clip_on=False)
                below += int(out.sum())
        if below:
            ax.axhline(floor, color="grey", linewidth=0.6, linestyle=":", zorder=1)
            ax.annotate(f"{below} trial(s) below {floor:.3g}, drawn hollow at the edge", (0.99, 0.02),
                        xycoords="axes fraction", ha="right", fontsize="x-small", color="dimgrey")
        numbers = done["number"].to_numpy()
        for i, number in enumerate(numbers):
            if int(number) in labels:
                ax.annotate(labels[int(number)], (val[i], max(acc[i], floor)), textcoords="offset points",
                            xytext=(4, 4), fontsize="x-small")
        if len(val) and (val > 0).all():
            ax.set_xscale("log")  # costs span decades: a linear axis crowds all but the largest
        ax.set_xlabel(f"{cost} [{unit[cost]}]" if unit.get(cost) else cost)
        ax.set_ylabel("validation accuracy")
        ax.grid(True, which="both", alpha=0.3)
    if strategies:
        axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{study.study_name}: {len(done)} completed trials")
    fig.tight_layout()
    return fig


def plot_front(study: optuna.Study, path: str | Path) -> Path:
    """Accuracy against each cost, one panel per cost, each strategy its colour and marker shape.

    Failed and running trials are left out. Each panel draws as a step line the
    front of its own two objectives (with one cost, the study's Pareto front). The
    cost axis is logarithmic (costs span decades); the accuracy axis is fitted to
    the front's points above half its best accuracy, and trials below it (collapsed
    ones) are drawn hollow at its lower edge and counted. Points the spec enqueued
    (baselines) are labelled.

    Raises:
        MpsearchError: the study has no cost objective or the file cannot be written.
    """
    plt = _pyplot()
    return _save(front_figure(study), plt, path)


def hypervolume_history(study: optuna.Study) -> Any:
    """Hypervolume of the completed trials up to each trial number, in all and per strategy.

    Returns a frame indexed by trial number, one column ``all`` and one per
    strategy (each with its own trials only), with the study's reference point
    (:func:`mpsearch.report.reference_point`).
    """
    import pandas as pd

    from mpsearch.hypervolume import hypervolume

    reference = report.reference_point(study)
    names = report.objective_names(study)
    dirs = [report.directions(study)[n] for n in names]
    ref = [reference.values[n] for n in names]
    done = report.trials_frame(study).query("state == 'COMPLETE'").sort_values("number")
    strategies = list(dict.fromkeys(done["strategy"].fillna("?")))
    rows = []
    for i in range(len(done)):
        seen = done.iloc[: i + 1]
        row = {"number": int(done["number"].iloc[i]), "all": hypervolume(seen[names].to_numpy(float), ref, dirs)}
        for strategy in strategies:
            own = seen[seen["strategy"].fillna("?") == strategy]
            row[strategy] = hypervolume(own[names].to_numpy(float), ref, dirs) if len(own) else 0.0
        rows.append(row)
    return pd.DataFrame(rows, columns=["number", "all", *strategies]).set_index("number")


def plot_hypervolume_history(study: optuna.Study, path: str | Path) -> Path:
    """The hypervolume as trials complete: the study's, and each strategy's own (its marker shape).

    Raises:
        MpsearchError: the file cannot be written.
    """
    plt = _pyplot()
    history = hypervolume_history(study)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if len(history):
        ax.step(history.index, history["all"], where="post", color="black", linewidth=1.6, label="all strategies")
        for k, strategy in enumerate(history.columns[1:]):
            style = _style(k, plt)
            ax.step(history.index, history[strategy], where="post", color=style["color"], linewidth=1.0,
                    marker=style["marker"], markersize=4, markevery=max(1, len(history) // 12), label=strategy)
    reference = report.reference_point(study)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume")
    ax.set_title(f"{study.study_name}: hypervolume; reference {reference.describe(report.units(study))}",
                 fontsize="small")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
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
    recorded = _find_trial(study, trial_number).user_attrs.get("sensitivity")
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


def plot_widths(study: optuna.Study, trial_number: int, path: str | Path) -> Path | None:
    """How one trial's widths moved: per epoch (its history), and per step of a search-based strategy.

    The upper panel draws every group's mean width at the end of each reported
    epoch (the history's ``bits.<group>`` entries), one colour per layer, weights
    solid and inputs dashed, with the phases (search, fine-tuning) marked. The
    lower panel, for a strategy that records ``search_widths`` (``rl``'s episodes,
    ``random``'s candidates), draws each group's width per step, the chosen one
    marked, and the score that chose it on a second axis; the upper panel is then
    left out when the trial reported a single epoch. A failed trial's history is
    drawn too.

    Returns:
        The file written, or None when the trial recorded neither.

    Raises:
        MpsearchError: no such trial, or the file cannot be written.
    """
    t = _find_trial(study, trial_number)
    history = [row for row in t.user_attrs.get(R.ATTR_HISTORY) or []
               if any(k.startswith(R.WIDTHS_PREFIX) for k in row)]
    steps = t.user_attrs.get("search_widths")
    steps = steps if isinstance(steps, dict) and steps.get("groups") else None
    if steps is not None and len(history) < 2:
        history = []  # one epoch of fine-tuning at the chosen widths says nothing the steps do not
    if not history and steps is None:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in ("history", "steps") if (p == "history" and history) or (p == "steps" and steps)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 3.6 * len(panels)), squeeze=False)
    colours = plt.get_cmap("tab10")
    layer_colour: dict[str, Any] = {}

    def style(group: str) -> dict[str, Any]:
        layer, _, kind = group.rpartition(":")
        colour = layer_colour.setdefault(layer, colours(len(layer_colour) % 10))
        return {"color": colour, "linestyle": "-" if kind == "weight" else "--"}

    for ax, panel in zip(axes[:, 0], panels):
        if panel == "history":
            epochs = [row["epoch"] for row in history]
            groups = list(dict.fromkeys(k for row in history for k in row if k.startswith(R.WIDTHS_PREFIX)))
            for key in groups:
                group = key[len(R.WIDTHS_PREFIX):]
                ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", markersize=3,
                        label=group, **style(group))
            for i, row in enumerate(history):  # a phase starts: a line and its name
                if i == 0 or row["phase"] != history[i - 1]["phase"]:
                    ax.axvline(row["epoch"] - 0.5, color="grey", linewidth=0.8, alpha=0.6)
                    ax.annotate(row["phase"], (row["epoch"] - 0.45, 1.0), xycoords=("data", "axes fraction"),
                                va="top", fontsize="small", color="grey")
            ax.set_xlabel("epoch of the trial")
            ax.set_ylabel("bits (mean over the group)")
        else:
            groups = steps["groups"]
            for group, values in groups.items():
                ax.plot(np.arange(len(values)), values, linewidth=0.9, label=group,
                        **style(group))
            best = steps.get("best")
            if isinstance(best, int):
                ax.axvline(best, color="black", linewidth=1.0, label="chosen")
            score = steps.get("score")
            if score:
                twin = ax.twinx()
                twin.plot(np.arange(len(score)), score, color="grey", linewidth=0.8, alpha=0.5)
                twin.set_ylabel(str(steps.get("score_name", "score")), color="grey")
            ax.set_xlabel(str(steps.get("step", "step")))
            ax.set_ylabel("bits")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="x-small", ncols=2, loc="best")
    strategy = t.user_attrs.get(R.ATTR_STRATEGY) or ""
    fig.suptitle(f"{study.study_name}, trial {trial_number} {strategy}: widths during the search".strip())
    fig.tight_layout()
    return _save(fig, plt, path)


def _find_trial(study: optuna.Study, trial_number: int) -> Any:
    """Trial ``trial_number`` of ``study``; a one-line error naming the trials there are."""
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == trial_number]
    if not found:
        span = f"{trials[0].number}-{trials[-1].number}" if trials else "none yet"
        raise MpsearchError(f"study {study.study_name!r} has no trial {trial_number} "
                            f"(trials: {span}).")
    return found[0]


def artefacts_of(study: optuna.Study, trial_number: int) -> Path:
    """The folder holding trial ``trial_number``'s ``assignment.json``.

    Raises:
        MpsearchError: no such trial, or it saved no assignment (failed, or run without artefacts).
    """
    t = _find_trial(study, trial_number)
    folder = t.user_attrs.get(R.ATTR_ARTEFACTS)
    if not folder:
        why = f" (it failed: {t.user_attrs[R.ATTR_FAIL]})" if t.user_attrs.get(R.ATTR_FAIL) else ""
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
