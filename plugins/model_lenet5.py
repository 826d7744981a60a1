"""LeNet-5 as used for compression on MNIST: 20C5-MP2-50C5-MP2-500FC-10.

This is the Caffe variant of LeCun et al., "Gradient-Based Learning Applied to
Document Recognition" (1998) that Han et al., "Deep Compression" (ICLR 2016) and
Qu et al., "Adaptive Loss-aware Quantization for Multi-bit Networks" (CVPR 2020)
report results on: 430,500 weights in its two convolutions and two fully
connected layers (1,722,000 bytes in float32).
"""

from __future__ import annotations

from torch import nn

from mpsearch.api import ModelSpec, MpsearchError, hookimpl

_KERNEL = 5
_POOL = 2


def _side_after_features(side: int) -> int:
    """Spatial size after conv5-pool2-conv5-pool2 (valid convolutions, floor pooling)."""
    side = (side - _KERNEL + 1) // _POOL
    return (side - _KERNEL + 1) // _POOL


class LeNet5(nn.Module):
    """LeNet-5 (20C5-MP2-50C5-MP2-500FC-N) for ``(C, H, W)`` inputs.

    Args:
        num_classes: outputs of the last layer.
        input_shape: per-sample ``(C, H, W)``; ``(1, 28, 28)`` for MNIST.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28)):
        super().__init__()
        if len(input_shape) != 3:
            raise MpsearchError(f"lenet5 takes images shaped (C, H, W), not {list(input_shape)}.")
        channels, height, width = input_shape
        out_h, out_w = _side_after_features(height), _side_after_features(width)
        if out_h < 1 or out_w < 1:
            raise MpsearchError(f"lenet5 needs images of at least 16x16 pixels, not "
                                f"{height}x{width}.")
        self.conv1 = nn.Conv2d(channels, 20, _KERNEL)
        self.conv2 = nn.Conv2d(20, 50, _KERNEL)
        self.pool = nn.MaxPool2d(_POOL)
        self.relu = nn.ReLU()
        # The flatten size follows the input: 50 * 4 * 4 = 800 for 28x28 inputs.
        self.fc1 = nn.Linear(50 * out_h * out_w, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        # ReLU after the pooling rather than before: max-pooling and ReLU commute,
        # and this way the ReLU touches a quarter of the values.
        x = self.relu(self.pool(self.conv1(x)))
        x = self.relu(self.pool(self.conv2(x)))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def build_lenet5(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build :class:`LeNet5` with random weights."""
    return LeNet5(num_classes, tuple(input_shape))


@hookimpl
def register_models(register):
    register("lenet5", ModelSpec(
        build=build_lenet5, input_shape=(1, 28, 28), num_classes=10,
        description="LeNet-5 20C5-MP2-50C5-MP2-500FC-10, 430.5 K weights (LeCun et al. 1998; "
                    "the variant of Han et al. 2016 and ALQ, Qu et al. 2020)"))
