"""Choosing a linear quantizer's clip from a sample of the tensor it quantizes.

A clip ``c`` trades resolution against clipping: values beyond ``c`` are cut to it,
and the grid's steps shrink with ``c``. Two ways to choose it, shared by every
quantizer with a clip:

- ``"kl"``: the clip whose quantized distribution is closest to the tensor's own in
  Kullback-Leibler divergence (HAQ, Sec. 3.3: ``c = argmin_x D_KL(W || quantize(W, a, x))``),
  measured on histograms as TensorRT's and MXNet's entropy calibration do: the
  reference distribution ``P`` is the histogram of the non-zero magnitudes up to
  ``c`` with everything beyond ``c`` added to its last bin; ``Q`` is the histogram
  up to ``c`` (without the clipped mass) with each grid point's mass spread evenly
  over the non-empty bins that round to it. Exact zeros (half of a ReLU's outputs)
  are left out: zero is on the grid, and spreading their spike over the bins
  around it would pull the clip down at every width.
- ``"mse"``: the clip that minimises the mean squared quantization error.

The grid is HAQ's linear one (see :func:`grid_levels`): signed tensors are
quantized symmetrically on ``[-c, c]`` with zero on the grid, non-negative ones on
``[0, c]``.
"""

from __future__ import annotations

import math

import torch

CALIBRATIONS = ("kl", "mse")
MAX_BINS = 2048  # TensorRT's histogram size; fewer for small tensors (sqrt of the count, as HAQ)
KL_CANDIDATES = 256  # clips tried, evenly spaced over the histogram's bins
MSE_CANDIDATES = 40  # fractions of the largest magnitude tried, from 5 % to 100 %
BINS_PER_STEP = 4  # below this the histogram cannot resolve the grid's steps
_EPS = 1e-4  # mass given to empty bins of Q where P has mass (MXNet's smoothing), before renormalising


def grid_levels(bits: int, signed: bool) -> int:
    """The grid points above zero on ``[0, c]``: ``2^(b-1) - 1`` signed, ``2^b - 1`` unsigned.

    HAQ's step is ``c / (2^(b-1) - 1)`` for weights and ``c / (2^b - 1)`` for
    activations after a ReLU. A signed 1-bit grid has no point above zero on this
    rule; it is taken as ``{-c, c}`` (one level).
    """
    if bits < 1:
        raise ValueError(f"a linear grid needs at least 1 bit, not {bits}")
    return max(1, 2 ** (bits - 1) - 1) if signed else 2**bits - 1


def linear_quantize(x: torch.Tensor, clip: torch.Tensor | float, bits: int, signed: bool) -> torch.Tensor:
    """``round(clamp(x) / s) * s`` on HAQ's grid, without gradients (the quantizer has them)."""
    clip = torch.as_tensor(clip, dtype=x.dtype, device=x.device)
    levels = grid_levels(bits, signed)
    if signed and bits == 1:
        return torch.where(x >= 0, clip, -clip)
    step = clip / levels
    y = x.clamp(-clip, clip) if signed else x.clamp(torch.zeros_like(clip), clip)
    return torch.round(y / step) * step


def _magnitudes(x: torch.Tensor, signed: bool) -> torch.Tensor:
    x = x.detach().flatten().float()
    return x.abs() if signed else x.clamp_min(0.0)


@torch.no_grad()
def kl_clip(x: torch.Tensor, bits: int, signed: bool, bins: int | None = None) -> float:
    """The clip of least KL divergence between ``x``'s distribution and its quantized form.

    Args:
        x: a sample of the tensor (any shape).
        bits: the width the clip is chosen for.
        signed: symmetric grid on ``[-c, c]`` (magnitudes are histogrammed), else ``[0, c]``.
        bins: histogram bins; default ``sqrt(numel)`` within 64-2048.

    Returns:
        The clip, a bin edge of the histogram. The largest magnitude when the
        histogram has fewer than :data:`BINS_PER_STEP` bins per grid point: it cannot
        resolve the grid, and so fine a grid loses little to outliers (HAQ's code
        clips at the largest magnitude from 5 bits up). A tiny positive number for
        an all-zero tensor.
    """
    a = _magnitudes(x, signed)
    a = a[a > 0]  # exact zeros (a ReLU's) sit on the grid: no clip changes them
    top = float(a.max()) if a.numel() else 0.0
    if top <= 0.0:
        return 1e-8
    levels = grid_levels(bits, signed)
    n = bins or int(min(MAX_BINS, max(64, round(math.sqrt(a.numel())))))
    if n < BINS_PER_STEP * levels:
        return top
    hist = torch.histc(a, bins=n, min=0.0, max=top).double()
    width = top / n
    # Candidate clips: i bins kept, i from one more than the grid's points to all of them.
    keep = torch.unique(torch.linspace(levels + 1, n, min(KL_CANDIDATES, n - levels)).round().long())
    j = torch.arange(n, dtype=torch.float64)
    inside = j[None, :] < keep[:, None]                                  # (candidates, bins)
    clip = keep.double() * width
    # Q: the in-range histogram, each grid point's mass spread over its non-empty bins.
    level = torch.round((j[None, :] + 0.5) * width / (clip[:, None] / levels)).clamp(max=levels).long()
    level = torch.where(inside, level, torch.full_like(level, levels + 1))  # out of range: a spare slot
    in_range = torch.where(inside, hist[None, :], torch.zeros(()))
    mass = torch.zeros(len(keep), levels + 2, dtype=torch.float64).scatter_add_(1, level, in_range)
    filled = torch.zeros_like(mass).scatter_add_(1, level, (in_range > 0).double())
    q = torch.where(in_range > 0, mass.gather(1, level) / filled.gather(1, level).clamp_min(1), 0.0)
    # P: the same bins with the clipped mass added to the last one kept.
    outliers = hist.sum() - in_range.sum(1)
    p = in_range.clone()
    p.scatter_add_(1, (keep - 1)[:, None], outliers[:, None])
    q = torch.where((p > 0) & (q <= 0), _EPS * hist.sum() / n, q)
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True)
    terms = torch.where(p > 0, p * torch.log(p / torch.where(q > 0, q, 1.0)), 0.0)
    divergence = terms.sum(1)
    return float(clip[int(torch.argmin(divergence))])


@torch.no_grad()
def mse_clip(x: torch.Tensor, bits: int, signed: bool) -> float:
    """The clip (a fraction of the largest magnitude) of least mean squared quantization error."""
    x = x.detach().flatten().float()
    a = _magnitudes(x, signed)
    top = float(a.max()) if a.numel() else 0.0
    if top <= 0.0:
        return 1e-8
    best, best_error = top, math.inf
    for fraction in torch.linspace(0.05, 1.0, MSE_CANDIDATES).tolist():
        error = float((linear_quantize(x, top * fraction, bits, signed) - x).square().mean())
        if error < best_error:
            best, best_error = top * fraction, error
    return best


def choose_clip(x: torch.Tensor, bits: int, signed: bool, method: str) -> float:
    """The clip for ``x`` at ``bits`` by ``method`` (one of :data:`CALIBRATIONS`)."""
    if method == "kl":
        return kl_clip(x, bits, signed)
    if method == "mse":
        return mse_clip(x, bits, signed)
    raise ValueError(f"unknown calibration {method!r}; choose one of {', '.join(CALIBRATIONS)}")
