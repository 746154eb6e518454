"""Sequential editing: stack edits, roll back the last k, restore everything.

Memory stays flat as edits accumulate: the session keeps one copy of each parameter's weights
from before its first edit, and each edit keeps only its delta (low-rank factors for ROME-like
methods). Rolling back resets the touched parameters and replays the remaining deltas in order,
which reproduces the weights bit for bit.

A session of thousands of edits can bound what it keeps with ``rollback_window=w``: only the
last ``w`` edits can be rolled back one by one. An edit that leaves the window is *folded*: its
delta is added to a second copy of the weights (the base the window replays onto, by the same
additions in the same order, so rollback stays bit-exact) and dropped, its handle is let go,
and of its other changes only what a full restore needs is kept (the first saved state of each
object, the first module swapped at each place). Restore data is then at most two copies of
the touched parameters, the window's deltas and the added parts themselves; with ``w = 0`` one
copy (no base is needed). ``restore()`` always gives back the unedited model.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from kedit.env import Environment
from kedit.methods.base import EditMethod
from kedit.methods.changes import Change, ModuleSwap, ParamChange, StateChange, add_delta_
from kedit.methods.edit import Edit, WrapperSet
from kedit.methods.registry import make_method
from kedit.model.lm import LanguageModel, as_language_model, hf_module
from kedit.types import EditRequest


class EditSession:
    """Apply edits one after another to one model.

    Example::

        with EditSession(model, tok) as session:
            session.edit(request_a, "rome")
            session.edit(request_b, "rome", overrides={"layer": 6})
            session.rollback(1)          # only request_a remains
        # leaving the block restores the unedited model

    Args:
        rollback_window: how many of the latest edits can be rolled back one by one (None:
            all of them); older ones are folded (see the module docstring), so a session of
            10,000 edits holds a bounded amount of restore data.
    """

    def __init__(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        env: Environment | None = None,
        rollback_window: int | None = None,
    ) -> None:
        if rollback_window is not None and rollback_window < 0:
            raise ValueError(f"rollback_window is a number of edits >= 0, got {rollback_window}")
        self._root = model
        self.tokenizer = tok
        self.env = env if env is not None else Environment()
        self.rollback_window = rollback_window
        #: the edits that can be rolled back, oldest first
        self.edits: list[Edit] = []
        #: edits applied in all, folded ones included
        self.n_edits = 0
        self._originals: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        #: the weights the window's deltas replay onto: originals plus every folded delta
        self._base: dict[int, torch.Tensor] = {}
        #: folded edits' changes a full restore still undoes, and their handles (not kept alive)
        self._folded: list[Change] = []
        self._folded_keys: set[tuple[Any, ...]] = set()
        self._folded_edits: weakref.WeakSet[Edit] = weakref.WeakSet()
        self._folded_model: Any = None
        #: method state shared by this session's edits (see ``Edit.state``)
        self.state: dict[Any, Any] = {}
        self.env.fingerprint(hf_module(model))  # of the unedited model, for every cache key

    @property
    def model(self) -> Any:
        """The model with all edits so far (a wrapper if an edit made one)."""
        if self.edits:
            return self.edits[-1].model
        return self._folded_model if self._folded_model is not None else self._root

    @property
    def lm(self) -> LanguageModel:
        return as_language_model(self.model, self.tokenizer)

    def edit(
        self,
        requests: EditRequest | Sequence[EditRequest],
        method: str | EditMethod = "rome",
        overrides: dict[str, Any] | None = None,
    ) -> Edit:
        """Apply one edit (one request, or a batch for methods that take batches) on top of
        the previous ones. ``method`` is a name (configured for the model, then
        ``overrides``) or an :class:`EditMethod`."""
        editor = make_method(method, self.model, overrides, self.env)
        edit = editor.edit(self.model, self.tokenizer, requests, self.state, self.unedited_weights)
        self._adopt(edit)
        return edit

    def edit_all(self, requests: Sequence[EditRequest], method: EditMethod) -> list[Edit]:
        """One update with every request for a batch method; else one edit per request, in
        order. Returns the edits made."""
        if len(requests) == 1 or method.supports_batch:
            return [self.edit(list(requests), method)]
        return [self.edit(request, method) for request in requests]

    @contextmanager
    def unedited_weights(self) -> Iterator[None]:
        """Inside this block every parameter the session's edits changed holds its weights
        from before the first edit; they are put back exactly afterwards. (Added modules and
        wrappers stay: the model's own weights are what caches keyed by its fingerprint
        describe.)"""
        current = [(p, p.detach().clone()) for p, _ in self._originals.values()]
        try:
            with torch.no_grad():
                for param, original in self._originals.values():
                    param.copy_(original)
            yield
        finally:
            with torch.no_grad():
                for param, value in current:
                    param.copy_(value)

    def _adopt(self, edit: Edit) -> None:
        """Move the edit's copies of original weights into the session (one per parameter)."""
        for change in edit.changes:
            if isinstance(change, ParamChange):
                key = id(change.param)
                if key not in self._originals:
                    self._originals[key] = (change.param, change.original)
                change.original = None
        edit._session = self
        self.edits.append(edit)
        self.n_edits += 1
        if self.rollback_window is not None:
            while len(self.edits) > self.rollback_window:
                self._fold(self.edits.pop(0))

    def _fold(self, edit: Edit) -> None:
        """Let ``edit`` leave the rollback window (see the module docstring)."""
        for change in edit.changes:
            if isinstance(change, ParamChange):
                if self.rollback_window:  # a window replays onto the base: keep it current
                    key = id(change.param)
                    if key not in self._base:
                        self._base[key] = self._originals[key][1].clone()
                    add_delta_(self._base[key], change.delta)
                continue
            place = _restore_key(change)
            if place is None or place not in self._folded_keys:
                self._folded.append(change)
                if place is not None:
                    self._folded_keys.add(place)
        edit.changes.clear()
        self._folded_model = edit.model  # the model as this edit left it (its wrapper, if any)
        self._folded_edits.add(edit)

    def rollback(self, k: int = 1) -> None:
        """Undo the last ``k`` edits exactly."""
        if not 0 <= k <= len(self.edits):
            if k > len(self.edits) and self.n_edits >= k:
                raise ValueError(
                    f"cannot roll back {k} edits: this session keeps a rollback window of the "
                    f"last {self.rollback_window} (EditSession(rollback_window=...)); "
                    "restore() undoes every edit"
                )
            raise ValueError(f"cannot roll back {k} of {len(self.edits)} edits")
        if k == 0:
            return
        undone, self.edits = self.edits[-k:], self.edits[:-k]
        touched: dict[int, torch.nn.Parameter] = {}
        for edit in reversed(undone):
            for change in reversed(edit.changes):
                if isinstance(change, ParamChange):
                    touched[id(change.param)] = change.param
                else:
                    change.undo()
            edit.changes.clear()
            edit._active = False
            edit._session = None
        self.n_edits -= k
        with torch.no_grad():
            for key, param in touched.items():
                param.copy_(self._base.get(key, self._originals[key][1]))
        for edit in self.edits:
            for change in edit.changes:
                if isinstance(change, ParamChange) and id(change.param) in touched:
                    add_delta_(change.param, change.delta)
        for key in touched:
            if key not in self._base and not any(
                isinstance(c, ParamChange) and id(c.param) == key
                for e in self.edits
                for c in e.changes
            ):
                del self._originals[key]

    def _restore_edit(self, edit: Edit) -> None:
        if edit in self._folded_edits:
            raise RuntimeError(
                f"this edit is older than the session's rollback window of "
                f"{self.rollback_window} edits and can no longer be undone alone; "
                "session.restore() undoes every edit"
            )
        if not self.edits or self.edits[-1] is not edit:
            raise RuntimeError(
                "only the latest edit of a session can be restored on its own; use "
                "session.rollback(k) to undo the last k edits"
            )
        self.rollback(1)

    def restore(self) -> None:
        """Undo every edit of the session."""
        self.rollback(len(self.edits))
        for change in reversed(self._folded):
            change.undo()
        with torch.no_grad():  # what is left are the parameters folded edits changed
            for param, original in self._originals.values():
                param.copy_(original)
        self._originals = {}
        for edit in self._folded_edits:
            edit._active = False
            edit._session = None
        self._base, self._folded, self._folded_keys = {}, [], set()
        self._folded_edits = weakref.WeakSet()
        self._folded_model, self.n_edits = None, 0

    @property
    def restore_bytes(self) -> int:
        """Memory held to undo the session: one weight copy per touched parameter (two once a
        rollback window has folded edits), plus the window's deltas."""
        originals = sum(t.numel() * t.element_size() for _, t in self._originals.values())
        originals += sum(t.numel() * t.element_size() for t in self._base.values())
        deltas = sum(
            c.delta.nbytes for e in self.edits for c in e.changes if isinstance(c, ParamChange)
        )
        return originals + deltas

    def __len__(self) -> int:
        return len(self.edits)

    def __enter__(self) -> EditSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _restore_key(change: Change) -> tuple[Any, ...] | None:
    """Where a folded change acts: a full restore needs only the first folded change per place
    (the state an object had, the module a place held, before the first folded edit)."""
    if isinstance(change, StateChange):
        return ("state", id(change.target))
    if isinstance(change, ModuleSwap):
        return ("module", id(change.parent), change.attr)
    if isinstance(change, WrapperSet):
        return ("wrapper",)
    return None
