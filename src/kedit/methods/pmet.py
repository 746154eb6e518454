"""PMET: Precise Model Editing in a Transformer.

Li, Li, Song, Yang, Ma, Yu. "PMET: Precise Model Editing in a Transformer", AAAI 2024.
https://arxiv.org/abs/2308.08742

MEMIT's target for the whole residual stream mixes what attention and the FFN contribute. PMET
optimises two targets at the last edited layer L at once, one for the attention output
projection and one for the FFN output projection, and then updates only the FFNs: each layer l
takes ``R = (m* - m_L) / sqrt(layers left)`` of the FFN target's residual (square root, not
MEMIT's plain share), with MEMIT's covariance-weighted least squares. The target search weighs
the NLL by ``nll_factor`` and, while the new target is the top-1 prediction everywhere, relaxes
it to a tenth, stopping as soon as the KL term is at most 0.01; when the target stops being the
top-1, the weight goes back (the reference's ``compute_zs.py``; kedit's version before 2026-11
never restored it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from kedit.methods._spread import LayerUpdate, SpreadConfig, SpreadMethod, last_layer, memit_solve
from kedit.methods._value import ValueSearch
from kedit.model.arch import layer_path


@dataclass(kw_only=True)
class PMETConfig(SpreadConfig):
    """PMET hyperparameters (defaults: the PMET repository's GPT-J configuration).

    Args:
        mom2_update_weight: lambda, the weight of the preserved keys' second moment.
        nll_factor: weight of the NLL term in the target search.
    """

    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    mom2_update_weight: float = 6000.0
    nll_factor: float = 1.0
    v_num_grad_steps: int = 30
    v_lr: float = 0.2
    kl_factor: float = 1.0

    def validate(self) -> None:
        super().validate()
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


class PMET(SpreadMethod):
    """Attention and FFN targets at the top layer; FFN-only multi-layer update."""

    name = "pmet"
    display_name = "PMET"
    paper = "Li et al. 2024"
    family = "locate-and-edit"
    config_cls = PMETConfig

    def target_paths(self, model: nn.Module) -> tuple[str, list[str]]:
        """Targets for the top layer's FFN output; v* searched there and at its attention
        output together (the FFN's is ``targets[0]``)."""
        top = last_layer(model, self.config.layers)
        ffn, attn = layer_path(model, "mlp_out", top), layer_path(model, "attn_out", top)
        return ffn, [ffn, attn]

    def share(self, layers_left: int) -> float:
        return 1.0 / math.sqrt(layers_left)

    def solve(self, layer: LayerUpdate) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.residual, memit_solve(layer.mom2, layer.keys, self.config.mom2_update_weight)
