"""FT-L and FT-M: fine-tuning one module as an editing baseline.

* FT-L (constrained fine-tuning; Zhu et al. 2020, "Modifying Memories in Transformer Models",
  https://arxiv.org/abs/2012.00363, as run in the ROME paper): Adam on the parameters of one
  module, and after every step each weight is projected back into an L-infinity ball of radius
  ``norm_constraint`` around its original value. The loss, as in ROME's baseline, reads every
  target token off the last prompt position (``objective="prompt_last"``), which is exact for
  one-token targets and a bag-of-tokens approximation for longer ones.
* FT-M (EasyEdit's "FT-M"; Zhang et al. 2024, "A Comprehensive Study of Knowledge Editing for
  LLMs", https://arxiv.org/abs/2401.01286): teacher-forced cross-entropy on the target tokens
  only, the prompt masked (``objective="target_new"``), without the constraint.

Both modify the weights (and bias) of one module; the delta is dense. Requests in one call are
trained together (batches of ``batch_size``). FT-L's config defaults are ROME's GPT-2 XL
constrained run; on Llama-architecture models its preset is EasyEdit's published FT-L (layer 21,
no bound), and the named preset ``constrained`` is ROME's constrained variant at layer 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import get_module, layer_path
from kedit.model.hooks import frozen
from kedit.model.lm import hf_module, last_logits, model_device
from kedit.model.tokens import encode_prompt_target, pad, pad_id
from kedit.types import EditRequest

STOP_LOSS = 1e-2


@dataclass(kw_only=True)
class FTConfig(MethodConfig):
    """Fine-tuning hyperparameters (defaults: ROME's constrained FT on GPT-2 XL).

    Args:
        layer: block holding the trained module.
        module: canonical part trained (``mlp_out``, ``mlp``, ``attn_out`` ...; see ArchSpec).
        lr: Adam learning rate.
        num_steps: passes over the requests.
        weight_decay: Adam weight decay.
        norm_constraint: L-infinity radius around the original weights, or None.
        objective: ``prompt_last`` (ROME's FT loss) or ``target_new`` (teacher-forced, FT-M).
        batch_size: requests per optimisation step.
    """

    layer: int = 0
    module: str = "mlp_out"
    lr: float = 5e-4
    num_steps: int = 25
    weight_decay: float = 0.0
    norm_constraint: float | None = 5e-4
    objective: Literal["prompt_last", "target_new"] = "prompt_last"
    batch_size: int = 64

    def validate(self) -> None:
        if self.lr <= 0 or self.num_steps < 1 or self.batch_size < 1:
            raise ValueError("lr must be positive; num_steps and batch_size at least 1")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError("norm_constraint must be positive or None")


@dataclass(kw_only=True)
class FTMConfig(FTConfig):
    """FT-M: teacher-forced target-only loss, unconstrained (EasyEdit's FT-M defaults)."""

    layer: int = 21
    norm_constraint: float | None = None
    objective: Literal["prompt_last", "target_new"] = "target_new"


class FTL(EditMethod):
    """Constrained fine-tuning of one module."""

    name = "ft-l"
    display_name = "FT-L"
    paper = "Zhu et al. 2020"
    family = "fine-tuning"
    config_cls: type[FTConfig] = FTConfig
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
        module = get_module(model, layer_path(model, cfg.module, cfg.layer))
        params = list(module.parameters())
        batches = [
            requests[i : i + cfg.batch_size] for i in range(0, len(requests), cfg.batch_size)
        ]
        with edit.tracking(params), frozen(model):
            for p in params:
                p.requires_grad_(True)
            edit.info["final_loss"] = self._train(model, tok, batches, params)

    def _train(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        batches: list[list[EditRequest]],
        params: list[nn.Parameter],
    ) -> float:
        cfg = self.config
        originals = [p.detach().clone() for p in params]
        optimiser = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        mean_loss = float("inf")
        for _ in range(cfg.num_steps):
            losses = []
            for batch in batches:
                loss = self._loss(model, tok, batch)
                losses.append(loss.item())
                if loss.item() < STOP_LOSS:
                    continue
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                if cfg.norm_constraint is not None:
                    with torch.no_grad():
                        for p, o in zip(params, originals):
                            p.copy_(
                                torch.clamp(p, o - cfg.norm_constraint, o + cfg.norm_constraint)
                            )
            mean_loss = sum(losses) / len(losses)
            if mean_loss < STOP_LOSS:
                break
        for p in params:
            p.grad = None
        return mean_loss

    def _loss(
        self, model: nn.Module, tok: PreTrainedTokenizerBase, batch: list[EditRequest]
    ) -> torch.Tensor:
        pairs = [encode_prompt_target(tok, r.text, r.target_new) for r in batch]
        device = model_device(model)
        if self.config.objective == "prompt_last":
            inputs = pad([p.prompt_ids for p in pairs], pad_id(tok), left=True).to(device)
            logprobs = torch.log_softmax(last_logits(model, inputs, 1)[:, 0].float(), -1)
            # every target token read off the last prompt position (ROME's FT baseline)
            per_row = [-logprobs[i, p.target_ids].mean() for i, p in enumerate(pairs)]
            return torch.stack(per_row).mean()
        keep = max(len(p.target_ids) for p in pairs) + 1
        inputs = pad([p.ids for p in pairs], pad_id(tok), left=True).to(device)
        logprobs = torch.log_softmax(last_logits(model, inputs, keep).float(), -1)
        per_row = []
        for i, p in enumerate(pairs):
            n = len(p.target_ids)
            steps = logprobs[i, keep - 1 - n : keep - 1]  # (n, vocab): predicts target tokens
            target = torch.tensor(p.target_ids, device=device)
            per_row.append(-steps.gather(1, target[:, None]).mean())
        return torch.stack(per_row).mean()


class FTM(FTL):
    """Fine-tuning with a target-only teacher-forced loss."""

    name = "ft-m"
    display_name = "FT-M"
    paper = "Zhang et al. 2024"
    config_cls = FTMConfig
