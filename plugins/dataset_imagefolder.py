"""Any folder of images with one subfolder per class, split into ``train`` and ``test``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.api import (SPLITS, DatasetError, DatasetSource, ImageData, ImageFiles, MpsearchError,
                          channel_stats, hookimpl, list_image_folder, read_image_folder, streamed_stats)


class ImageFolderSource(DatasetSource):
    """A user's ImageFolder tree, resized to squares, in RGB.

    Every image is decoded by torchvision (JPEG, PNG, GIF, WebP) or else by PIL
    (BMP, TIFF, PPM, ...), converted to 3 channels, and its shorter side resized
    to ``image_size`` before the centre square is cropped. Classes are the sorted
    names of the train split's folders; the test split may lack some but may not
    add any. The normalisation mean and std are measured on the train split's
    resized images, for both splits. Decoded splits are cached (see
    :func:`mpsearch.image_folder.cache_dir`).

    Streamed (``[data] streaming``; ImageNet's layout), only the file list stays in
    memory; the mean and std are measured once on up to 10,000 training images
    (all of them when there are fewer: then exactly the in-memory values) and cached.

    Options:
        image_size: the side of the square images, default 32 (224 for ImageNet).
    """

    description = ("A folder of images, one subfolder per class "
                   "(the torchvision ImageFolder layout).")
    layout = "ROOT/{train,test}/<class>/<image files>"
    options = ("image_size",)

    def check(self, root: Path | None, **options: Any) -> None:
        self.check_args("train", options)
        _image_size(options)
        root = self.require_root(root, "image folder")
        for split in SPLITS:
            if not (root / split).is_dir():
                raise DatasetError(f"image folder {root} has no {split} folder; "
                                   f"expected {self.layout}.")
        if not any(p.is_dir() for p in (root / "train").iterdir()):
            raise DatasetError(f"image folder {root / 'train'} has no class folders; "
                               f"expected {self.layout}.")

    def load(self, root: Path | None, split: str, **options: Any) -> ImageData:
        self.check_args(split, options)
        size = _image_size(options)
        root = self.require_root(root, "image folder")
        images, labels, classes = read_image_folder(root / "train", layout=self.layout,
                                                    image_size=size)
        mean, std = channel_stats(images)
        std = tuple(s if s > 0 else 1.0 for s in std)  # a constant channel: avoid dividing by 0
        if split == "test":
            images, labels, _ = read_image_folder(root / "test", layout=self.layout,
                                                  classes=classes, image_size=size)
        return ImageData(images, labels, classes, mean, std)


    def stream(self, root: Path | None, split: str, **options: Any) -> ImageFiles:
        self.check_args(split, options)
        size = _image_size(options)
        root = self.require_root(root, "image folder")
        listing = list_image_folder(root / "train", layout=self.layout)
        paths, labels, classes = listing.paths, listing.labels, listing.classes
        train = ImageFiles(root / "train", np.array(paths), labels, classes, (0.0,) * 3, (1.0,) * 3,
                           size=size, layout=self.layout)
        mean, std = streamed_stats(train, listing.key)
        std = tuple(s if s > 0 else 1.0 for s in std)
        if split == "test":
            paths, labels, _, _ = list_image_folder(root / "test", layout=self.layout, classes=classes)
            return ImageFiles(root / "test", np.array(paths), labels, classes, mean, std, size=size,
                              layout=self.layout)
        return ImageFiles(train.folder, train.paths, train.labels, classes, mean, std, size=size,
                          layout=self.layout)


def _image_size(options: dict[str, Any]) -> int:
    size = options.get("image_size", 32)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise MpsearchError(f"imagefolder option image_size={size!r} must be a positive integer.")
    return size


@hookimpl
def register_datasets(register):
    register("imagefolder", ImageFolderSource())
