"""The method contract: ``EditMethod`` computes an edit and records it on an ``Edit``.

A method is one class: its ``name`` (the registry's), ``display_name`` (the paper's spelling),
``family`` (the survey's taxonomy, :data:`FAMILIES`), ``paper``, ``config_cls`` and
``supports_batch``, and an :meth:`EditMethod.apply` that records its changes on the given
:class:`~kedit.methods.edit.Edit`. :meth:`EditMethod.edit` runs it atomically: any error undoes
whatever was recorded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from transformers import PreTrainedTokenizerBase

from kedit.config import PRESET_KEY, MethodConfig, resolve_config
from kedit.env import Environment
from kedit.methods.edit import Edit
from kedit.model.arch import ARCHS, model_type_of, num_layers
from kedit.model.hooks import hook_count
from kedit.model.lm import hf_module
from kedit.types import EditRequest

log = logging.getLogger(__name__)

#: the survey's method families; the first three change the model's own weights
MODIFYING_FAMILIES = ("fine-tuning", "meta-learning", "locate-and-edit")
FAMILIES = (*MODIFYING_FAMILIES, "added-parameters", "external-memory", "in-context")


class EditMethod(ABC):
    """Base of every editing method.

    Subclasses set the class attributes below and implement :meth:`apply`, which records its
    changes on the given :class:`Edit`. Call :meth:`edit` to run it.
    """

    #: the registry's name (lower-case, e.g. ``"r-rome"``)
    name: ClassVar[str]
    #: the papers' spelling (``"r-ROME"``, ``"AlphaEdit"``), for tables and findings
    display_name: ClassVar[str]
    #: the survey's taxonomy: one of :data:`FAMILIES`
    family: ClassVar[str]
    #: the paper, short (``"Meng et al. 2022"``)
    paper: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    supports_batch: ClassVar[bool] = False
    #: the method whose presets (``presets/<method>/``) this one reads; None: its own
    presets: ClassVar[str | None] = None
    #: the edit works by the model reading text it is given (IKE's demonstrations, MeLLo's and
    #: DeepEdit's retrieved facts): random weights cannot follow it, so the contract holds such
    #: a method to changing the predictions of a tiny model, not to raising the target
    reads_context: ClassVar[bool] = False
    #: the method edits with a part trained beforehand (``kedit train``; ``_trained.py``)
    needs_training: ClassVar[bool] = False

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
        """The method configured by its preset for ``model``'s architecture (or the
        architecture's preset family), then ``overrides``."""
        module = hf_module(model)
        model_type = model_type_of(module)
        types = ARCHS.get(model_type).preset_types() if model_type in ARCHS else [model_type]
        config = resolve_config(
            cls.config_cls, cls.presets or cls.name, types, num_layers(module), overrides
        )
        return cls(config, env)

    def with_overrides(self, overrides: Mapping[str, Any]) -> EditMethod:
        """A new instance of this method, its config with ``overrides`` set on top (checked as
        ``--set`` values are), in the same environment."""
        checked = self.config_cls.checked(overrides)
        if PRESET_KEY in checked:
            raise ValueError("a preset is chosen when the method is built (for_model), not after")
        return type(self)(dataclasses.replace(self.config, **checked), self.env)

    def prepare(self, model: Any) -> None:
        """Check, before a run's first edit, that what the method needs for ``model`` exists
        (a trained editor); raise a ValueError that says how to make it. Nothing by default."""
        return None

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
        unedited: Callable[[], AbstractContextManager[None]] | None = None,
    ) -> Edit:
        """Apply the method; on any error the model is left exactly as it was. ``state`` is the
        method state shared by a session's edits (see :attr:`Edit.state`), ``unedited`` how the
        session gives back the unedited weights for a while (see :meth:`Edit.unedited`)."""
        requests = [requests] if isinstance(requests, EditRequest) else list(requests)
        if not requests:
            raise ValueError("no edit request given")
        bad = [r for r in requests if not isinstance(r, EditRequest)]
        if bad:
            raise TypeError(f"requests must be kedit.EditRequest objects, got {type(bad[0])}")
        if len(requests) > 1 and not self.supports_batch:
            raise ValueError(batch_error(self.name))
        # the session's unedited weights are swapped in only for what is computed for the
        # caches keyed by the unedited fingerprint (a miss), never on a warm edit
        lazy = (lambda: self.env.unedited_from(unedited)) if unedited is not None else None
        edit = Edit(model, tok, self.name, self.config, requests, state, lazy)
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
    """Why ``name`` cannot take a batch, and what to do instead."""
    return (
        f"{name} edits one request at a time; apply the requests one after another with an "
        "EditSession, or use a method that edits batches (kedit ls methods)"
    )
