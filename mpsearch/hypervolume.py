"""Exact hypervolume of a set of points, for any number of objectives and mixed directions.

The hypervolume of a set is the volume of the region that its points dominate and
that dominates the reference point: larger is better, and it only grows when a
point is added. Points that do not strictly dominate the reference add nothing and
are ignored (as are points with NaN values), so no reference point is ever refused.

Pure NumPy; 2-D is a sorted sweep, higher dimensions slice along the last objective
(HSO, While et al., 2006), which is exact and fast enough for studies of hundreds
of trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAXIMIZE, MINIMIZE = "maximize", "minimize"


def _signs(directions: Sequence[Any] | None, dims: int) -> np.ndarray:
    """+1 for a minimised objective, -1 for a maximised one."""
    if directions is None:
        return np.ones(dims)
    if len(directions) != dims:
        raise ValueError(f"{len(directions)} directions given for {dims} objectives.")
    signs = []
    for d in directions:
        # accepts "maximize"/"minimize" and optuna.study.StudyDirection alike
        name = getattr(d, "name", str(d)).lower()
        if name not in (MAXIMIZE, MINIMIZE):
            raise ValueError(f"direction {d!r} is neither {MAXIMIZE!r} nor {MINIMIZE!r}.")
        signs.append(-1.0 if name == MAXIMIZE else 1.0)
    return np.asarray(signs)


def hypervolume(points: Any, reference: Sequence[float],
                directions: Sequence[Any] | None = None) -> float:
    """The exact hypervolume that ``points`` dominate, bounded by ``reference``.

    Args:
        points: an ``(n, d)`` array-like of objective values (``n`` may be 0).
        reference: ``d`` values; every point that does not strictly dominate it is ignored.
        directions: per objective ``"maximize"`` or ``"minimize"`` (or Optuna's
            ``StudyDirection``); default: all minimised.

    Raises:
        ValueError: the shapes or directions do not agree.
    """
    ref = np.asarray(reference, dtype=float).reshape(-1)
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return 0.0
    pts = pts.reshape(-1, ref.size) if pts.ndim == 1 else pts
    if pts.ndim != 2 or pts.shape[1] != ref.size:
        raise ValueError(f"points of shape {pts.shape} do not match a reference of {ref.size} values.")
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"the reference point {ref.tolist()} must be finite.")
    signs = _signs(directions, ref.size)
    pts, ref = pts * signs, ref * signs
    pts = pts[np.all(pts < ref, axis=1)]  # NaN compares False: dropped too
    if len(pts) == 0:
        return 0.0
    return float(_volume(_non_dominated(pts), ref))


def _non_dominated(pts: np.ndarray) -> np.ndarray:
    """The distinct points that no other point dominates (minimisation)."""
    pts = np.unique(pts, axis=0)  # sorted lexicographically: a dominator comes first
    keep = np.ones(len(pts), dtype=bool)
    for i in range(len(pts)):
        if keep[i]:
            dominated = np.all(pts[i] <= pts, axis=1)
            dominated[i] = False
            keep &= ~dominated
    return pts[keep]


def _volume(pts: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimisation points that all strictly dominate ``ref``."""
    dims = pts.shape[1]
    if dims == 1:
        return float(ref[0] - pts[:, 0].min())
    if dims == 2:
        pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
        best = np.minimum.accumulate(pts[:, 1])
        above = np.concatenate(([ref[1]], best[:-1]))
        return float(np.dot(ref[0] - pts[:, 0], above - best))
    # slice along the last objective: between consecutive levels, the covered
    # cross-section is the (d-1)-dimensional hypervolume of the points below
    pts = pts[np.argsort(pts[:, -1], kind="stable")]
    levels = np.append(pts[:, -1], ref[-1])
    total = 0.0
    for i in range(len(pts)):
        height = levels[i + 1] - levels[i]
        if height > 0:
            total += height * _volume(_non_dominated(pts[: i + 1, :-1]), ref[:-1])
    return total
