"""What the search baselines (``random``, ``rl``) share: a candidate under a cost budget, and
the checks of their search spaces."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mpsearch.assignment import MAX_BITS, PrecisionAssignment
from mpsearch.quant import QUANTIZER_FAMILIES
from mpsearch.spec import Param, SpecError, check_integer_params

BUDGET_SLACK = 1e-9  # relative: a cost that equals the budget up to rounding fits it


@dataclass(frozen=True)
class Candidate:
    """A sampled assignment (legal for the backend), its cost, and whether it met the budget."""

    assignment: PrecisionAssignment
    cost: float
    fits: bool


def check_search_space(merged: Mapping[str, Param], where: str, *,
                       numbers: Mapping[str, tuple[Callable[[float], bool], str]],
                       integers: tuple[tuple[str, int, int | None], ...]) -> None:
    """The checks a search baseline's space shares (``random``, ``rl``): ``numbers`` and
    ``integers`` of its own, then ``min_bits`` and ``max_bits`` in 1-32 and not crossed, and
    a known quantizer family.

    Raises:
        SpecError: the first value that breaks a rule, named with its key.
    """
    for name, (ok, rule) in numbers.items():
        for v in merged[name].values():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise SpecError(f"{where}.{name}: {v!r} must be {rule}.")
    check_integer_params(merged, where, (*integers, ("min_bits", 1, MAX_BITS), ("max_bits", 1, MAX_BITS)))
    for v in merged["quantizer"].values():
        if v not in QUANTIZER_FAMILIES:
            raise SpecError(f"{where}.quantizer: {v!r} is not a quantizer family; use one "
                            f"of {', '.join(QUANTIZER_FAMILIES)}.")
