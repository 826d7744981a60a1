"""The dataset layer: real MNIST and CIFAR-10, the embedded subset, errors, batching and splits."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mpsearch.image_folder as image_folder_mod
from mpsearch.data import (CROP_PADDING, DatasetSource, ImageData, channel_stats, crop_flip,
                           resolve_root)
from mpsearch.image_folder import cache_dir, read_image_folder
from mpsearch.errors import DatasetError, MpsearchError, UnknownNameError
from mpsearch.plugins.dataset_cifar10 import CIFAR10_CLASSES, CIFAR10Source
from mpsearch.plugins.dataset_imagefolder import ImageFolderSource
from mpsearch.plugins.dataset_mnist import MNISTSource
from mpsearch.plugins.dataset_mnist_mini import MNISTMiniSource, embedded_arrays

ROOT = Path(__file__).resolve().parents[2]
SHARED_MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache, never the user's."""
    monkeypatch.setenv("MPSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mnist(shared_datasets):
    src = MNISTSource()
    return src.load(shared_datasets, "train"), src.load(shared_datasets, "test")


def indexed(labels: torch.Tensor, shape=(1, 4, 4)) -> ImageData:
    """Images whose first two pixels spell their own index, so batches can be traced back."""
    n = len(labels)
    images = torch.zeros((n, *shape), dtype=torch.uint8)
    i = torch.arange(n)
    images[:, 0, 0, 0] = (i // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (i % 256).to(torch.uint8)
    return ImageData(images, labels.long(), tuple(str(c) for c in range(int(labels.max()) + 1)),
                     (0.0,) * shape[0], (1.0,) * shape[0])


def index_of(data: ImageData) -> torch.Tensor:
    return data.images[:, 0, 0, 0].long() * 256 + data.images[:, 0, 0, 1].long()


def raw(x: torch.Tensor, data: ImageData) -> torch.Tensor:
    """Undo the normalisation of a batch: back to uint8."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def assert_one_line_error(exc: pytest.ExceptionInfo, path: Path, *layout_words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    for word in layout_words:
        assert word in msg, (word, msg)


def copy_cifar_tree(src: Path, dest: Path, per_class: int, classes=CIFAR10_CLASSES) -> None:
    for split in ("train", "test"):
        for c in classes:
            (dest / split / c).mkdir(parents=True)
            for f in sorted((src / split / c).iterdir())[:per_class]:
                shutil.copy2(f, dest / split / c / f.name)


# -- real MNIST ----------------------------------------------------------------------


def test_mnist_real_counts_and_statistics(mnist):
    train, test = mnist
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.input_shape == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert test.class_counts().sum().item() == 10_000
    (mean,), (std,) = channel_stats(train.images)
    assert mean == pytest.approx(0.1307, abs=1e-3)
    assert std == pytest.approx(0.3081, abs=1e-3)
    assert train.mean == (0.1307,) and train.std == (0.3081,)


def test_normalised_mnist_batch_has_mean_0_and_std_1(mnist):
    train, _ = mnist
    g = torch.Generator().manual_seed(0)
    x, y = next(train.batches(20_000, shuffle=True, generator=g))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (20_000, 1, 28, 28)
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.std().item() == pytest.approx(1.0, abs=0.01)


# -- real CIFAR-10 -------------------------------------------------------------------


def test_cifar10_real_full(shared_datasets, private_cache):
    src = CIFAR10Source()
    start = time.perf_counter()
    train = src.load(shared_datasets, "train")
    test = src.load(shared_datasets, "test")
    cold = time.perf_counter() - start
    assert (len(train), len(test)) == (50_000, 10_000)
    assert train.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                             "horse", "ship", "truck")
    assert train.class_counts().tolist() == [5000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    assert train.input_shape == (3, 32, 32)
    mean, _ = channel_stats(train.images)
    assert mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=2e-3)
    assert len(list(private_cache.glob("*.pt"))) == 2

    start = time.perf_counter()
    again = src.load(shared_datasets, "train")
    cached = time.perf_counter() - start
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert cached < cold


def test_cifar10_folder_decodes_like_pil_and_caches(shared_datasets, tmp_path, monkeypatch):
    copy_cifar_tree(shared_datasets / "cifar10", tmp_path / "cifar10", per_class=3)
    src = CIFAR10Source()
    test = src.load(tmp_path, "test")
    assert len(test) == 30 and test.class_counts().tolist() == [3] * 10
    assert src.augment == "crop-flip"
    files = sorted((tmp_path / "cifar10" / "test" / "horse").iterdir())
    horse = test.images[test.labels == CIFAR10_CLASSES.index("horse")]
    for f, img in zip(files, horse):
        pil = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
        assert (pil.int() - img.int()).abs().max().item() <= 1

    # A second load must come from the cache: decoding is not allowed.
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(image_folder_mod, "_decode_files", no_decoding)
    assert torch.equal(src.load(tmp_path, "test").images, test.images)
    # A changed file changes the key, so the folder is decoded again.
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although cached"):
        src.load(tmp_path, "test")


def test_cifar10_python_batches_that_are_corrupt_are_a_dataset_error(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError) as exc:
        CIFAR10Source().load(tmp_path, "train")
    assert_one_line_error(exc, batches, "cifar-10-batches-py", "cifar10/{train,test}")


def test_cifar10_folder_missing_a_class_or_with_a_stranger(shared_datasets, tmp_path):
    copy_cifar_tree(shared_datasets / "cifar10", tmp_path / "cifar10", 1, CIFAR10_CLASSES[:9])
    with pytest.raises(DatasetError, match="truck") as exc:
        CIFAR10Source().load(tmp_path, "train")
    assert_one_line_error(exc, tmp_path / "cifar10" / "train", "cifar10/{train,test}/<class>")
    (tmp_path / "cifar10" / "train" / "dragon").mkdir()
    with pytest.raises(DatasetError, match="dragon"):
        CIFAR10Source().load(tmp_path, "train")


# -- mnist-mini ----------------------------------------------------------------------


def test_mnist_mini_file_is_small_and_balanced():
    resource = importlib.resources.files("mpsearch").joinpath("_embedded/mnist_mini.npz")
    assert len(resource.read_bytes()) <= 3_000_000
    src = MNISTMiniSource()
    assert src.needs_root is False
    train, test = src.load(None, "train"), src.load(None, "test")
    assert train.class_counts().tolist() == [1000] * 10
    assert test.class_counts().tolist() == [200] * 10
    assert train.input_shape == (1, 28, 28)
    assert (train.mean, train.std) == ((0.1307,), (0.3081,))


def test_mnist_mini_images_are_real_mnist_images(mnist, shared_datasets):
    arrays = embedded_arrays()
    test_raw = MNISTSource().load(shared_datasets, "test")
    for split, full in (("train", mnist[0]), ("test", test_raw)):
        idx = torch.from_numpy(arrays[f"{split}_indices"].astype(np.int64))
        assert len(torch.unique(idx)) == len(idx)
        assert torch.equal(full.images[idx, 0], torch.from_numpy(arrays[f"{split}_images"]))
        assert torch.equal(full.labels[idx], torch.from_numpy(arrays[f"{split}_labels"]).long())


def test_mnist_mini_rebuilds_identically():
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_MNIST}")
    spec = importlib.util.spec_from_file_location("make_mnist_mini",
                                                  ROOT / "tools" / "make_mnist_mini.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check", "--source", str(SHARED_MNIST)]) == 0


def test_builtin_datasets_are_registered(host):
    for name, module in (("mnist", "dataset_mnist"), ("cifar10", "dataset_cifar10"),
                         ("imagefolder", "dataset_imagefolder"),
                         ("mnist-mini", "dataset_mnist_mini")):
        entry = host.datasets.entry(name)
        assert entry.plugin == f"mpsearch.plugins.{module}"
        assert isinstance(entry.obj, DatasetSource)
        assert entry.description and "\n" not in entry.obj.description
    assert host.datasets.get("mnist-mini").load(None, "test").class_counts().tolist() == [200] * 10


# -- errors --------------------------------------------------------------------------

SOURCES = [(MNISTSource(), "MNIST/raw"), (CIFAR10Source(), "cifar10/{train,test}/<class>"),
           (ImageFolderSource(), "{train,test}/<class>")]


@pytest.mark.parametrize(("src", "words"), SOURCES, ids=["mnist", "cifar10", "imagefolder"])
def test_missing_root_is_a_one_line_dataset_error(src, words, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as exc:
        src.load(missing, "train")
    assert_one_line_error(exc, missing, words)


@pytest.mark.parametrize(("src", "words"), SOURCES, ids=["mnist", "cifar10", "imagefolder"])
def test_root_without_the_files_is_a_one_line_dataset_error(src, words, tmp_path):
    (tmp_path / "unrelated.txt").write_text("hello")
    with pytest.raises(DatasetError) as exc:
        src.load(tmp_path, "train")
    assert_one_line_error(exc, tmp_path, words)


def test_malformed_mnist_files_are_a_dataset_error(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw_dir / name).write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DatasetError) as exc:
        MNISTSource().load(tmp_path, "train")
    assert_one_line_error(exc, tmp_path, "MNIST/raw/{train,t10k}")


def write_image(path: Path, size=(8, 8), color=(255, 0, 0), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_imagefolder_empty_split_and_missing_split(tmp_path):
    src = ImageFolderSource()
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError) as exc:
        src.load(tmp_path, "train")
    assert_one_line_error(exc, tmp_path / "train", "ROOT/{train,test}/<class>/<image files>")
    write_image(tmp_path / "train" / "cat" / "a.png")
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DatasetError) as exc:  # a class without images
        src.load(tmp_path, "train")
    assert_one_line_error(exc, tmp_path / "train" / "dog", "{train,test}/<class>")
    write_image(tmp_path / "train" / "dog" / "b.png")
    assert len(src.load(tmp_path, "train")) == 2
    with pytest.raises(DatasetError) as exc:  # no test split
        src.load(tmp_path, "test")
    assert_one_line_error(exc, tmp_path / "test", "{train,test}/<class>")
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError) as exc:  # a test split without classes
        src.load(tmp_path, "test")
    assert_one_line_error(exc, tmp_path / "test", "{train,test}/<class>")
    write_image(tmp_path / "test" / "cow" / "c.png")
    with pytest.raises(DatasetError, match="cow"):  # a class the train split lacks
        src.load(tmp_path, "test")


def test_undecodable_file_is_named(tmp_path):
    write_image(tmp_path / "train" / "cat" / "a.png")
    bad = tmp_path / "train" / "cat" / "b.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is no jpeg")
    with pytest.raises(DatasetError) as exc:
        ImageFolderSource().load(tmp_path, "train")
    assert_one_line_error(exc, bad, "{train,test}/<class>")


def test_unknown_split_option_and_bad_option_value(tmp_path):
    with pytest.raises(UnknownNameError, match="test, train"):
        MNISTMiniSource().load(None, "validation")
    with pytest.raises(UnknownNameError, match="image_size"):
        ImageFolderSource().load(tmp_path, "train", imagesize=32)
    with pytest.raises(MpsearchError, match="image_size"):
        ImageFolderSource().load(tmp_path, "train", image_size=0)


# -- imagefolder ---------------------------------------------------------------------


def test_imagefolder_formats_resizing_and_statistics(tmp_path):
    write_image(tmp_path / "train" / "red" / "a.png", (40, 20), (255, 0, 0, 128), "RGBA")
    write_image(tmp_path / "train" / "red" / "b.bmp", (16, 16), (250, 0, 0))
    write_image(tmp_path / "train" / "grey" / "c.jpg", (64, 64), 100, "L")
    write_image(tmp_path / "train" / "grey" / "notes" / "d.gif", (10, 30), 100, "L")
    (tmp_path / "train" / "grey" / "README.txt").write_text("not an image")
    write_image(tmp_path / "test" / "red" / "e.webp", (33, 33), (255, 0, 0))
    src = ImageFolderSource()
    train = src.load(tmp_path, "train", image_size=16)
    assert train.classes == ("grey", "red") and train.input_shape == (3, 16, 16)
    assert train.labels.tolist() == [0, 0, 1, 1]
    grey = train.images[:2].int()
    assert (grey - 100).abs().max().item() <= 2  # JPEG: within rounding of the grey level
    assert torch.equal(train.images[2:, 0], torch.full((2, 16, 16), 255, dtype=torch.uint8)
                       .sub(torch.tensor([0, 5], dtype=torch.uint8).view(2, 1, 1)))
    assert train.images[2:, 1:].max().item() == 0
    assert (train.mean, train.std) == channel_stats(train.images)
    test = src.load(tmp_path, "test", image_size=16)
    assert test.classes == train.classes and test.labels.tolist() == [1]
    assert (test.mean, test.std) == (train.mean, train.std)
    assert src.load(tmp_path, "train").input_shape == (3, 32, 32)


def test_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    write_image(tmp_path / "data" / "train" / "a" / "x.png")
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("MPSEARCH_CACHE", str(blocker))
    assert len(ImageFolderSource().load(tmp_path / "data", "train")) == 1
    monkeypatch.setenv("MPSEARCH_CACHE", "off")
    assert cache_dir() is None
    assert len(ImageFolderSource().load(tmp_path / "data", "train")) == 1


def test_read_image_folder_with_fixed_classes_keeps_their_order(tmp_path):
    write_image(tmp_path / "b" / "x.png")
    images, labels, classes = read_image_folder(tmp_path, layout="L", classes=("z", "b"))
    assert classes == ("z", "b") and labels.tolist() == [1]


# -- resolve_root --------------------------------------------------------------------


def test_resolve_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MPSEARCH_DATA", raising=False)
    assert resolve_root(None) == tmp_path / "data"
    monkeypatch.setenv("MPSEARCH_DATA", "/somewhere/else")
    assert resolve_root(None) == Path("/somewhere/else")
    assert resolve_root("mine") == tmp_path / "mine"
    assert resolve_root(Path("/abs")) == Path("/abs")


# -- ImageData: batches, augmentation, splits ------------------------------------------


def test_imagedata_checks_dtypes_and_shapes():
    with pytest.raises(ValueError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ("a",), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="int64"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long),
                  ("a",), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="one per channel"):
        ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                  ("a",), (0.0,), (1.0,))


def test_batches_are_exact_normalised_slices():
    data = indexed(torch.arange(10) % 3)
    data = ImageData(data.images, data.labels, data.classes, (0.25,), (0.5,))
    batches = list(data.batches(4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert torch.allclose(x, (data.images.float() / 255 - 0.25) / 0.5, atol=1e-6)
    assert torch.equal(torch.cat([b[1] for b in batches]), data.labels)
    assert [len(y) for _, y in data.batches(4, drop_last=True)] == [4, 4]


def test_shuffled_epoch_is_a_permutation_fixed_by_the_seed():
    data = indexed(torch.arange(1000) % 10)

    def order(seed, batch_size=64):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([index_of_batch(x, data) for x, _ in
                          data.batches(batch_size, shuffle=True, generator=g)])

    first = order(1)
    assert sorted(first.tolist()) == list(range(1000))
    assert not torch.equal(first, torch.arange(1000))
    assert torch.equal(first, order(1))
    assert torch.equal(first, order(1, batch_size=7))
    assert not torch.equal(first, order(2))
    assert len(list(data.batches(64, shuffle=True))) == 16  # the default generator


def index_of_batch(x: torch.Tensor, data: ImageData) -> torch.Tensor:
    r = raw(x, data)
    return r[:, 0, 0, 0].long() * 256 + r[:, 0, 0, 1].long()


def test_unknown_augmentation_and_bad_batch_size_fail_at_the_call():
    data = indexed(torch.arange(4) % 2)
    with pytest.raises(UnknownNameError, match="crop-flip"):
        data.batches(2, augment="crop")
    with pytest.raises(MpsearchError, match="batch size"):
        data.batches(0)


def test_crop_flip_with_chosen_offsets():
    x = torch.randint(1, 256, (4, 3, 10, 12), dtype=torch.uint8)
    p = CROP_PADDING
    centre = torch.tensor([[p, p]] * 4)
    yes, no = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    assert torch.equal(crop_flip(x, centre, no), x)
    assert torch.equal(crop_flip(x, centre, yes), torch.flip(x, dims=[3]))
    top_left = crop_flip(x, torch.zeros(4, 2, dtype=torch.long), no)
    assert torch.equal(top_left[:, :, p:, p:], x[:, :, :-p, :-p])
    assert top_left[:, :, :p].eq(0).all() and top_left[:, :, :, :p].eq(0).all()
    bottom_right = crop_flip(x, torch.full((4, 2), 2 * p), no)
    assert torch.equal(bottom_right[:, :, :-p, :-p], x[:, :, p:, p:])
    # Mixed offsets in one call equal the same offsets applied one image at a time.
    shifts = torch.tensor([[0, 8], [3, 1], [8, 0], [4, 5]])
    flips = torch.tensor([True, False, True, False])
    mixed = crop_flip(x, shifts, flips)
    for i in range(4):
        assert torch.equal(mixed[i:i + 1], crop_flip(x[i:i + 1], shifts[i:i + 1], flips[i:i + 1]))
    assert torch.equal(mixed[0], torch.flip(crop_flip(x[:1], shifts[:1], no[:1])[0], dims=[2]))


def test_crop_flip_batches_are_crops_of_the_padded_image():
    torch.manual_seed(0)
    n = 300
    images = torch.randint(1, 256, (n, 3, 8, 8), dtype=torch.uint8)
    data = ImageData(images, torch.arange(n) % 10, tuple("abcdefghij"), (0.5, 0.4, 0.3),
                     (0.2, 0.25, 0.3))
    g = torch.Generator().manual_seed(3)
    out = torch.cat([raw(x, data) for x, _ in data.batches(64, augment="crop-flip", generator=g)])
    assert out.shape == images.shape
    # Every candidate crop of every image: 9 x 9 offsets x 2 flips.
    span = 2 * CROP_PADDING + 1
    grid = torch.tensor([(r, c, f) for r in range(span) for c in range(span) for f in (0, 1)])
    k = len(grid)
    cands = crop_flip(images.repeat_interleave(k, 0), grid[:, :2].repeat(n, 1),
                      grid[:, 2].repeat(n) == 1).view(n, k, *images.shape[1:])
    match = (cands == out.unsqueeze(1)).flatten(2).all(2)  # (n, k)
    assert match.any(1).all(), "some image is no crop of its padded original"
    used = match.int().argmax(1)
    chosen = grid[used]
    assert chosen[:, 2].float().mean().item() == pytest.approx(0.5, abs=0.1)
    assert len(set(chosen[:, 0].tolist())) == span and len(set(chosen[:, 1].tolist())) == span
    g = torch.Generator().manual_seed(3)
    again = torch.cat([raw(x, data) for x, _ in data.batches(7, augment="crop-flip",
                                                             generator=g)])
    assert torch.equal(again, out)


def test_split_is_disjoint_stratified_and_deterministic():
    counts = torch.tensor([1, 7, 50, 333, 1000, 2])
    labels = torch.repeat_interleave(torch.arange(6), counts)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    data = indexed(labels)
    rest, held = data.split(0.25, seed=5)
    a, b = index_of(rest), index_of(held)
    assert len(set(a.tolist()) & set(b.tolist())) == 0
    assert a.tolist() == sorted(a.tolist()) and b.tolist() == sorted(b.tolist())
    assert sorted(a.tolist() + b.tolist()) == list(range(len(data)))
    assert torch.equal(held.labels, data.labels[b]) and torch.equal(rest.labels, data.labels[a])
    expected = counts.double() * 0.25
    assert (held.class_counts().double() - expected).abs().max().item() <= 1
    assert torch.equal(held.class_counts() + rest.class_counts(), counts)
    assert torch.equal(index_of(data.split(0.25, seed=5)[1]), b)
    assert not torch.equal(index_of(data.split(0.25, seed=6)[1]), b)
    with pytest.raises(MpsearchError, match="fraction"):
        data.split(1.0, seed=0)


def test_subset_to_and_properties():
    data = indexed(torch.tensor([0, 1, 1, 2]))
    sub = data.subset(torch.tensor([3, 1]))
    assert index_of(sub).tolist() == [3, 1] and sub.labels.tolist() == [2, 1]
    assert data.to("cpu") is data
    assert (data.num_classes, data.input_shape, data.device) == (3, (1, 4, 4), torch.device("cpu"))
    assert data.class_counts().tolist() == [1, 2, 1]
    assert "4 images" in repr(data)
