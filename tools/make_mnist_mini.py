#!/usr/bin/env python3
"""Build ``mpsearch/_embedded/mnist_mini.npz``, the subset behind the ``mnist-mini`` dataset.

    python tools/make_mnist_mini.py [--source DIR] [--out FILE] [--check]

Reads the real MNIST idx files (``*-ubyte.gz``, checked against the published
MD5 digests) and picks, with a fixed seed, the same number of images of every
class: 1,000 per class from the training set and 200 per class from the test
set, fewer only if the compressed file would exceed 3 MB. The file stores, per
split, ``<split>_images`` (uint8, N x 28 x 28), ``<split>_labels`` (uint8) and
``<split>_indices`` (int32, the positions in the original files, so anyone can
check every image against MNIST). ``--check`` rebuilds the arrays and compares
them with the existing file instead of writing it.

Needs only Python 3 and numpy.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "datasets" / "mnist"
DEFAULT_OUT = HERE.parent / "mpsearch" / "_embedded" / "mnist_mini.npz"

SEED = 1998
PER_CLASS = {"train": 1000, "test": 200}
MAX_BYTES = 3_000_000
FILES = {"train": "train", "test": "t10k"}
MD5 = {  # of the uncompressed idx files, as published with the dataset
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip-compressed) as a uint8 array, after checking its MD5 digest."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    name = path.name.removesuffix(".gz")
    if hashlib.md5(data).hexdigest() != MD5[name]:
        sys.exit(f"make_mnist_mini: {path}: MD5 mismatch; not the published MNIST file")
    if data[:2] != b"\0\0" or data[2] != 0x08:
        sys.exit(f"make_mnist_mini: {path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_mnist(source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images, labels)}`` of the full MNIST."""
    return {split: (read_idx(source / f"{stem}-images-idx3-ubyte.gz"),
                    read_idx(source / f"{stem}-labels-idx1-ubyte.gz"))
            for split, stem in FILES.items()}


def select(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of every class, drawn without replacement, in file order."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
              for c in range(10)]
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def build(mnist: dict[str, tuple[np.ndarray, np.ndarray]], scale: float = 1.0
          ) -> dict[str, np.ndarray]:
    """The arrays of the file, with ``scale`` times the nominal per-class counts."""
    arrays: dict[str, np.ndarray] = {}
    for number, (split, (images, labels)) in enumerate(mnist.items()):
        # One seed per split: changing one split's count leaves the other alone.
        idx = select(labels, int(PER_CLASS[split] * scale), SEED + number)
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = labels[idx]
        arrays[f"{split}_indices"] = idx
    return arrays


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def build_fitting(mnist: dict[str, tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[dict[str, np.ndarray], bytes]:
    """The largest subset (nominal counts, shrunk by 10% steps) whose file fits ``MAX_BYTES``."""
    scale = 1.0
    while True:
        arrays = build(mnist, scale)
        data = encode(arrays)
        if len(data) <= MAX_BYTES:
            return arrays, data
        scale *= 0.9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                    help="folder of the four MNIST *-ubyte.gz files")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check", action="store_true",
                    help="compare with the existing file instead of writing")
    args = ap.parse_args(argv)
    arrays, data = build_fitting(read_mnist(args.source))
    counts = {s: len(arrays[f"{s}_labels"]) for s in FILES}
    if args.check:
        with np.load(args.out) as old:
            same = set(old.files) == set(arrays) and all(
                np.array_equal(old[k], v) and old[k].dtype == v.dtype for k, v in arrays.items())
        print(f"{args.out}: {'matches' if same else 'DIFFERS from'} a fresh build "
              f"({counts['train']} train, {counts['test']} test)")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data):,} bytes, "
          f"{counts['train']} train + {counts['test']} test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
