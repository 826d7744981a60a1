"""Streaming from disk: the same splits and batches as in memory, ImageNet's transforms, errors."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mpsearch.data as data_mod
from mpsearch.data import ImageData, open_split
from mpsearch.errors import DatasetError, MpsearchError
from mpsearch.plugins.dataset_cifar10 import CIFAR10_CLASSES, CIFAR10Source
from mpsearch.plugins.dataset_imagefolder import ImageFolderSource
from mpsearch.plugins.dataset_mnist_mini import MNISTMiniSource
from mpsearch.streaming import ImageFiles, resized_crop_box
from mpsearch.training import evaluate, train_epoch

LAYOUT = "{train,test}/<class>"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache, never the user's."""
    monkeypatch.setenv("MPSEARCH_CACHE", str(tmp_path / "cache"))


def png_folder(root: Path, per_class: int = 12, classes=("ant", "bee", "cow"), side: int = 16,
               seed: int = 0) -> Path:
    """Random images, lossless, a few of them not square (resized and cropped on both paths).

    Class k's images are brighter in colour channel k, so a network can learn them.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", per_class // 3)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = (side, side) if i % 4 else (side + 5, side + 11)
                pixels = rng.integers(0, 128, (h, w, 3), dtype=np.uint8)
                pixels[..., k % 3] += 128
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.png")
    return root


def jpeg_folder(root: Path, per_class: int = 5, classes=("n01", "n02", "n03"), seed: int = 0) -> Path:
    """An ImageNet-layout folder: JPEGs of ImageNet-like sizes, smooth enough to compress."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", 2)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = int(rng.integers(200, 300)), int(rng.integers(220, 340))
                yy, xx = np.mgrid[0:h, 0:w]
                base = np.stack([(xx * (k + 1)) % 256, (yy * 2) % 256, (xx + yy + 40 * i) % 256], -1)
                Image.fromarray(base.astype(np.uint8)).save(root / split / c / f"{i}.JPEG", quality=85)
    return root


def copy_cifar_tree(src: Path, dest: Path, per_class: int) -> Path:
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (dest / "cifar10" / split / c).mkdir(parents=True)
            for f in sorted((src / "cifar10" / split / c).iterdir())[:per_class]:
                shutil.copy2(f, dest / "cifar10" / split / c / f.name)
    return dest


def epoch(data, seed: int, augment: str | None, batch_size: int = 7):
    gen = torch.Generator().manual_seed(seed)
    return list(data.batches(batch_size, shuffle=True, generator=gen, augment=augment))


def assert_same_epochs(a, b) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


# -- the same data on both paths -------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_folder_gives_the_in_memory_split_statistics_and_batches(tmp_path, workers):
    root = png_folder(tmp_path / "pics")
    src = ImageFolderSource()
    memory = src.load(root, "train", image_size=16)
    streamed = open_split(src, root, "train", streaming=True, workers=workers, image_size=16)
    assert isinstance(streamed, ImageFiles) and streamed.workers == workers
    assert streamed.classes == memory.classes and streamed.input_shape == memory.input_shape
    assert torch.equal(streamed.labels, memory.labels)
    assert (streamed.mean, streamed.std) == (memory.mean, memory.std)  # exact: every image measured
    m_rest, m_val = memory.split(0.25, seed=5)
    s_rest, s_val = streamed.split(0.25, seed=5)
    assert torch.equal(s_val.labels, m_val.labels) and torch.equal(s_rest.labels, m_rest.labels)
    # Lossless files: the batches of one seed are bit for bit the in-memory ones,
    # crop-flip included (it runs on the batch, on the device, as in memory).
    for augment in (None, "crop-flip"):
        assert_same_epochs(epoch(s_rest, 3, augment), epoch(m_rest, 3, augment))
    assert_same_epochs(list(s_val.batches(5)), list(m_val.batches(5)))
    test = open_split(src, root, "test", streaming=True, workers=workers, image_size=16)
    assert_same_epochs(list(test.batches(4)), list(src.load(root, "test", image_size=16).batches(4)))


