"""Granularities: which weights share one bit-width.

A granularity turns a weight shape into the shape of its bits tensor, chosen so
that the bits tensor broadcasts onto the weight (the convention of
:class:`mpsearch.assignment.PrecisionAssignment`). A linear layer is treated as a
1×1 convolution on a 1×1 map: its "kernel" is one weight and its "pixel" is a row.

======================  =============================  ===========================
granularity             convolution ``(O, I, kh, kw)``  linear ``(O, I)``
======================  =============================  ===========================
``network``, ``layer``  ``()``                          ``()``
``channel``             ``(O, 1, 1, 1)``                ``(O, 1)``
``kernel``              ``(O, I, 1, 1)``                ``(O, I)``
``pixel``               ``(O, 1, kh, kw)``              ``(O, 1)``
``parameter``           ``(O, I, kh, kw)``              ``(O, I)``
======================  =============================  ===========================

``network`` differs from ``layer`` only in that one width is shared by every
layer (see :func:`mpsearch.quant.bitwidth.shared_widths`).
"""

from __future__ import annotations

from mpsearch.errors import MpsearchError

GRANULARITIES = ("network", "layer", "channel", "kernel", "pixel", "parameter")


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise MpsearchError(f"unknown granularity {granularity!r}; choose one of "
                            f"{', '.join(GRANULARITIES)}.")
    return granularity


def bits_shape(granularity: str, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one weight tensor's bits at ``granularity``."""
    check_granularity(granularity)
    shape = tuple(weight_shape)
    if granularity in ("network", "layer"):
        return ()
    if granularity == "parameter":
        return shape
    out, rest = shape[0], shape[1:]
    if granularity == "channel":
        return (out,) + (1,) * len(rest)
    if granularity == "kernel":
        return shape[:2] + (1,) * (len(shape) - 2)
    # pixel: one width per output channel and kernel position, shared across input channels
    return (out, 1) + shape[2:]
