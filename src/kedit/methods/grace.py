"""GRACE: General Retrieval Adaptors for Continual Editing.

Hartvigsen, Sankaranarayanan, Palangi, Kim, Ghassemi. "Aging with GRACE: Lifelong Model Editing
with Discrete Key-Value Adaptors", NeurIPS 2023. https://arxiv.org/abs/2211.11031

One layer is wrapped by a codebook of (key, value, deferral radius epsilon, label) entries. A key
is the layer's input at the edit's last prompt token; its value is a trained replacement for
the layer's output. At inference, wherever an input lies within epsilon of its nearest key, the
layer's output is replaced by that key's value; elsewhere the layer runs unchanged. The model's
weights are never touched.

Per edit (first step of the reference's training loop):

* add a key when the query is farther than ``eps_init + eps_nearest`` from every key;
* split when it is closer but the nearest key has a different label: both radii become half
  the distance;
* expand the nearest key's radius to cover the query when the labels agree;

then train the chosen value for ``n_iter`` Adam steps on the target's teacher-forced loss.

Deviations, deliberately: the distance test is made at every token position (the reference
tests one query token per sequence, the last prompt token, which is ambiguous in padded batches
and during teacher forcing); training stops early once the loss is below ``early_stop_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import get_module, layer_path
from kedit.model.hooks import Trace, frozen, run_until_stopped
from kedit.model.lm import hf_module, model_device
from kedit.model.tokens import PromptTarget, encode_prompt_target, pad
from kedit.types import EditRequest


@dataclass(kw_only=True)
class GRACEConfig(MethodConfig):
    """GRACE hyperparameters (defaults: the official ``grace.yaml``, EasyEdit's replacement).

    Args:
        layer: block holding the wrapped module.
        module: canonical part wrapped (its input is the key, its output replaced).
        eps_init: deferral radius of a new key.
        edit_lr: Adam learning rate for the value.
        n_iter: maximum training steps per edit.
        val_init: ``cold`` (uniform random value) or ``warm`` (the layer's current output).
        eps_expand: ``coverage`` (grow the radius to the query) or ``moving_average`` (move the
            key halfway to the query).
        early_stop_loss: stop training once the target loss is below this (0 disables).
    """

    layer: int = -5
    module: str = "mlp_out"
    eps_init: float = 1.0
    edit_lr: float = 1.0
    n_iter: int = 100
    val_init: Literal["cold", "warm"] = "cold"
    eps_expand: Literal["coverage", "moving_average"] = "coverage"
    early_stop_loss: float = 1e-2

    def validate(self) -> None:
        if self.eps_init <= 0 or self.edit_lr <= 0 or self.n_iter < 1:
            raise ValueError("eps_init and edit_lr must be positive, n_iter at least 1")


class GraceCodebook(nn.Module):
    """The adaptor that wraps a layer. Keys and radii are buffers; values are trainable."""

    def __init__(self, layer: nn.Module, d_in: int, d_out: int) -> None:
        super().__init__()
        self.layer = layer
        param = next(layer.parameters())
        self.register_buffer("keys", param.new_zeros(0, d_in, dtype=torch.float32))
        self.register_buffer("eps", param.new_zeros(0, dtype=torch.float32))
        self.values = nn.Parameter(
            param.new_zeros(0, d_out, dtype=torch.float32), requires_grad=False
        )
        self.labels: list[str] = []

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.layer(x, *args, **kwargs)  # (batch, seq, d_out)
        if not self.labels:
            return out
        dist = torch.cdist(x.float(), self.keys[None].expand(x.shape[0], -1, -1))  # (b, s, n)
        nearest_dist, nearest = dist.min(-1)  # (batch, seq)
        hit = nearest_dist <= self.eps[nearest]
        return torch.where(hit[..., None], self.values[nearest].to(out.dtype), out)

    # codebook state, for exact undo --------------------------------------------------------

    def get_state(self) -> tuple:
        return (
            self.keys.clone(),
            self.eps.clone(),
            self.values.detach().clone(),
            list(self.labels),
        )

    def set_state(self, state: tuple) -> None:
        keys, eps, values, labels = state
        self.keys, self.eps = keys.clone(), eps.clone()
        self.values = nn.Parameter(values.clone(), requires_grad=False)
        self.labels = list(labels)

    def nearest(self, query: torch.Tensor) -> tuple[int, float]:
        dist = torch.cdist(query.float()[None], self.keys)[0]  # (n,)
        index = int(dist.argmin())
        return index, float(dist[index])

    def add(self, key: torch.Tensor, value: torch.Tensor, eps: float, label: str) -> int:
        self.keys = torch.cat([self.keys, key.float()[None]])
        self.eps = torch.cat([self.eps, self.eps.new_tensor([eps])])
        self.values = nn.Parameter(
            torch.cat([self.values.detach(), value.float()[None]]), requires_grad=False
        )
        self.labels.append(label)
        return len(self.labels) - 1


class GRACE(EditMethod):
    """Discrete key-value adaptor at one layer."""

    name = "grace"
    display_name = "GRACE"
    paper = "Hartvigsen et al. 2023"
    family = "added-parameters"
    config_cls = GRACEConfig
    supports_batch = False

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        (request,) = requests
        cfg = self.config
        path = layer_path(model, cfg.module, cfg.layer)
        pair = encode_prompt_target(tok, request.text, request.target_new)
        query, layer_out = self._query(model, path, pair.ids, pair.n_prompt - 1)

        codebook = get_module(model, path)
        if not isinstance(codebook, GraceCodebook):
            codebook = GraceCodebook(codebook, query.shape[-1], layer_out.shape[-1])
            edit.swap_module(model, path, codebook)
        edit.save_state(codebook)
        index = self._update_codebook(codebook, query, layer_out, request.target_new)
        edit.info["loss"] = self._train_value(model, codebook, index, pair)
        edit.info.update(layer=path, codebook_size=len(codebook.labels))

    @torch.no_grad()
    def _query(
        self, model: nn.Module, path: str, ids: list[int], position: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped layer's input and output at token ``position``: ``(d_in,)``, ``(d_out,)``."""
        batch = pad([ids], 0, left=False).to(model_device(model))
        with Trace(model, path, retain_input=True, retain_output=True, stop=True) as trace:
            run_until_stopped(model, **batch.model_inputs(), use_cache=False)
        return trace.input[0, position].float(), trace.output[0, position].float()

    def _update_codebook(
        self, codebook: GraceCodebook, query: torch.Tensor, layer_out: torch.Tensor, label: str
    ) -> int:
        cfg = self.config
        generator = torch.Generator().manual_seed(self.env.seed)
        cold = torch.rand(layer_out.shape[-1], generator=generator).to(layer_out.device)
        new_value = cold if cfg.val_init == "cold" else layer_out
        if not codebook.labels:
            return codebook.add(query, new_value, cfg.eps_init, label)
        index, dist = codebook.nearest(query)
        if dist > cfg.eps_init + float(codebook.eps[index]):
            return codebook.add(query, new_value, cfg.eps_init, label)
        if codebook.labels[index] != label:  # conflict: split the two radii
            codebook.eps[index] = dist / 2 - 1e-5
            return codebook.add(query, new_value, dist / 2, label)
        if cfg.eps_expand == "moving_average":
            codebook.keys[index] = 0.5 * codebook.keys[index] + 0.5 * query.float()
            codebook.eps[index] = dist
        elif dist > float(codebook.eps[index]):
            codebook.eps[index] = dist
        return index

    def _train_value(
        self, model: nn.Module, codebook: GraceCodebook, index: int, pair: PromptTarget
    ) -> float:
        """Adam on row ``index`` of the codebook values, for the target's teacher-forced loss."""
        cfg = self.config
        batch = pad([pair.ids], 0, left=False).to(model_device(model))
        target = torch.tensor(pair.target_ids, device=batch.input_ids.device)
        predicting = slice(pair.n_prompt - 1, len(pair.ids) - 1)  # positions that predict it
        others = torch.ones(len(codebook.labels), dtype=torch.bool)
        others[index] = False
        optimiser = torch.optim.Adam([codebook.values], lr=cfg.edit_lr)
        loss = float("inf")
        try:
            with frozen(model):
                codebook.values.requires_grad_(True)
                for _ in range(cfg.n_iter):
                    logits = model(**batch.model_inputs(), use_cache=False).logits[0]
                    step_loss = F.cross_entropy(logits[predicting].float(), target)
                    loss = step_loss.item()
                    if loss < cfg.early_stop_loss:
                        break
                    optimiser.zero_grad()
                    step_loss.backward()
                    codebook.values.grad[others] = 0  # only this edit's value moves
                    optimiser.step()
        finally:
            codebook.values.grad = None
        return loss
