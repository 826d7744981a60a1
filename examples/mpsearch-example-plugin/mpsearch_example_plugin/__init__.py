"""An example mpsearch plugin: one model, one objective and one command.

Installed, it is found through the ``mpsearch`` entry point group (see
``pyproject.toml``); uninstalled, ``mpsearch --plugin path/to/this/file.py`` loads
it for one run. Names carry the ``example:`` namespace so they cannot clash.
"""

from __future__ import annotations

import math

from torch import nn

from mpsearch.api import ModelSpec, Objective, hookimpl, weight_bits_total

DISTRIBUTION = "mpsearch-example-plugin"


class LeNet300100(nn.Module):
    """LeNet-300-100, the fully connected 784-300-100-10 network of LeCun et al. 1998.

    "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 86(11).
    Any input is flattened, so the first layer has ``prod(input_shape)`` inputs.

    Args:
        num_classes: outputs of the last layer.
        input_shape: per-sample shape, ``(1, 28, 28)`` for MNIST.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(x.flatten(1)))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def build_lenet_300_100(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build :class:`LeNet300100` with random weights."""
    return LeNet300100(num_classes, tuple(input_shape))


class WeightKiB(Objective):
    """Weight storage in KiB: every weight's bits plus each quantizer's scale bits."""

    unit = "KiB"
    description = "Weight storage in KiB (weight bits plus quantizer scale bits) / 8192"

    def differentiable(self, profile, bits, scale_bits=None):
        return weight_bits_total(profile, bits, scale_bits) / (8 * 1024)


@hookimpl
def register_models(register):
    register("example:lenet-300-100", ModelSpec(
        build=build_lenet_300_100, input_shape=(1, 28, 28), num_classes=10,
        description="LeNet-300-100, fully connected 784-300-100-10 (LeCun et al. 1998)"))


@hookimpl
def register_objectives(register):
    register("example:weight-kib", WeightKiB())


@hookimpl
def register_commands(cli):
    import click  # only the command line needs it

    @cli.command("example-hello")
    def example_hello():
        """Say hello from the example plugin."""
        click.echo(f"Hello from {DISTRIBUTION}, the example mpsearch plugin.")
