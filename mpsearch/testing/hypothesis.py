"""Hypothesis strategies that draw precision assignments on a profile (the conformance suite
for search strategies is :mod:`mpsearch.testing.strategies_suite`)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from mpsearch.assignment import MAX_BITS, PrecisionAssignment
from mpsearch.profile import ModelProfile
from mpsearch.quant.granularity import GRANULARITIES, bits_shape

WEIGHT_GRANULARITIES = tuple(g for g in GRANULARITIES if g != "network")


@st.composite
def bit_tensors(draw, shape: tuple[int, ...], min_bits: int = 0, max_bits: int = MAX_BITS):
    """An int, or an integer tensor of exactly ``shape``, with widths in range."""
    if not shape or draw(st.booleans()):
        return draw(st.integers(min_bits, max_bits))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(min_bits, max_bits + 1, shape, generator=gen)


@st.composite
def assignments(draw, profile: ModelProfile, min_bits: int = 0, max_bits: int = MAX_BITS,
                scale_bits: bool = True):
    """Assignments of ``profile`` at a random granularity per weight group."""
    bits, scale = {}, {}
    for layer in profile:
        granularity = draw(st.sampled_from(WEIGHT_GRANULARITIES))
        shape = bits_shape(granularity, layer.weight_shape)
        bits[layer.weight_group] = draw(bit_tensors(shape, min_bits, max_bits))
        bits[layer.input_group] = draw(st.integers(min_bits, max_bits))
        if scale_bits:
            scale[layer.weight_group] = draw(st.sampled_from([0, 32, 64]))
    return PrecisionAssignment(bits, profile.group_shapes(), scale)


@st.composite
def raised(draw, assignment: PrecisionAssignment, max_bits: int = MAX_BITS):
    """The same assignment with one element of one group given more bits."""
    group = draw(st.sampled_from(list(assignment)))
    bits = assignment[group]
    if isinstance(bits, int):
        return assignment.replace({group: draw(st.integers(bits, max_bits))})
    flat = bits.flatten().clone()
    i = draw(st.integers(0, flat.numel() - 1))
    flat[i] = draw(st.integers(int(flat[i]), max_bits))
    return assignment.replace({group: flat.reshape(bits.shape)})
