"""Sequential editing: stack edits, roll back the last k, restore everything.

Memory stays flat as edits accumulate: the session keeps one copy of each parameter's weights
from before its first edit, and each edit keeps only its delta (low-rank factors for ROME-like
methods). Rolling back resets the touched parameters and replays the remaining deltas in order,
which reproduces the weights bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from kedit.env import Environment
from kedit.methods.base import EditMethod
from kedit.methods.changes import ParamChange, add_delta_
from kedit.methods.edit import Edit
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
    """

    def __init__(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        env: Environment | None = None,
    ) -> None:
        self._root = model
        self.tokenizer = tok
        self.env = env if env is not None else Environment()
        self.edits: list[Edit] = []
        self._originals: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        #: method state shared by this session's edits (see ``Edit.state``)
        self.state: dict[Any, Any] = {}
        self.env.fingerprint(hf_module(model))  # of the unedited model, for every cache key

    @property
    def model(self) -> Any:
        """The model with all edits so far (a wrapper if an edit made one)."""
        return self.edits[-1].model if self.edits else self._root

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

    def rollback(self, k: int = 1) -> None:
        """Undo the last ``k`` edits exactly."""
        if not 0 <= k <= len(self.edits):
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
        with torch.no_grad():
            for key, param in touched.items():
                param.copy_(self._originals[key][1])
        for edit in self.edits:
            for change in edit.changes:
                if isinstance(change, ParamChange) and id(change.param) in touched:
                    add_delta_(change.param, change.delta)
        for key in touched:
            if not any(
                isinstance(c, ParamChange) and id(c.param) == key
                for e in self.edits
                for c in e.changes
            ):
                del self._originals[key]

    def _restore_edit(self, edit: Edit) -> None:
        if not self.edits or self.edits[-1] is not edit:
            raise RuntimeError(
                "only the latest edit of a session can be restored on its own; use "
                "session.rollback(k) to undo the last k edits"
            )
        self.rollback(1)

    def restore(self) -> None:
        """Undo every edit of the session."""
        self.rollback(len(self.edits))

    @property
    def restore_bytes(self) -> int:
        """Memory held to undo the session: one weight copy per touched parameter plus the
        deltas."""
        originals = sum(t.numel() * t.element_size() for _, t in self._originals.values())
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
