"""WISE: a side memory beside one FFN matrix, and a router between the two.

Wang, Li, Yao, Huang, Zhang, Xi, Chen, Zhang. "WISE: Rethinking the Knowledge Memory for Lifelong
Model Editing of Large Language Models", NeurIPS 2024. https://arxiv.org/abs/2405.14768
(reference: ``zjunlp/EasyEdit``, ``easyeditor/models/wise/{WISE.py,utils.py,merge/gta.py}``).

The main memory, one FFN matrix ``W``, never changes; the side memory ``W'`` starts as its copy.
``D`` is the mean over a row's tokens of ``||act(W'x) - act(Wx)||_2`` (``act``: the model's
hidden activation, on both layer outputs; the reference's ``euc``). Per edit (a batch: one loss):

1. rows: each request's prompt in each context template (``[[5,5],[10,5]]``) with its target,
   and one unrelated "loc" text per request;
2. ``n_iter`` SGD steps on ``CE(target) + [D_loc - D_edit + gamma]+ + [D_loc - alpha]+ +
   [beta - D_edit]+`` (a hinge: the mean of its positive entries), the gradient masked to the
   shard's random ``mask_ratio`` of entries, ``W'`` clamped to ``W +- norm_constraint``, the
   reference's early stop; the last step's mean ``D_edit`` is the edit's activation;
3. every ``save_freq`` edits ``W'`` is stored as a knowledge shard and a fresh copy of ``W``
   (new mask) begins; every ``merge_freq`` edits the last ``merge_freq / save_freq`` shards are
   TIES-merged (``peft.utils.merge_utils.ties``) into one.

Routing, per row: a memory qualifies when ``D >= act_ratio * (its smallest edit activation)``;
of those (the current ``W'`` and, with ``retrieve``, the stored shards) the largest ``D``
answers, else the main memory's output is returned as it is (bit for bit): ``fired``. Placement
per reference config: Llama-2-7B ``layers[27].mlp.down_proj``, GPT-J ``h[21].mlp.fc_out``,
GPT-2 ``h[8].mlp.c_fc``, scaled to other depths by ``depth``.

Deliberate differences from the reference: ``D`` is read per row (the reference averages the
batch), on the row's prompt tokens (``WiseLM``): no padding, no target in teacher-forced scores
(the reference reads prompt + target), so the answering memory depends on the prompt alone, as
in generation; training reads ``D_edit`` there too; other passes (generation's cached steps)
read every token given; no max over tokens past 100 tokens. Weight decay acts inside the
gradient mask, so masked entries stay equal to ``W``. The target loss is a plain token mean
(the reference's denominator counts a prompt position and padding). ``W'`` keeps the layer's
bias (the reference drops it but on GPT-2). A batch's rows are grouped by request, each with its
own loc text; its activation is the smallest request's. Loc texts: the statistics corpus
(WikiText-2), ``LOC_TOKENS`` long, not Natural Questions (not in kedit). The largest qualifying
``D`` wins (the paper; the reference also makes a shard beat a non-qualifying ``W'``). TIES only,
no replay (off in every reference config); ``retrieve: False`` merges all stored memories at
each merge, never at inference. Steps run the blocks from the memory's on only (``_suffix``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft.utils.merge_utils import ties
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase
from transformers.activations import ACT2FN

from kedit.config import MethodConfig
from kedit.corpus import load_corpus
from kedit.methods._routing import RoutedLM
from kedit.methods._suffix import TargetPositions, picked_forward, step_logits
from kedit.methods._templates import context_templates, fill, flatten
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, num_layers, text_config, weight_out_in
from kedit.model.hooks import frozen
from kedit.model.lm import hf_module, model_device
from kedit.model.tokens import Batch, PromptTarget, encode, encode_prompt_target, pad, pad_id
from kedit.types import EditRequest

log = logging.getLogger(__name__)

LOC_TOKENS = 24  # kept of each unrelated text (about a Natural Questions question's length)


@dataclass(kw_only=True)
class WISEConfig(MethodConfig):
    """WISE hyperparameters (defaults: EasyEdit ``hparams/WISE/llama-7b.yaml``).

    Args:
        layer: block holding the side memory; None: the block at ``depth``.
        depth: that block as a fraction of the model's depth (Llama-2-7B's 27 of 32).
        module: canonical part copied into the side memory (a single linear map).
        mask_ratio: fraction of the side memory's entries a shard trains (its gradient mask).
        edit_lr: SGD learning rate.
        weight_decay: SGD weight decay (applied inside the gradient mask).
        n_iter: maximum SGD steps per edit.
        norm_constraint: each entry of ``W'`` stays within this of ``W``; None: no clamp.
        act_margin: ``[alpha, beta, gamma]``: D_loc < alpha, D_edit > beta, D_edit > D_loc + gamma.
        act_ratio: a memory answers when ``D`` reaches this times its smallest edit activation.
        save_freq: edits per knowledge shard.
        merge_freq: edits between TIES merges (a multiple of ``save_freq``).
        densities: fraction of each shard's change kept by TIES (by magnitude).
        retrieve: route among the stored shards (WISE-Retrieve), else merge them all (WISE-Merge).
        context_template_length_params: ``[n_tokens, count]`` of the context templates.
    """

    layer: int | None = None
    depth: float = 27 / 32
    module: str = "mlp_out"
    mask_ratio: float = 0.2
    edit_lr: float = 1.0
    weight_decay: float = 1e-5
    n_iter: int = 70
    norm_constraint: float | None = 1.0
    act_margin: list[float] = field(default_factory=lambda: [5.0, 20.0, 10.0])
    act_ratio: float = 0.88
    save_freq: int = 500
    merge_freq: int = 1000
    densities: float = 0.53
    retrieve: bool = True
    context_template_length_params: list[list[int]] = field(
        default_factory=lambda: [[5, 5], [10, 5]]
    )

    def validate(self) -> None:
        if not 0 < self.mask_ratio <= 1 or not 0 < self.densities <= 1:
            raise ValueError("mask_ratio and densities are fractions in (0, 1]")
        if self.edit_lr <= 0 or self.n_iter < 1 or self.weight_decay < 0 or self.act_ratio <= 0:
            raise ValueError("edit_lr, act_ratio > 0, n_iter >= 1 and weight_decay >= 0 needed")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError("norm_constraint must be positive (or None for no clamp)")
        if len(self.act_margin) != 3 or min(self.act_margin) < 0:
            raise ValueError(f"act_margin is [alpha, beta, gamma] >= 0, got {self.act_margin}")
        if self.save_freq < 1 or self.merge_freq < 1 or self.merge_freq % self.save_freq:
            raise ValueError(f"merge_freq must be a multiple of save_freq >= 1: {self.merge_freq}")
        if not 0 < self.depth <= 1:
            raise ValueError(f"depth is a fraction of the depth in (0, 1], got {self.depth}")
        if any(len(p) != 2 or min(p) < 1 for p in self.context_template_length_params):
            raise ValueError("context_template_length_params holds [n_tokens, count] pairs >= 1")

    def block(self, model: nn.Module) -> int:
        """The side memory's block of ``model``: ``layer``, or the block at ``depth``."""
        if self.layer is not None:
            return self.layer
        depth = num_layers(model)
        return min(depth - 1, round(self.depth * depth))


