"""The contract of the meta-learning editors (KE, MEND, MALMEN): a trained editor network that
turns one pass over the edit into weight shifts.

:class:`MetaConfig` / :class:`MetaMethod`: a method builds its editor (``build_editor``),
predicts shifts (``shifts``, see ``_hypernet.Shift``) and names its optimiser; the default
objective is the papers' ``cedit * NLL(edit and paraphrases after the edit) + cloc * KL(pre ||
post on unrelated prompts)``. ``apply`` finds the trained editor for this model and config in
the cache (or ``editor=PATH``) and refuses one trained for another model or config.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._editors import EDITOR, editor_dir, load_tensors, resolve_editor_path
from kedit.methods._grads import (
    linear_paths,
    target_accuracy,
    target_batch,
    target_logits,
    target_nll,
)
from kedit.methods._hypernet import Objective, Shift, TrainingExample, locality_kl, shifted
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import get_module
from kedit.model.lm import hf_module, model_device
from kedit.types import EditRequest

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class MetaConfig(MethodConfig):
    """What every trained editor has.

    Args:
        editor: a trained editor's folder (or its ``editor.safetensors``); default: the one in
            kedit's cache for this model, this method and config.
        modules: the edited linear modules: a canonical part (``mlp_out``, ``mlp_in``) or a
            module path inside a block, mapped to its layers (negative counts from the end).
        train_data: the dataset the editor is trained on (``kedit ls datasets``).
        batch_size: edits per training batch (applied together).
        accumulate: batches whose gradients are summed before each optimiser step.
        lr: the optimiser's learning rate for the editor network.
        cedit: weight of the edit loss.
        cloc: weight of the locality KL.
        grad_clip: gradient-norm clip of every training step.
        val_size: training examples held out for validation.
        max_steps: training steps (``kedit train --steps``).
        val_every: steps between validations and checkpoints (``--val-every``).
        patience: stop when the validation loss has not improved for this many steps.
    """

    #: fields that do not change what the editor is (where it lives, how long it trains)
    NOT_KEY: ClassVar[frozenset[str]] = frozenset({"editor", "max_steps", "val_every", "patience"})

    editor: str | None = None
    modules: dict[str, list[int]] = field(
        default_factory=lambda: {"mlp_in": [-3, -2, -1], "mlp_out": [-3, -2, -1]}
    )
    train_data: str = "counterfact-train"
    batch_size: int = 1
    accumulate: int = 1
    lr: float = 1e-6
    cedit: float = 0.1
    cloc: float = 1.0
    grad_clip: float = 100.0
    val_size: int = 200
    max_steps: int = 100_000
    val_every: int = 5_000
    patience: int = 20_000

    def validate(self) -> None:
        if not self.modules or not all(self.modules.values()):
            raise ValueError("modules maps each edited module to at least one layer")
        if min(self.batch_size, self.accumulate, self.val_size, self.max_steps) < 1:
            raise ValueError("batch_size, accumulate, val_size and max_steps must be at least 1")
        if self.val_every < 1 or self.patience < 1:
            raise ValueError("val_every and patience must be at least 1")
        if self.lr <= 0 or self.grad_clip <= 0 or self.cedit < 0 or self.cloc < 0:
            raise ValueError("lr and grad_clip must be positive, cedit and cloc not negative")

    def key_fields(self) -> dict[str, Any]:
        """The fields that key a trained editor."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_KEY}


