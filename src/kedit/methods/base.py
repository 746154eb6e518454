"""The edit abstraction: ``EditMethod`` computes changes, ``Edit`` holds and undoes them.

Every method, whatever it changes, records its changes on an :class:`Edit`:

* weight deltas (FT, ROME, MEMIT ...): :meth:`Edit.add_delta`, kept as low-rank factors when
  the method produces them;
* added modules (GRACE, MELO ...): :meth:`Edit.swap_module` and :meth:`Edit.save_state`;
* a wrapper around the model (IKE, SERAC ...): :meth:`Edit.wrap`.

:meth:`Edit.restore` undoes them in reverse order and gives back a bit-exact model. An ``apply``
that raises leaves the model as it was: :meth:`EditMethod.edit` undoes whatever was recorded.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig, resolve_config
from kedit.env import Environment
from kedit.model.arch import get_module, model_type_of
from kedit.model.hooks import hook_count
from kedit.model.lm import LanguageModel, as_language_model
from kedit.types import EditRequest

log = logging.getLogger(__name__)


# -- changes ---------------------------------------------------------------------------------


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


# -- the edit handle -------------------------------------------------------------------------


class Edit:
    """Handle of one applied edit.

    ``edit.model`` is what to use afterwards: the edited model itself, or a wrapper with the
    same :class:`~kedit.model.lm.LanguageModel` interface. ``edit.restore()`` undoes the edit
    bit-exactly; ``with kedit.edit(...) as e:`` restores on exit.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        method: str,
        config: MethodConfig,
        requests: Sequence[EditRequest],
        state: dict[Any, Any] | None = None,
    ) -> None:
        self._base = model
        self.tokenizer = tokenizer
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

    # recording ---------------------------------------------------------------------------

    def add_delta(self, param: nn.Parameter, delta: Delta) -> None:
        """Apply ``param += delta`` and remember how to undo it."""
        change = ParamChange(param, param.detach().clone(), delta)
        add_delta_(param, delta)
        self.changes.append(change)

    @contextmanager
    def tracking(self, params: Sequence[nn.Parameter]) -> Iterator[None]:
        """Let the body change ``params`` in place (e.g. by gradient steps); afterwards the
        change is recorded as a dense delta and re-applied through :func:`add_delta_`, so that
        replaying it reproduces the weights exactly."""
        originals = [p.detach().clone() for p in params]
        changes = []
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for p, o in zip(params, originals):
                    p.copy_(o)
            raise
        with torch.no_grad():
            for p, o in zip(params, originals):
                delta = Delta(dense=p.detach().float() - o.float())
                p.copy_(o)
                add_delta_(p, delta)
                changes.append(ParamChange(p, o, delta))
        self.changes.extend(changes)

    def swap_module(self, model: nn.Module, path: str, new: nn.Module) -> None:
        """Replace the submodule at ``path`` by ``new``."""
        parent_path, _, attr = path.rpartition(".")
        parent = get_module(model, parent_path) if parent_path else model
        old = getattr(parent, attr)
        setattr(parent, attr, new)
        self.changes.append(ModuleSwap(parent, attr, old, new))

    def save_state(self, target: Stateful) -> None:
        """Remember ``target``'s state now, to be restored on undo (call before changing it)."""
        self.changes.append(StateChange(target, target.get_state()))

    def wrap(self, wrapper: Any) -> None:
        """Make ``wrapper`` (a :class:`LanguageModel`) the edited model."""
        self._wrapper = wrapper

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


# -- methods ---------------------------------------------------------------------------------

#: the survey's method families; the first three change the model's own weights
MODIFYING_FAMILIES = ("fine-tuning", "meta-learning", "locate-and-edit")
FAMILIES = (*MODIFYING_FAMILIES, "added-parameters", "external-memory", "in-context")


class EditMethod(ABC):
    """Base of every editing method.

    Subclasses set ``name``, ``config_cls``, ``family`` and ``supports_batch`` and implement
    :meth:`apply`, which records its changes on the given :class:`Edit`. Call :meth:`edit` to
    run it.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    #: the survey's taxonomy: one of :data:`FAMILIES`
    family: ClassVar[str]
    supports_batch: ClassVar[bool] = False

    @classmethod
    def modifies_parameters(cls) -> bool:
        """Whether the method changes the model's own weights (the survey's
        parameter-modifying methods) rather than adding parameters, memory or context."""
        return cls.family in MODIFYING_FAMILIES

    def __init__(self, config: MethodConfig | None = None, env: Environment | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise TypeError(
                f"{self.name} takes a {self.config_cls.__name__}, got {type(self.config).__name__}"
            )
        self.env = env if env is not None else Environment()

    @classmethod
    def for_model(
        cls,
        model: Any,
        overrides: dict[str, Any] | None = None,
        env: Environment | None = None,
    ) -> EditMethod:
        """The method configured by its preset for ``model``'s architecture, then
        ``overrides``."""
        module = hf_module(model)
        config = resolve_config(
            cls.config_cls, cls.name, model_type_of(module), _num_layers(module), overrides
        )
        return cls(config, env)

    @abstractmethod
    def apply(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        """Compute the edit for ``requests`` and record the changes on ``edit``."""

    def edit(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        requests: EditRequest | Sequence[EditRequest],
        state: dict[Any, Any] | None = None,
    ) -> Edit:
        """Apply the method; on any error the model is left exactly as it was. ``state`` is the
        method state shared by a session's edits (see :attr:`Edit.state`)."""
        requests = [requests] if isinstance(requests, EditRequest) else list(requests)
        if not requests:
            raise ValueError("no edit request given")
        bad = [r for r in requests if not isinstance(r, EditRequest)]
        if bad:
            raise TypeError(f"requests must be kedit.EditRequest objects, got {type(bad[0])}")
        if len(requests) > 1 and not self.supports_batch:
            raise ValueError(batch_error(self.name))
        edit = Edit(model, tok, self.name, self.config, requests, state)
        hooks_before = hook_count(hf_module(model))
        start = time.perf_counter()
        try:
            self.apply(model, tok, requests, edit)
        except BaseException:
            edit._undo_all()
            raise
        finally:
            if hook_count(hf_module(model)) != hooks_before:
                log.error("%s left hooks on the model; this is a bug", self.name)
        edit.info["edit_time_s"] = time.perf_counter() - start
        return edit


def batch_error(name: str) -> str:
    from kedit.methods import batch_methods  # the registry sits above this module

    return (
        f"{name} edits one request at a time; apply the requests one after another with an "
        f"EditSession, or use a method that edits batches: {', '.join(batch_methods())}"
    )


def hf_module(model: Any) -> nn.Module:
    """The Hugging Face model inside ``model`` (itself, or the model a wrapper wraps)."""
    while not isinstance(model, nn.Module):
        inner = getattr(model, "hf_model", None)
        if inner is None:
            raise TypeError(
                f"{type(model).__name__} is neither a torch model nor a wrapper exposing .hf_model"
            )
        model = inner
    return model


def _num_layers(model: nn.Module) -> int | None:
    config = (
        model.config.get_text_config()
        if hasattr(model.config, "get_text_config")
        else (model.config)
    )
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
