"""Data that does not fit in memory: image files decoded batch by batch while a trial trains.

:class:`ImageFiles` is the streaming twin of :class:`~mpsearch.data.ImageData`: the
same attributes (labels, classes, mean, std), the same stratified ``split`` and
``subset``, and the same ``batches`` contract, so every training loop and strategy
runs on either. Only the list of files and the labels stay in memory; a
:class:`torch.utils.data.DataLoader` decodes each batch with torchvision in worker
processes (a few batches ahead, pinned when the trial runs on CUDA), so memory is
bounded by the workers and the batch size, not by the dataset.

The order is the in-memory path's: every random draw of an epoch (the permutation,
the crop offsets and flips of ``crop-flip``, one seed per image for
``resized-crop-flip``) is made up front from the trial's generator in the same
sequence, so the same seed visits the same images in the same batches, whichever
path and however many workers. ``crop-flip`` runs batched on the device, as in
memory, so a folder of lossless images gives bit-identical batches on both paths.

Transforms (torchvision's ``transforms.v2`` functionals on uint8 tensors):

- evaluation, and training without augmentation or with ``crop-flip``: the shorter
  side resized to ``resize`` and the centre ``size`` square cropped (the in-memory
  path's transform when ``resize == size``; an image already ``size`` square is kept);
- ``resized-crop-flip`` (ImageNet's training augmentation): a random crop of 8-100 %
  of the area with an aspect ratio in [3/4, 4/3], resized to ``size``, then a random
  horizontal flip. Studies that train with it evaluate at ``resize = size * 256 / 224``
  (resize 256, centre crop 224).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mpsearch.batching import CROP_PADDING, check_batch_args, crop_flip, stratified_split
from mpsearch.errors import DatasetError, MpsearchError
from mpsearch.image_decode import read_image_file

#: ImageNet's evaluation resize for a crop of 224: 256.
EVAL_RESIZE_RATIO = 256 / 224
_RRC_SCALE = (0.08, 1.0)
_RRC_RATIO = (3 / 4, 4 / 3)
_PREFETCH = 2  # batches each worker decodes ahead


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """One split of an image dataset as files on disk, decoded as it is read.

    Attributes:
        folder: the split's folder; ``paths`` are relative to it.
        paths: the image files, a numpy array of strings (no per-file Python objects,
            so forked workers share it instead of copying it).
        labels: int64 ``(N,)`` on the CPU, indices into ``classes``.
        classes, mean, std: as :class:`~mpsearch.data.ImageData`'s.
        size: the side of the square images batches hold.
        resize: the evaluation transform's shorter side before the centre crop
            (default ``size``).
        exact: every image must already be ``size`` square (CIFAR-10's files); another
            size is an error naming the file.
        layout: the expected layout, quoted in errors.
        workers: decoding processes (0: decode in the trial's own process).
        device: where batches land.
    """

    folder: Path
    paths: np.ndarray = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int
    resize: int | None = None
    exact: bool = False
    layout: str = ""
    workers: int = 0
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        paths = np.asarray(self.paths)
        if paths.ndim != 1 or (len(paths) and paths.dtype.kind != "U"):
            raise ValueError("paths must be a 1-d array of strings")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(paths),):
            raise ValueError(f"labels must be int64 ({len(paths)},), not {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values, one per channel")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "labels", self.labels.cpu())
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "device", torch.device(self.device))

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f"ImageFiles({len(self)} images 3x{self.size}x{self.size} streamed from "
                f"{self.folder}, {self.num_classes} classes, device={self.device})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def decoded_bytes(self) -> int:
        """What the split would take in memory as one uint8 tensor."""
        return len(self) * 3 * self.size * self.size

    def to(self, device: torch.device | str) -> ImageFiles:
        """The same files, with batches landing on ``device``."""
        device = torch.device(device)
        return self if device == self.device else replace(self, device=device)

    def subset(self, indices: torch.Tensor) -> ImageFiles:
        """The images at ``indices`` (int64), in that order."""
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        return replace(self, paths=self.paths[indices.numpy()], labels=self.labels[indices])

    def split(self, fraction: float, seed: int) -> tuple[ImageFiles, ImageFiles]:
        """The hold-out of :meth:`mpsearch.data.ImageData.split`: same labels, same seed, same images."""
        rest, held = stratified_split(self.labels, self.num_classes, fraction, seed)
        return self.subset(rest), self.subset(held)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes).to(self.device)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: str | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of normalised ``(x, y)`` batches on :attr:`device`.

        The contract of :meth:`mpsearch.data.ImageData.batches`, plus the augmentation
        ``"resized-crop-flip"``.

        Raises:
            DatasetError: a file is gone, unreadable or not an image (one line naming it).
        """
        check_batch_args(batch_size, augment)
        return self._batches(batch_size, shuffle, generator, augment, drop_last)

    def _batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 augment: str | None, drop_last: bool
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self), self.device
        rng = generator.device if generator is not None else torch.device("cpu")
        # The draws of ImageData._batches, in its order; then one seed per image.
        order = torch.randperm(n, generator=generator, device=rng).cpu() if shuffle else None
        if augment == "crop-flip":
            span = 2 * CROP_PADDING + 1
            shifts = torch.randint(0, span, (n, 2), generator=generator, device=rng).to(device)
            flips = torch.randint(0, 2, (n,), generator=generator, device=rng).to(device) == 1
        seeds = None
        if augment == "resized-crop-flip":
            seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator, device=rng).cpu().tolist()
        end = n - n % batch_size if drop_last else n
        index = order if order is not None else torch.arange(n)
        plan = [index[start:min(start + batch_size, n)] for start in range(0, end, batch_size)]
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(1, -1, 1, 1)
        offset = torch.tensor([m / s for m, s in zip(self.mean, self.std)],
                              device=device).view(1, -1, 1, 1)
        decoder = _Decoder(self, "resized-crop-flip" if seeds is not None else "eval")
        items = [[(int(i), -1 if seeds is None else seeds[start + k]) for k, i in enumerate(idx)]
                 for start, idx in zip(range(0, end, batch_size), plan)]
        start = 0
        for idx, images in zip(plan, _load(decoder, items, self.workers, device)):
            stop = start + len(idx)
            x = images.to(device, non_blocking=True).float()
            y = self.labels[idx].to(device, non_blocking=True)
            if augment == "crop-flip":
                x = crop_flip(x, shifts[start:stop], flips[start:stop])
            start = stop
            yield x.mul_(scale).sub_(offset), y

    def uint8_batches(self, batch_size: int, indices: Sequence[int] | None = None
                      ) -> Iterator[torch.Tensor]:
        """The images at ``indices`` (default: all, in order) through the evaluation
        transform, as uint8 ``(B, 3, size, size)`` batches on the CPU (for statistics)."""
        index = list(range(len(self))) if indices is None else [int(i) for i in indices]
        items = [[(i, -1) for i in index[s:s + batch_size]] for s in range(0, len(index), batch_size)]
        yield from _load(_Decoder(self, "eval"), items, self.workers, torch.device("cpu"))


