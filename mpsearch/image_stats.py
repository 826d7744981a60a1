"""Per-channel normalisation statistics of uint8 images, from exact 256-bin histograms.

Histograms add up, so a split measured batch by batch (streamed) gets the values
of the same split measured at once (in memory).
"""

from __future__ import annotations

import torch


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``(N, C, H, W)`` images, in [0, 1] units.

    Exact: computed from a 256-bin histogram per channel, in float64.
    """
    return histogram_stats(channel_histograms(images))


def channel_histograms(images: torch.Tensor) -> torch.Tensor:
    """Per-channel 256-bin histograms of uint8 ``(N, C, H, W)`` images, int64 ``(C, 256)``."""
    return torch.stack([torch.bincount(images[:, ch].reshape(-1), minlength=256)
                        for ch in range(images.shape[1])])


def histogram_stats(hist: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) std per channel, in [0, 1] units, from :func:`channel_histograms`."""
    values = torch.arange(256, dtype=torch.float64, device=hist.device) / 255.0
    means, stds = [], []
    for h in hist.double():
        total = h.sum()
        mean = (h * values).sum() / total
        var = (h * values * values).sum() / total - mean * mean
        means.append(float(mean))
        stds.append(float(var.clamp_min(0).sqrt()))
    return tuple(means), tuple(stds)
