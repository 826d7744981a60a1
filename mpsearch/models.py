"""Model builders registered by plugins."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.errors import MpsearchError
from mpsearch.profile import ModelProfile, profile_model


@dataclass(frozen=True)
class ModelSpec:
    """How to build one network.

    Args:
        build: ``build(num_classes, input_shape) -> nn.Module`` with random initial
            weights (never downloads). ``input_shape`` is per sample, ``(C, H, W)``;
            a builder adapts its stem to ``C`` and may reject shapes it cannot take.
        input_shape: the shape the network was designed for.
        num_classes: the default number of outputs.
        description: one line, with the paper the architecture comes from.
    """

    build: Callable[[int, tuple[int, ...]], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int = 10
    description: str = ""

    def create(self, num_classes: int | None = None, input_shape: tuple[int, ...] | None = None,
               seed: int | None = None) -> nn.Module:
        """Build the network; with ``seed``, its initial weights are reproducible."""
        shape = tuple(input_shape or self.input_shape)
        classes = num_classes or self.num_classes
        if seed is None:
            return self.build(classes, shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build(classes, shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,224,224"`` -> ``(3, 224, 224)``."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise MpsearchError(f"input shape {text!r} is not a list of positive integers like 3,32,32.")
    return shape


@functools.lru_cache(maxsize=64)
def _cached_profile(spec: ModelSpec, num_classes: int, shape: tuple[int, ...]) -> ModelProfile:
    return profile_model(spec.create(num_classes, shape, seed=0), shape)


def model_profile(spec: ModelSpec, num_classes: int | None = None,
                  input_shape: tuple[int, ...] | None = None) -> ModelProfile:
    """The profile of a registered model at a shape, measured once per process."""
    shape = tuple(input_shape or spec.input_shape)
    try:
        return _cached_profile(spec, num_classes or spec.num_classes, shape)
    except RuntimeError as exc:
        raise MpsearchError(f"the model cannot take inputs of shape {list(shape)}: "
                            f"{str(exc).splitlines()[0]}") from exc
