"""AlphaEdit: null-space constrained knowledge editing.

Fang, Jiang, Wang, Ma, Shi, Wang, He, Chua. "AlphaEdit: Null-Space Constrained Knowledge Editing
for Language Models", ICLR 2025. https://arxiv.org/abs/2410.02355

MEMIT's multi-layer update, projected so that it cannot disturb preserved knowledge: ``P``
projects onto the (near-)null space of the preserved keys' second moment ``C = E[k k^T]``
(eigenvectors whose eigenvalue is below ``nullspace_threshold``), so ``dW k0 ~ 0`` for the keys
``k0`` of the corpus. Each layer solves

    dW^T = (P (K K^T + K_p K_p^T) + alpha I)^{-1} P K R^T

where ``K_p`` are the keys of facts edited earlier in the same :class:`EditSession` (kept in
the session, not in a global), so later edits also leave earlier ones in place; the solution
lies in the range of ``P`` by construction. The residual is shared between layers as in MEMIT.
Designed for sequential editing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._keys import SubjectPasses, mean_keys
from kedit.methods._spread import LayerUpdate, SpreadConfig, SpreadMethod
from kedit.methods.edit import Edit
from kedit.types import EditRequest

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AlphaEditConfig(SpreadConfig):
    """AlphaEdit hyperparameters (defaults: the paper's GPT-2 XL configuration).

    Args:
        nullspace_threshold: eigenvalues of C below this span the protected null space.
        l2_weight: alpha, the ridge on the update.
    """

    nullspace_threshold: float = 2e-2
    l2_weight: float = 10.0

    def validate(self) -> None:
        super().validate()
        if self.nullspace_threshold <= 0 or self.l2_weight <= 0:
            raise ValueError("nullspace_threshold and l2_weight must be positive")


class EditedKeys:
    """Keys of the facts edited so far at one layer, as the factors of ``K_p K_p^T``.

    Kept as factors, so a session's memory grows by ``d_in`` numbers per edit rather than a
    ``d_in x d_in`` copy, and rolling back is exact (drop the last factors).
    """

    def __init__(self) -> None:
        self.factors: list[torch.Tensor] = []

    def second_moment(self, d_in: int, device: torch.device) -> torch.Tensor:
        if not self.factors:
            return torch.zeros(d_in, d_in, dtype=torch.float64, device=device)
        keys = torch.cat(self.factors, 1).to(device, torch.float64)  # (d_in, total)
        return keys @ keys.T

    def get_state(self) -> int:
        return len(self.factors)

    def set_state(self, state: int) -> None:
        del self.factors[state:]


class AlphaEdit(SpreadMethod):
    """MEMIT-style update projected onto the null space of preserved keys."""

    name = "alphaedit"
    display_name = "AlphaEdit"
    paper = "Fang et al. 2025"
    family = "locate-and-edit"
    config_cls = AlphaEditConfig

    def solve(self, layer: LayerUpdate) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, (P (K K^T + K_p K_p^T) + alpha I)^{-1} P K)``; the in-factor lies in range(P)."""
        keys = layer.keys
        d_in = keys.shape[0]
        project = self._projector(layer.model, layer.path, layer.mom2).to(
            keys.device, torch.float64
        )
        preserved = layer.edit.state.setdefault(("alphaedit", layer.path), EditedKeys())
        system = project @ (keys @ keys.T + preserved.second_moment(d_in, keys.device))
        system += self.config.l2_weight * torch.eye(d_in, dtype=keys.dtype, device=keys.device)
        return layer.residual, torch.linalg.solve(system, project @ keys)

    def _projector(self, model: nn.Module, path: str, mom2: torch.Tensor) -> torch.Tensor:
        """``P = U0 U0^T`` over the eigenvectors of C with eigenvalue below the threshold
        (cached for this environment; stored in float32)."""
        cfg = self.config
        key = (
            "alphaedit-projector",
            self.env.fingerprint(model),
            path,
            cfg.nullspace_threshold,
            cfg.mom2_n_samples,
            str(cfg.mom2_dynamic_multiplier),
            cfg.mom2_dtype,
        )

        def compute() -> torch.Tensor:
            eigenvalues, eigenvectors = torch.linalg.eigh(mom2.double())
            null = eigenvectors[:, eigenvalues < cfg.nullspace_threshold]
            log.info(
                "AlphaEdit null space at %s: %d of %d directions",
                path,
                null.shape[1],
                mom2.shape[0],
            )
            return (null @ null.T).float()  # (d_in, d_in)

        return self.env.memo(key, compute)

    def after_update(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        templates: list[list[str]],
        paths: list[str],
        edit: Edit,
        key_passes: SubjectPasses,
    ) -> None:
        """Add this batch's keys, recomputed on the edited model as the reference does, to
        the session's preserved keys."""
        for path in paths:
            keys = mean_keys(model, tok, requests, templates, path, True, key_passes).T
            cache = edit.state[("alphaedit", path)]
            edit.save_state(cache)
            cache.factors.append(keys.detach().cpu())