def test_streamed_cifar10_subset_matches_the_decoded_one(shared_datasets, tmp_path):
    root = copy_cifar_tree(shared_datasets, tmp_path / "c", per_class=12)
    src = CIFAR10Source()
    memory = src.load(root, "train")
    streamed = open_split(src, root, "train", streaming=True, workers=1)
    assert streamed.input_shape == (3, 32, 32) and (streamed.mean, streamed.std) == (memory.mean,
                                                                                       memory.std)
    _, m_val = memory.split(0.1, seed=0)
    s_rest, s_val = streamed.split(0.1, seed=0)
    assert torch.equal(s_val.labels, m_val.labels)
    # One JPEG decoder on both paths: the same pixels.
    assert_same_epochs(epoch(s_rest, 1, "crop-flip", 32), epoch(memory.split(0.1, seed=0)[0], 1,
                                                                   "crop-flip", 32))
    assert open_split(src, root, "train").__class__ is ImageData  # auto: 120 images stay in memory


def test_auto_streams_above_the_size_and_for_resized_crops(tmp_path, monkeypatch):
    root = png_folder(tmp_path / "pics", per_class=4)
    src = ImageFolderSource()
    assert isinstance(open_split(src, root, "train", image_size=16), ImageData)
    assert isinstance(open_split(src, root, "train", streaming=False, image_size=16), ImageData)
    files = open_split(src, root, "train", augment="resized-crop-flip", image_size=16)
    assert isinstance(files, ImageFiles) and files.resize == 18  # 16 * 256 / 224
    monkeypatch.setattr(data_mod, "STREAM_ABOVE_BYTES", 12 * 3 * 16 * 16 - 1)
    assert isinstance(open_split(src, root, "train", image_size=16), ImageFiles)


def test_streaming_what_is_not_files_and_resized_crops_in_memory_are_one_line_errors(tmp_path):
    with pytest.raises(DatasetError, match="not one image per file") as exc:
        open_split(MNISTMiniSource(), None, "train", streaming=True)
    assert "\n" not in str(exc.value)
    memory = ImageFolderSource().load(png_folder(tmp_path / "p", per_class=4), "train", image_size=16)
    with pytest.raises(MpsearchError, match="streaming path"):
        memory.batches(4, augment="resized-crop-flip")


# -- ImageNet's layout and transforms --------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 7, stride=8)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_imagenet_folder_at_224_trains_a_step_through_either_path(tmp_path):
    root = jpeg_folder(tmp_path / "imagenet")
    src = ImageFolderSource()
    streamed = open_split(src, root, "train", augment="resized-crop-flip", workers=2, image_size=224)
    memory = open_split(src, root, "train", streaming=False, image_size=224)
    assert streamed.resize == 256 and len(streamed) == len(memory) == 15
    for data, augment in ((streamed, "resized-crop-flip"), (memory, "crop-flip")):
        torch.manual_seed(0)
        model = TinyNet(3)
        before = [p.detach().clone() for p in model.parameters()]
        metrics = train_epoch(model, data, torch.optim.SGD(model.parameters(), lr=0.1),
                              batch_size=6, generator=torch.Generator().manual_seed(0),
                              augment=augment, max_batches=1)
        assert metrics["loss"] > 0 and all(not torch.equal(a, b) for a, b in
                                           zip(before, model.parameters()))
        assert 0.0 <= evaluate(model, data, batch_size=10) <= 1.0
    x, y = next(iter(streamed.batches(6, shuffle=True, generator=torch.Generator().manual_seed(1),
                                      augment="resized-crop-flip")))
    assert x.shape == (6, 3, 224, 224) and x.dtype == torch.float32 and y.shape == (6,)


def test_resized_crops_are_seeded_per_image_whatever_the_workers(tmp_path):
    root = jpeg_folder(tmp_path / "imagenet", per_class=4)
    files = open_split(ImageFolderSource(), root, "train", augment="resized-crop-flip", workers=0,
                       image_size=64)
    runs = [epoch(files if w == 0 else ImageFiles(**{**files.__dict__, "workers": w}), 9,
                  "resized-crop-flip", 5) for w in (0, 2)]
    assert_same_epochs(*runs)
    other = epoch(files, 10, "resized-crop-flip", 5)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], other))


def test_evaluation_transform_is_resize_then_centre_crop(tmp_path):
    from torchvision.transforms import v2

    root = jpeg_folder(tmp_path / "imagenet", per_class=1)
    files = open_split(ImageFolderSource(), root, "train", augment="resized-crop-flip", workers=0,
                       image_size=224)
    got = next(files.uint8_batches(3))
    reference = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    from torchvision.io import decode_image

    for img, path in zip(got, files.paths):
        want = reference(decode_image(str(files.folder / path)))
        assert torch.equal(img, want)


