"""The live progress line of a driver: trials running, done, failed, best accuracy, elapsed."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from mpsearch.spec import ACCURACY


@dataclass
class Progress:
    """Counts for the live display: trials running, done, failed, best accuracy, elapsed.

    Kept by the driver's process only (an executor updates it as it claims and tells);
    not thread-safe.
    """

    total: int
    stream: Any = field(default_factory=lambda: sys.stderr)
    running: int = 0
    done: int = 0
    failed: int = 0
    best: float = float("nan")
    started: float = field(default_factory=time.monotonic)
    detail: str = ""

    def line(self) -> str:
        best = "-" if math.isnan(self.best) else f"{self.best:.4f}"
        elapsed = time.monotonic() - self.started
        return (f"trials: {self.running} running, {self.done} done, {self.failed} failed "
                f"of {self.total} | best accuracy {best} | {elapsed:5.0f} s {self.detail}")

    def show(self, event: bool = False) -> None:
        """Redraw the line; when not on a terminal, print only on ``event`` (a trial ended)."""
        tty = self.stream.isatty()
        if not tty and not event:
            return
        self.stream.write(self.line().ljust(100) + ("\r" if tty else "\n"))
        self.stream.flush()

    def finished(self, outcome_values: dict | None) -> None:
        self.running = max(0, self.running - 1)
        if outcome_values is None:
            self.failed += 1
        else:
            self.done += 1
            acc = outcome_values.get(ACCURACY, float("nan"))
            if not math.isnan(acc) and (math.isnan(self.best) or acc > self.best):
                self.best = acc
