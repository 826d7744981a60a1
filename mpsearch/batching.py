"""What the in-memory and the streamed data share when they batch a split.

The stratified hold-out (the same images held out on both paths), the check of a
``batches`` call's arguments, and the ``crop-flip`` augmentation, run batched on the
device. :mod:`mpsearch.data` and :mod:`mpsearch.streaming` both build on it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mpsearch.errors import MpsearchError, UnknownNameError

AUGMENTATIONS: tuple[str, ...] = ("crop-flip", "resized-crop-flip")
CROP_PADDING = 4


def stratified_split(labels: torch.Tensor, num_classes: int, fraction: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a deterministic stratified hold-out (see :meth:`mpsearch.data.ImageData.split`).

    Returns:
        ``(rest, held_out)``: sorted int64 indices on the CPU.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise MpsearchError(f"hold-out fraction {fraction!r} must lie strictly between "
                            f"0 and 1.")
    labels = labels.cpu()
    n = len(labels)
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    # A stable sort by label keeps the random order within each class.
    grouped = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels, minlength=num_classes)
    take = torch.floor(counts.double() * float(fraction) + 0.5).long()
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts.repeat_interleave(counts)
    held = rank < take.repeat_interleave(counts)
    return grouped[~held].sort().values, grouped[held].sort().values


def check_batch_args(batch_size: Any, augment: str | None) -> None:
    """Reject an unknown augmentation or a batch size that is not a positive integer."""
    if augment is not None and augment not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", augment, AUGMENTATIONS)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MpsearchError(f"batch size {batch_size!r} must be a positive integer.")


def crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
              padding: int = CROP_PADDING) -> torch.Tensor:
    """Crop every image from its zero-padded copy, then maybe mirror it, all batched.

    Args:
        images: ``(B, C, H, W)``, any dtype.
        shifts: int64 ``(B, 2)``, the crop's top-left corner (row, column) in the
            padded image, each in ``[0, 2 * padding]``; ``(padding, padding)``
            is the original image.
        flips: bool ``(B,)``, mirror left-right.
        padding: zeros added on every side before cropping.

    Returns:
        ``(B, C, H, W)``, same dtype and device as ``images``.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    # Every possible crop as a view, (B, C, rows, cols, H, W); indexing copies the chosen ones.
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    crops = windows[torch.arange(b, device=images.device), :, shifts[:, 0], shifts[:, 1]]
    return torch.where(flips.view(b, 1, 1, 1), crops.flip(3), crops)
