"""SERAC: Semi-parametric Editing with a Retrieval-Augmented Counterfactual model.

Mitchell, Lin, Bosselut, Manning, Finn. "Memory-Based Model Editing at Scale", ICML 2022.
https://arxiv.org/abs/2206.06520 (reference: ``eric-mitchell/serac``: ``algs/rep.py``, the
``SupervisedTrainer`` of ``trainer.py``, ``losses.py``, ``config/alg/rep.yaml``,
``config/config.yaml``; EasyEdit ``easyeditor/trainer/algs/SERAC.py``)

The base model is never changed. An edit is stored verbatim in a memory; every later input goes
through:

1. the scope classifier: a sentence encoder embeds the input ``x`` and each stored edit's prompt;
   ``logsim = -||e_edit - e_x||^2 * scale`` and ``sim = exp(logsim)``; the input is in scope
   when the largest ``sim`` over the memory exceeds 0.5 (``rep.py``: ``run_classifier``);
2. the hard switch (``rep.yaml``: ``supervised: true``): in scope, the counterfactual model
   answers ``"{edit prompt} {edit target} " + x`` for the nearest edit; out of scope, the base
   model answers ``x``.

Training (``kedit train --method serac``) fits both parts on batches of training edits:
``l_cntr`` is the counterfactual model's NLL of each edit's target on its prompt and
paraphrases, each given its own edit; ``l_cls`` is the balanced binary cross-entropy of the
classifier (``losses.py``: the mean loss of the positive pairs plus that of the negative pairs),
positives the pairs (edit, one of its paraphrases), negatives (edit, one of its unrelated
prompts); ``loss = cedit * l_cntr + cloc * l_cls``, Adam at ``lr``, clipped.

Deliberate differences from the reference:

* the classifier is all-MiniLM-L6-v2, mean-pooled and L2-normalised (the sentence embedding that
  model defines), kedit's offline encoder; the reference fine-tunes distilbert-base-cased's CLS
  vector (its sentence-transformers branch reads ``pooler_output``, a BERT's tanh-projected
  CLS, not that model's sentence embedding: not copied). ``classifier="tiny"`` is a small
  random BERT over the model's own tokenizer, for the unit tests.
* the counterfactual model is a trainable copy of the base model (the reference uses a smaller
  model of the family: t5-small, or EasyEdit's gpt2 and llama-160m), kept in float32 whatever
  the base's dtype, so that steps of ``lr = 1e-5`` are not rounded away.
* the classifier's key of an edit is its prompt; for GPT models the reference cuts the last
  word of "prompt label" (``rsplit(" ", 1)``, which leaves a multi-word label partly in the key)
  and appends a second ``[SEP]`` (EasyEdit does the same, choosing by the model's name): not
  copied.
* ``l_cntr`` also scores the edit prompt itself (kedit's meta-learning objective; the reference
  scores the rephrasings only); negatives are each edit's own unrelated prompts (CounterFact's
  neighbourhood prompts, i.e. hard negatives; the reference draws one NQ question per edit).
* dropout 0 (``config.yaml``) by keeping both parts in evaluation mode; ``scale`` is a buffer
  that is never trained (the reference leaves it out of ``outer_parameters``); ``edit_acc`` is
  the teacher-forced token accuracy (the reference: whole-sequence accuracy).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._grads import target_accuracy, target_batch, target_logits, target_nll
from kedit.methods._hypernet import Objective, TrainingExample
from kedit.methods._serac_lm import IN_SCOPE, SERACLM, EditMemory, ScopeClassifier, fact_text
from kedit.methods._trained import TrainedConfig, TrainedMethod
from kedit.methods.edit import Edit
from kedit.model.arch import text_config
from kedit.model.lm import as_language_model, hf_module
from kedit.model.tokens import join_target
from kedit.types import EditRequest

log = logging.getLogger(__name__)

EPS = torch.finfo(torch.float32).eps
#: a module's hooks, which a deep copy would share with the model
HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass(kw_only=True)
class SERACConfig(TrainedConfig):
    """SERAC hyperparameters (defaults: ``config/alg/rep.yaml`` and ``config/config.yaml`` of
    ``eric-mitchell/serac``; ``max_steps``: EasyEdit's ``hparams/TRAINING/SERAC/*.yaml``).

    Args:
        classifier: the scope classifier's encoder: ``minilm`` (all-MiniLM-L6-v2, pretrained)
            or ``tiny`` (a small random BERT over the model's tokenizer, for tests).
        counterfactual: the counterfactual model: ``copy`` (a trainable copy of the model).
        cedit: weight of the counterfactual model's NLL.
        cloc: weight of the classifier's balanced cross-entropy.
    """

    classifier: Literal["minilm", "tiny"] = "minilm"
    counterfactual: Literal["copy"] = "copy"
    cedit: float = 0.1
    cloc: float = 1.0
    lr: float = 1e-5  # rep.yaml
    batch_size: int = 2  # config.yaml
    accumulate: int = 10  # config.yaml: accumulate_bs
    val_size: int = 500  # config.yaml: val_steps
    max_steps: int = 100_000  # EasyEdit: max_iters
    val_every: int = 5_000  # config.yaml: val_interval
    patience: int = 40_000  # config.yaml: early_stop_patience

    def validate(self) -> None:
        super().validate()
        if self.classifier not in ("minilm", "tiny"):
            raise ValueError(f"classifier is 'minilm' or 'tiny', not {self.classifier!r}")
        if self.counterfactual != "copy":
            raise ValueError(
                f"counterfactual is 'copy' (the edited model's copy), not {self.counterfactual!r}"
            )
        if self.cedit < 0 or self.cloc < 0:
            raise ValueError("cedit and cloc must not be negative")


def balanced_bce(logsims: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """``mean_pos(-log p) + mean_neg(-log(1 - p))`` with ``p = exp(logsims)``: each class weighs
    the same whatever its count; a class without pairs adds nothing (``losses.py``)."""
    pos = -logsims[positive]
    neg = -torch.log((-torch.expm1(logsims[~positive])).clamp_min(EPS))
    zero = logsims.new_zeros(())
    return (pos.mean() if pos.numel() else zero) + (neg.mean() if neg.numel() else zero)


class SERACEditor(nn.Module):
    """What ``kedit train`` fits and checkpoints: the scope classifier and the counterfactual
    model. Tied weights of the copy (input and output embeddings) are stored once."""

    def __init__(self, model: nn.Module, config: SERACConfig) -> None:
        super().__init__()
        self.classifier = ScopeClassifier(config.classifier, text_config(model).vocab_size)
        counterfactual = copy.deepcopy(model).float()
        for module in counterfactual.modules():  # hooks present on the model stay its own
            for hooks in HOOKS:
                getattr(module, hooks).clear()
        for param in counterfactual.parameters():
            param.requires_grad_(True)
            param.grad = None
        self.counterfactual = counterfactual
        self.train()

    def train(self, mode: bool = True) -> SERACEditor:
        """Dropout 0 (``config.yaml``): both parts always run in evaluation mode."""
        super().train(mode)
        self.classifier.eval()
        self.counterfactual.eval()
        return self

    def _aliases(self) -> dict[str, str]:
        """State names that share a tensor with an earlier name (tied embeddings)."""
        seen: dict[int, str] = {}
        aliases = {}
        named = [*self.named_parameters(remove_duplicate=False)]
        for name, tensor in [*named, *self.named_buffers(remove_duplicate=False)]:
            if id(tensor) in seen:
                aliases[name] = seen[id(tensor)]
            else:
                seen[id(tensor)] = name
        return aliases

    def state_dict(self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for alias in self._aliases():
            state.pop(prefix + alias, None)
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        state = dict(state_dict)
        for alias, source in self._aliases().items():
            if source in state:
                state.setdefault(alias, state[source])
        return super().load_state_dict(state, strict=strict, assign=assign)


class SERAC(TrainedMethod):
    """Edit memory, scope classifier and counterfactual model around an unchanged model."""

    name = "serac"
    display_name = "SERAC"
    paper = "Mitchell et al. 2022"
    family = "external-memory"
    config_cls = SERACConfig
    supports_batch = True
    reads_context = True
    curve_panels = (
        ("validation loss (cedit*NLL + cloc*BCE)", (("loss", None),)),
        ("counterfactual model: edit token accuracy", (("edit_acc", None),)),
        (
            "scope classifier accuracy",
            (("cls_acc", "balanced"), ("cls_pos_acc", "in scope"), ("cls_neg_acc", "out of scope")),
        ),
    )

    def build_editor(self, model: nn.Module) -> SERACEditor:
        editor = SERACEditor(hf_module(model), self.config)
        log.info(
            "serac: classifier of %d weights, counterfactual model of %d",
            sum(p.numel() for p in editor.classifier.parameters()),
            sum(p.numel() for p in editor.counterfactual.parameters()),
        )
        return editor

    def objective(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        editor: nn.Module,
    ) -> Objective:
        """``cedit * l_cntr + cloc * l_cls`` (the base model takes no part)."""
        assert isinstance(editor, SERACEditor)
        cfg, device = self.config, editor.classifier.scale.device
        # 1. the counterfactual model on each prompt and paraphrase, given its own edit
        rows = [
            (join_target(fact_text(e.request), prompt), e.request.target_new)
            for e in examples
            for prompt in (e.request.text, *e.paraphrases)
        ]
        batch = target_batch(tok, rows, device)
        logits = target_logits(editor.counterfactual, batch)  # (rows, keep, vocab)
        l_cntr = target_nll(logits, batch)
        # 2. the classifier on (edit, paraphrase) and (edit, unrelated prompt) pairs
        pairs = [(i, p, True) for i, e in enumerate(examples) for p in e.paraphrases]
        pairs += [(i, p, False) for i, e in enumerate(examples) for p, _ in e.locality]
        stats: dict[str, float] = {}
        loss = cfg.cedit * l_cntr
        if pairs:
            owners, queries, positive = (list(column) for column in zip(*pairs))
            classifier = editor.classifier
            embedded = classifier.embed([e.request.text for e in examples] + queries, tok)
            keys, found = embedded[: len(examples)], embedded[len(examples) :]  # (n, d), (q, d)
            logsims = classifier.pair_logsims(keys[owners], found)  # (q,)
            labels = torch.tensor(positive, device=logsims.device)
            l_cls = balanced_bce(logsims, labels)
            loss = loss + cfg.cloc * l_cls
            stats.update(cls_loss=l_cls.item(), **_classifier_accuracy(logsims, labels))
        stats.update(
            edit_nll=l_cntr.item(), edit_acc=target_accuracy(logits, batch), loss=loss.item()
        )
        return Objective(loss, stats)

    def apply(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        hf_model = hf_module(model)
        editor, meta = self.editor_for(hf_model)
        assert isinstance(editor, SERACEditor)
        memory = edit.state.get(("serac", "memory"))
        if memory is None:  # a wrapper edited outside a session keeps its edits
            memory = edit.state[("serac", "memory")] = EditMemory()
            if isinstance(model, SERACLM):
                memory.facts = list(model.facts)
        edit.save_state(memory)
        memory.add(requests, editor.classifier, tok)
        base = model.base if isinstance(model, SERACLM) else as_language_model(model, tok)
        assert memory.keys is not None
        wrapper = SERACLM(
            base, hf_model, editor.classifier, editor.counterfactual, tok, memory.facts, memory.keys
        )
        edit.wrap(wrapper)
        edit.info.update(memory_edits=len(memory.facts), editor_steps=meta.get("steps"))


def _classifier_accuracy(logsims: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    """Share of pairs classified right (``sim > 0.5`` for positives, not for negatives); with
    both kinds, the mean of the two shares (the reference's ``cls/acc``)."""
    hits = (logsims.detach().exp() > IN_SCOPE) == positive
    shares = {}
    if positive.any():
        shares["cls_pos_acc"] = hits[positive].float().mean().item()
    if (~positive).any():
        shares["cls_neg_acc"] = hits[~positive].float().mean().item()
    return {"cls_acc": sum(shares.values()) / len(shares), **shares}
