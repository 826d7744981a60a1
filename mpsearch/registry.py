"""Typed registries behind the ``register`` callbacks of the registration hooks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mpsearch.errors import DuplicateNameError, PluginError, UnknownNameError

T = TypeVar("T")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]*")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing and the plugin that registered it."""

    name: str
    obj: T
    plugin: str

    @property
    def description(self) -> str:
        doc = getattr(self.obj, "description", None) or getattr(self.obj, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """Names of one kind (strategy, objective, ...) mapped to what plugins registered.

    Rejects invalid names, reserved names, duplicates and objects that fail ``check``;
    answers an unknown name with close matches and the list of what exists.

    Args:
        reserved: names no plugin may register, each with what it already means.
    """

    def __init__(self, kind: str, check: Callable[[Any], bool], expected: str,
                 reserved: Mapping[str, str] | None = None):
        self.kind = kind
        self._check = check
        self._expected = expected
        self._reserved = dict(reserved or {})
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, obj: T, plugin: str) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an invalid name "
                              f"{name!r}: use letters, digits and _ . : @ + -.")
        if name in self._reserved:
            raise PluginError(f"plugin {plugin!r} registered the {self.kind} name {name!r}, which is "
                              f"reserved for {self._reserved[name]}; rename it.")
        if not self._check(obj):
            raise PluginError(f"plugin {plugin!r} registered {self.kind} {name!r} as "
                              f"{type(obj).__name__}; expected {self._expected}.")
        if name in self._entries:
            first = self._entries[name].plugin
            raise DuplicateNameError(f"{self.kind} {name!r} is registered twice: by {first!r} "
                                     f"and by {plugin!r}; rename one of them.")
        self._entries[name] = Entry(name, obj, plugin)

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def clear(self) -> None:
        self._entries.clear()

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
