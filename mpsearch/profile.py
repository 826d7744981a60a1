"""Per-layer facts that costs are computed from, measured by one forward pass.

A :class:`ModelProfile` lists, for every quantizable layer (``nn.Conv2d`` including
grouped and depthwise, ``nn.Linear``) that runs in a forward pass, its weight
shape, its per-sample input and output shapes and its multiply-accumulates per
sample. Layers appear in execution order, so "first" and "last" mean what the
network does, not how its modules were declared. Nothing is hand-tabulated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerProfile:
    """One quantizable layer. Shapes are per sample (no batch dimension)."""

    name: str
    kind: str  # "conv2d" or "linear"
    weight_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int  # multiply-accumulates per sample
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    input_signed: bool = True  # inputs took negative values (no ReLU before the layer)

    @property
    def weight_numel(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def input_numel(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_numel(self) -> int:
        return math.prod(self.output_shape)

    @property
    def uses_per_weight(self) -> int:
        """How many multiplications each weight takes part in, per sample."""
        return self.macs // self.weight_numel

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv2d" and self.groups > 1 and self.groups == self.in_channels

    @property
    def weight_group(self) -> str:
        return f"{self.name}:weight"

    @property
    def input_group(self) -> str:
        return f"{self.name}:input"


@dataclass(frozen=True)
class ModelProfile:
    """All quantizable layers of a model at one input shape, in execution order."""

    input_shape: tuple[int, ...]
    layers: tuple[LayerProfile, ...]

    def __iter__(self) -> Iterator[LayerProfile]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerProfile:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def weight_numel(self) -> int:
        return sum(layer.weight_numel for layer in self.layers)

    def group_shapes(self) -> dict[str, tuple[int, ...]]:
        """Group name -> the shape of the tensor the group quantizes (weights, per-sample inputs)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.layers:
            shapes[layer.weight_group] = layer.weight_shape
            shapes[layer.input_group] = layer.input_shape
        return shapes

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{
            "layer": l.name, "kind": l.kind, "weight_shape": l.weight_shape,
            "weights": l.weight_numel, "input_shape": l.input_shape,
            "inputs": l.input_numel, "outputs": l.output_numel, "macs": l.macs,
            "stride": l.stride, "groups": l.groups,
        } for l in self.layers])


def profile_model(model: nn.Module, input_shape: Sequence[int]) -> ModelProfile:
    """Run one forward pass of a single sample and record every quantizable layer.

    ``input_signed`` records whether a layer's input took negative values for a
    standard-normal sample: activation quantizers use it to choose one- or
    two-sided clipping.

    The model is put in eval mode for the pass and restored afterwards; its
    weights are not changed. Layers that never run (e.g. a Linear used only
    through its weight) are not quantizable and do not appear.
    """
    shape = tuple(int(s) for s in input_shape)
    records: dict[str, dict] = {}
    order: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        name = names[module]
        x = args[0]
        per_sample_out = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = per_sample_out * (module.in_channels // module.groups) * kh * kw
        else:
            macs = per_sample_out * module.in_features
        if name in records:  # a layer called twice costs twice
            records[name]["macs"] += macs
            return
        order.append(name)
        rec = dict(name=name, weight_shape=tuple(module.weight.shape),
                   input_shape=tuple(x.shape[1:]), output_shape=tuple(output.shape[1:]), macs=macs,
                   input_signed=bool((x < 0).any()))
        if isinstance(module, nn.Conv2d):
            rec.update(kind="conv2d", in_channels=module.in_channels,
                       out_channels=module.out_channels, kernel_size=tuple(module.kernel_size),
                       stride=tuple(module.stride), groups=module.groups)
        else:
            rec.update(kind="linear", in_channels=module.in_features,
                       out_channels=module.out_features)
        records[name] = rec

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QUANTIZABLE)]
    was_training = model.training
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        # A seeded random sample, so that a layer's input is signed exactly when
        # nothing like a ReLU clips it (the profile must not depend on the global RNG).
        sample = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return ModelProfile(input_shape=shape, layers=tuple(LayerProfile(**records[n]) for n in order))
