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


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """A root holding MNIST (``MNIST/raw``) and CIFAR-10 (``cifar10/{train,test}``).

    Unpacked from ``../shared/datasets`` once; the tests that need it skip when
    that folder is absent (a user's checkout has no ``../shared``).
    """
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


# Tests run the eager fake-quantization kernels unless a test asks for compiled ones:
# compiling on the CPU takes seconds per kernel variant.
os.environ.setdefault("MPSEARCH_COMPILE", "off")
