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

from dataclasses import dataclass

import torch

from kedit.methods._spread import LayerUpdate, SpreadConfig, SpreadMethod, memit_solve


@dataclass(kw_only=True)
class MEMITConfig(SpreadConfig):
    """MEMIT hyperparameters (defaults: the paper's GPT-2 XL configuration; layers, v* and
    statistics fields on :class:`SpreadConfig`).

    Args:
        mom2_update_weight: lambda, the weight of the preserved keys' second moment.
    """

    mom2_update_weight: float = 20000.0

    def validate(self) -> None:
        super().validate()
        if self.mom2_update_weight < 0:
            raise ValueError("mom2_update_weight must be non-negative")


class MEMIT(SpreadMethod):
    """Batched multi-layer least-squares update of MLP output projections."""

    name = "memit"
    display_name = "MEMIT"
    paper = "Meng et al. 2023"
    family = "locate-and-edit"
    config_cls = MEMITConfig

    def solve(self, layer: LayerUpdate) -> tuple[torch.Tensor, torch.Tensor]:
        """``dW = R K^T (lambda C + K K^T)^{-1}`` as factors: ``(R, (lambda C + K K^T)^{-1} K)``."""
        return layer.residual, memit_solve(layer.mom2, layer.keys, self.config.mom2_update_weight)
