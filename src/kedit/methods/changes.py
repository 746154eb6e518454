"""The records of what an edit changed, each able to undo itself exactly.

* :class:`ParamChange`: a weight delta (dense, or low-rank factors), with the weight's original;
* :class:`ModuleSwap`: a submodule replaced by another (GRACE's adaptor);
* :class:`StateChange`: the saved state of an object a method keeps (a codebook, a cache).

An :class:`~kedit.methods.edit.Edit` keeps them in order and undoes them in reverse.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class Delta:
    """A weight change in the parameter's own layout: ``dense``, or ``left @ right.T``.

    Factors keep rank-k updates (ROME, MEMIT) small to store and exact to replay.
    """

    dense: torch.Tensor | None = None
    left: torch.Tensor | None = None  # (rows, rank)
    right: torch.Tensor | None = None  # (cols, rank)

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.left is None or self.right is None):
            raise ValueError("a Delta is either dense or a pair of factors, not both or neither")

    def materialize(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        return self.left @ self.right.T  # (rows, cols)

    @property
    def nbytes(self) -> int:
        parts = [self.dense] if self.dense is not None else [self.left, self.right]
        return sum(p.numel() * p.element_size() for p in parts)


def add_delta_(param: torch.Tensor, delta: Delta) -> None:
    """``param += delta``, in fp32 and cast back once for low-precision weights (so small
    updates are not rounded away term by term)."""
    with torch.no_grad():
        update = delta.materialize().to(param.device, torch.float32)
        if update.shape != param.shape:
            raise ValueError(
                f"delta of shape {tuple(update.shape)} for a {tuple(param.shape)} parameter"
            )
        if param.dtype == torch.float32:
            param.add_(update)
        else:
            param.copy_((param.float() + update).to(param.dtype))


class Change(ABC):
    """One recorded change to a model; :meth:`undo` reverts it exactly."""

    @abstractmethod
    def undo(self) -> None: ...


@dataclass
class ParamChange(Change):
    param: nn.Parameter
    original: torch.Tensor | None  # exact copy from before; None once a session keeps it
    delta: Delta

    def undo(self) -> None:
        if self.original is None:
            raise RuntimeError(
                "this change's original is held by its EditSession; use session.rollback()"
            )
        with torch.no_grad():
            self.param.copy_(self.original)


@dataclass
class ModuleSwap(Change):
    parent: nn.Module
    attr: str
    old: nn.Module
    new: nn.Module

    def undo(self) -> None:
        setattr(self.parent, self.attr, self.old)


class Stateful(Protocol):
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...


@dataclass
class StateChange(Change):
    target: Stateful
    saved: Any

    def undo(self) -> None:
        self.target.set_state(self.saved)
