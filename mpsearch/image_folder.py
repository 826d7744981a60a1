"""Folders of image files (CIFAR-10 as JPEGs, a user's ImageFolder tree), decoded once and cached.

A split ``<root>/<class>/<images>`` becomes one uint8 tensor and its labels. The
decoded tensors are cached under :func:`cache_dir`, keyed by the folder and a
digest of every file's path, size and modification time, and loaded back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mpsearch.errors import DatasetError
from mpsearch.image_decode import decode_image_bytes
from mpsearch.image_decode import read_image_file  # noqa: F401 - re-exported
from mpsearch.image_stats import channel_histograms, histogram_stats

#: Suffixes read as images in folders (those of torchvision's ImageFolder, plus GIF).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp",
                                     ".gif", ".tif", ".tiff", ".webp")

_CACHE_FORMAT = 1


def cache_dir() -> Path | None:
    """Where decoded folders are cached: ``$MPSEARCH_CACHE``, else ``$XDG_CACHE_HOME/mpsearch``,
    else ``~/.cache/mpsearch``; ``MPSEARCH_CACHE=off`` turns caching off (None)."""
    env = os.environ.get("MPSEARCH_CACHE")
    if env:
        return None if env.lower() in ("off", "0", "none") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mpsearch"


def read_image_folder(split_dir: Path, *, layout: str, classes: Sequence[str] | None = None,
                      image_size: int | None = None, cache: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Decode a folder ``split_dir/<class>/<images>`` into tensors, through the cache.

    Args:
        split_dir: one split of an ImageFolder tree.
        layout: the expected layout, quoted in errors.
        classes: the label order; class folders outside it are an error, and
            missing ones simply have no images. None: the sorted folder names,
            each of which must hold an image.
        image_size: resize each image's shorter side to this and crop the
            centre square; None keeps the sizes, which must then all agree.
        cache: read and write :func:`cache_dir` (skipped when not writable).

    Returns:
        ``(images, labels, classes)``: uint8 ``(N, 3, H, W)``, int64 ``(N,)``.

    Raises:
        DatasetError: the folder is missing, has no classes or no images, or a
            file cannot be decoded.
    """
    split_dir = Path(split_dir)
    files, classes = _listing(split_dir, layout, classes)
    key = _digest(files)
    where = split_dir.resolve()
    slot = hashlib.sha256(f"{_CACHE_FORMAT}\0{where}\0{image_size}\0{classes}".encode()).hexdigest()
    base = cache_dir() if cache else None
    cache_file = (base / f"{where.parent.name}-{where.name}-{slot[:16]}.pt") if base else None

    if cache_file is not None:
        hit = _cache_read(cache_file, key)
        if hit is not None:
            return hit["images"], hit["labels"], tuple(classes)
    images = _decode_files(split_dir, [f[0] for f in files], [f[2] for f in files], image_size,
                           layout)
    labels = torch.tensor([f[1] for f in files], dtype=torch.int64)
    if cache_file is not None:
        _cache_write(cache_file, {"format": _CACHE_FORMAT, "key": key, "images": images,
                                  "labels": labels})
    return images, labels, tuple(classes)



class Listing(NamedTuple):
    """The image files of a split folder (see :func:`list_image_folder`)."""

    paths: list[str]  # relative to the folder, sorted by class then path
    labels: torch.Tensor  # int64
    classes: tuple[str, ...]
    key: str  # digest of every file's path, label, size and modification time


def list_image_folder(split_dir: Path, *, layout: str, classes: Sequence[str] | None = None
                      ) -> Listing:
    """The image files of ``split_dir/<class>/<images>`` and their labels, without decoding.

    The order and the errors are those of :func:`read_image_folder` (which decodes
    the same files in the same order).

    Raises:
        DatasetError: the folder is missing, has no classes, or a class has no images.
    """
    files, classes = _listing(Path(split_dir), layout, classes)
    return Listing([f[0] for f in files], torch.tensor([f[1] for f in files], dtype=torch.int64),
                   tuple(classes), _digest(files))


#: Images whose statistics normalise a streamed folder (all of them when there are fewer).
STATS_IMAGES = 10_000


