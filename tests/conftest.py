"""Shared fixtures: the real datasets from ../shared, and hosts free of installed plugins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
UNPACKED = ROOT / ".data"  # ignored by git; unpacked once, reused by later runs


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def holds_both(root: Path) -> bool:
    """Whether ``root`` holds the unpacked MNIST and CIFAR-10 (every class folder, both splits)."""
    return (all((root / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)
            and all(len([d for d in (root / "cifar10" / split).glob("*") if d.is_dir()]) == 10
                    for split in ("train", "test")))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """A root holding MNIST (``MNIST/raw``) and CIFAR-10 (``cifar10/{train,test}``).

    ``$MPSEARCH_DATA`` where it holds both; else unpacked from ``../shared/datasets``
    into ``.data`` once (a ``.data`` that already holds both, e.g. a link to another
    checkout's, is used as it is); the tests that need it skip when that folder is
    absent (a user's checkout has no ``../shared``).
    """
    given = os.environ.get("MPSEARCH_DATA")
    if given and holds_both(Path(given)):
        return Path(given)
    if UNPACKED.is_dir() and holds_both(UNPACKED):  # unpacking takes minutes on 2 cores
        return UNPACKED
    if not (SHARED_DATASETS / "unpack.py").is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    done = UNPACKED / ".unpacked"
    if not done.is_file():
        # unpack beside, then rename: a concurrent session never sees a half-written tree
        staging = ROOT / f".data.{os.getpid()}"
        subprocess.run([sys.executable, str(SHARED_DATASETS / "unpack.py"), str(staging)],
                       check=True, capture_output=True)
        (staging / ".unpacked").write_text("mnist cifar10\n")
        try:
            os.rename(staging, UNPACKED)
        except OSError:  # another session won the race
            shutil.rmtree(staging, ignore_errors=True)
    return UNPACKED


@pytest.fixture
def host():
    """A plugin host with the built-ins only: installed third-party plugins stay out."""
    from mpsearch.host import PluginHost

    return PluginHost(entry_points=False)


def pytest_collection_modifyitems(config, items):
    """Tests (or parameters) marked ``gpu`` skip, saying so, where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Tests run the eager fake-quantization kernels unless a test asks for compiled ones:
# compiling on the CPU takes seconds per kernel variant.
os.environ.setdefault("MPSEARCH_COMPILE", "off")


POSTGRES_ENV = "MPSEARCH_TEST_POSTGRES"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path) -> str:
    """An empty study storage, once as an SQLite file and once as a fresh PostgreSQL database.

    The PostgreSQL server comes from ``MPSEARCH_TEST_POSTGRES`` (a URL such as
    ``postgresql+psycopg://postgres@127.0.0.1:5432/mpsearch_test``; ``.ci/run`` starts
    a throwaway server and sets it). Each test gets its own database, created from it
    and dropped afterwards. Without the variable the PostgreSQL cases skip, except
    under ``CI=true``, where they fail: CI must test the server database.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mpsearch.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        why = (f"{POSTGRES_ENV} is not set: give a PostgreSQL URL such as "
               f"postgresql+psycopg://postgres@127.0.0.1:5432/mpsearch_test (.ci/run starts a server)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the PostgreSQL storage tests, but {why}")
        pytest.skip(why)
    import uuid

    import sqlalchemy

    name = f"mpsearch_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        yield sqlalchemy.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def toy_study_spec(tmp_path):
    """Write a cheap study spec and return its path: LeNet-5 on the embedded ``mnist-mini``
    (1,000 training images), the test-only ``toy`` strategy (3/10 of an epoch), random sampler.

    Call it as ``toy_study_spec(name, n_trials, enqueue="[{bits = 4}]")``.
    """
    toy = Path(__file__).with_name("toy_plugin.py")

    def write(name: str = "toy", n_trials: int = 3, enqueue: str = "") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(f'plugins = ["{toy}"]\n'
                        f'[study]\nname = "{name}"\nobjectives = ["accuracy", "bitops"]\n'
                        f'sampler = "random"\nn_trials = {n_trials}\nseed = 3\n'
                        f'[model]\nname = "lenet5"\n'
                        f'[data]\nname = "mnist-mini"\ntrain_subset = 1000\n'
                        f'[training]\nepochs = 1\nbatch_size = 100\n'
                        f'[[strategy]]\nname = "toy"\n'
                        + (f"enqueue = {enqueue}\n" if enqueue else "")
                        + '[resources]\nexecutor = "local"\n')
        return path

    return write
