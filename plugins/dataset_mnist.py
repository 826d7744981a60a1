"""MNIST from torchvision's raw files (``ROOT/MNIST/raw``); nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpsearch.api import DatasetError, DatasetSource, ImageData, hookimpl

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(d) for d in range(10))
# What torchvision's MNIST reads under ROOT/MNIST/raw (uncompressed).
MNIST_FILES = tuple(f"{split}-{kind}-ubyte" for split in ("train", "t10k")
                    for kind in ("images-idx3", "labels-idx1"))


class MNISTSource(DatasetSource):
    """MNIST handwritten digits, 28x28 greyscale."""

    description = ("MNIST handwritten digits: 60,000 train / 10,000 test 28x28 greyscale images "
                   "(LeCun et al., 1998, Gradient-based learning applied to document recognition).")
    layout = "ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

    def check(self, root: Path | None, **options: Any) -> None:
        self.check_args("train", options)
        raw = self.require_root(root, "MNIST") / "MNIST" / "raw"
        missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
        if missing:
            raise DatasetError(f"MNIST not found under {root}: {raw} lacks {', '.join(missing)}; "
                               f"expected {self.layout}.")

    def load(self, root: Path | None, split: str, **options: Any) -> ImageData:
        self.check_args(split, options)
        root = self.require_root(root, "MNIST")
        from torchvision.datasets import MNIST

        try:
            ds = MNIST(str(root), train=split == "train", download=False)
            images, labels = ds.data, ds.targets
        except Exception as exc:  # noqa: BLE001 - torchvision asserts or raises on bad files
            what = "not found" if isinstance(exc, RuntimeError) and "not found" in str(exc) \
                else f"unreadable ({type(exc).__name__})"
            raise DatasetError(f"MNIST {what} under {root}; expected {self.layout}.") from None
        if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1:] != (28, 28) \
                or labels.shape != images.shape[:1]:
            raise DatasetError(f"MNIST files under {root} hold {tuple(images.shape)} images and "
                               f"{tuple(labels.shape)} labels, not 28x28 digits; "
                               f"expected {self.layout}.")
        return ImageData(images.unsqueeze(1).contiguous(), labels.to(torch.int64),
                         MNIST_CLASSES, MNIST_MEAN, MNIST_STD)


@hookimpl
def register_datasets(register):
    register("mnist", MNISTSource())