class MetaMethod(EditMethod):
    """Base of the editors that need a trained network before they can edit."""

    family = "meta-learning"
    config_cls: ClassVar[type[MetaConfig]] = MetaConfig
    #: ``kedit train`` makes what this method needs before it can edit
    needs_training: ClassVar[bool] = True

    def __init__(self, config: MethodConfig | None = None, env: Any = None) -> None:
        super().__init__(config, env)
        self._editor: nn.Module | None = None
        self._loaded: dict[Path, tuple[nn.Module, dict]] = {}

    # -- what each method supplies --------------------------------------------------------------

    @abstractmethod
    def build_editor(self, model: nn.Module) -> nn.Module:
        """A fresh editor network for ``model`` (the papers' initialisation)."""

    @abstractmethod
    def shifts(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        editor: nn.Module,
    ) -> dict[str, Shift]:
        """The weight shift of every edited module for ``requests`` (one edit); keeps the graph
        to ``editor`` when gradients are enabled."""

    def optimiser(self, editor: nn.Module) -> torch.optim.Optimizer:
        """The optimiser of the editor's training (default: Adam at ``lr``)."""
        return torch.optim.Adam(editor.parameters(), lr=self.config.lr)

    def after_step(self, editor: nn.Module) -> None:
        """Called after each optimiser step (e.g. to clip a Lagrange multiplier)."""

    def after_validation(self, editor: nn.Module, stats: Mapping[str, float]) -> None:
        """Called with each validation's statistics (e.g. to tighten a constraint's margin;
        keep such state in the editor's buffers, so checkpoints carry it)."""

    # -- training ---------------------------------------------------------------------------------

    def objective(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        editor: nn.Module,
    ) -> Objective:
        """``cedit * NLL + cloc * KL``: the targets on the edit prompts and paraphrases after
        the examples are edited together, and the locality KL from the unedited predictions."""
        model = hf_module(model)
        shifts = self.shifts(model, tok, [e.request for e in examples], editor)
        return self.post_edit_objective(model, tok, examples, shifts)

    def post_edit_objective(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        shifts: Mapping[str, Shift],
    ) -> Objective:
        """The objective of ``shifts`` already predicted for ``examples``."""
        cfg, device = self.config, model_device(model)
        edit_rows = [
            (prompt, e.request.target_new)
            for e in examples
            for prompt in (e.request.text, *e.paraphrases)
        ]
        edits = target_batch(tok, edit_rows, device)
        loc_rows = [pair for e in examples for pair in e.locality]
        unrelated = target_batch(tok, loc_rows, device) if loc_rows else None
        if unrelated is not None:
            with torch.no_grad():
                pre = target_logits(model, unrelated)
        with shifted(model, shifts):
            post_edit = target_logits(model, edits)
            post_loc = target_logits(model, unrelated) if unrelated is not None else None
        nll = target_nll(post_edit, edits)
        stats = {"edit_nll": nll.item(), "edit_acc": target_accuracy(post_edit, edits)}
        loss = cfg.cedit * nll
        if unrelated is not None and post_loc is not None:
            kl, agree = locality_kl(pre, post_loc, unrelated)
            loss = loss + cfg.cloc * kl
            stats.update(loc_kl=kl.item(), loc_agree=agree)
        stats["loss"] = loss.item()
        return Objective(loss, stats)

    def train_step(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        editor: nn.Module,
    ) -> dict[str, float]:
        """One step's gradients into ``editor``'s parameters (the trainer clips and steps)."""
        objective = self.objective(model, tok, examples, editor)
        objective.loss.backward()
        return objective.stats

    # -- editing ----------------------------------------------------------------------------------

    def prepare(self, model: Any) -> None:
        """Load and check the trained editor before a run's first edit."""
        self.editor_for(hf_module(model))

    def use_editor(self, editor: nn.Module | None) -> None:
        """Edit with this in-memory editor (the trainer's validation) instead of a saved one."""
        self._editor = editor

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        editor, meta = self.editor_for(model)
        was_training = editor.training
        editor.eval()
        try:
            with torch.no_grad():
                shifts = self.shifts(model, tok, requests, editor)
        finally:
            editor.train(was_training)
        for path, shift in shifts.items():
            module = get_module(model, path)
            edit.add_delta(module.weight, shift.delta(module))
        edit.info.update(modules=len(shifts), editor_steps=meta.get("steps"))

    def module_paths(self, model: nn.Module) -> list[str]:
        """The edited modules' paths, in the order of ``modules``."""
        return linear_paths(model, self.config.modules, self.name)

    def editor_folder(self, model: nn.Module) -> Path:
        """Where this method's trained editor for ``model`` and this config lives."""
        fingerprint = self.env.fingerprint(hf_module(model))
        return editor_dir(self.env.cache_dir, self.name, fingerprint, self.config.key_fields())

    def editor_for(self, model: nn.Module) -> tuple[nn.Module, dict]:
        """The in-memory editor, else the trained one (``editor=PATH`` or the cache's), checked
        against this model and config."""
        if self._editor is not None:
            return self._editor, {}
        folder = (
            resolve_editor_path(self.config.editor)
            if self.config.editor
            else self.editor_folder(model)
        )
        if folder not in self._loaded:
            self._loaded[folder] = self._load(model, folder)
        return self._loaded[folder]

    def _load(self, model: nn.Module, folder: Path) -> tuple[nn.Module, dict]:
        try:
            tensors, meta = load_tensors(folder, EDITOR)
        except FileNotFoundError:
            raise ValueError(self._missing(model, folder)) from None
        fingerprint = self.env.fingerprint(model)
        if meta.get("method") != self.name:
            raise ValueError(f"{folder} holds a {meta.get('method')} editor, not {self.name}")
        if meta.get("model_fingerprint") != fingerprint:
            raise ValueError(
                f"the editor in {folder} was trained for another model ({meta.get('model')}, "
                f"fingerprint {meta.get('model_fingerprint')}); this model's fingerprint is "
                f"{fingerprint}. An editor only works on the weights it was trained with: "
                f"{self.train_command(model)}"
            )
        wanted = self.config.key_fields()
        differ = sorted(
            k
            for k in wanted.keys() | meta.get("key_fields", {}).keys()
            if wanted.get(k) != meta.get("key_fields", {}).get(k)
        )
        if differ:
            raise ValueError(
                f"the editor in {folder} was trained with other settings ({', '.join(differ)} "
                f"differ: {[(k, meta.get('key_fields', {}).get(k)) for k in differ]}); "
                f"{self.train_command(model)}"
            )
        editor = self.build_editor(model).to(model_device(model))
        editor.load_state_dict(tensors, strict=True)
        log.info("%s: editor from %s (%s steps)", self.name, folder, meta.get("steps"))
        return editor.eval(), meta

    def _missing(self, model: nn.Module, folder: Path) -> str:
        return (
            f"{self.display_name} needs a trained editor, and there is none for this model and "
            f"config (looked in {folder}). {self.train_command(model)}; or name a trained "
            "editor with --editor PATH (Python: overrides={'editor': PATH})"
        )

    def train_command(self, model: nn.Module) -> str:
        """The ``kedit train`` command that makes the editor this method looks for."""
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or "MODEL"
        default = type(self).for_model(model, None, self.env).config.key_fields()
        sets = "".join(
            f" --set {k}={_cli_value(v)}"
            for k, v in self.config.key_fields().items()
            if k != "train_data" and default.get(k) != v
        )
        return (
            f"train one with: kedit train --method {self.name} --model {name} "
            f"--dataset {self.config.train_data}{sets}"
        )


def _cli_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
