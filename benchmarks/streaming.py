"""Streaming from disk against holding a split in memory: peak memory and epoch time, in one run.

1. **CIFAR-10 subset** (the JPEG folder of ``../shared/datasets``, or ``--cifar ROOT``):
   ``--per-class`` training images of each class, one epoch of float ResNet-20 at batch
   128 through each path (``[data] streaming = false`` then ``true``), each in its own
   process. Prints the time to open the split (in memory: decoding every file, without
   the cache), the epoch's wall time, and the peak proportional set size (PSS) of the
   process and its decoding workers during the run, and the ratios streaming / memory.
2. **ImageNet layout at 224x224**: generated folders of ``--imagenet`` JPEGs (two
   sizes), one epoch of a small network with ImageNet's training augmentation through
   the streaming path and at 224 squares in memory. Memory in memory grows with the
   folder; streaming stays at what the workers hold, whatever the folder's size.

PSS shares each page among the processes that map it, so the forked workers' copy of
torch is not counted twice. Sampled every 20 ms from ``/proc`` (Linux).

    python benchmarks/streaming.py                         # both parts
    python benchmarks/streaming.py --per-class 500 --imagenet 1000,3000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


# -- memory of a process tree -------------------------------------------------------------

def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out + [g for c in out for g in _children(c)]


class PeakMemory:
    """The peak PSS of this process and its descendants while the block runs, in MB."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        me = os.getpid()
        while not self._stop.is_set():
            total = sum(_pss_kib(p) for p in [me, *_children(me)])
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak * 1024 / 1e6


# -- one path, in its own process -----------------------------------------------------------

def child(args) -> None:
    import torch
    from torch import nn

    from mpsearch.data import open_split
    from mpsearch.host import PluginHost
    from mpsearch.training import train_epoch

    torch.set_num_threads(args.threads)
    host = PluginHost(entry_points=False)
    source = host.datasets.get(args.dataset)
    options = json.loads(args.options)
    streaming = args.child == "streaming"
    with PeakMemory() as whole:
        baseline = sum(_pss_kib(p) for p in [os.getpid()]) * 1024 / 1e6
        t = time.perf_counter()
        train = open_split(source, Path(args.root), "train", streaming=streaming,
                           augment=args.augment if streaming else None, workers=args.workers,
                           **options)
        opened = time.perf_counter() - t
        if args.model == "resnet20":
            model = host.models.get("resnet20").create(train.num_classes, train.input_shape, seed=0)
        else:  # small enough that decoding, not the network, sets the pace
            model = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(16, train.num_classes))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        augment = args.augment if streaming else ("crop-flip" if args.augment else None)
        t = time.perf_counter()
        metrics = train_epoch(model, train, optimizer, batch_size=args.batch,
                              generator=torch.Generator().manual_seed(0), augment=augment)
        epoch = time.perf_counter() - t
    print(json.dumps({"open_s": opened, "epoch_s": epoch, "peak_mb": whole.mb, "baseline_mb": baseline,
                      "images": len(train), "loss": metrics["loss"]}))


def run_child(mode: str, root: Path, dataset: str, model: str, augment: str | None, options: dict,
              args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--dataset", dataset,
           "--model", model, "--augment", augment or "", "--options", json.dumps(options),
           "--workers", str(args.workers), "--threads", str(args.threads), "--batch",
           str(args.batch if model == "resnet20" else 64)]
    env = {**os.environ, "MPSEARCH_CACHE": "off"}  # in memory: decode, as a first trial does
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the data ---------------------------------------------------------------------------

def cifar_subset(src: Path, dest: Path, per_class: int) -> Path:
    from mpsearch.plugins.dataset_cifar10 import CIFAR10_CLASSES

    for split, count in (("train", per_class), ("test", max(1, per_class // 5))):
        for c in CIFAR10_CLASSES:
            (dest / "cifar10" / split / c).mkdir(parents=True)
            for f in sorted((src / "cifar10" / split / c).iterdir())[:count]:
                os.symlink(f, dest / "cifar10" / split / c / f.name)
    return dest


def imagenet_folder(dest: Path, images: int, classes: int = 10) -> Path:
    """``images`` JPEGs of ImageNet-like sizes (about 250x330) in ``classes`` folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("test", classes)):
        for i in range(count):
            c = i % classes
            folder = dest / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(200, 300)), int(rng.integers(260, 400))
            yy, xx = np.mgrid[0:h, 0:w]
            img = np.stack([(xx * (c + 1) + i) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
            img = (img + rng.integers(0, 24, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:06d}.JPEG", quality=90)
    return dest


def report(title: str, memory: dict, streamed: dict) -> None:
    print(f"\n# {title}")
    print(f"{'path':<10} {'images':>7} {'open s':>8} {'epoch s':>8} {'peak MB':>8}")
    for name, r in (("memory", memory), ("streaming", streamed)):
        print(f"{name:<10} {r['images']:>7} {r['open_s']:>8.1f} {r['epoch_s']:>8.1f} {r['peak_mb']:>8.0f}")
    print(f"streaming / memory: epoch time x{streamed['epoch_s'] / memory['epoch_s']:.2f}, "
          f"peak memory x{streamed['peak_mb'] / memory['peak_mb']:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=None,
                        help="a root holding cifar10/{train,test} (default: unpack ../shared)")
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--imagenet", default="1000,3000", help="folder sizes at 224x224; '' skips")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("--root", "--dataset", "--model", "--augment", "--options"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.augment = args.augment or None
        child(args)
        return
    print(f"# streaming vs in memory, {args.workers} decoding workers, {args.threads} threads, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.per_class:
            cifar = args.cifar
            if cifar is None:
                cifar = tmp / "shared"
                subprocess.run([sys.executable, str(SHARED / "unpack.py"), str(cifar)], check=True,
                               capture_output=True)
            root = cifar_subset(cifar.resolve(), tmp / "cifar-subset", args.per_class)
            runs = [run_child(m, root, "cifar10", "resnet20", "crop-flip", {}, args)
                    for m in ("memory", "streaming")]
            report(f"CIFAR-10, {10 * args.per_class} training images, one epoch of ResNet-20 at batch "
                   f"{args.batch} with crop-flip", *runs)
        for n in [int(v) for v in args.imagenet.split(",") if v]:
            root = imagenet_folder(tmp / f"imagenet-{n}", n)
            runs = [run_child(m, root, "imagefolder", "small", "resized-crop-flip",
                              {"image_size": 224}, args) for m in ("memory", "streaming")]
            report(f"ImageNet layout, {n} JPEGs at 224x224 (memory: 224 squares, crop-flip; streaming: "
                   f"resized-crop-flip), one epoch of a small network at batch 64", *runs)
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
