"""Profiles: one forward pass, execution order, MACs of every layer kind."""

from __future__ import annotations

import torch
from torch import nn

from mpsearch.profile import profile_model
from mpsearch.testing import TINY_INPUT, tiny_profile


def test_tiny_profile_by_hand():
    p = tiny_profile()
    assert p.names == ["stem", "grouped", "depthwise", "pointwise", "fc1", "fc2"]
    stem, grouped, dw, pw, fc1, fc2 = p.layers
    assert stem.macs == 8 * 8 * 8 * 3 * 9 and stem.uses_per_weight == 64
    assert grouped.macs == 8 * 8 * 8 * 4 * 9 and grouped.groups == 2 and not grouped.depthwise
    assert dw.depthwise and dw.macs == 8 * 4 * 4 * 9 and dw.stride == (2, 2)
    assert pw.macs == 16 * 4 * 4 * 8
    assert fc1.macs == 256 * 12 and fc1.kind == "linear" and fc1.uses_per_weight == 1
    assert fc2.output_shape == (10,)
    assert stem.input_shape == TINY_INPUT and dw.input_shape == (8, 8, 8)
    # inputs after a ReLU are non-negative; the grouped conv's output feeds dw unclipped
    assert stem.input_signed and not grouped.input_signed and dw.input_signed
    assert not fc1.input_signed
    assert p.macs == sum(l.macs for l in p.layers)


def test_execution_order_not_declaration_order_and_reuse_counted():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.body = nn.Linear(4, 4)

        def forward(self, x):
            return self.head(self.body(self.body(x)))

    p = profile_model(Net(), (4,))
    assert p.names == ["body", "head"]
    assert p["body"].macs == 2 * 16  # called twice


def test_sequence_inputs_count_every_position():
    p = profile_model(nn.Sequential(nn.Linear(6, 5)), (7, 6))
    assert p.layers[0].macs == 7 * 6 * 5 and p.layers[0].uses_per_weight == 7


def test_profile_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile_model(model, (3, 8, 8))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
