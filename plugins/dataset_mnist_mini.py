"""A small, real MNIST subset embedded in the package: runs anywhere, without a data root."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpsearch.api import DatasetError, DatasetSource, ImageData, hookimpl

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_CLASSES = tuple(str(d) for d in range(10))
RESOURCE = "_embedded/mnist_mini.npz"


def embedded_arrays() -> dict[str, np.ndarray]:
    """The arrays of ``mpsearch/_embedded/mnist_mini.npz`` (built by ``tools/make_mnist_mini.py``):
    ``{train,test}_{images,labels,indices}``, the indices into the original MNIST files."""
    resource = importlib.resources.files("mpsearch").joinpath(RESOURCE)
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the embedded MNIST subset mpsearch/{RESOURCE} is missing or "
                           f"unreadable ({type(exc).__name__}); rebuild it with "
                           f"tools/make_mnist_mini.py.") from None


class MNISTMiniSource(DatasetSource):
    """A stratified, seeded subset of the real MNIST, shipped inside the package."""

    description = ("MNIST-mini: 1,000 train / 200 test images per class of the real MNIST, "
                   "embedded (LeCun et al., 1998, Gradient-based learning applied to document "
                   "recognition).")
    layout = f"embedded in the package as mpsearch/{RESOURCE}"
    needs_root = False

    def load(self, root: Path | None, split: str, **options: Any) -> ImageData:
        self.check_args(split, options)
        arrays = embedded_arrays()
        images = torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1).contiguous()
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        return ImageData(images, labels, MNIST_CLASSES, MNIST_MEAN, MNIST_STD)


@hookimpl
def register_datasets(register):
    register("mnist-mini", MNISTMiniSource())
