"""MELO: neuron-indexed dynamic LoRA routed by an inner vector database.

Yu, Chen, Qi, Huang, Wang, Mao, Zou, Wang, He. "MELO: Enhancing Model Editing with
Neuron-Indexed Dynamic LoRA", AAAI 2024. https://arxiv.org/abs/2312.11795

A LoRA of rank ``r = num_block * num_rank_per_block`` on the MLP input projections of a few
blocks is cut into blocks of ``num_rank_per_block`` ranks; each edit batch trains the next one.
A vector database (VecDB) routes each input to one block or none by its key: the output of one
module (``grace_layer``, in the block before the LoRA) at its last token. Per edit batch, a key
at distance ``d`` from the nearest cluster centre makes a new cluster (radius ``init_radius``)
if ``d > radius + init_radius``; else, with the same label, joins it (centre: the points' mean,
radius: their largest distance to it, at least ``init_radius``); else (a conflict) makes a new
cluster of radius ``d/2 + 1e-5`` and shrinks the old to ``d/2 - 1e-5``, forgetting its points
outside. A point keeps its batch's block. Search: the nearest centre within its radius, then its
nearest point's block. The block trains alone: Adam at ``edit_lr``, StepLR(20, 0.5),
``num_iter`` steps of the targets' teacher-forced loss, the batch routed to it. A routed row
adds ``x A[:, block] B[block, :] * r / num_rank_per_block`` to the projection at every position
(the reference's two ``sqrt(r / num_rank_per_block)`` slice factors, ``lora_alpha = r``); a row
routed to none gets the unedited output, bit for bit.

Where (``BruthYU/MELO`` ``melo/config/model/gpt2xl.yaml``): key GPT-2 XL ``h.35.mlp.c_fc``,
LoRA ``h.36/37.mlp.c_fc``; here the key block at ``depth``, the LoRA ``lora_offsets`` after it
(gated MLPs: LoRA on gate and up, key from gate), as peft's ``lora.Linear`` with ``lora_A``'s
rank outputs gated per row; ``restore`` swaps the original modules back.

Deliberate differences from the reference: the key is read at the last *prompt* token in
training and scoring (the reference: the last token given, the target's in training, a pad in
a right-padded batch); generated tokens are routed by their own keys, as there. Labels are
compared as strings (the reference: sums of token ids). A batch over ``num_edit_per_block``
(its batch size) is edited in chunks, a block each; each key meets the clusters made by the keys
before it (the reference: those from before the batch). ``A`` has peft's init (kaiming over the
input features, not the rank). Running out of blocks raises an error. A tie goes to the newest
cluster (reference bug: the oldest, so a conflicting re-edit of one input routes nowhere).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import Linear as LoraLinear
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._routing import RoutedLM
from kedit.methods._suffix import picked_forward, step_logits
from kedit.methods._vecdb import NO_BLOCK, VecDB
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, is_conv1d, num_layers
from kedit.model.hooks import Trace, frozen, run_until_stopped
from kedit.model.lm import hf_module, model_device
from kedit.model.tokens import Batch, PromptTarget, encode_prompt_target, pad, pad_id
from kedit.types import EditRequest

log = logging.getLogger(__name__)

ADAPTER = "melo"


@dataclass(kw_only=True)
class MELOConfig(MethodConfig):
    """MELO hyperparameters (defaults: ``BruthYU/MELO`` ``melo/config/experiment/
    hallucination.yaml`` and ``model/gpt2xl.yaml``, GPT-2 XL).

    Args:
        layer: block of the key module; None: the block at ``depth``.
        depth: the key block as a fraction of the model's depth (GPT-2 XL's 35 of 48).
        key_module: canonical part whose output is the key (the first of its modules).
        lora_module: canonical part that gets the LoRA (every one of its modules).
        lora_offsets: LoRA blocks, counted after the key block (GPT-2 XL's 36 and 37).
        num_block: rank blocks in the LoRA; one is used per edit batch.
        num_rank_per_block: ranks per block.
        num_edit_per_block: requests per block (the reference's edit batch size).
        init_radius: radius of a new cluster, in the key's units.
        edit_lr: Adam learning rate for the block.
        num_iter: training steps per block.
    """

    layer: int | None = None
    depth: float = 35 / 48
    key_module: str = "mlp_in"
    lora_module: str = "mlp_in"
    lora_offsets: list[int] = field(default_factory=lambda: [1, 2])
    num_block: int = 350
    num_rank_per_block: int = 2
    num_edit_per_block: int = 4
    init_radius: float = 0.5
    edit_lr: float = 1e-3
    num_iter: int = 50

    def validate(self) -> None:
        if not 0 < self.depth <= 1:
            raise ValueError(f"depth must be a fraction in (0, 1], got {self.depth}")
        if not self.lora_offsets or min(self.lora_offsets) < 1:
            raise ValueError(
                f"lora_offsets count blocks after the key's: each >= 1, got {self.lora_offsets}"
            )
        if min(self.num_block, self.num_rank_per_block, self.num_edit_per_block) < 1:
            raise ValueError("num_block, num_rank_per_block and num_edit_per_block must be >= 1")
        if self.init_radius <= 0 or self.edit_lr <= 0 or self.num_iter < 1:
            raise ValueError("init_radius and edit_lr must be positive, num_iter at least 1")


class MeloKey(nn.Module):
    """Wraps the key module: its output unchanged; routes each row of the pass by the VecDB.
    Its state (:meth:`get_state`) is the VecDB, the block counter and the slices of the LoRA
    weights (``loras``: (A, B) pairs) that the next block's training moves."""

    def __init__(self, layer: nn.Module, cfg: MELOConfig) -> None:
        super().__init__()
        self.layer = layer
        #: ``route["blocks"]``: each row's block in this pass, for the LoRA layers after it
        self.route: dict[str, torch.Tensor] = {}
        self.db = VecDB(cfg.init_radius)
        self.num_block, self.per_block, self.next_block = cfg.num_block, cfg.num_rank_per_block, 0
        self.loras: list[tuple[nn.Parameter, nn.Parameter]] = []  # plain list: not submodules
        self.query_columns: torch.Tensor | None = None  # each row's key column (None: last)
        self.forced: int | None = None  # the block every row goes to while it trains
        #: whether each row of the latest pass went to a block (see ``methods._routing``)
        self.fired: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.layer(x, *args, **kwargs)  # (batch, seq, d_key)
        rows = torch.arange(out.shape[0], device=out.device)
        if self.forced is not None:
            blocks = torch.full((out.shape[0],), self.forced, dtype=torch.long)
        else:
            columns = self.query_columns
            columns = torch.full_like(rows, out.shape[1] - 1) if columns is None else columns
            blocks = self.db.search(out[rows, columns.to(out.device)].detach())  # (batch,)
        self.route["blocks"] = blocks.to(out.device)  # (batch,) long
        self.fired = blocks != NO_BLOCK
        return out

    def ranks(self, block: int) -> slice:
        return slice(block * self.per_block, (block + 1) * self.per_block)

    def get_state(self) -> tuple:
        ranks = self.ranks(self.next_block)
        weights = [(a[ranks].clone(), b[:, ranks].clone()) for a, b in self.loras]
        return self.db.copy(), self.next_block, list(self.loras), weights

    @torch.no_grad()
    def set_state(self, state: tuple) -> None:
        db, self.next_block, loras, weights = state
        self.db, self.loras = db.copy(), list(loras)
        for (a, b), (a_saved, b_saved) in zip(self.loras, weights):
            a[self.ranks(self.next_block)] = a_saved
            b[:, self.ranks(self.next_block)] = b_saved


class RankGate(nn.Module):
    """peft's ``lora_A`` (its weight, shared) with each row's rank outputs gated: the ranks of
    the row's block scaled by ``r / num_rank_per_block``, every other rank zero."""

    def __init__(self, lora_a: nn.Linear, route: dict[str, torch.Tensor], per_block: int) -> None:
        super().__init__()
        self.weight = lora_a.weight  # (r, d_in)
        self.route, self.per_block = route, per_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight)  # (batch, seq, r)
        blocks = self.route.get("blocks")
        if blocks is None or len(blocks) != h.shape[0]:
            raise RuntimeError("MELO's LoRA ran without its key module routing the same batch")
        rank_block = torch.arange(h.shape[-1], device=h.device) // self.per_block  # (r,)
        gate = (rank_block[None] == blocks[:, None]).to(h.dtype)  # (batch, r)
        return h * gate[:, None] * (h.shape[-1] / self.per_block)


class MeloLM(RoutedLM):
    """The edited model; teacher-forced scores are routed at each row's last prompt token."""

    def __init__(self, model: nn.Module, tok: PreTrainedTokenizerBase, key: MeloKey) -> None:
        super().__init__(model, tok, [key])
        self.key = key

    def _target_logits(self, batch: Batch, keep: int, rows: Sequence[PromptTarget]) -> torch.Tensor:
        columns = torch.tensor([batch.column(r, pair.n_prompt - 1) for r, pair in enumerate(rows)])
        self.key.query_columns = columns
        try:
            return super()._target_logits(batch, keep, rows)
        finally:
            self.key.query_columns = None


class MELO(EditMethod):
    """Dynamic LoRA blocks routed by a vector database of edit keys."""

    name = "melo"
    display_name = "MELO"
    paper = "Yu et al. 2024"
    family = "added-parameters"
    config_cls = MELOConfig
    supports_batch = True

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model, cfg = hf_module(model), self.config
        key_path, lora_paths, first = self._paths(model)
        key = self._attach(model, key_path, lora_paths, edit)
        for start in range(0, len(requests), cfg.num_edit_per_block):
            chunk = requests[start : start + cfg.num_edit_per_block]
            pairs = [encode_prompt_target(tok, r.text, r.target_new) for r in chunk]
            batch = pad([p.ids for p in pairs], pad_id(tok), left=False).to(model_device(model))
            keys = self._keys(model, key_path, batch, [p.n_prompt - 1 for p in pairs])
            block = key.next_block
            if block >= key.num_block:
                raise ValueError(
                    f"MELO used all {key.num_block} blocks; raise num_block or num_edit_per_block"
                )
            edit.save_state(key)
            key.db.init_radius, key.next_block = cfg.init_radius, block + 1
            for k, request in zip(keys, chunk):
                key.db.add(k, request.target_new, block)
            edit.info["loss"], edit.info["suffix_pass"] = self._train_block(
                model, key, block, batch, pairs, first
            )
        edit.info.update(
            key_layer=key_path, lora_layers=lora_paths, blocks_used=key.next_block,
            clusters=len(key.db.clusters), conflicts=key.db.conflicts, forgotten=key.db.forgotten,
        )  # fmt: skip
        edit.wrap(MeloLM(model, tok, key))

    def _paths(self, model: nn.Module) -> tuple[str, list[str], int]:
        """The key module's path, the LoRA modules' paths, the key's block."""
        cfg, arch = self.config, arch_of(model)
        n = num_layers(model)
        block = cfg.layer if cfg.layer is not None else min(n - 1, round(cfg.depth * n))
        block = arch.check_layer(model, block)
        blocks = [arch.check_layer(model, block + offset) for offset in cfg.lora_offsets]
        lora = [path for b in blocks for path in arch.paths(cfg.lora_module, b)]
        return arch.paths(cfg.key_module, block)[0], lora, block

    def _attach(self, model: nn.Module, key_path: str, paths: list[str], edit: Edit) -> MeloKey:
        """The key module and LoRA layers: an earlier edit's, else new ones swapped in."""
        cfg = self.config
        key = get_module(model, key_path)
        if not isinstance(key, MeloKey):
            key = MeloKey(key, cfg)
            edit.swap_module(model, key_path, key)
        if (key.num_block, key.per_block) != (cfg.num_block, cfg.num_rank_per_block):
            raise ValueError(
                f"{key_path} routes to a MELO LoRA of {key.num_block} blocks of {key.per_block} "
                "ranks from an earlier edit; keep num_block and num_rank_per_block"
            )
        for path in paths:
            module = get_module(model, path)
            lora_a = getattr(module, "lora_A", {})
            if not (ADAPTER in lora_a and isinstance(lora_a[ADAPTER], RankGate)):
                module = self._lora(module, key.route)
                edit.swap_module(model, path, module)
                edit.save_state(key)
                a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
                key.loras = [*key.loras, (a, b)]
        return key

    def _lora(self, base: nn.Module, route: dict[str, torch.Tensor]) -> LoraLinear:
        """peft's LoRA around ``base`` (``lora_alpha = r``: scaling 1), ``lora_A`` gated."""
        cfg = self.config
        r = cfg.num_block * cfg.num_rank_per_block
        flags = [(p, p.requires_grad) for p in base.parameters()]
        holder = nn.Module()
        holder.target = base
        lora_config = LoraConfig(
            r=r, lora_alpha=r, lora_dropout=0.0, target_modules=["target"],
            fan_in_fan_out=is_conv1d(base), inference_mode=True,
        )  # fmt: skip
        inject_adapter_in_model(lora_config, holder, adapter_name=ADAPTER)
        for p, flag in flags:  # peft freezes what is not LoRA
            p.requires_grad_(flag)
        layer = holder.target
        layer.lora_A[ADAPTER] = RankGate(layer.lora_A[ADAPTER], route, cfg.num_rank_per_block)
        return layer

    @torch.no_grad()
    def _keys(self, model: nn.Module, path: str, batch: Batch, columns: list[int]) -> torch.Tensor:
        """The key module's output at each row's column (last prompt token): ``(batch, d_key)``."""
        with Trace(model, path, retain_output=True, stop=True) as trace:
            run_until_stopped(model, **batch.model_inputs(), use_cache=False)
        return trace.output[torch.arange(len(columns)), torch.tensor(columns)].float()

    def _train_block(
        self,
        model: nn.Module,
        key: MeloKey,
        block: int,
        batch: Batch,
        pairs: list[PromptTarget],
        first: int,
    ) -> tuple[float, bool]:
        """Adam, StepLR(20, 0.5), on ``block``'s ranks, every row routed to ``block``: the
        loss, and whether the steps ran the blocks from the key's (``first``) on only."""
        cfg = self.config
        labels = torch.full_like(batch.input_ids, -100)  # (batch, seq): the token predicted
        for row, p in enumerate(pairs):
            labels[row, p.n_prompt - 1 : len(p.ids) - 1] = torch.tensor(p.target_ids)
        rows, cols = (labels != -100).nonzero(as_tuple=True)
        tokens = labels[rows, cols]  # (positions,)
        params = [w for pair in key.loras for w in pair]  # the gate gives other ranks 0 grads
        optimiser = torch.optim.Adam(params, lr=cfg.edit_lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=20, gamma=0.5)
        loss, key.forced = float("nan"), block
        try:
            with frozen(model):
                for p in params:
                    p.requires_grad_(True)
                # blocks >= the key's, and logits only where a target token is predicted
                forward, fast = step_logits(
                    model, batch.model_inputs(), first, picked_forward(model, rows, cols)
                )
                for _ in range(cfg.num_iter):
                    step_loss = F.cross_entropy(forward().float(), tokens)  # a token mean
                    loss = step_loss.item()
                    optimiser.zero_grad()
                    step_loss.backward()
                    optimiser.step()
                    scheduler.step()
        finally:
            key.forced = None
            optimiser.zero_grad(set_to_none=True)
        log.info("MELO block %d trained: loss %.4f", block, loss)
        return loss, fast