def test_resized_crop_box_follows_torchvision():
    rng = random.Random(0)
    for _ in range(500):
        h, w = rng.randint(50, 400), rng.randint(50, 400)
        top, left, ch, cw = resized_crop_box(h, w, rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    # Ten misses (an image far too wide for the ratio range) fall back to the centre crop.
    assert resized_crop_box(10, 1000, random.Random(0)) == (0, 493, 10, 13)
    boxes = [resized_crop_box(300, 300, random.Random(s)) for s in range(2000)]
    areas = np.array([b[2] * b[3] / 90000 for b in boxes])
    ratios = np.array([b[3] / b[2] for b in boxes])
    assert areas.min() >= 0.07 and areas.max() <= 1.0 and 0.4 < areas.mean() < 0.65
    assert ratios.min() >= 0.74 and ratios.max() <= 1.35
    assert resized_crop_box(300, 300, random.Random(7)) == resized_crop_box(300, 300, random.Random(7))


# -- errors: the in-memory path's, one line ---------------------------------------------


def error_of(load) -> str:
    with pytest.raises(DatasetError) as exc:
        load()
    assert "\n" not in str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_and_missing_images_give_the_in_memory_errors(tmp_path, workers):
    root = png_folder(tmp_path / "pics", per_class=4)
    src = ImageFolderSource()
    streamed = open_split(src, root, "train", streaming=True, workers=workers, image_size=16)
    bad = root / "train" / "bee" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is no png")
    src_memory = lambda: src.load(root, "train", image_size=16)  # noqa: E731
    message = error_of(src_memory)
    assert str(bad) in message and LAYOUT in message
    assert error_of(lambda: epoch(streamed, 0, None, 3)) == message

    Image.new("RGB", (16, 16)).save(bad)  # mended; then another file goes after the listing
    gone = root / "train" / "bee" / "002.png"
    gone.rename(gone.with_suffix(".bak"))
    message = error_of(lambda: epoch(streamed, 0, None, 3))
    assert str(gone) in message and "cannot be read (FileNotFoundError)" in message
    from mpsearch.image_folder import _decode_files

    assert error_of(lambda: _decode_files(root / "train", ["bee/002.png"], [10], 16,
                                          src.layout)) == message
    # A dangling link is named as well, when the folder is listed (both paths list it alike).
    (root / "train" / "bee" / "003.png").unlink()
    (root / "train" / "bee" / "003.png").symlink_to(root / "nowhere.png")
    message = error_of(lambda: open_split(src, root, "train", streaming=True, image_size=16))
    assert str(root / "train" / "bee" / "003.png") in message and "FileNotFoundError" in message


def test_streamed_cifar10_refuses_an_image_of_another_size(shared_datasets, tmp_path):
    root = copy_cifar_tree(shared_datasets, tmp_path / "c", per_class=2)
    odd = root / "cifar10" / "train" / "cat" / sorted(p.name for p in
                                                      (root / "cifar10/train/cat").iterdir())[0]
    Image.new("RGB", (40, 30)).save(odd, format="JPEG")
    files = CIFAR10Source().stream(root, "train")
    message = error_of(lambda: list(files.batches(20)))
    assert str(odd) in message and "is 30x40, not 32x32" in message


# -- a trial, end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_a_trial_streamed_from_disk_learns_exactly_what_it_learns_in_memory(tmp_path):
    from mpsearch.host import PluginHost
    from mpsearch.spec import parse_spec
    from mpsearch.trial import run_trial

    root = png_folder(tmp_path / "pics", per_class=20)
    host = PluginHost(entry_points=False)
    outcomes = []
    for streaming in (False, True):
        spec = parse_spec({
            "study": {"name": "s", "objectives": ["accuracy", "bitops"], "n_trials": 1, "seed": 2},
            "model": {"name": "lenet5"},
            "data": {"name": "imagefolder", "root": str(root), "options": {"image_size": 16},
                     "augment": "crop-flip", "streaming": streaming, "workers": 1},
            "training": {"epochs": 3, "batch_size": 10, "device": "cpu"},
            "strategy": [{"name": "uniform", "space": {"bits": [4]}}],
            "resources": {"executor": "local"}}, host=host)
        outcome = run_trial(spec, 0, "uniform", {"bits": 4})
        assert not outcome.failed, outcome.attrs.get("fail_reason")
        outcomes.append(outcome)
    memory, streamed = outcomes
    # Lossless files, the same batches, one thread count: the same model.
    assert streamed.values == memory.values
    assert streamed.attrs["test_accuracy"] == memory.attrs["test_accuracy"]
