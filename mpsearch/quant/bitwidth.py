"""Bit-widths as modules: fixed integer widths, or learnable fractional ones.

A quantizer reads its widths by calling its :class:`BitWidth`. Sharing one
``BitWidth`` instance between quantizers shares the width (network granularity).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mpsearch.assignment import MAX_BITS, Bits


class BitWidth(nn.Module):
    """Widths of one quantized tensor: a 0-d tensor or one broadcastable onto it."""

    fractional: bool = False

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def discrete(self) -> Bits:
        """The integer widths an integer deployment would use now."""
        raise NotImplementedError


class FixedBits(BitWidth):
    """Integer widths that do not train (0 = pruned)."""

    def __init__(self, bits: Bits):
        super().__init__()
        value = torch.as_tensor(bits, dtype=torch.float32)
        if value.numel() and (float(value.min()) < 0 or float(value.max()) > MAX_BITS
                              or not torch.equal(value, value.round())):
            raise ValueError(f"fixed widths must be integers in 0-{MAX_BITS}")
        self.register_buffer("bits", value)
        self.pruning = bool((value == 0).any())

    def forward(self) -> torch.Tensor:
        return self.bits

    def discrete(self) -> Bits:
        if self.bits.dim() == 0:
            return int(self.bits)
        return self.bits.to(torch.int64).cpu()

    def extra_repr(self) -> str:
        return f"shape={tuple(self.bits.shape)}" if self.bits.dim() else f"bits={int(self.bits)}"


class LearnableBits(BitWidth):
    """Fractional widths trained by gradient descent, kept in ``[min_bits, max_bits]``.

    The forward pass clips the value to the range, and the gradient passes the
    clip unchanged, so a width that sits on a bound (BitPruning's 1 bit) still
    sees the gradient that would move it back. Keep the stored value in range by
    calling :meth:`project_` (or :func:`project_bits`) after each optimizer step.

    Args:
        init: the initial width (every element).
        shape: the bits tensor's shape (``()`` for one width per tensor).
        rounding: how :meth:`discrete` maps a learned width to an integer:
            ``"ceil"`` (BitPruning), ``"round"`` or ``"floor"``.
    """

    fractional = True

    def __init__(self, init: float, shape: tuple[int, ...] = (), *, min_bits: float = 1.0,
                 max_bits: float = float(MAX_BITS), rounding: str = "ceil"):
        super().__init__()
        if not 1.0 <= min_bits <= max_bits <= MAX_BITS:
            raise ValueError(f"need 1 <= min_bits <= max_bits <= {MAX_BITS}")
        if rounding not in ("ceil", "round", "floor"):
            raise ValueError(f"rounding must be ceil, round or floor, not {rounding!r}")
        self.value = nn.Parameter(torch.full(tuple(shape), float(init)))
        self.min_bits, self.max_bits, self.rounding = float(min_bits), float(max_bits), rounding

    def forward(self) -> torch.Tensor:
        v = self.value
        return v + (v.clamp(self.min_bits, self.max_bits) - v).detach()

    @torch.no_grad()
    def project_(self, low: float | None = None, high: float | None = None) -> None:
        """Clip the stored value into ``[low, high]`` (default: the width range)."""
        self.value.clamp_(self.min_bits if low is None else low,
                          self.max_bits if high is None else high)

    def discrete(self) -> Bits:
        with torch.no_grad():
            width = getattr(torch, self.rounding)(self().detach().cpu() - 1e-6 * (self.rounding == "ceil"))
            width = width.clamp(max(1, int(self.min_bits)), MAX_BITS).to(torch.int64)
        return int(width) if width.dim() == 0 else width

    def extra_repr(self) -> str:
        return (f"shape={tuple(self.value.shape)}, range=[{self.min_bits:g}, {self.max_bits:g}], "
                f"rounding={self.rounding}")


def project_bits(modules: Iterable[nn.Module]) -> None:
    """Clip every learnable width under ``modules`` back into its range (after a step)."""
    seen: set[int] = set()
    for root in modules:
        for module in root.modules():
            if isinstance(module, LearnableBits) and id(module) not in seen:
                seen.add(id(module))
                module.project_()


def bit_parameters(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Every distinct learnable width parameter under ``modules`` (for its own optimizer)."""
    seen: dict[int, nn.Parameter] = {}
    for root in modules:
        for module in root.modules():
            if isinstance(module, LearnableBits):
                seen.setdefault(id(module.value), module.value)
    return list(seen.values())
