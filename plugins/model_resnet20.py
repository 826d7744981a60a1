"""ResNet-20 for CIFAR-10 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The CIFAR network of Section 4.2 with n = 3: a 3x3 stem, three stages of three
basic blocks with 16, 32 and 64 channels, global average pooling and one fully
connected layer; 19 convolutions + 1 linear layer, 269,722 parameters. Shortcuts
are option A (parameter-free), as in the paper's CIFAR experiments.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from mpsearch.api import ModelSpec, MpsearchError, hookimpl

_STAGES = (16, 32, 64)
_BLOCKS_PER_STAGE = 3  # n = 3 gives 6n + 2 = 20 layers


class ShortcutA(nn.Module):
    """Option A shortcut: stride-``s`` subsampling and zero channels appended.

    Args:
        stride: spatial subsampling factor.
        extra_channels: zero channels to add, split between both sides.
    """

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.before = extra_channels // 2
        self.after = extra_channels - self.before

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ShortcutA(stride, planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (n = 3) for ``(C, H, W)`` inputs; the stem takes ``C`` channels.

    Args:
        num_classes: outputs of the last layer.
        input_shape: per-sample ``(C, H, W)``; ``(3, 32, 32)`` for CIFAR-10.
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)):
        super().__init__()
        if len(input_shape) != 3:
            raise MpsearchError(f"resnet20 takes images shaped (C, H, W), not {list(input_shape)}.")
        self.conv1 = nn.Conv2d(input_shape[0], _STAGES[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STAGES[0])
        self.relu = nn.ReLU()
        in_planes = _STAGES[0]
        for index, planes in enumerate(_STAGES, start=1):
            blocks = []
            for block in range(_BLOCKS_PER_STAGE):
                stride = 2 if index > 1 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(_STAGES[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. 2015 initialisation, which the paper trains from.
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def build_resnet20(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Build :class:`ResNet20` with random weights."""
    return ResNet20(num_classes, tuple(input_shape))


@hookimpl
def register_models(register):
    register("resnet20", ModelSpec(
        build=build_resnet20, input_shape=(3, 32, 32), num_classes=10,
        description="ResNet-20 for CIFAR, option A shortcuts, 0.27 M parameters "
                    "(He et al. 2016)"))
