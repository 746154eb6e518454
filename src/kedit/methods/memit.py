"""MEMIT: Mass-Editing Memory in a Transformer.

Meng, Sharma, Andonian, Belinkov, Bau. "Mass-Editing Memory in a Transformer", ICLR 2023.
https://arxiv.org/abs/2210.07229

Writes a batch of facts into the MLP output projections of a range of layers at once. For each
fact, a target hidden state ``z`` for the residual stream after the last edited layer L is
optimised (as ROME's v*). Then, lowest layer first, each layer l takes its share of what is
left, ``R = (Z - H_L) / (layers left)``, by the covariance-weighted least-squares update

    dW_l = R K_l^T (lambda C_l + K_l K_l^T)^{-1}

with ``K_l`` the facts' keys (template-averaged) and ``C_l = E[k k^T]`` over a text corpus
(``lambda`` = ``mom2_update_weight``). Modifies one matrix per edited layer, with rank at most
the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._spread import (
    edited_layers,
    last_layer,
    memit_solve,
    optimise_targets,
    spread,
)
from kedit.methods._stats import StatsConfig, stats_for
from kedit.methods._templates import context_templates
from kedit.methods._value import ValueConfig
from kedit.methods.base import Edit, EditMethod, hf_module
from kedit.model.arch import layer_path
from kedit.types import EditRequest


@dataclass(kw_only=True)
class MEMITConfig(ValueConfig, StatsConfig):
    """MEMIT hyperparameters (defaults: the paper's GPT-2 XL configuration; v* and statistics
    fields on :class:`ValueConfig` and :class:`StatsConfig`).

    Args:
        layers: blocks whose MLP output projections are updated (negative counts from the end).
        mom2_update_weight: lambda, the weight of the preserved keys' second moment.
    """

    layers: list[int] = field(default_factory=lambda: [13, 14, 15, 16, 17])
    mom2_update_weight: float = 20000.0
    clamp_norm_factor: float = 0.75
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])

    def validate(self) -> None:
        super().validate()
        if not self.layers:
            raise ValueError("layers must name at least one layer")
        if self.mom2_update_weight < 0:
            raise ValueError("mom2_update_weight must be non-negative")


class MEMIT(EditMethod):
    """Batched multi-layer least-squares update of MLP output projections."""

    name = "memit"
    config_cls = MEMITConfig
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
        paths = edited_layers(model, cfg.layers)
        templates = context_templates(model, tok, self.env, cfg.context_template_length_params)
        z_path = layer_path(model, "block", last_layer(model, cfg.layers))
        values = optimise_targets(model, tok, requests, templates, z_path, cfg.search())
        stats = stats_for(model, tok, paths, self.env, cfg)

        def solve(i: int, path: str, keys: torch.Tensor, residual: torch.Tensor):
            return residual, memit_solve(stats[path], keys, cfg.mom2_update_weight)

        targets = torch.stack([v.target for v in values])  # (n, d_model)
        spread(
            model,
            tok,
            requests,
            edit,
            paths,
            templates,
            z_path,
            targets,
            lambda left: 1.0 / left,
            solve,
        )
        edit.info.update(
            layers=len(paths),
            v_steps=max(v.steps for v in values),
            v_loss=max(v.loss for v in values),
        )
