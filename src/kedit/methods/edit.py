"""The edit handle: what one edit changed, and how to undo it bit for bit.

Every method, whatever it changes, records its changes on an :class:`Edit`:

* weight deltas (FT, ROME, MEMIT ...): :meth:`Edit.add_delta`, kept as low-rank factors when
  the method produces them, or :meth:`Edit.tracking` around in-place training;
* added modules (GRACE, MELO ...): :meth:`Edit.swap_module` and :meth:`Edit.save_state`;
* a wrapper around the model (IKE, SERAC ...): :meth:`Edit.wrap`.

Each of them goes through one choke point, :meth:`Edit._record`, after the change is made, so an
``apply`` that fails at any moment leaves a list of changes that undoes exactly what happened.
:meth:`Edit.restore` undoes them in reverse order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods.changes import (
    Change,
    Delta,
    ModuleSwap,
    ParamChange,
    StateChange,
    Stateful,
    add_delta_,
)
from kedit.model.arch import get_module
from kedit.model.lm import LanguageModel, as_language_model
from kedit.types import EditRequest


@dataclass
class WrapperSet(Change):
    """An edit made a wrapper (a :class:`LanguageModel`) the edited model."""

    edit: Edit

    def undo(self) -> None:
        self.edit._wrapper = None


class Edit:
    """Handle of one applied edit.

    ``edit.model`` is what to use afterwards: the edited model itself, or a wrapper with the
    same :class:`~kedit.model.lm.LanguageModel` interface. ``edit.restore()`` undoes the edit
    bit-exactly; ``with kedit.edit(...) as e:`` restores on exit.
    """

    def __init__(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        method: str,
        config: MethodConfig,
        requests: Sequence[EditRequest],
        state: dict[Any, Any] | None = None,
        unedited: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> None:
        self._base = model
        self.tokenizer = tok
        self.method = method
        self.config = config
        self.requests = list(requests)
        self.changes: list[Change] = []
        self.info: dict[str, Any] = {}
        #: method state that outlives one edit (e.g. AlphaEdit's cache of edited keys): the
        #: session's when the edit belongs to one, else private to this edit. Record a change
        #: to an object in it with :meth:`save_state` first, so undo restores it.
        self.state: dict[Any, Any] = state if state is not None else {}
        self._wrapper: Any = None
        self._active = True
        self._session: Any = None
        self._unedited = unedited if unedited is not None else nullcontext

    def unedited(self) -> AbstractContextManager[None]:
        """Inside this block, whatever is computed for a cache keyed by the unedited model's
        fingerprint (key statistics, context templates: ``env.memo`` misses and
        ``env.computing()``) runs on the weights the model had before any edit of its
        session; the weights are swapped only for that computation, so an edit whose caches
        are warm copies nothing. Outside a session, or before its first edit, the model is
        unedited already."""
        return self._unedited()

    # recording ---------------------------------------------------------------------------

    def _record(self, change: Change) -> None:
        """Every change, once made, is recorded here (and nowhere else)."""
        self.changes.append(change)

    def add_delta(self, param: nn.Parameter, delta: Delta) -> None:
        """Apply ``param += delta`` and remember how to undo it."""
        change = ParamChange(param, param.detach().clone(), delta)
        add_delta_(param, delta)
        self._record(change)

    @contextmanager
    def tracking(self, params: Sequence[nn.Parameter]) -> Iterator[None]:
        """Let the body change ``params`` in place (e.g. by gradient steps); afterwards the
        change is recorded as a dense delta and re-applied through :func:`add_delta_`, so that
        replaying it reproduces the weights exactly."""
        originals = [p.detach().clone() for p in params]
        try:
            yield
        finally:
            # back to the originals first: a failure below leaves only recorded changes behind
            with torch.no_grad():
                deltas = [
                    Delta(dense=p.detach().float() - o.float()) for p, o in zip(params, originals)
                ]
                for p, o in zip(params, originals):
                    p.copy_(o)
        for p, o, delta in zip(params, originals, deltas):
            add_delta_(p, delta)
            self._record(ParamChange(p, o, delta))

    def swap_module(self, model: nn.Module, path: str, new: nn.Module) -> None:
        """Replace the submodule at ``path`` by ``new``."""
        parent_path, _, attr = path.rpartition(".")
        parent = get_module(model, parent_path) if parent_path else model
        old = getattr(parent, attr)
        setattr(parent, attr, new)
        self._record(ModuleSwap(parent, attr, old, new))

    def save_state(self, target: Stateful) -> None:
        """Remember ``target``'s state now, to be restored on undo (call before changing it)."""
        self._record(StateChange(target, target.get_state()))

    def wrap(self, wrapper: Any) -> None:
        """Make ``wrapper`` (a :class:`LanguageModel`) the edited model."""
        self._wrapper = wrapper
        self._record(WrapperSet(self))

    # using -------------------------------------------------------------------------------

    @property
    def model(self) -> Any:
        """The edited model (or its wrapper); the original object after :meth:`restore`."""
        return self._wrapper if (self._wrapper is not None and self._active) else self._base

    @property
    def lm(self) -> LanguageModel:
        """The edited model behind the :class:`LanguageModel` interface evaluation uses."""
        return as_language_model(self.model, self.tokenizer)

    @property
    def active(self) -> bool:
        return self._active

    def restore(self) -> None:
        """Undo this edit exactly. Idempotent. Inside a session, only the latest edit can be
        restored this way (use ``session.rollback(k)`` for more)."""
        if not self._active:
            return
        if self._session is not None:
            self._session._restore_edit(self)
            return
        self._undo_all()

    def _undo_all(self) -> None:
        for change in reversed(self.changes):
            change.undo()
        self.changes.clear()
        self._active = False

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self._active else "restored"
        return f"Edit({self.method}, {len(self.requests)} request(s), {state})"
