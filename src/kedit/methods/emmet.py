"""EMMET: Equality-constrained Mass Model Editing in a Transformer.

Gupta, Sajnani, Anumanchipalli. "A Unified Framework for Model Editing", EMNLP Findings 2024.
https://arxiv.org/abs/2403.14236

ROME and MEMIT as one preservation-memorisation objective: keep the outputs of preserved keys
(weighted by ``C = E[k k^T]``) while writing the batch's keys ``K`` to their values *exactly*
(ROME's equality constraint, for many facts at once; MEMIT relaxes it to least squares):

    dW = R D^{-1} K^T C_l^{-1},   C_l = lambda C + mu I,   D = K^T C_l^{-1} K (+ eps I, n > 1)

with ``R`` the residual at the layer (shared between layers as in MEMIT). For one fact this is
ROME's update with the averaged key on both sides. ``eps`` (``emmet_lambda``) only conditions D
for batches; with it at 0, ``dW K = R`` holds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kedit.methods._spread import LayerUpdate, SpreadConfig, SpreadMethod


@dataclass(kw_only=True)
class EMMETConfig(SpreadConfig):
    """EMMET hyperparameters (defaults: the unified-model-editing repo's GPT-2 XL setting).

    Args:
        mom2_update_weight: lambda, the scale of C (with ``update_norm_lambda`` = 0 it only
            sets how strongly ``emmet_lambda`` regularises D).
        emmet_lambda: ridge added to D for batches of more than one fact.
        update_norm_lambda: mu, a ridge on C itself.
    """

    layers: list[int] = field(default_factory=lambda: [17])
    mom2_update_weight: float = 1000.0
    emmet_lambda: float = 0.1
    update_norm_lambda: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.mom2_update_weight <= 0 or self.emmet_lambda < 0 or self.update_norm_lambda < 0:
            raise ValueError("mom2_update_weight must be positive; the lambdas non-negative")


class EMMET(SpreadMethod):
    """Equality-constrained batched update of MLP output projections."""

    name = "emmet"
    display_name = "EMMET"
    paper = "Gupta et al. 2024"
    family = "locate-and-edit"
    config_cls = EMMETConfig

    def solve(self, layer: LayerUpdate) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R D^{-1}, C_l^{-1} K)``: the factors of EMMET's update, in float64."""
        cfg, keys = self.config, layer.keys
        d_in, n = keys.shape
        eye = torch.eye(d_in, dtype=torch.float64, device=keys.device)
        c_l = cfg.mom2_update_weight * layer.mom2.to(keys.device, torch.float64)
        c_l = c_l + cfg.update_norm_lambda * eye
        c_inv_keys = torch.linalg.solve(c_l, keys)  # (d_in, n)
        d = keys.T @ c_inv_keys  # (n, n)
        if n > 1:
            d = d + cfg.emmet_lambda * torch.eye(n, dtype=torch.float64, device=keys.device)
        out_factor = torch.linalg.solve(d.T, layer.residual.T).T  # R D^{-1}, (d_out, n)
        return out_factor, c_inv_keys
