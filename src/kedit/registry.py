"""A small typed registry with lazy entries, aliases and lazily imported providers.

Entries are registered as ``"module:Attr"`` strings, so importing the registry costs nothing and
optional dependencies are only imported when an entry is used::

    METHODS = Registry("method", base=EditMethod)
    METHODS.register("rome", "kedit.methods.rome:ROME", "rank-one update", aliases=("r1",))
    METHODS["rome"]  # imports kedit.methods.rome, checks ROME against EditMethod, returns it

A registry whose entries are registered by other modules names them as ``providers``; they are
imported the first time the registry is read. The registry's module never imports them, so the
modules that register entries can import the registry without an import circle.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table with lazy ``"module:Attr"`` targets, aliases, a base-class check and
    lookup errors that suggest the nearest names.

    Args:
        kind: what an entry is, for messages ("method", "metric").
        base: every entry must be this class (or a subclass, for class entries).
        providers: modules that register entries; imported on first read.
    """

    def __init__(self, kind: str, base: type | None = None, providers: Sequence[str] = ()) -> None:
        self.kind = kind
        self.base = base
        self._providers = list(providers)
        self._targets: dict[str, str | T] = {}
        self._help: dict[str, str] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, target: str | T, help: str = "", aliases: Sequence[str] = ()
    ) -> None:
        """Add ``name`` (and its ``aliases``); ``target`` is an object or a lazy
        ``"package.module:Attr"`` string, checked against ``base`` when first resolved."""
        for key in (name, *aliases):
            if key != key.lower() or not key or " " in key:
                raise ValueError(f"{self.kind} names are lower-case without spaces, got {key!r}")
            if key in self._targets or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(
                f"lazy {self.kind} target must look like 'module:Attr', got {target!r}"
            )
        if not isinstance(target, str):
            self._check(name, target)
        self._targets[name] = target
        self._help[name] = help
        self._aliases.update(dict.fromkeys(aliases, name))

    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (itself, or the name an alias points to)."""
        self._load_providers()
        if name in self._targets:
            return name
        if name in self._aliases:
            return self._aliases[name]
        close = difflib.get_close_matches(name, [*self._targets, *self._aliases], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}"
        )

    def __getitem__(self, name: str) -> T:
        name = self.canonical(name)
        target = self._targets[name]
        if isinstance(target, str):
            module_name, attr = target.split(":", 1)
            target = getattr(importlib.import_module(module_name), attr)
            self._check(name, target)
            self._targets[name] = target
        return target

    def _check(self, name: str, target: Any) -> None:
        if self.base is not None:
            ok = (
                issubclass(target, self.base)
                if isinstance(target, type)
                else isinstance(target, self.base)
            )
            if not ok:
                raise TypeError(f"{self.kind} {name!r} is not a {self.base.__name__}: {target!r}")
        own = getattr(target, "name", name)
        if isinstance(own, str) and own != name:
            raise ValueError(f"{self.kind} registered as {name!r} calls itself {own!r}")

    def _load_providers(self) -> None:
        while self._providers:
            importlib.import_module(self._providers.pop(0))

    def __contains__(self, name: object) -> bool:
        self._load_providers()
        return name in self._targets or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_providers()
        return len(self._targets)

    def names(self) -> list[str]:
        """The registered names (aliases not included), sorted."""
        self._load_providers()
        return sorted(self._targets)

    def aliases(self) -> dict[str, str]:
        """Alias -> the name it stands for."""
        self._load_providers()
        return dict(self._aliases)

    def help(self, name: str) -> str:
        return self._help.get(self.canonical(name), "")
