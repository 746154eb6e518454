"""KE: KnowledgeEditor, a hypernetwork conditioned on the fact that masks the edit's gradient.

De Cao, Aziz, Titov. "Editing Factual Knowledge in Language Models", EMNLP 2021.
https://arxiv.org/abs/2104.08164 (reference: ``nicola-decao/KnowledgeEditor``,
``src/models/one_shot_learner.py`` and ``src/models/bart_seq2seq_augmented_kilt.py``; its GPT
port in ``kmeng01/rome``, ``baselines/mend/algs/efk.py`` and ``baselines/mend/efk_main.py``)

One edit (one request: the condition encodes one fact, as in the port, which raises on more):

1. The condition ``c = tanh(Linear(biLSTM(embeddings of the edit text)))``; the text is the
   prompt followed by the new answer: the port's condition (the edit's own input), which holds
   the question and the new answer at no extra cost. The original's ``"{old prediction} >>
   {new answer} || {question}"`` was made for a seq2seq model and needs a generation first.
2. One forward and backward pass of the target NLL (labels on the new answer) gives every edited
   matrix's weight gradient ``G = dL/dW = sum_t d_t k_t^T`` ``(d_out, d_in)``.
3. Per edited matrix, an MLP (weight-normed Linear, tanh, weight-normed Linear) maps ``c`` to
   ``a_col, b_col (d_in)``, ``a_row, b_row (d_out)`` and ``eta``;
   ``A = softmax(a_row) a_col^T`` and ``B = softmax(b_row) b_col^T`` are rank one.
4. ``W <- W + dW`` with ``dW = -max_scale * sigmoid(eta) * (A * G + B)``.

Training (``kedit train --method ke``) is the paper's constrained problem: minimise
``cedit * NLL(edit and paraphrases after the edit)`` subject to ``KL(pre || post on unrelated
prompts) <= margin``, as the Lagrangian ``cedit * nll + multiplier * (kl - margin)``. The
multiplier (initially 1) follows the ascent direction of its gradient and is clipped at 0 after
every step; the margin starts at ``margin_kl_max`` and shrinks by 0.8 (not below
``margin_kl_min``) after each validation whose edit accuracy is above 0.9. Centered RMSprop,
``lr`` for the network, ``lr_multiplier`` for the multiplier, a linear warm-up over
``warmup_steps``. The reported ``loss`` (what validation keeps the best editor by, and early
stopping watches) is the primal ``cedit * nll + cloc * kl``, not the Lagrangian, whose value
depends on where the multiplier is.

Deliberate differences from the reference code:

* Sign and start: the reference *adds* ``dW`` and starts from a random MLP, so an untrained
  editor writes noise of either sign. kedit subtracts it and starts the last layer at zero
  (weight-norm gains 0, biases 0 but ``a_col = 1``): an untrained KE is the gradient step
  ``-max_scale / (2 d_out) * G`` (MEND's identity start); training moves every part.
* Condition embeddings: a trainable copy of the LM's input embeddings (the reference's,
  ``embeddings="copy"``): for SmolLM2-135M 28.3M of the editor's 56.7M parameters (227 MB in
  fp32; one training step measured +0.92 GB with gradients and RMSprop's two averages).
  ``embeddings="frozen"`` reads the LM's own embeddings instead (28.3M parameters, for large
  vocabularies: a copy of Llama-3-8B's is 525M). The reference's ``padding_idx=0`` is not copied:
  it froze token 0's row (GPT-2's ``"!"``, BART's ``<s>``), and one unpadded text needs no pad.
* The multiplier's ascent: the reference negates its gradient with a tensor hook; here the
  Lagrangian reads ``2 * multiplier.detach() - multiplier`` (same value, reversed gradient),
  which leaves no hook on the parameter to survive copies and reloads.
* Orientation: the port builds ``A`` and ``B`` in the stored layout, so on GPT-2's Conv1D
  ``(in, out)`` weights its softmax runs over the inputs; kedit builds every shift as
  ``(d_out, d_in)`` of ``v = W k`` (the softmax over the output rows, as the original on
  ``nn.Linear``, in every layout) and lays it out per module (``Shift.delta``).
* Objective: the plain target NLL (the original smooths labels by 0.1, the port does not); the
  KL constraint on the example's unrelated prompts (the original: the other items of its batch
  of 64); the margin tightened on the teacher-forced edit accuracy of the validation set (the
  original: exact-match generation on its dev set). ``cedit`` defaults to 1, the original's
  unweighted edit loss; ``cloc`` only weighs the reported primal loss.
* Schedule: warm-up only; the original also decays linearly to 0 at 200k steps, which would tie
  the editor to ``max_steps`` (not a key field, and early stopping ends runs sooner). The
  trainer clips gradients at ``grad_clip`` (Lightning's default in the original clips nothing).
* Only the chosen MLP matrices are edited (the port's last three MLPs), not every non-bias,
  non-norm parameter as in the original's BART setup.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from transformers import PreTrainedTokenizerBase

from kedit.methods._grads import (
    keys_and_gradients,
    weight_gradients,
)
from kedit.methods._hypernet import Objective, Shift, TrainingExample
from kedit.methods._meta import MetaConfig, MetaMethod
from kedit.methods.base import batch_error
from kedit.model.lm import hf_module, model_device
from kedit.model.tokens import encode_prompt_target
from kedit.types import EditRequest

log = logging.getLogger(__name__)

#: the margin shrinks by this factor after a validation whose edit accuracy is above ACCURATE
MARGIN_DECAY, ACCURATE = 0.8, 0.9


@dataclass(kw_only=True)
class KEConfig(MetaConfig):
    """KE hyperparameters. Network sizes and ``max_scale``: the GPT port
    (``kmeng01/rome`` ``baselines/mend/algs/efk.py``: ``OneShotLearner`` hidden 512, condition
    768, and ``EFK`` passes ``max_scale=1``); training: the original
    (``nicola-decao/KnowledgeEditor`` ``src/models/bart_seq2seq_augmented_kilt.py`` arguments);
    edited modules: the port's last three MLPs (``c_fc`` and ``c_proj``).

    Args:
        hidden_dim: width of the biLSTM (each direction) and of each matrix's MLP.
        condition_dim: size of the condition vector ``c``.
        max_scale: bound of the shift's scale ``max_scale * sigmoid(eta)``.
        embeddings: ``"copy"``: a trainable copy of the LM's input embeddings encodes the
            condition (the reference); ``"frozen"``: the LM's own, untrained (large vocabularies).
        lr_multiplier: learning rate of the Lagrange multiplier (``--lr_alpha``).
        warmup_steps: steps of the linear learning-rate warm-up (0: none).
        margin_kl_max: the KL margin at the start.
        margin_kl_min: the margin never shrinks below this.
    """

    hidden_dim: int = 512
    condition_dim: int = 768
    max_scale: float = 1.0
    embeddings: Literal["copy", "frozen"] = "copy"
    lr: float = 3e-4
    lr_multiplier: float = 1e-1
    warmup_steps: int = 1000
    margin_kl_max: float = 1e-3
    margin_kl_min: float = 1e-5
    cedit: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.batch_size != 1:
            raise ValueError(
                "KE edits one request at a time (its condition encodes one fact): set batch_size=1 "
                "and average over more edits with accumulate=N"
            )
        if self.hidden_dim < 1 or self.condition_dim < 1:
            raise ValueError("hidden_dim and condition_dim must be at least 1")
        if self.max_scale <= 0 or self.lr_multiplier <= 0 or self.warmup_steps < 0:
            raise ValueError("max_scale and lr_multiplier must be positive, warmup_steps >= 0")
        if not 0 < self.margin_kl_min <= self.margin_kl_max:
            raise ValueError("the KL margins need 0 < margin_kl_min <= margin_kl_max")


class ConditionEncoder(nn.Module):
    """``c = tanh(Linear([h_forward_last; h_backward_first]))`` of a biLSTM over the condition
    text's embeddings (the reference's ``LSTMConditioner``)."""

    def __init__(self, d_embed: int, hidden: int, condition: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_embed, hidden, batch_first=True, bidirectional=True)
        self.project = nn.Linear(2 * hidden, condition)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:  # (1, tokens, d_embed)
        _, (last, _) = self.lstm(embedded)  # (2, 1, hidden): both directions' final states
        return torch.tanh(self.project(torch.cat([last[0], last[1]], -1)))  # (1, condition)


class MaskedGradient(nn.Module):
    """One matrix's conditioner (the reference's ``ConditionedParameter``): ``c`` -> the rank-one
    masks and scale of ``dW = -max_scale * sigmoid(eta) * (A * G + B)``."""

    def __init__(
        self, d_out: int, d_in: int, condition: int, hidden: int, max_scale: float
    ) -> None:
        super().__init__()
        self.d_out, self.d_in, self.max_scale = d_out, d_in, max_scale
        last = weight_norm(nn.Linear(hidden, 2 * (d_in + d_out) + 1))
        self.net = nn.Sequential(weight_norm(nn.Linear(condition, hidden)), nn.Tanh(), last)
        with torch.no_grad():  # start as a gradient step: outputs = biases, a_col = 1
            last.parametrizations.weight.original0.zero_()
            last.bias.zero_()
            last.bias[:d_in] = 1.0

    def outputs(self, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``a_col (d_in), a_row (d_out), b_col (d_in), b_row (d_out), eta ()`` for ``c``."""
        d_in, d_out = self.d_in, self.d_out
        a_col, a_row, b_col, b_row, eta = self.net(condition)[0].split(
            [d_in, d_out, d_in, d_out, 1]
        )
        return a_col, a_row, b_col, b_row, eta[0]

    def forward(self, condition: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        a_col, a_row, b_col, b_row, eta = self.outputs(condition)
        a = rank_one(a_row, a_col)  # (d_out, d_in)
        b = rank_one(b_row, b_col)
        return -self.max_scale * torch.sigmoid(eta) * (a * grad + b)  # (d_out, d_in)


def rank_one(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``softmax(row) col^T`` ``(d_out, d_in)``: column ``j`` is ``col_j`` spread over the rows
    by the softmax."""
    return torch.softmax(row, -1)[:, None] * col[None, :]


class KEEditor(nn.Module):
    """The condition encoder, one :class:`MaskedGradient` per edited matrix, the Lagrange
    multiplier, and the training state that checkpoints with it (margin, steps)."""

    def __init__(
        self,
        paths: Sequence[str],
        shapes: Sequence[tuple[int, int]],
        embedding: torch.Tensor,
        config: KEConfig,
    ) -> None:
        super().__init__()
        self.embedding = (  # a trainable copy, or None: the LM's own, read when encoding
            nn.Embedding.from_pretrained(embedding.detach().float().clone(), freeze=False)
            if config.embeddings == "copy"
            else None
        )
        self.encoder = ConditionEncoder(embedding.shape[1], config.hidden_dim, config.condition_dim)
        self.masks = nn.ModuleDict(
            {
                _key(path): MaskedGradient(
                    d_out, d_in, config.condition_dim, config.hidden_dim, config.max_scale
                )
                for path, (d_out, d_in) in zip(paths, shapes)
            }
        )
        self.multiplier = nn.Parameter(torch.ones(()))  # the reference's alpha_kl, initially 1
        self.register_buffer("margin", torch.tensor(float(config.margin_kl_max)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def condition(self, ids: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """``c`` ``(1, condition_dim)`` of the condition text's token ids ``(1, tokens)``."""
        if self.embedding is not None:
            embedded = self.embedding(ids)
        else:
            embedded = model.get_input_embeddings()(ids).detach().float()
        return self.encoder(embedded)  # (1, condition_dim)


class KE(MetaMethod):
    """KnowledgeEditor: a fact-conditioned hypernetwork that masks the gradient."""

    name = "ke"
    display_name = "KE"
    paper = "De Cao et al. 2021"
    config_cls = KEConfig
    supports_batch = False

    def build_editor(self, model: nn.Module) -> KEEditor:
        model = hf_module(model)
        paths, shapes = self.module_paths(model), self.module_shapes(model)
        return KEEditor(paths, shapes, model.get_input_embeddings().weight, self.config)

    def shifts(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        editor: nn.Module,
    ) -> dict[str, Shift]:
        assert isinstance(editor, KEEditor)
        if len(requests) != 1:
            raise ValueError(batch_error(self.name))
        request, paths = requests[0], self.module_paths(model)
        ids = encode_prompt_target(tok, request.text, request.target_new).ids  # the port's cond
        condition = editor.condition(torch.tensor([ids], device=model_device(model)), model)
        pair = [(request.text, request.target_new)]
        keys, grads = keys_and_gradients(model, tok, pair, paths, 1, tokens="all")
        weight_grads = weight_gradients(keys, grads)  # (d_out, d_in) per path
        return {p: Shift(dense=editor.masks[_key(p)](condition, weight_grads[p])) for p in paths}

    # -- training: the Lagrangian, the multiplier's ascent, the margin, the warm-up -------------

    def objective(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        editor: nn.Module,
    ) -> Objective:
        """``cedit * nll + multiplier * (kl - margin)``, with the gradient of the multiplier
        reversed (ascent); the stats' ``loss`` is the primal ``cedit * nll + cloc * kl``."""
        assert isinstance(editor, KEEditor)
        model, cfg = hf_module(model), self.config
        shifts = self.shifts(model, tok, [e.request for e in examples], editor)
        primal = self.post_edit_objective(model, tok, examples, shifts)
        nll, stats = primal.parts["nll"], primal.stats
        kl = primal.parts.get("kl", torch.zeros((), device=nll.device))
        multiplier = editor.multiplier
        ascent = 2 * multiplier.detach() - multiplier  # value: the multiplier; gradient: reversed
        lagrangian = cfg.cedit * nll + ascent * (kl - editor.margin)
        stats.update(
            lagrangian=lagrangian.item(),
            multiplier=multiplier.item(),
            margin=editor.margin.item(),
        )
        return Objective(lagrangian, stats)

    def optimiser(self, editor: nn.Module) -> torch.optim.Optimizer:
        """Centered RMSprop: ``lr`` on the network, ``lr_multiplier`` on the multiplier (the
        original's two groups), at the warm-up's rate for the editor's next step."""
        assert isinstance(editor, KEEditor)
        network = [p for name, p in editor.named_parameters() if name != "multiplier"]
        optimiser = torch.optim.RMSprop(
            [
                {"params": network, "lr": self.config.lr},
                {"params": [editor.multiplier], "lr": self.config.lr_multiplier},
            ],
            centered=True,
        )
        self._warm_up(editor, optimiser)
        return optimiser

    def after_step(self, editor: nn.Module, optimiser: torch.optim.Optimizer) -> None:
        """Clip the multiplier at 0, count the step, and set the next step's warm-up rate."""
        assert isinstance(editor, KEEditor)
        with torch.no_grad():
            editor.multiplier.clamp_(min=0.0)
        editor.steps += 1
        self._warm_up(editor, optimiser)

    def after_validation(self, editor: nn.Module, stats: Mapping[str, float]) -> None:
        """Tighten the KL margin by 0.8 (not below ``margin_kl_min``) once edits succeed."""
        assert isinstance(editor, KEEditor)
        if stats.get("edit_acc", 0.0) > ACCURATE:
            tighter = max(editor.margin.item() * MARGIN_DECAY, self.config.margin_kl_min)
            editor.margin.fill_(tighter)
            log.info("ke: edit accuracy %.3f, KL margin now %.3g", stats["edit_acc"], tighter)

    def warmup_factor(self, steps: int) -> float:
        """The share of the learning rates used by step ``steps + 1``."""
        warmup = self.config.warmup_steps
        return 1.0 if warmup == 0 else min(1.0, (steps + 1) / warmup)

    def _warm_up(self, editor: KEEditor, optimiser: torch.optim.Optimizer) -> None:
        # the step count is a buffer, so a resumed run warms up exactly as an uninterrupted one
        factor = self.warmup_factor(int(editor.steps))
        bases = (self.config.lr, self.config.lr_multiplier)
        for group, base in zip(optimiser.param_groups, bases):
            group["lr"] = base * factor


def _key(path: str) -> str:
    """A module path as a ``ModuleDict`` key (no dots)."""
    return path.replace(".", "__")
