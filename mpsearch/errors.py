"""Errors a user can act on.

Every error mpsearch raises for bad input derives from :class:`MpsearchError` and
carries one sentence naming the thing that is wrong and what would be valid. The
command line prints that sentence alone (a traceback only with ``--debug``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MpsearchError(Exception):
    """Bad input or a failed plugin, explained in one line."""


class UnknownNameError(MpsearchError, KeyError):
    """A name that no plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        close = difflib.get_close_matches(name, self.available, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(_summarise(self.available))
        super().__init__(f"unknown {kind} {name!r}.{hint} Available: {shown or '(none)'}.")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DuplicateNameError(MpsearchError):
    """Two plugins registered the same name."""


class PluginError(MpsearchError):
    """A plugin failed to load or registered something invalid."""


class AssignmentError(MpsearchError, ValueError):
    """A precision assignment that is malformed or does not match its model."""


class DatasetError(MpsearchError):
    """A dataset path that is missing or not in the expected layout."""


def _summarise(names: list[str], per_namespace: int = 5) -> list[str]:
    """Names, with large namespaces (``torchvision:*``) folded into one item."""
    spaces: dict[str, list[str]] = {}
    for n in names:
        if ":" in n:
            spaces.setdefault(n.split(":", 1)[0], []).append(n)
    shown = []
    for n in names:
        space = n.split(":", 1)[0] if ":" in n else None
        if space is None or len(spaces[space]) <= per_namespace:
            shown.append(n)
        elif spaces[space][0] == n:
            shown.append(f"{space}:<name> ({len(spaces[space])} names, e.g. {spaces[space][0]})")
    return shown
