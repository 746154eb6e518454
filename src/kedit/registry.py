"""A small typed registry with lazy entries.

Entries are registered as ``"module:Attr"`` strings, so importing the registry costs nothing and
optional dependencies are only imported when an entry is used::

    METHODS = Registry("method")
    METHODS.register("rome", "kedit.methods.rome:ROME")
    METHODS["rome"]  # imports kedit.methods.rome and returns the class
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table with lazy ``"module:Attr"`` targets and helpful lookup errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str | T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, target: str | T, help: str = "") -> None:
        """Add ``name``; ``target`` is an object or a lazy ``"package.module:Attr"`` string."""
        if name != name.lower() or not name or " " in name:
            raise ValueError(f"{self.kind} names are lower-case without spaces, got {name!r}")
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(
                f"lazy {self.kind} target must look like 'module:Attr', got {target!r}"
            )
        self._targets[name] = target
        self._help[name] = help

    def __getitem__(self, name: str) -> T:
        if name not in self._targets:
            close = difflib.get_close_matches(name, self._targets, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
            )
        target = self._targets[name]
        if isinstance(target, str):
            module_name, attr = target.split(":", 1)
            target = getattr(importlib.import_module(module_name), attr)
            self._targets[name] = target
        return target

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._targets)

    def names(self) -> list[str]:
        return sorted(self._targets)

    def help(self, name: str) -> str:
        return self._help.get(name, "")
