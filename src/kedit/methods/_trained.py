"""What every method with a trained part shares (MEND, KE, MALMEN; SERAC's classifier and
counterfactual model): its config's training fields, the trainer's contract, and finding the
trained part for a model.

:class:`TrainedConfig`: the editor's location (``editor``), the training data, batch,
accumulation, learning rate, clipping, held-out size and schedule; :meth:`key_fields` are those
that key a trained editor. :class:`TrainedMethod`: a method builds its editor (``build_editor``)
and states its objective (``objective``); the trainer (``kedit.train``) calls ``optimiser``,
``train_step``, ``after_step`` and ``after_validation``. ``editor_for`` finds the trained editor
for this model and config in the cache (or ``editor=PATH``) and refuses one trained for another
model or config, with the ``kedit train`` command that makes the right one.
"""

from __future__ import annotations

import json
import logging
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._editors import EDITOR, editor_dir, load_tensors, resolve_editor_path
from kedit.methods._hypernet import Objective, TrainingExample
from kedit.methods.base import EditMethod
from kedit.model.lm import hf_module, model_device

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainedConfig(MethodConfig):
    """What every trained editor's config has.

    Args:
        editor: a trained editor's folder (or its ``editor.safetensors``); default: the one in
            kedit's cache for this model, this method and config.
        train_data: the dataset the editor is trained on (``kedit ls datasets``).
        batch_size: edits per training batch (applied together).
        accumulate: batches whose gradients are summed before each optimiser step.
        lr: the optimiser's learning rate for the editor network.
        grad_clip: gradient-norm clip of every training step.
        val_size: training examples held out for validation.
        max_steps: training steps (``kedit train --steps``).
        val_every: steps between validations and checkpoints (``--val-every``).
        patience: stop when the validation loss has not improved for this many steps.
    """

    #: fields that do not change what the editor is (where it lives, how long it trains)
    NOT_KEY: ClassVar[frozenset[str]] = frozenset({"editor", "max_steps", "val_every", "patience"})

    editor: str | None = None
    train_data: str = "counterfact-train"
    batch_size: int = 1
    accumulate: int = 1
    lr: float = 1e-6
    grad_clip: float = 100.0
    val_size: int = 200
    max_steps: int = 100_000
    val_every: int = 5_000
    patience: int = 20_000

    def validate(self) -> None:
        if min(self.batch_size, self.accumulate, self.val_size, self.max_steps) < 1:
            raise ValueError("batch_size, accumulate, val_size and max_steps must be at least 1")
        if self.val_every < 1 or self.patience < 1:
            raise ValueError("val_every and patience must be at least 1")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError("lr and grad_clip must be positive")

    def key_fields(self) -> dict[str, Any]:
        """The fields that key a trained editor."""
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_KEY}


#: a panel of a training curve: its title and the validation statistics drawn in it, each with
#: its legend label (None: no legend)
CurvePanel = tuple[str, tuple[tuple[str, str | None], ...]]


class TrainedMethod(EditMethod):
    """Base of the methods that need a trained part before they can edit."""

    config_cls: ClassVar[type[TrainedConfig]] = TrainedConfig
    needs_training = True
    #: the panels of the validation curve drawn beside the editor (statistics as the
    #: objective's ``stats`` name them)
    curve_panels: ClassVar[tuple[CurvePanel, ...]] = (
        ("validation loss", (("loss", None),)),
        ("edit token accuracy", (("edit_acc", None),)),
    )

    def __init__(self, config: MethodConfig | None = None, env: Any = None) -> None:
        super().__init__(config, env)
        self._editor: nn.Module | None = None
        self._loaded: dict[Path, tuple[nn.Module, dict]] = {}

    # -- what each method supplies --------------------------------------------------------------

    @abstractmethod
    def build_editor(self, model: nn.Module) -> nn.Module:
        """A fresh editor network for ``model`` (the papers' initialisation)."""

    @abstractmethod
    def objective(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        editor: nn.Module,
    ) -> Objective:
        """The training objective on ``examples`` (its ``stats["loss"]`` is what validation
        and early stopping compare)."""

    def optimiser(self, editor: nn.Module) -> torch.optim.Optimizer:
        """The optimiser of the editor's training (default: Adam at ``lr``)."""
        return torch.optim.Adam(editor.parameters(), lr=self.config.lr)

    def after_step(self, editor: nn.Module, optimiser: torch.optim.Optimizer) -> None:
        """Called after each optimiser step (e.g. to clip a Lagrange multiplier, or set the
        next step's learning rate)."""

    def after_validation(self, editor: nn.Module, stats: Mapping[str, float]) -> None:
        """Called with each validation's statistics (e.g. to tighten a constraint's margin;
        keep such state in the editor's buffers, so checkpoints carry it)."""

    # -- training ---------------------------------------------------------------------------------

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

    # -- the trained editor -----------------------------------------------------------------------

    def prepare(self, model: Any) -> None:
        """Load and check the trained editor before a run's first edit."""
        self.editor_for(hf_module(model))

    def use_editor(self, editor: nn.Module | None) -> None:
        """Edit with this in-memory editor (the trainer's validation) instead of a saved one."""
        self._editor = editor

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