def streamed_stats(files: Any, key: str, limit: int = STATS_IMAGES
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a streamed split's images, through the cache.

    Measured as :func:`mpsearch.image_stats.channel_stats` measures a decoded split, on up
    to ``limit`` images (a seeded sample when there are more), so a folder of at most
    ``limit`` images gets exactly the in-memory path's values.

    Args:
        files: an :class:`~mpsearch.streaming.ImageFiles`.
        key: its listing's digest (:attr:`Listing.key`).
    """
    from mpsearch.streaming import with_workers

    where = Path(files.folder).resolve()
    slot = hashlib.sha256(f"{_CACHE_FORMAT}\0{where}\0{files.size}\0{limit}\0{key}".encode())
    base = cache_dir()
    cache_file = base / f"{where.parent.name}-{where.name}-stats-{slot.hexdigest()[:16]}.pt" \
        if base else None
    if cache_file is not None:
        try:
            hit = torch.load(cache_file, map_location="cpu", weights_only=True)
            return tuple(hit["mean"]), tuple(hit["std"])
        except Exception:  # noqa: BLE001 - missing or unreadable: measured again
            pass
    n = len(files)
    index = None
    if n > limit:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values
    hist = torch.zeros((3, 256), dtype=torch.int64)
    files = with_workers(files, None)  # decoded by as many workers as a trial would use
    for batch in files.uint8_batches(256, None if index is None else index.tolist()):
        hist += channel_histograms(batch)
    mean, std = histogram_stats(hist)
    if cache_file is not None:
        _cache_write(cache_file, {"mean": list(mean), "std": list(std)})
    return mean, std


def _digest(files: list[tuple[str, int, int, int]]) -> str:
    digest = hashlib.sha256()
    for rel, label, size, mtime in files:
        digest.update(f"{rel}\0{label}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _listing(split_dir: Path, layout: str, classes: Sequence[str] | None
             ) -> tuple[list[tuple[str, int, int, int]], list[str]]:
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} is not a folder; expected {layout}.")
    found = sorted(e.name for e in os.scandir(split_dir)
                   if e.is_dir() and not e.name.startswith("."))
    derived = classes is None
    classes = list(found if classes is None else classes)
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders; expected {layout}.")
    extra = [c for c in found if c not in classes]
    if extra:
        raise DatasetError(f"{split_dir} has class folder(s) {', '.join(extra)} outside the "
                           f"classes {', '.join(classes)}; expected {layout}.")
    files = _list_images(split_dir, classes, found, layout)
    if not files:
        raise DatasetError(f"{split_dir} has no image files; expected {layout}.")
    if derived:
        have = {f[1] for f in files}
        empty = [c for i, c in enumerate(classes) if i not in have]
        if empty:
            raise DatasetError(f"class folder {split_dir / empty[0]} has no image files; "
                               f"expected {layout}.")
    return files, classes

def _list_images(split_dir: Path, classes: Sequence[str], found: Iterable[str], layout: str
                 ) -> list[tuple[str, int, int, int]]:
    """``(relative path, label, size, mtime_ns)`` of every image, sorted by class then path.

    Raises:
        DatasetError: an image's entry cannot be read (a dangling link, a file removed meanwhile).
    """
    present = set(found)
    files: list[tuple[str, int, int, int]] = []

    # Plain strings and scandir: pathlib and relpath cost seconds over 60,000 files.
    def walk(folder: str, rel: str, label: int) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                walk(e.path, f"{rel}{e.name}/", label)
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                try:
                    st = e.stat()
                except OSError as exc:
                    raise DatasetError(f"{e.path} cannot be read ({type(exc).__name__}); "
                                       f"expected {layout}.") from None
                files.append((rel + e.name, label, st.st_size, st.st_mtime_ns))

    for label, name in enumerate(classes):
        if name in present:
            walk(os.path.join(split_dir, name), f"{name}/", label)
    return files


def _cache_read(path: Path, key: str) -> dict[str, Any] | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt, never fatal
        return None
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or data.get("key") != key:
        return None
    images, labels = data.get("images"), data.get("labels")
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8 and len(images) == len(labels)):
        return None
    return data


def _cache_write(path: Path, data: dict[str, Any]) -> None:
    """Save, or do nothing when the cache folder cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError:
        return
    try:
        # Written beside, then renamed: concurrent trials never read half a file.
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _decode_files(split_dir: Path, rels: list[str], sizes: list[int], image_size: int | None,
                  layout: str) -> torch.Tensor:
    """Read and decode the files into one uint8 ``(N, 3, H, W)`` tensor."""
    from torchvision.io import ImageReadMode, decode_jpeg

    # One buffer for all the files' bytes; the per-file tensors are views of it.
    buffer = bytearray(sum(sizes))
    view = memoryview(buffer)
    starts = []
    offset = 0
    prefix = f"{split_dir}{os.sep}"
    for rel, size in zip(rels, sizes):
        try:
            with open(prefix + rel, "rb", buffering=0) as f:
                got = f.readinto(view[offset:offset + size])
        except OSError as exc:
            raise DatasetError(f"{split_dir / rel} cannot be read ({type(exc).__name__}); "
                               f"expected {layout}.") from None
        if got != size:
            raise DatasetError(f"{split_dir / rel} changed while it was read; expected {layout}.")
        starts.append(offset)
        offset += size
    blobs = torch.frombuffer(buffer, dtype=torch.uint8).split(sizes) if buffer else ()
    out: list[torch.Tensor | None] = [None] * len(rels)

    # JPEGs decode fastest as one batched call; anything else, or a JPEG the
    # batch rejects, goes one by one so that an error can name the file.
    jpegs = [i for i, at in enumerate(starts) if buffer[at:at + 3] == b"\xff\xd8\xff"]
    if jpegs:
        try:
            decoded = decode_jpeg([blobs[i] for i in jpegs], mode=ImageReadMode.RGB)
        except RuntimeError:
            decoded = [None] * len(jpegs)
        for i, img in zip(jpegs, decoded):
            out[i] = img
    for i, blob in enumerate(blobs):
        if out[i] is None:
            out[i] = decode_image_bytes(blob, split_dir / rels[i], layout)
    if image_size is not None:
        out = _square(out, image_size)
    shapes = {tuple(img.shape) for img in out}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise DatasetError(f"images in {split_dir} have different sizes ({a[1]}x{a[2]} and "
                           f"{b[1]}x{b[2]}); expected {layout}.")
    return torch.stack(out)  # type: ignore[arg-type]


def _square(images: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Resize the shorter side to ``size`` and crop the centre, batched per input shape."""
    from torchvision.transforms.v2 import functional as TF

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        if tuple(img.shape[1:]) != (size, size):
            groups.setdefault(tuple(img.shape), []).append(i)
    out = list(images)
    for _, idx in groups.items():
        batch = torch.stack([images[i] for i in idx])
        batch = TF.center_crop(TF.resize(batch, [size], antialias=True), [size, size])
        for i, img in zip(idx, batch):
            out[i] = img.contiguous()
    return out