class WiseMemory(nn.Module):
    """The main memory (the wrapped layer), side memories and router. Weights: fp32 ``(d_out,
    d_in)`` attributes, replaced, never changed in place (a saved state is references)."""

    def __init__(self, layer: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.act = act
        self.act_ratio = 1.0
        self.side = self.main_weight().clone()  # (d_out, d_in): the shard being trained
        self.side_min_act = math.inf  # smallest edit activation of the current shard
        self.mask: Tensor | None = None  # (d_out, d_in) bool: the shard's trained entries
        self.memories: tuple[tuple[Tensor, float], ...] = ()  # stored shards
        self.edits = 0
        self.merges = 0
        self.read_mask: Tensor | None = None  # (batch, seq): where D is read (``setting``)
        self.train_weight: Tensor | None = None  # while training: W', used on every row
        self.outputs: tuple[Tensor, Tensor] | None = None  # while training: (main, side)
        self.fired: Tensor | None = None  # (batch,): a side memory answered (``_routing``)

    def main_weight(self) -> Tensor:
        return weight_out_in(self.layer).detach().float()  # (d_out, d_in)

    def side_output(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight.to(x.dtype), self.layer.bias)  # (batch, seq, d_out)

    def distance(self, main: Tensor, side: Tensor, mask: Tensor | None) -> Tensor:
        """``D`` per row, ``(batch,)``: mean over the ``mask``'s tokens of the activations' L2."""
        l2 = (self.act(side.float()) - self.act(main.float())).norm(dim=-1)  # (batch, seq)
        if mask is None or mask.shape != l2.shape:
            return l2.mean(-1)
        weight = mask.to(l2.device, l2.dtype)
        return (l2 * weight).sum(-1) / weight.sum(-1).clamp(min=1)

    @contextmanager
    def setting(self, **values: Any) -> Iterator[None]:
        """Set attributes (``read_mask``, ``train_weight``) for the passes inside the block."""
        previous = {name: getattr(self, name) for name in values}
        try:
            self.__dict__.update(values)
            yield
        finally:
            self.__dict__.update(previous, outputs=None)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        main = self.layer(x, *args, **kwargs)  # (batch, seq, d_out)
        if self.train_weight is not None:
            side = self.side_output(x, self.train_weight)
            self.outputs = (main, side)
            self.fired = torch.ones(x.shape[0], dtype=torch.bool)
            return side
        shards = [*self.memories, (self.side, self.side_min_act)]  # (weight, smallest activation)
        routes = [(w, a * self.act_ratio) for w, a in shards if math.isfinite(a)]
        if not routes:
            self.fired = torch.zeros(x.shape[0], dtype=torch.bool)
            return main
        outs = torch.stack([self.side_output(x, w) for w, _ in routes])  # (n, batch, seq, d_out)
        dist = torch.stack([self.distance(main, o, self.read_mask) for o in outs])  # (n, batch)
        thresholds = dist.new_tensor([t for _, t in routes])[:, None]  # (n, 1)
        score = dist.masked_fill(dist < thresholds, -math.inf)
        best, fired = score.argmax(0), torch.isfinite(score.max(0).values)  # (batch,)
        self.fired = fired.cpu()
        chosen = outs[best, torch.arange(x.shape[0], device=x.device)]  # (batch, seq, d_out)
        return torch.where(fired[:, None, None], chosen, main)

    # shard bookkeeping, for exact undo (``Edit.save_state`` before any change) --------------

    STATE = ("side", "side_min_act", "mask", "memories", "edits", "merges", "act_ratio")

    def get_state(self) -> tuple:
        return tuple(getattr(self, name) for name in self.STATE)

    def set_state(self, state: tuple) -> None:
        self.__dict__.update(zip(self.STATE, state))

    def commit(self, side: Tensor, mask: Tensor, act: float, cfg: WISEConfig) -> None:
        """Keep an edit's trained side memory; store the shard and merge at their counts."""
        self.side, self.mask = side, mask
        self.side_min_act = min(self.side_min_act, act)
        self.edits += 1
        if self.edits % cfg.save_freq == 0:
            self.memories += ((self.side, self.side_min_act),)
            self.side, self.side_min_act, self.mask = self.main_weight().clone(), math.inf, None
        if self.edits % cfg.merge_freq == 0:
            n = cfg.merge_freq // cfg.save_freq if cfg.retrieve else len(self.memories)
            merged = self.memories[-n:]
            weight = ties_merge(self.main_weight(), [w for w, _ in merged], cfg.densities)
            self.memories = (*self.memories[:-n], (weight, min(a for _, a in merged)))
            self.merges += 1


def ties_merge(base: Tensor, shards: Sequence[Tensor], density: float) -> Tensor:
    """``base`` plus the TIES merge of the shards' changes (trim by magnitude, elect signs,
    average the agreeing entries; equal weights, as the reference's normalised ``GTA``)."""
    deltas = [shard - base for shard in shards]
    return base + ties(deltas, torch.ones(len(deltas), device=base.device), density)


@dataclass(frozen=True)
class Rows:
    """Per request its templated ``prompt + target`` rows, then one loc row per request."""

    batch: Batch
    labels: Tensor  # (rows, seq): target tokens, -100 elsewhere
    read: Tensor  # (rows, seq) bool: where D is read (edit rows' prompts, loc rows)
    shape: tuple[int, int]  # (requests, templates)


class WiseLM(RoutedLM):
    """The WISE-edited model behind the ``LanguageModel`` interface: each pass reads ``D`` on
    each row's prompt tokens only (no padding, no target), see the module docstring."""

    def __init__(self, model: nn.Module, tok: PreTrainedTokenizerBase, memory: WiseMemory):
        super().__init__(model, tok, [memory])
        self.memory = memory

    def _last_logits(self, batch: Batch, keep: int) -> Tensor:
        with self.memory.setting(read_mask=batch.attention_mask.bool()):
            return super()._last_logits(batch, keep)

    def _target_logits(self, batch: Batch, keep: int, rows: Sequence[PromptTarget]) -> Tensor:
        read = batch.attention_mask.bool()  # (batch, seq)
        for r, pair in enumerate(rows):
            read[r, batch.column(r, pair.n_prompt) :] = False  # the target's tokens
        with self.memory.setting(read_mask=read):
            return super()._last_logits(batch, keep)


class WISE(EditMethod):
    """Side memory of one FFN matrix, trained in knowledge shards and routed by activation."""

    name = "wise"
    display_name = "WISE"
    paper = "Wang et al. 2024"
    family = "added-parameters"
    config_cls = WISEConfig
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
        layer = arch_of(model).check_layer(model, cfg.block(model))
        path = arch_of(model).path(cfg.module, layer)
        with edit.unedited():  # cached under the unedited model's fingerprint
            groups = context_templates(model, tok, self.env, cfg.context_template_length_params)
        memory = get_module(model, path)
        if not isinstance(memory, WiseMemory):
            memory = WiseMemory(memory, activation(model))
            edit.swap_module(model, path, memory)
        edit.save_state(memory)
        memory.act_ratio = cfg.act_ratio
        rows = self._rows(tok, requests, flatten(groups), seed=self.env.seed + memory.edits)
        mask = memory.mask if memory.mask is not None else self._new_mask(memory)
        side, act, loss, fast = self._train(model, memory, rows, mask, layer)
        memory.commit(side, mask, act, cfg)
        edit.info.update(layer=path, loss=loss, activation=act, shards=len(memory.memories))
        edit.info["suffix_pass"] = fast
        edit.wrap(WiseLM(model, tok, memory))

    def _rows(
        self,
        tok: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        templates: Sequence[str],
        seed: int,
    ) -> Rows:
        ids: list[list[int]] = []
        n_prompt: list[int] = []
        for request in requests:
            for template in templates:
                pair = encode_prompt_target(tok, fill(template, request)[0], request.target_new)
                ids.append(pair.ids)
                n_prompt.append(pair.n_prompt)
        n_edit = len(ids)
        spec, data_dir = self.env.stats_corpus, self.env.data_dir
        corpus = self.env.memo(("corpus", spec, str(data_dir)), lambda: load_corpus(spec, data_dir))
        texts = corpus.sample(len(requests), seed)  # unrelated texts, seeded by the edit's index
        for i in range(len(requests)):
            ids.append(encode(tok, texts[i % len(texts)]).ids[:LOC_TOKENS])
            n_prompt.append(len(ids[-1]))
        batch = pad(ids, pad_id(tok), left=False)
        columns = torch.arange(batch.input_ids.shape[1])[None]  # (1, seq)
        read = columns < torch.tensor(n_prompt)[:, None]  # (rows, seq)
        labels = torch.full_like(batch.input_ids, -100)
        for r in range(n_edit):
            labels[r, n_prompt[r] : len(ids[r])] = torch.tensor(ids[r][n_prompt[r] :])
        return Rows(batch, labels, read, (len(requests), len(templates)))

    def _new_mask(self, memory: WiseMemory) -> Tensor:
        """A new shard's gradient mask: each entry trained with probability ``mask_ratio``."""
        generator = torch.Generator().manual_seed(self.env.seed + memory.edits)
        draw = torch.rand(memory.side.shape, generator=generator)
        return (draw < self.config.mask_ratio).to(memory.side.device)

    def _train(
        self, model: nn.Module, memory: WiseMemory, rows: Rows, mask: Tensor, first: int
    ) -> tuple[Tensor, float, float, bool]:
        """SGD on a copy of the side memory: (the copy, activation, loss, suffix pass taken)."""
        cfg = self.config
        device = model_device(model)
        batch, labels, read = rows.batch.to(device), rows.labels.to(device), rows.read.to(device)
        n_edit = rows.shape[0] * rows.shape[1]
        main = memory.main_weight()
        side = memory.side.clone().requires_grad_(True)
        optimiser = torch.optim.SGD([side], lr=cfg.edit_lr)
        previous = last = act = math.inf
        alpha, beta, gamma = cfg.act_margin
        targets = TargetPositions.of(labels[:n_edit])
        with frozen(model), memory.setting(train_weight=side):
            forward, fast = step_logits(  # blocks >= first, logits where targets are predicted
                model, batch.model_inputs(), first, picked_forward(model, *targets.where)
            )
            for _ in range(cfg.n_iter):
                target_loss = targets.loss(forward())
                dist = memory.distance(*memory.outputs, read)  # (rows,)
                d_edit = dist[:n_edit].view(rows.shape)
                d_loc = dist[n_edit:, None]  # (requests, 1)
                margin = _hinge(d_loc - d_edit + gamma) + _hinge(d_loc - alpha)
                loss = target_loss + (margin + _hinge(beta - d_edit)).mean()
                act = float(d_edit.detach().mean(1).min())
                if abs(last - previous) <= 1e-4 and last <= 0.02:  # the reference's early stop
                    break
                optimiser.zero_grad()
                loss.backward()
                with torch.no_grad():
                    side.grad.add_(side, alpha=cfg.weight_decay).mul_(mask)
                    optimiser.step()
                    if cfg.norm_constraint is not None:
                        bound = cfg.norm_constraint
                        side.copy_(torch.clamp(side, main - bound, main + bound))
                previous, last = last, loss.item()
        log.debug("WISE: loss %.4f, activation %.3f", loss.item(), act)
        return side.detach(), act, loss.item(), fast


def activation(model: nn.Module) -> nn.Module:
    """The model's hidden activation (``act`` of ``D``)."""
    config = text_config(model)
    name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
    if name not in ACT2FN:
        raise ValueError(f"WISE needs the model's hidden activation; its config names {name!r}")
    return ACT2FN[name]


def _hinge(values: Tensor) -> Tensor:
    """Per row, the mean of the positive entries (0 if none): the reference's hinge."""
    return values.relu().sum(-1) / (values > 0).sum(-1).clamp(min=1)
