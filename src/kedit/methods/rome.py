"""ROME: Rank-One Model Editing.

Meng, Bau, Andonian, Belinkov. "Locating and Editing Factual Associations in GPT", NeurIPS 2022.
https://arxiv.org/abs/2202.05262

The MLP output projection ``W`` of one middle layer is treated as a linear associative memory
that maps a key ``k`` (the projection's input at the subject's last token) to a value ``v``.
ROME writes the new fact with the rank-one update that minimises the change on other keys
(weighted by their second moment ``C = E[k k^T]``) subject to ``W' k* = v*``:

    W' = W + (v* - W k) (C^{-1} k*)^T / ((C^{-1} k*)^T k)

1. ``k*``: the key averaged over the prompt preceded by sampled context templates.
2. ``v*``: the value that makes the model output the new target (``methods/_value.py``).
3. ``u = C^{-1} k* / ||C^{-1} k*||`` and ``right = (v* - W k) / (k . u)``, with ``k`` and
   ``W k`` from the bare prompt, as the reference code does; ``W += right u^T``.

Modifies one weight matrix. Edits one fact per call; for many facts use sequential editing or
MEMIT. The key averaging mismatch between steps 1 and 3 is the original code's and is kept here
for fidelity (r-ROME fixes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._keys import mean_key, subject_io
from kedit.methods._stats import second_moments
from kedit.methods._templates import context_templates
from kedit.methods._value import ValueSearch, optimise_value
from kedit.methods._weights import low_rank_delta
from kedit.methods.base import Edit, EditMethod, hf_module
from kedit.model.arch import get_module, layer_path
from kedit.types import EditRequest


@dataclass(kw_only=True)
class ROMEConfig(MethodConfig):
    """ROME hyperparameters (defaults: the paper's GPT-2 XL configuration).

    Args:
        layer: block whose MLP output projection is rewritten (negative counts from the end).
        v_num_grad_steps: maximum Adam steps for v*.
        v_lr: learning rate for v*.
        v_weight_decay: weight of ||delta|| / ||v||^2 in the v* loss.
        clamp_norm_factor: v* delta is kept within this multiple of ||v||.
        kl_factor: weight of the KL term that keeps "{subject} is a" predictions.
        mom2_adjustment: weigh the update by the inverse key second moment C^-1 (the paper);
            False uses C = I.
        mom2_n_samples: corpus documents for C (the paper's 100,000; all if fewer).
        mom2_dtype: precision in which C is accumulated.
        context_template_length_params: [n_tokens, count] of sampled context prefixes.
    """

    layer: int = 17
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    mom2_adjustment: bool = True
    mom2_n_samples: int = 100_000
    mom2_dtype: str = "float32"
    context_template_length_params: list[list[int]] = field(
        default_factory=lambda: [[5, 10], [10, 10]]
    )

    def validate(self) -> None:
        if self.v_num_grad_steps < 1:
            raise ValueError("v_num_grad_steps must be at least 1")
        if self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise ValueError("v_lr and clamp_norm_factor must be positive")
        if self.mom2_n_samples < 1:
            raise ValueError("mom2_n_samples must be at least 1")
        if any(len(p) != 2 or min(p) < 1 for p in self.context_template_length_params):
            raise ValueError("context_template_length_params holds [n_tokens, count] pairs >= 1")


class ROME(EditMethod):
    """Rank-one update of one MLP output projection."""

    name = "rome"
    config_cls = ROMEConfig
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
        path = layer_path(model, "mlp_out", cfg.layer)
        module = get_module(model, path)
        templates = context_templates(model, tok, self.env, cfg.context_template_length_params)

        k_star = mean_key(model, tok, request, templates, path)  # (d_in,)
        u = self._inverse_cov_times(model, tok, path, k_star)  # (d_in,)
        value = optimise_value(model, tok, request, _flat(templates), path, self._search())
        k, v = subject_io(model, tok, [(request.text, request.subject_span)], path)
        right = (value.target - v[0]) / (k[0] @ u)  # (d_out,)

        edit.add_delta(module.weight, low_rank_delta(module, right, u))
        edit.info.update(
            layer=path,
            v_steps=value.steps,
            v_loss=value.loss,
            delta_norm=float(right.norm() * u.norm()),
        )

    def _inverse_cov_times(
        self, model: nn.Module, tok: PreTrainedTokenizerBase, path: str, key: torch.Tensor
    ) -> torch.Tensor:
        """``C^{-1} k / ||C^{-1} k||`` (or ``k / ||k||`` without mom2 adjustment)."""
        if self.config.mom2_adjustment:
            mom2 = second_moments(
                model, tok, [path], self.env, self.config.mom2_n_samples, self.config.mom2_dtype
            )[path]
            u = torch.linalg.solve(mom2.double(), key.double().cpu()).to(key)
        else:
            u = key
        return u / u.norm()

    def _search(self) -> ValueSearch:
        cfg = self.config
        return ValueSearch(
            cfg.v_num_grad_steps, cfg.v_lr, cfg.v_weight_decay, cfg.clamp_norm_factor, cfg.kl_factor
        )


def _flat(groups: list[list[str]]) -> list[str]:
    return [t for group in groups for t in group]
