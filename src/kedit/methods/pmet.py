"""PMET: Precise Model Editing in a Transformer.

Li, Li, Song, Yang, Ma, Yu. "PMET: Precise Model Editing in a Transformer", AAAI 2024.
https://arxiv.org/abs/2308.08742

MEMIT's target for the whole residual stream mixes what attention and the FFN contribute. PMET
optimises two targets at the last edited layer L at once, one for the attention output
projection and one for the FFN output projection, and then updates only the FFNs: each layer l
takes ``R = (m* - m_L) / sqrt(layers left)`` of the FFN target's residual (square root, not
MEMIT's plain share), with MEMIT's covariance-weighted least squares. The target search weighs
the NLL by ``nll_factor`` and, once the new target is the top-1 prediction everywhere, relaxes
it to a tenth and stops as soon as the KL term is below 0.01.
"""

from __future__ import annotations

import math
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
from kedit.methods._value import ValueConfig, ValueSearch
from kedit.methods.base import Edit, EditMethod, hf_module
from kedit.model.arch import layer_path
from kedit.types import EditRequest


@dataclass(kw_only=True)
class PMETConfig(ValueConfig, StatsConfig):
    """PMET hyperparameters (defaults: the PMET repository's GPT-J configuration).

    Args:
        layers: blocks whose FFN output projections are updated.
        mom2_update_weight: lambda, the weight of the preserved keys' second moment.
        nll_factor: weight of the NLL term in the target search.
    """

    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    mom2_update_weight: float = 6000.0
    nll_factor: float = 1.0
    v_num_grad_steps: int = 30
    v_lr: float = 0.2
    kl_factor: float = 1.0
    clamp_norm_factor: float = 0.75
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])

    def validate(self) -> None:
        super().validate()
        if not self.layers:
            raise ValueError("layers must name at least one layer")
        if self.mom2_update_weight < 0 or self.nll_factor <= 0:
            raise ValueError("mom2_update_weight must be non-negative, nll_factor positive")

    def search(self) -> ValueSearch:
        base = super().search()
        return ValueSearch(
            base.steps,
            base.lr,
            base.weight_decay,
            base.clamp_norm_factor,
            base.kl_factor,
            self.nll_factor,
            relax_when_top1=True,
        )


class PMET(EditMethod):
    """Attention and FFN targets at the top layer; FFN-only multi-layer update."""

    name = "pmet"
    config_cls = PMETConfig
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
        top = last_layer(model, cfg.layers)
        ffn_path, attn_path = layer_path(model, "mlp_out", top), layer_path(model, "attn_out", top)
        values = optimise_targets(
            model, tok, requests, templates, [ffn_path, attn_path], cfg.search()
        )
        stats = stats_for(model, tok, paths, self.env, cfg)

        def solve(i: int, path: str, keys: torch.Tensor, residual: torch.Tensor):
            return residual, memit_solve(stats[path], keys, cfg.mom2_update_weight)

        ffn_targets = torch.stack([v.targets[0] for v in values])  # (n, d_model)
        spread(
            model,
            tok,
            requests,
            edit,
            paths,
            templates,
            ffn_path,
            ffn_targets,
            lambda left: 1.0 / math.sqrt(left),
            solve,
        )
        edit.info.update(layers=len(paths), v_steps=max(v.steps for v in values))
