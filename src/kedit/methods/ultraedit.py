"""UltraEdit: lifelong editing with one closed-form step per turn, no training and no subject.

Gu, Chen, Li, Yang, Li, Fang, Zhang, Wang, Chen, Huang, Liu. "UltraEdit: Training-, Subject-,
and Memory-Free Lifelong Editing in Large Language Models", TMLR 2026.
https://arxiv.org/abs/2505.14679 (reference: ``XiaojieGu/UltraEdit``, ``editor/ultraedit.py``)

One call (an edit turn) with a batch of requests:

1. Run ``prompt + target[:-1]`` forward and the cross-entropy of the target tokens backward (in
   groups of ``pass_size`` requests, the loss a mean over the group's target tokens). At every
   edited linear module and every position that predicts a target token, keep the module's input
   ``k`` (the key) and the gradient ``g`` of the loss at its output.
2. Lifelong normalisation: running mean and standard deviation of ``[k, g]`` over every turn so
   far (one per module shape, this turn's tokens merged in first); ``[k^, g^]`` standardised.
3. Target values ``v = -lr * ||k^||^2 * g^`` per token.
4. Per module, the ridge solution ``dW = (K^T K + ridge I)^{-1} K^T V`` with the raw keys of this
   turn, applied as ``W += dW^T``: rank at most the number of target tokens.

The normalisers live in the session's state, so later turns standardise against every earlier
one and rolling an edit back rolls its statistics back too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._grads import keys_and_gradients, linear_paths
from kedit.methods._weights import low_rank_delta
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import get_module
from kedit.model.lm import hf_module
from kedit.types import EditRequest


@dataclass(kw_only=True)
class UltraEditConfig(MethodConfig):
    """UltraEdit hyperparameters (defaults: the reference's GPT-J modules, counted from the
    end, and its ``editor`` settings).

    Args:
        modules: edited linear modules: a canonical part (``mlp_out``, ``mlp_in`` for both of
            a gated MLP's input projections) or a module path inside a block
            (``mlp.gate_proj``), mapped to its layers (negative counts from the end).
        lr: the step of the target values (the reference's ``editor.lr``).
        ridge: weight of ``||dW||^2`` in the closed-form solve (the reference's identity).
        pass_size: requests per forward and backward pass (the reference's
            ``dataset.batch_size``); the loss is a mean over a pass's target tokens.
        tokens: positions whose keys and gradients are kept: those predicting target tokens
            (``target``, the reference's ``token: ans``) or every position (``all``).
    """

    modules: dict[str, list[int]] = field(
        default_factory=lambda: {"mlp_out": [-10, -9, -8, -7, -6, -5, -4, -3, -2]}
    )
    lr: float = 1e-6
    ridge: float = 1.0
    pass_size: int = 10
    tokens: Literal["target", "all"] = "target"

    def validate(self) -> None:
        if not self.modules or not all(self.modules.values()):
            raise ValueError("modules maps each edited module to at least one layer")
        if self.lr <= 0 or self.ridge <= 0 or self.pass_size < 1:
            raise ValueError("lr and ridge must be positive, pass_size at least 1")
        if self.tokens not in ("target", "all"):
            raise ValueError("tokens is 'target' or 'all'")


class RunningNormaliser:
    """Running mean and variance of ``[k, g]`` rows over every turn (Chan et al.'s merge of
    batch statistics), and the standardisation ``(x - mean) / (std + eps)``.

    The reference adds ``n_b * var_b`` (the unbiased variance) per batch where the exact merge
    adds the batch's sum of squared deviations, ``(n_b - 1) * var_b``; kedit merges exactly.
    """

    def __init__(self, width: int) -> None:
        self.count = 0
        self.mean = torch.zeros(width, dtype=torch.float64)
        self.squares = torch.zeros(width, dtype=torch.float64)  # sum of squared deviations

    def update(self, rows: torch.Tensor) -> None:
        rows = rows.detach().to("cpu", torch.float64)  # (n, width)
        n, batch_mean = rows.shape[0], rows.mean(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.squares = (
            self.squares + ((rows - batch_mean) ** 2).sum(0) + delta**2 * self.count * n / total
        )
        self.mean = self.mean + delta * n / total
        self.count = total

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        std = (self.squares / (self.count - 1)).sqrt().to(rows.device, rows.dtype)
        eps = torch.finfo(rows.dtype).eps
        return (rows - self.mean.to(rows.device, rows.dtype)) / (std + eps)

    def get_state(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        return self.count, self.mean, self.squares

    def set_state(self, state: tuple[int, torch.Tensor, torch.Tensor]) -> None:
        self.count, self.mean, self.squares = state


class UltraEdit(EditMethod):
    """Lifelong closed-form editing from normalised keys and gradients."""

    name = "ultraedit"
    display_name = "UltraEdit"
    paper = "Gu et al. 2026"
    family = "locate-and-edit"
    config_cls = UltraEditConfig
    supports_batch = True

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        paths = self.module_paths(model)
        keys, grads = keys_and_gradients(
            model,
            tok,
            [(r.text, r.target_new) for r in requests],
            paths,
            self.config.pass_size,
            self.config.tokens,
        )
        rows = {p: torch.cat([keys[p], grads[p]], 1) for p in paths}  # (tokens, d_in + d_out)
        normalisers = {
            p: self._normaliser(edit, keys[p].shape[1], grads[p].shape[1]) for p in paths
        }
        # every module's rows are merged first, then each is standardised (the reference's cache
        # step before its solve): modules of one shape share one normaliser
        for normaliser in {id(n): n for n in normalisers.values()}.values():
            edit.save_state(normaliser)
        for p in paths:
            normalisers[p].update(rows[p])
        if min(n.count for n in normalisers.values()) < 2:
            raise ValueError(
                "UltraEdit standardises keys and gradients over every target token it has "
                "seen, so its first edit needs at least two: edit a batch of requests (it "
                "is a batch, lifelong editor) or a target of several tokens"
            )
        for p in paths:
            d_in = keys[p].shape[1]
            k_hat, g_hat = normalisers[p](rows[p]).split([d_in, rows[p].shape[1] - d_in], 1)
            values = (
                -self.config.lr * (k_hat * k_hat).sum(1, keepdim=True) * g_hat
            )  # (tokens, d_out)
            out_factor, in_factor = self._ridge(keys[p], values)
            module = get_module(model, p)
            edit.add_delta(module.weight, low_rank_delta(module, out_factor, in_factor))
        edit.info.update(tokens=int(next(iter(keys.values())).shape[0]), modules=len(paths))

    def module_paths(self, model: nn.Module) -> list[str]:
        """The edited modules' paths, in the order of ``modules``."""
        return linear_paths(model, self.config.modules, self.name)

    def _normaliser(self, edit: Edit, d_in: int, d_out: int) -> RunningNormaliser:
        """The session's normaliser for modules of this shape (shared by them, as in the
        reference)."""
        return edit.state.setdefault(("ultraedit", d_in, d_out), RunningNormaliser(d_in + d_out))

    def _ridge(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``dW^T = V^T K (K^T K + ridge I)^{-1}`` as ``(out_factor, in_factor)``: ``(d_out, n)``
        and ``(d_in, n)``, in float64."""
        k = keys.double()  # (n, d_in)
        system = k.T @ k + self.config.ridge * torch.eye(k.shape[1], dtype=k.dtype, device=k.device)
        return values.double().T, torch.linalg.solve(system, k.T)
