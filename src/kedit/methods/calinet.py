"""CaliNET: calibration memory slots beside a feed-forward network, trained on many facts.

Dong, Dai, Song, Xu, Sui, Li. "Calibrating Factual Knowledge in Pretrained Language Models",
Findings of EMNLP 2022. https://arxiv.org/abs/2210.03329 (code: github.com/dqxiu/CaliNet)

1. Contrastive knowledge assessment (CKA, ``cka/assessing_score.py``): for each fact,
   ``CKA = P(o | the fact's prompt) / mean P(o | 3 prompts of other relations about s)``, the
   probability of the object's first token. With ``cka_threshold`` set (the paper's 1.0), a
   fact whose CKA is above it counts as held by the model and is not trained on.
2. Calibration (``src/modeling_t5.py`` ``T5DenseReluDenseEx``): beside the FFN of the chosen
   blocks sit ``ex_size`` extra slots, ``FFN'(x) = FFN(x) + W_o_ex act(W_i_ex x)``, with the
   FFN's own activation and, for a gated FFN, a gate (``T5DenseGatedGeluDenseEx``). Only the
   slots are trained (``src/trainer.py`` gives every other parameter ``lr=0``), on the
   teacher-forced loss of the objects of all the facts at once, over paraphrases of each.

Where the slots sit: the reference's ``kb_layer=11``, the last of t5-base's 12 decoder blocks
(``train_calinet/bash/t5_train_kb_f.sh``), scaled to other depths by ``depth``; ``layers`` lists
blocks instead (``kb_layer`` is a list there too). The port to causal LMs is kedit's: the slots
read the MLP's input (T5's FFN input is its normed hidden state, as a causal LM's MLP input is).

Deliberate differences from the reference:

* the output slots start at zero, so fresh slots change nothing (the reference leaves
  ``wo_ex`` at ``nn.Linear``'s random initialisation, which T5's ``_init_weights`` misses);
  the input slots take ``nn.Linear``'s initialisation, U(-1/sqrt(d), 1/sqrt(d)), seeded;
* paraphrases: kedit gives a method no evaluation paraphrases; each fact is trained on its
  prompt behind the seeded context prefixes of ``kedit.methods._templates`` (as ROME), in
  place of the reference's ParaRel paraphrase templates of each relation;
* optimiser: ``transformers.Adafactor`` as the reference's trainer builds it
  (``scale_parameter=False, relative_step=False``), lr 1e-2 constant, but each step is one
  pass over every row of every fact (micro-batches accumulated) rather than the reference's
  5000 steps of 2048 sampled rows; Adafactor's update is normalised, so the lr needs no
  scaling with the batch. Training stops early once every target token of every row is the
  argmax, and runs in eval mode (the reference keeps T5's dropout on the frozen model);
* CKA: causal next-token probabilities in place of T5's ``<extra_id_0>`` slot. The reference
  contrasts each relation with its own three hand-written "wrong" templates (``relations.jsonl``,
  P19's "[X] visited [Y]"); kedit's requests carry no relation id, so three other relations of
  :data:`RELATIONS` are drawn, seeded per fact (one whose wording begins the prompt, or the
  reverse, is the fact's own). A counterfactual target of the right type then scores above 1
  even at no probability (SmolLM2, CounterFact's first five: CKA 2.3 to 127 for four with
  P < 0.04): it tests the object's fit to the relation, not the fact, so by default every
  requested fact is calibrated, the CKA reported (``cka_threshold: 1.0``: the paper's gate);
* sequential edits: a later CaliNET edit adds ``ex_size`` fresh slots beside the same FFN and
  trains only those; earlier slots stay as they were (the reference calibrates once).

``fired`` is an indicator, not a router (CaliNET always runs): whether the slots' output at a
row's last position is larger than ``fired_ratio`` of the FFN's output there.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.activations import ACT2FN
from transformers.optimization import Adafactor

from kedit.config import MethodConfig
from kedit.methods._pararel import RELATIONS
from kedit.methods._routing import RoutedLM
from kedit.methods._suffix import step_logits
from kedit.methods._templates import context_templates, fill, flatten
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, num_layers, text_config, weight_out_in
from kedit.model.hooks import frozen
from kedit.model.lm import HFLanguageModel, LanguageModel, hf_module, model_device, select_logits
from kedit.model.tokens import PromptTarget, encode_prompt_target, pad, pad_id
from kedit.types import EditRequest

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class CaliNETConfig(MethodConfig):
    """CaliNET hyperparameters (defaults: dqxiu/CaliNet ``train_calinet/bash/t5_train_kb_f.sh``
    and ``cka/assessing_score.py``).

    Args:
        layers: blocks whose FFN gets slots; None: the block at ``depth``.
        depth: the block as a fraction of the model's depth, ``round(depth * layers)`` (t5-base's
            decoder block 11 of 12, ``kb_layer=11``), used when ``layers`` is None.
        ex_size: calibration slots added per block and edit (``--ex_size 64``).
        lr: Adafactor learning rate, constant (``--learning_rate 1e-2``).
        num_steps: most optimiser steps, each a pass over every row of every fact.
        micro_batch: rows per forward pass; gradients accumulate to one step per pass.
        context_template_length_params: ``[n_tokens, count]`` of the sampled prefixes each fact
            is trained behind (besides its bare prompt).
        cka_threshold: facts whose CKA is above it are not calibrated (the paper's gate, 1.0);
            None (default) calibrates every requested fact, the CKA still reported.
        n_negative: negative relations per fact in the CKA (``P_false /= 3``).
        fired_ratio: ``fired`` when the slots' output norm at the last position exceeds this
            fraction of the FFN output's norm there.
    """

    layers: list[int] | None = None
    depth: float = 11 / 12
    ex_size: int = 64
    lr: float = 1e-2
    num_steps: int = 200
    micro_batch: int = 64
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10]])
    cka_threshold: float | None = None
    n_negative: int = 3
    fired_ratio: float = 0.01

    def validate(self) -> None:
        if self.layers is not None and not self.layers:
            raise ValueError("layers lists the blocks that get slots; give at least one, or None")
        if not 0 < self.depth <= 1:
            raise ValueError(
                f"depth is a fraction of the model's depth in (0, 1], got {self.depth}"
            )
        if self.ex_size < 1 or self.num_steps < 1 or self.micro_batch < 1:
            raise ValueError("ex_size, num_steps and micro_batch must be at least 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if any(len(p) != 2 or min(p) < 1 for p in self.context_template_length_params):
            raise ValueError("context_template_length_params holds [n_tokens, count] pairs >= 1")
        if self.cka_threshold is not None and self.cka_threshold <= 0:
            raise ValueError("cka_threshold is a positive ratio (the paper's ~1), or None for all")
        if not 1 <= self.n_negative < len(RELATIONS):
            raise ValueError(f"n_negative must be in [1, {len(RELATIONS) - 1}]")
        if self.fired_ratio < 0:
            raise ValueError(f"fired_ratio must be >= 0, got {self.fired_ratio}")

    def blocks(self, model: nn.Module) -> list[int]:
        """The blocks of ``model`` that get slots: ``layers``, or the block at ``depth``."""
        if self.layers is not None:
            spec = arch_of(model)
            return sorted({spec.check_layer(model, layer) for layer in self.layers})
        depth = num_layers(model)
        return [min(depth - 1, round(self.depth * depth))]


class CalibrationSlots(nn.Module):
    """An FFN with calibration slots beside it: ``ffn(x) + act(x W_g^T) * (x W_i^T) W_o`` (gated)
    or ``ffn(x) + act(x W_i^T) W_o``; the slots are fp32 and frozen outside training."""

    def __init__(self, ffn: nn.Module, d_model: int, activation: str, gated: bool) -> None:
        super().__init__()
        self.ffn = ffn
        self.activation, self.gated = activation, gated
        self.act = ACT2FN[activation]
        empty = next(ffn.parameters()).new_zeros(0, d_model, dtype=torch.float32)
        self.w_in, self.w_gate, self.w_out = (_frozen(empty) for _ in range(3))  # (slots, d_model)
        self.fired_ratio = 0.01
        #: whether the slots acted on each row of the latest pass (see ``methods._routing``)
        self.fired: torch.Tensor | None = None

    @property
    def n_slots(self) -> int:
        return self.w_in.shape[0]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.ffn(x, *args, **kwargs)  # (batch, seq, d_model)
        if self.n_slots == 0:
            self.fired = torch.zeros(x.shape[0], dtype=torch.bool)
            return out
        h = x.float() @ self.w_in.T  # (batch, seq, slots)
        h = self.act(x.float() @ self.w_gate.T) * h if self.gated else self.act(h)
        delta = h @ self.w_out  # (batch, seq, d_model)
        last = delta[:, -1].detach().norm(dim=-1)  # (batch,)
        self.fired = (last > self.fired_ratio * out[:, -1].detach().float().norm(dim=-1)).cpu()
        return out + delta.to(out.dtype)

    def add_slots(self, n: int, generator: torch.Generator) -> int:
        """Append ``n`` fresh slots (output rows zero: a no-op); returns the first new index."""
        first, d_model = self.n_slots, self.w_in.shape[1]
        bound = 1 / math.sqrt(d_model)  # nn.Linear's initialisation, as the reference's wi_ex

        def grow(param: nn.Parameter, rows: torch.Tensor) -> nn.Parameter:
            return _frozen(torch.cat([param.detach(), rows.to(param.device)]))

        uniform = lambda: (torch.rand(n, d_model, generator=generator) * 2 - 1) * bound  # noqa: E731
        self.w_in = grow(self.w_in, uniform())
        if self.gated:
            self.w_gate = grow(self.w_gate, uniform())
        self.w_out = grow(self.w_out, torch.zeros(n, d_model))
        return first

    def slot_params(self) -> list[nn.Parameter]:
        return [self.w_in, self.w_out] + ([self.w_gate] if self.gated else [])

    # slot state, for exact undo ------------------------------------------------------------

    def get_state(self) -> tuple[torch.Tensor, ...]:
        return tuple(p.detach().clone() for p in (self.w_in, self.w_gate, self.w_out))

    def set_state(self, state: tuple[torch.Tensor, ...]) -> None:
        self.w_in, self.w_gate, self.w_out = (_frozen(t.clone()) for t in state)


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def negative_prompts(request: EditRequest, n: int, seed: int) -> list[str]:
    """``n`` prompts of other relations about the request's subject, seeded per fact."""

    def words(text: str) -> str:
        return " ".join(text.lower().split())

    own = words(request.prompt)
    others = [t for _, t in RELATIONS if not (own.startswith(words(t)) or words(t).startswith(own))]
    chosen = random.Random(f"{seed}:{request.prompt}:{request.subject}").sample(others, n)
    return [t.format(request.subject) for t in chosen]


def contrastive_assessment(
    lm: LanguageModel,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    n_negative: int,
    seed: int,
) -> list[float]:
    """Each fact's CKA: P(target's first token | its prompt) / mean P(same | negatives)."""
    prompts, first = [], []
    for request in requests:
        prompts += [request.text, *negative_prompts(request, n_negative, seed)]
        first.append(encode_prompt_target(tok, request.text, request.target_new).target_ids[0])
    logprobs = lm.next_token_logprobs(prompts).double()  # (facts * (1 + n), vocab)
    scores = []
    for i, token in enumerate(first):
        rows = logprobs[i * (1 + n_negative) : (i + 1) * (1 + n_negative), token]  # (1 + n,)
        log_false = torch.logsumexp(rows[1:], 0) - math.log(n_negative)  # log mean P_false
        scores.append(math.exp(min(float(rows[0] - log_false), 700.0)))
    return scores


class CaliNET(EditMethod):
    """Calibration slots beside an FFN, trained on the facts the model does not hold."""

    name = "calinet"
    display_name = "CaliNET"
    paper = "Dong et al. 2022"
    family = "added-parameters"
    config_cls = CaliNETConfig
    supports_batch = True

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        cfg = self.config
        cka = self._assess(model, tok, requests)
        threshold = math.inf if cfg.cka_threshold is None else cfg.cka_threshold
        chosen = [r for r, score in zip(requests, cka) if score <= threshold]
        if chosen:
            with edit.unedited():  # cached under the unedited model's fingerprint
                groups = context_templates(model, tok, self.env, cfg.context_template_length_params)
            rows = [  # every fact's prompt behind every context template, then its target
                encode_prompt_target(tok, fill(t, r)[0], r.target_new)
                for r in chosen
                for t in flatten(groups)
            ]
            slots = self._add_slots(model, edit)
            edit.info.update(self._train(model, tok, slots, rows, min(cfg.blocks(model))))
        edit.info["calibrated"] = len(chosen)
        edit.info["facts"] = [
            {"prompt": r.text, "target": r.target_new, "calibrated": r in chosen}
            | {"cka_before": before, "cka_after": after}
            for r, before, after in zip(requests, cka, self._assess(model, tok, requests))
        ]
        parts = [m for m in model.modules() if isinstance(m, CalibrationSlots)]
        if parts:  # this edit's slots and any earlier edit's
            edit.wrap(RoutedLM(model, tok, parts))

    def _assess(
        self, model: nn.Module, tok: PreTrainedTokenizerBase, requests: Sequence[EditRequest]
    ) -> list[float]:
        lm = HFLanguageModel(model, tok)
        return contrastive_assessment(lm, tok, requests, self.config.n_negative, self.env.seed)

    def _add_slots(self, model: nn.Module, edit: Edit) -> list[tuple[CalibrationSlots, int]]:
        """Fresh slots beside the FFN of each chosen block (wrapping it on the first edit):
        each module with the index of its first new slot."""
        spec, cfg = arch_of(model), self.config
        generator = torch.Generator().manual_seed(self.env.seed)
        added = []
        for layer in cfg.blocks(model):
            path = spec.path("mlp", layer)
            slots = get_module(model, path)
            if not isinstance(slots, CalibrationSlots):
                d_model, gated = _ffn_shape(model, layer)
                slots = CalibrationSlots(slots, d_model, _activation(model), gated)
                edit.swap_module(model, path, slots)
            edit.save_state(slots)
            slots.fired_ratio = cfg.fired_ratio
            added.append((slots, slots.add_slots(cfg.ex_size, generator)))
        edit.info["layers"] = [spec.path("mlp", layer) for layer in cfg.blocks(model)]
        return added

    def _train(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        slots: list[tuple[CalibrationSlots, int]],
        rows: list[PromptTarget],
        first_block: int,
    ) -> dict[str, Any]:
        """Adafactor on the new slots, on the target tokens of all rows, until every target
        token is the argmax or ``num_steps``."""
        cfg = self.config
        params = [p for s, _ in slots for p in s.slot_params()]
        optimiser = Adafactor(params, lr=cfg.lr, scale_parameter=False, relative_step=False)
        n_tokens = sum(len(r.target_ids) for r in rows)
        loss, step = float("nan"), 0
        try:
            with frozen(model):
                for p in params:
                    p.requires_grad_(True)
                chunks = [
                    rows[i : i + cfg.micro_batch] for i in range(0, len(rows), cfg.micro_batch)
                ]
                passes = [_chunk_pass(model, tok, chunk, first_block) for chunk in chunks]
                for step in range(cfg.num_steps + 1):
                    optimiser.zero_grad()
                    loss, solved = 0.0, True
                    for forward, labels, _ in passes:
                        chunk_loss, chunk_solved = _target_loss(forward(), labels)
                        (chunk_loss / n_tokens).backward()
                        loss += chunk_loss.item() / n_tokens
                        solved = solved and chunk_solved
                    if solved or step == cfg.num_steps:
                        break
                    for s, first in slots:  # earlier edits' slots stay as they are
                        for p in s.slot_params():
                            p.grad[:first] = 0
                    optimiser.step()
        finally:
            for p in params:
                p.grad = None
        log.info("CaliNET: %d rows, %d steps, loss %.4f", len(rows), step, loss)
        fast = all(f for *_, f in passes)
        return {"steps": step, "loss": loss, "rows": len(rows), "suffix_pass": fast}


def _chunk_pass(
    model: nn.Module, tok: PreTrainedTokenizerBase, rows: Sequence[PromptTarget], first: int
) -> tuple[Callable[[], torch.Tensor], torch.Tensor, bool]:
    """What gives a micro-batch's logits at its last target positions (left-padded; the blocks
    below ``first`` passed once where that holds, ``_suffix``: the third value), and the labels
    they predict (-100 where none)."""
    batch = pad([r.ids for r in rows], pad_id(tok), left=True).to(model_device(model))
    keep = max(len(r.target_ids) for r in rows) + 1
    labels = torch.full((len(rows), keep - 1), -100, dtype=torch.long)  # (rows, keep - 1)
    for i, row in enumerate(rows):
        labels[i, keep - 1 - len(row.target_ids) :] = torch.tensor(row.target_ids)
    forward, fast = step_logits(
        model, batch.model_inputs(), first, lambda inputs: select_logits(model, inputs, keep)
    )
    return forward, labels.to(batch.input_ids.device), fast


def _target_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Summed cross-entropy of the target tokens (position t predicts t + 1), and whether each
    of them is the argmax."""
    predicting = logits[:, :-1].float()  # (rows, keep - 1, vocab)
    loss = F.cross_entropy(predicting.transpose(1, 2), labels, ignore_index=-100, reduction="sum")
    scored = labels != -100
    solved = bool((predicting.argmax(-1) == labels)[scored].all())
    return loss, solved


def _ffn_shape(model: nn.Module, layer: int) -> tuple[int, bool]:
    """The FFN's model width, and whether it is gated (its input projections are twice as wide
    as its output projection's input: Llama's gate + up, Phi-3's fused gate_up)."""
    spec = arch_of(model)
    d_out, d_inner = weight_out_in(get_module(model, spec.path("mlp_out", layer))).shape
    width = sum(weight_out_in(get_module(model, p)).shape[0] for p in spec.paths("mlp_in", layer))
    return d_out, width == 2 * d_inner


def _activation(model: nn.Module) -> str:
    """The name of the model's MLP activation, from its config."""
    config = text_config(model)
    for key in ("hidden_activation", "hidden_act", "activation_function"):
        name = getattr(config, key, None)
        if isinstance(name, str) and name in ACT2FN:
            return name
    raise ValueError(
        f"{type(model).__name__}'s config names no MLP activation kedit knows "
        "(hidden_act / activation_function)"
    )