def with_workers(files: ImageFiles, workers: int | None) -> ImageFiles:
    """``files`` decoding in ``workers`` processes (None: one per thread the trial has, at most 8)."""
    if workers is None:
        workers = min(8, max(1, torch.get_num_threads()))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise MpsearchError(f"[data] workers {workers!r} must be a non-negative integer.")
    return replace(files, workers=workers)


def _load(decoder: _Decoder, items: list[list[tuple[int, int]]], workers: int,
          device: torch.device) -> Iterator[torch.Tensor]:
    """Decode the planned batches through a DataLoader; a bad file ends it with its message."""
    if not items:
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(decoder, batch_sampler=items, num_workers=workers, collate_fn=_as_batch,
                        pin_memory=device.type == "cuda",
                        prefetch_factor=_PREFETCH if workers else None)
    for images, error in loader:
        if error is not None:
            raise DatasetError(error)
        yield images


def _as_batch(decoded):
    return decoded  # __getitems__ already made the batch


class _Decoder:
    """Reads and transforms the images of one batch (in a DataLoader worker or in process)."""

    def __init__(self, files: ImageFiles, mode: str):
        self.folder, self.paths, self.layout = files.folder, files.paths, files.layout
        self.size, self.exact, self.mode = files.size, files.exact, mode
        self.resize = files.resize or files.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, items: list[tuple[int, int]]) -> tuple[torch.Tensor | None, str | None]:
        try:
            return torch.stack([self._one(i, seed) for i, seed in items]), None
        except DatasetError as exc:
            # Told back as a message: a worker's exception would reach the trial wrapped
            # in a traceback of the worker.
            return None, str(exc)

    def _one(self, i: int, seed: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        path = self.folder / str(self.paths[i])
        img = read_image_file(path, self.layout)
        h, w = img.shape[1:]
        if self.exact and (h, w) != (self.size, self.size):
            raise DatasetError(f"{path} is {h}x{w}, not {self.size}x{self.size}; "
                               f"expected {self.layout}.")
        if self.mode == "resized-crop-flip":
            rng = random.Random(seed)
            top, left, ch, cw = resized_crop_box(h, w, rng)
            img = TF.resized_crop(img, top, left, ch, cw, [self.size, self.size], antialias=True)
            return TF.horizontal_flip(img) if rng.random() < 0.5 else img.contiguous()
        if (h, w) == (self.size, self.size) and self.resize == self.size:
            return img
        img = TF.resize(img, [self.resize], antialias=True)
        return TF.center_crop(img, [self.size, self.size]).contiguous()


def resized_crop_box(height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random resized crop, drawn as torchvision's
    ``RandomResizedCrop.get_params`` draws it (scale 0.08-1, ratio 3/4-4/3, ten tries,
    then the centre crop), from ``rng``."""
    area = height * width
    log_lo, log_hi = math.log(_RRC_RATIO[0]), math.log(_RRC_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*_RRC_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    ratio = width / height
    if ratio < _RRC_RATIO[0]:
        w, h = width, int(round(width / _RRC_RATIO[0]))
    elif ratio > _RRC_RATIO[1]:
        h, w = height, int(round(height * _RRC_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
