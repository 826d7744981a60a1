"""The base class of precision-search strategies.

A strategy is registered as a class. For each trial the host instantiates it in
the process that runs the trial, calls :meth:`Strategy.suggest` on the Optuna
trial to draw its hyperparameters, then :meth:`Strategy.run` with the trial's
context (model, data, device, epoch budget, objectives, backend, reporter). It
returns the final quantized model and its :class:`PrecisionAssignment`. A
strategy knows no backend by name and does no accelerator arithmetic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any


class Strategy(ABC):
    """A precision-search method (one-shot or search-based)."""

    description: str = ""

    @abstractmethod
    def suggest(self, trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
        """Draw this strategy's hyperparameters from an ``optuna.Trial``.

        Args:
            space: the study spec's search space for this strategy (ranges, choices).
        """

    @abstractmethod
    def run(self, context: Any, params: Mapping[str, Any]) -> Any:
        """Search, fine-tune and return the quantized model and its assignment."""
