"""Accelerator backends: which widths a target supports, and what an assignment costs on it.

A backend never searches; strategies never do accelerator arithmetic. Lifecycle:
backends are registered once per process and are stateless. The host legalises
every assignment with :meth:`Backend.legalise` before any cost is computed, so
costs are always those of what the hardware would run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mpsearch.assignment import MAX_BITS, Bits, PrecisionAssignment, split_group
from mpsearch.errors import AssignmentError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mpsearch.profile import ModelProfile


class Backend(ABC):
    """An accelerator's view of precision.

    Attributes:
        weight_bits / activation_bits: supported widths in increasing order, or
            ``None`` for any width from 1 to 32. A width of 0 (pruned) is always kept.
        description: one line, with the source paper of the performance model.

    Subclasses implement :meth:`layer_costs`, a first-order model computed per layer
    from the profile and relative to a stated baseline of the same accelerator.
    """

    weight_bits: Sequence[int] | None = None
    activation_bits: Sequence[int] | None = None
    description: str = ""

    def supported(self, kind: str) -> Sequence[int] | None:
        return self.weight_bits if kind == "weight" else self.activation_bits

    def legalise(self, assignment: PrecisionAssignment) -> PrecisionAssignment:
        """Round every width up to the nearest supported one; never lower a width.

        Raises:
            AssignmentError: a width exceeds the largest supported one.
        """
        def up(group: str, bits: Bits) -> Bits:
            widths = self.supported(split_group(group)[1])
            if widths is None:
                return bits
            return _round_up(bits, widths, group, type(self).__name__)

        return assignment.map(up)

    def is_legal(self, assignment: PrecisionAssignment) -> bool:
        return self.legalise(assignment) == assignment

    @abstractmethod
    def layer_costs(self, profile: ModelProfile, assignment: PrecisionAssignment) -> pd.DataFrame:
        """Per-layer costs of a legal assignment at batch 1.

        Returns:
            A frame indexed by layer with columns ``time`` and ``baseline_time`` (same
            unit, the backend's), ``memory_bits`` and ``baseline_memory_bits``, and
            optionally ``energy_pj``.
        """

    def speedup(self, profile: ModelProfile, assignment: PrecisionAssignment) -> float:
        """Baseline time over the assignment's time, summed over layers."""
        costs = self.layer_costs(profile, self.legalise(assignment))
        return float(costs["baseline_time"].sum() / costs["time"].sum())

    def memory_ratio(self, profile: ModelProfile, assignment: PrecisionAssignment) -> float:
        """The assignment's storage over the baseline's (smaller is better)."""
        costs = self.layer_costs(profile, self.legalise(assignment))
        return float(costs["memory_bits"].sum() / costs["baseline_memory_bits"].sum())


def _round_up(bits: Bits, widths: Sequence[int], group: str, backend: str) -> Bits:
    table = sorted(int(w) for w in widths)
    if isinstance(bits, int):
        if bits == 0:
            return 0
        for w in table:
            if w >= bits:
                return w
        raise AssignmentError(f"group {group!r}: {bits} bits exceeds the widest width "
                              f"{table[-1]} that backend {backend} supports.")
    if bits.numel() and int(bits.max()) > table[-1]:
        raise AssignmentError(f"group {group!r}: {int(bits.max())} bits exceeds the widest width "
                              f"{table[-1]} that backend {backend} supports.")
    lut = torch.zeros(MAX_BITS + 1, dtype=torch.int64)
    for b in range(1, MAX_BITS + 1):
        lut[b] = next((w for w in table if w >= b), 0)
    return lut[bits]
