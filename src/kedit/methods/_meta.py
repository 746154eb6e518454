"""The meta-learning editors (KE, MEND, MALMEN): a trained network that turns one pass over the
edit into weight shifts.

:class:`MetaConfig` / :class:`MetaMethod` (on ``_trained.py``'s training contract): a method
builds its editor (``build_editor``) and predicts a shift per edited module (``shifts``, see
``_hypernet.Shift``); the default objective is the papers' ``cedit * NLL(edit and paraphrases
after the edit) + cloc * KL(pre || post on unrelated prompts)``; ``apply`` loads the trained
editor and records the shifts as weight deltas.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._grads import (
    linear_paths,
    target_accuracy,
    target_batch,
    target_logits,
    target_nll,
)
from kedit.methods._hypernet import (
    Objective,
    Shift,
    TrainingExample,
    locality_kl,
    shifted,
    target_tokens,
)
from kedit.methods._trained import TrainedConfig, TrainedMethod
from kedit.methods.edit import Edit
from kedit.model.arch import get_module, weight_out_in
from kedit.model.lm import hf_module, model_device
from kedit.types import EditRequest


@dataclass(kw_only=True)
class MetaConfig(TrainedConfig):
    """What a weight-shifting editor adds to the training fields.

    Args:
        modules: the edited linear modules: a canonical part (``mlp_out``, ``mlp_in``) or a
            module path inside a block, mapped to its layers (negative counts from the end).
        cedit: weight of the edit loss.
        cloc: weight of the locality KL.
    """

    modules: dict[str, list[int]] = field(
        default_factory=lambda: {"mlp_in": [-3, -2, -1], "mlp_out": [-3, -2, -1]}
    )
    cedit: float = 0.1
    cloc: float = 1.0

    def validate(self) -> None:
        super().validate()
        if not self.modules or not all(self.modules.values()):
            raise ValueError("modules maps each edited module to at least one layer")
        if self.cedit < 0 or self.cloc < 0:
            raise ValueError("cedit and cloc must not be negative")


class MetaMethod(TrainedMethod):
    """Base of the editors whose trained network predicts weight shifts."""

    family = "meta-learning"
    config_cls: ClassVar[type[MetaConfig]] = MetaConfig
    curve_panels = (
        ("validation loss (cedit*NLL + cloc*KL)", (("loss", None),)),
        ("edit token accuracy", (("edit_acc", None),)),
        ("unrelated top-1 kept", (("loc_agree", None),)),
    )

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
        return self.post_edit_objective(model, tok, examples, shifts, chunk=self.objective_chunk())

    def objective_chunk(self) -> int | None:
        """Edits whose post-edit passes run together (None: all of a batch at once)."""
        return None

    def post_edit_objective(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        shifts: Mapping[str, Shift],
        *,
        chunk: int | None = None,
        backward: bool = False,
    ) -> Objective:
        """The objective of ``shifts`` already predicted for ``examples``: the NLL a mean over
        every target token, the KL over every unrelated answer position. Computed ``chunk``
        examples at a time (default: all at once), each chunk's terms summed and divided by the
        whole batch's counts, so the value does not depend on ``chunk``; with ``backward`` each
        chunk's share is backpropagated as it is computed (one chunk's graph at a time) and the
        returned terms are detached."""
        cfg, device = self.config, model_device(model)
        size = chunk or len(examples)
        groups = []
        for start in range(0, len(examples), size):
            group = examples[start : start + size]
            rows = [
                (p, e.request.target_new) for e in group for p in (e.request.text, *e.paraphrases)
            ]
            unrelated = [pair for e in group for pair in e.locality]
            groups.append(
                (
                    target_batch(tok, rows, device),
                    target_batch(tok, unrelated, device) if unrelated else None,
                )
            )
        n_edit = sum(target_tokens(edits) for edits, _ in groups)
        n_loc = sum(target_tokens(loc) for _, loc in groups if loc is not None)
        nll = kl = torch.zeros((), device=device)
        hits = kept = 0.0
        for edits, unrelated in groups:
            if unrelated is not None:
                with torch.no_grad():
                    pre = target_logits(model, unrelated)
            with shifted(model, shifts):
                post_edit = target_logits(model, edits)
                post_loc = target_logits(model, unrelated) if unrelated is not None else None
            part_nll = target_nll(post_edit, edits, "sum") / n_edit
            hits += target_accuracy(post_edit, edits) * target_tokens(edits)
            part_kl = torch.zeros((), device=device)
            if unrelated is not None and post_loc is not None:
                part_kl, part_kept = locality_kl(pre, post_loc, unrelated)
                part_kl, kept = part_kl / n_loc, kept + part_kept
            if backward:
                # the shifts' own graph (to the editor) serves every chunk: kept
                (cfg.cedit * part_nll + cfg.cloc * part_kl).backward(retain_graph=True)
                part_nll, part_kl = part_nll.detach(), part_kl.detach()
            nll, kl = nll + part_nll, kl + part_kl
        loss = cfg.cedit * nll + cfg.cloc * kl
        stats = {"edit_nll": nll.item(), "edit_acc": hits / n_edit, "loss": loss.item()}
        if n_loc:
            stats.update(loc_kl=kl.item(), loc_agree=kept / n_loc)
        return Objective(loss, stats, {"nll": nll, "kl": kl} if n_loc else {"nll": nll})

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

    def module_shapes(self, model: nn.Module) -> list[tuple[int, int]]:
        """``(d_out, d_in)`` of each edited module's linear map, whatever its weight layout."""
        shapes = []
        for path in self.module_paths(model):
            d_out, d_in = weight_out_in(get_module(model, path)).shape
            shapes.append((int(d_out), int(d_in)))
        return shapes
