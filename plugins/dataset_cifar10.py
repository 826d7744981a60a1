"""CIFAR-10 from torchvision's python batches or from an ImageFolder tree of image files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpsearch.api import (DatasetError, DatasetSource, ImageData, ImageFiles, hookimpl, list_image_folder,
                          read_image_folder)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# The usual values, measured on the lossless training set.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# The files of torchvision's python batches.
CIFAR10_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


class CIFAR10Source(DatasetSource):
    """CIFAR-10, 32x32 colour images in 10 classes.

    Reads ``ROOT/cifar-10-batches-py`` when present, else the folder tree
    ``ROOT/cifar10/{train,test}/<class>/*.jpg``; the folder is decoded once
    and then read from the cache (see :func:`mpsearch.image_folder.cache_dir`),
    or streamed from its files (``[data] streaming``; the python batches cannot).
    """

    description = ("CIFAR-10: 50,000 train / 10,000 test 32x32 colour images in 10 classes "
                   "(Krizhevsky, 2009, Learning multiple layers of features from tiny images).")
    layout = ("ROOT/cifar-10-batches-py (torchvision's python batches) "
              "or ROOT/cifar10/{train,test}/<class>/*.jpg")
    augment = "crop-flip"

    def check(self, root: Path | None, **options: Any) -> None:
        self.check_args("train", options)
        root = self.require_root(root, "CIFAR-10")
        batches, folder = root / "cifar-10-batches-py", root / "cifar10"
        if batches.is_dir():
            missing = [f for f in CIFAR10_BATCHES if not (batches / f).is_file()]
            if missing:
                raise DatasetError(f"CIFAR-10 batches under {batches} lack {', '.join(missing)}; "
                                   f"expected {self.layout}.")
        elif folder.is_dir():
            missing = [s for s in ("train", "test") if not (folder / s).is_dir()]
            if missing:
                raise DatasetError(f"CIFAR-10 folder {folder} has no {' or '.join(missing)} "
                                   f"folder; expected {self.layout}.")
        else:
            raise DatasetError(f"CIFAR-10 not found under {root}; expected {self.layout}.")

    def load(self, root: Path | None, split: str, **options: Any) -> ImageData:
        self.check_args(split, options)
        root = self.require_root(root, "CIFAR-10")
        if (root / "cifar-10-batches-py").is_dir():
            images, labels = self._load_batches(root, split)
        elif (root / "cifar10").is_dir():
            images, labels = self._load_folder(root / "cifar10" / split)
        else:
            raise DatasetError(f"CIFAR-10 not found under {root}; expected {self.layout}.")
        return ImageData(images, labels, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD)

    def stream(self, root: Path | None, split: str, **options: Any) -> ImageFiles | None:
        self.check_args(split, options)
        root = self.require_root(root, "CIFAR-10")
        if (root / "cifar-10-batches-py").is_dir() or not (root / "cifar10").is_dir():
            return None
        split_dir = root / "cifar10" / split
        paths, labels, _, _ = list_image_folder(split_dir, layout=self.layout, classes=CIFAR10_CLASSES)
        _require_every_class(split_dir, labels, self.layout)
        return ImageFiles(split_dir, np.array(paths), labels, CIFAR10_CLASSES, CIFAR10_MEAN,
                          CIFAR10_STD, size=32, exact=True, layout=self.layout)

    def _load_batches(self, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(root), train=split == "train", download=False)
        except Exception as exc:  # noqa: BLE001 - torchvision raises on missing or corrupt files
            where = root / "cifar-10-batches-py"
            raise DatasetError(f"CIFAR-10 batches under {where} are missing or corrupt "
                               f"({type(exc).__name__}); expected {self.layout}.") from None
        if tuple(ds.classes) != CIFAR10_CLASSES:
            raise DatasetError(f"CIFAR-10 batches under {root} name the classes "
                               f"{', '.join(ds.classes)}; expected {self.layout}.")
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.tensor(ds.targets, dtype=torch.int64)

    def _load_folder(self, split_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels, _ = read_image_folder(split_dir, layout=self.layout,
                                              classes=CIFAR10_CLASSES)
        if images.shape[1:] != (3, 32, 32):
            raise DatasetError(f"images in {split_dir} are {images.shape[2]}x{images.shape[3]}, "
                               f"not 32x32; expected {self.layout}.")
        _require_every_class(split_dir, labels, self.layout)
        return images, labels


def _require_every_class(split_dir: Path, labels: torch.Tensor, layout: str) -> None:
    counts = torch.bincount(labels, minlength=len(CIFAR10_CLASSES))
    missing = [c for c, k in zip(CIFAR10_CLASSES, counts.tolist()) if k == 0]
    if missing:
        raise DatasetError(f"{split_dir} has no images of class(es) {', '.join(missing)}; "
                           f"expected {layout}.")


@hookimpl
def register_datasets(register):
    register("cifar10", CIFAR10Source())
