"""Test helpers and conformance suites that plugin authors reuse (needs the ``test`` extra).

- :func:`tiny_model` / :func:`tiny_profile`: a small network with every kind of
  quantizable layer (convolution, grouped, depthwise, linear).
- :mod:`mpsearch.testing.hypothesis`: Hypothesis strategies that draw assignments (not search
  strategies: those have :mod:`~mpsearch.testing.strategies_suite`).
- :class:`~mpsearch.testing.strategies_suite.StrategyTestCase`,
  :class:`~mpsearch.testing.objectives.ObjectiveTestCase`,
  :class:`~mpsearch.testing.backends.BackendTestCase`: subclass them in a plugin's
  tests to check the contracts every strategy, objective and backend must keep.
- :func:`mpsearch.testing.quantizers.check_integer_form`: a quantizer's integer form is
  exact and survives packing (what ``mpsearch export`` needs of it).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from mpsearch.profile import ModelProfile, profile_model

TINY_INPUT = (3, 8, 8)


class TinyNet(nn.Module):
    """Convolution, grouped convolution, depthwise convolution, pooling, two linears."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.fc1 = nn.Linear(16 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.grouped(x)  # no ReLU: the depthwise layer sees signed inputs
        x = torch.relu(self.pointwise(self.depthwise(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny_model(seed: int = 0) -> TinyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyNet()


@functools.cache
def tiny_profile() -> ModelProfile:
    return profile_model(tiny_model(), TINY_INPUT)
