"""Datasets: the interface dataset plugins implement, and the in-memory data trials train on.

Small datasets (MNIST, CIFAR-10) live on the trial's device as one uint8 tensor
(:class:`ImageData`). Batches are slices of it taken through a permutation, and
normalisation and augmentation run on the device, batched: no DataLoader, no
worker processes, no per-sample Python.

Folders of image files too large for that (ImageNet at 224x224 is ~190 GB as one
tensor) stream from disk instead (:class:`~mpsearch.streaming.ImageFiles`, same
interface): :func:`open_split` picks the path from ``[data] streaming`` (``"auto"``:
stream above :data:`STREAM_ABOVE_BYTES`, or when the augmentation needs the original
images). Folders are read by :mod:`mpsearch.image_folder`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mpsearch.batching import AUGMENTATIONS  # noqa: F401 - re-exported
from mpsearch.batching import CROP_PADDING, check_batch_args, crop_flip, stratified_split
from mpsearch.errors import DatasetError, MpsearchError, PluginError, UnknownNameError
from mpsearch.image_stats import (  # noqa: F401 - re-exported: dataset plugins import them here
    channel_histograms,
    channel_stats,
    histogram_stats,
)

if TYPE_CHECKING:  # pragma: no cover
    from mpsearch.streaming import ImageFiles

SPLITS: tuple[str, ...] = ("train", "test")
#: Augmentations that need each original image, so only the streaming path runs them.
STREAMED_ONLY: tuple[str, ...] = ("resized-crop-flip",)
#: ``[data] streaming = "auto"`` streams a split whose uint8 tensor would exceed this.
STREAM_ABOVE_BYTES = 4 * 2**30


class DatasetSource(ABC):
    """Where a dataset comes from and how to read it into an :class:`ImageData`.

    Lifecycle: a plugin registers one instance per process when the host loads;
    it must be stateless (a trial may run in another process, which registers
    its own). :meth:`load` is called in the process that runs a trial, so it may
    be slow once (decoding, then caching) but must not rely on anything the
    driver process did.

    Attributes:
        description: one line, citing the dataset's paper.
        layout: the expected on-disk layout under the root, quoted in errors.
        needs_root: False for data embedded in the package.
        augment: the default train-time augmentation, ``None`` or ``"crop-flip"``.
        options: the keyword options :meth:`load` accepts.
    """

    description: str = ""
    layout: str = ""
    needs_root: bool = True
    augment: str | None = None
    options: tuple[str, ...] = ()

    @abstractmethod
    def load(self, root: Path | None, split: str, **options: Any) -> ImageData:
        """Read one split.

        Args:
            root: the data root (from :func:`resolve_root`); ignored when
                ``needs_root`` is False.
            split: ``"train"`` or ``"test"``.
            **options: source-specific, named in :attr:`options`.

        Raises:
            DatasetError: the root is missing or not in :attr:`layout`.
        """

    def stream(self, root: Path | None, split: str, **options: Any) -> ImageFiles | None:
        """The split as image files to stream from disk, or None when the data under
        ``root`` is not one image per file (the default).

        Cheap: lists the files and decodes nothing, or only a sample for the
        normalisation statistics. Labels, classes, order and statistics must be those
        of :meth:`load`, so that both paths hold out the same validation split.

        Raises:
            DatasetError: the root is missing or not in :attr:`layout`.
        """
        return None

    def check_args(self, split: str, options: dict[str, Any]) -> None:
        """Reject an unknown split or option name (for implementations of :meth:`load`)."""
        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        for name in options:
            if name not in self.options:
                raise UnknownNameError("dataset option", name, self.options)

    def check(self, root: Path | None, **options: Any) -> None:
        """Raise unless :meth:`load` will find its files, without reading them.

        The driver calls this before it creates or runs a study, so that a missing
        or misplaced dataset is one error at once instead of one failed trial per
        trial. The default checks the option names and, when ``needs_root``, that
        the root is a folder; a source whose :attr:`layout` has fixed names should
        check that they exist (cheaply: no decoding).

        Raises:
            DatasetError: the root is missing or not in :attr:`layout`.
            UnknownNameError: an option :meth:`load` does not accept.
        """
        self.check_args("train", options)
        if self.needs_root:
            self.require_root(root, "dataset")

    def require_root(self, root: Path | str | None, what: str) -> Path:
        """``root`` as a Path, or a :class:`DatasetError` when it is not a folder."""
        if root is None:
            raise DatasetError(f"{what} needs a data root; expected {self.layout}.")
        path = Path(root)
        if not path.is_dir():
            raise DatasetError(f"{what} not found: {path} is not a folder; expected {self.layout}.")
        return path


def resolve_root(root: str | Path | None) -> Path:
    """The data root: ``root`` if given, else ``$MPSEARCH_DATA``, else ``./data``.

    The result is absolute, because trials may run with another working
    directory; whether it exists is the source's concern.
    """
    if root is None or str(root) == "":
        root = os.environ.get("MPSEARCH_DATA") or "data"
    return Path(root).expanduser().absolute()


def check_data(spec: Any, host: Any) -> None:
    """Fail fast when a study's dataset is not where its spec says (see :meth:`DatasetSource.check`),
    cannot be read as the spec asks (streamed), or its trials ask for a device this machine lacks.

    Args:
        spec: a :class:`~mpsearch.spec.StudySpec`; its ``[data]`` name, root and options.
        host: the :class:`~mpsearch.host.PluginHost` that registered the dataset.

    Raises:
        DatasetError: one line naming the spec, its ``[data]`` entry, the folder and
            where that folder came from (``[data] root``, ``$MPSEARCH_DATA`` or ``./data``).
    """
    name = spec.data.name
    source = host.datasets.get(name)
    root = resolve_root(spec.data.root) if source.needs_root else None
    try:
        source.check(root, **spec.data.options)
    except DatasetError as exc:
        if root is None:
            origin = ""
        elif spec.data.root:
            origin = "; the root is the spec's [data] root"
        elif os.environ.get("MPSEARCH_DATA"):
            origin = "; the root is $MPSEARCH_DATA"
        else:
            origin = "; the root is ./data by default: set [data] root or $MPSEARCH_DATA"
        raise DatasetError(f"{spec.source}: [data] {name}: {str(exc).rstrip('.')}{origin}.") from None
    except MpsearchError as exc:
        raise DatasetError(f"{spec.source}: [data] {name} options: {exc}") from None
    except Exception as exc:  # a plugin's bug, told as such
        raise PluginError(f"dataset {name!r} (plugin {host.datasets.entry(name).plugin!r}) failed "
                          f"its check: {type(exc).__name__}: {exc}") from exc
    check_device(spec)  # where the data goes
    streaming = getattr(spec.data, "streaming", "auto")
    augment = resolve_augment(spec.data.augment, source)
    if streaming is False and augment in STREAMED_ONLY:
        raise DatasetError(f"{spec.source}: [data] augment = {augment!r} needs the original images, "
                           f"which only the streaming path reads; set [data] streaming = true "
                           f"or \"auto\".")
    if streaming is True or augment in STREAMED_ONLY:
        try:
            files = source.stream(root, "train", **spec.data.options)
        except MpsearchError as exc:
            raise DatasetError(f"{spec.source}: [data] {name}: {str(exc).rstrip('.')}.") from None
        if files is None:
            why = "[data] streaming = true" if streaming is True else f"[data] augment = {augment!r}"
            where = f" under {root}" if root is not None else ""
            raise DatasetError(f"{spec.source}: {why} needs a dataset of image files, but "
                               f"{name!r}{where} is not one image per file ({source.layout}).")


def check_device(spec: Any) -> None:
    """Refuse ``[training] device = "cuda"`` on a machine without CUDA, before a study is written.

    Raises:
        MpsearchError: one line naming the spec and what to set instead.
    """
    if spec.training.device == "cuda" and not torch.cuda.is_available():
        raise MpsearchError(f"{spec.source}: [training] device = \"cuda\", but this machine has no "
                            f"CUDA device; use \"auto\" or \"cpu\".")


def resolve_augment(augment: str | None, source: DatasetSource) -> str | None:
    """The spec's ``[data] augment`` made concrete: ``"default"`` is the source's own, ``"none"`` None."""
    if augment == "default":
        augment = source.augment
    return None if augment in (None, "none") else augment


def open_split(source: DatasetSource, root: Path | None, split: str, *,
               streaming: bool | str = "auto", augment: str | None = None,
               workers: int | None = None, **options: Any) -> ImageData | ImageFiles:
    """One split, in memory or streamed from disk.

    Args:
        streaming: ``True`` streams, ``False`` loads into memory, ``"auto"`` streams
            when the split would exceed :data:`STREAM_ABOVE_BYTES` in memory or
            ``augment`` needs the original images (``resized-crop-flip``).
        augment: the training augmentation; with ``resized-crop-flip`` the evaluation
            transform is ImageNet's (resize 256, centre crop 224, to scale).
        workers: decoding processes when streaming (None: one per trial thread, up to 8).

    Raises:
        DatasetError: the data is missing, or streaming is asked of data that is not
            one image per file.
    """
    if streaming is False:
        return source.load(root, split, **options)
    files = source.stream(root, split, **options)
    if files is None:
        if streaming is True or augment in STREAMED_ONLY:
            raise DatasetError(f"the dataset under {root} is not one image per file, so it cannot "
                               f"stream from disk; expected {source.layout}.")
        return source.load(root, split, **options)
    if streaming is True or augment in STREAMED_ONLY or files.decoded_bytes > STREAM_ABOVE_BYTES:
        from mpsearch.streaming import EVAL_RESIZE_RATIO, with_workers

        if augment in STREAMED_ONLY:
            files = replace(files, resize=round(files.size * EVAL_RESIZE_RATIO))
        return with_workers(files, workers)
    return source.load(root, split, **options)


@dataclass(frozen=True, eq=False)
class ImageData:
    """One split of an image dataset, held as a single uint8 tensor.

    Attributes:
        images: uint8, ``(N, C, H, W)``.
        labels: int64, ``(N,)``, indices into ``classes``.
        classes: class names, in label order.
        mean: per channel, in [0, 1] units, subtracted when normalising.
        std: per channel, in [0, 1] units, divided by when normalising.
    """

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Shapes and dtypes only: checking label values would sync a device.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), not {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), not "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        if self.labels.device != self.images.device:
            raise ValueError("images and labels must be on the same device")
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} values, one per channel")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        return (f"ImageData({len(self)} images {c}x{h}x{w}, {self.num_classes} classes, "
                f"device={self.device})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageData:
        """The same data on ``device`` (self if it is already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def subset(self, indices: torch.Tensor) -> ImageData:
        """The images at ``indices`` (int64), in that order."""
        indices = torch.as_tensor(indices, dtype=torch.int64).to(self.device)
        return replace(self, images=self.images.index_select(0, indices),
                       labels=self.labels.index_select(0, indices))

    def split(self, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
        """A deterministic stratified hold-out.

        Args:
            fraction: the share of every class to hold out, in (0, 1); each
                class gives ``round(fraction * count)`` images.
            seed: the same seed gives the same split, on any device.

        Returns:
            ``(rest, held_out)``: disjoint, each in the original order.
        """
        rest, held = stratified_split(self.labels, self.num_classes, fraction, seed)
        return self.subset(rest), self.subset(held)

    def class_counts(self) -> torch.Tensor:
        """Images per class, int64 ``(num_classes,)``, on the data's device."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def batches(self, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, augment: str | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` batches on the data's device.

        ``x`` is float32, ``(x / 255 - mean) / std``; ``y`` is int64. Batches are
        slices of the uint8 tensor through a permutation drawn from ``generator``
        (which may live on the CPU or on the data's device); all random draws of
        the epoch are made up front, so the same seed gives the same epoch.

        Args:
            batch_size: images per batch; the last one may be smaller.
            shuffle: visit the images in a random order.
            generator: the source of randomness (the default one if None).
            augment: ``None`` or ``"crop-flip"``: a random crop of the image
                zero-padded by 4 pixels, then a random horizontal flip
                (``"resized-crop-flip"`` streams: see :mod:`mpsearch.streaming`).
            drop_last: skip a last batch smaller than ``batch_size``.
        """
        check_batch_args(batch_size, augment)
        if augment in STREAMED_ONLY:
            raise MpsearchError(f"augmentation {augment!r} needs the original images, which only "
                                f"the streaming path reads; set [data] streaming = true or \"auto\".")
        return self._batches(batch_size, shuffle, generator, augment, drop_last)

    def _batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                 augment: str | None, drop_last: bool
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self), self.device
        rng = generator.device if generator is not None else device
        order = None
        if shuffle:
            order = torch.randperm(n, generator=generator, device=rng).to(device)
        if augment == "crop-flip":
            # Drawn for the whole epoch at once: one transfer, not one per batch,
            # and the draws do not depend on the batch size.
            span = 2 * CROP_PADDING + 1
            shifts = torch.randint(0, span, (n, 2), generator=generator, device=rng).to(device)
            flips = torch.randint(0, 2, (n,), generator=generator, device=rng).to(device) == 1
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(1, -1, 1, 1)
        offset = torch.tensor([m / s for m, s in zip(self.mean, self.std)],
                              device=device).view(1, -1, 1, 1)
        end = n - n % batch_size if drop_last else n
        for start in range(0, end, batch_size):
            stop = min(start + batch_size, n)
            if order is None:
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                index = order[start:stop]
                x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
            x = x.float()
            if augment == "crop-flip":
                # On float: the CPU's indexing kernels are several times slower on uint8.
                x = crop_flip(x, shifts[start:stop], flips[start:stop])
            yield x.mul_(scale).sub_(offset), y
