"""MEND: Model Editor Networks with Gradient Decomposition.

Mitchell, Lin, Bosselut, Finn, Manning. "Fast Model Editing at Scale", ICLR 2022.
https://arxiv.org/abs/2110.11309 (reference: ``eric-mitchell/mend``, ``algs/mend.py``, ``nn.py``)

The gradient of a linear layer is a sum of rank-one terms, ``dL/dW = sum_t d_t x_t^T`` (``x_t``
its input at token ``t``, ``d_t`` the loss gradient at its output). MEND edits with:

1. One forward and backward pass of the edit's target NLL (prompt + target, labels on the
   target) gives ``x_t`` and ``d_t`` at every edited matrix and every token with a gradient.
2. Per matrix shape, a network ``g`` standardises ``[x_t; d_t]`` with running statistics and
   maps it through two identity-initialised low-rank residual layers (``h + ReLU(U V h + b)``,
   ``U = 0`` at the start, per-matrix scale and shift), giving ``[x~_t; d~_t]``.
3. ``W <- W - a_W sum_t d~_t x~_t^T``, with a learned step ``a_W`` per matrix. A batch of edits
   sums its pseudo-gradients, as MEND does.

Training (``kedit train --method mend``) minimises ``cedit * NLL(edit and paraphrases after the
edit) + cloc * KL(pre || post on unrelated prompts)`` with Adam (``lr`` on the network, ``lr_lr``
on the steps), gradients accumulated over ``accumulate`` batches and clipped.

Deviation, on purpose: the paper writes ``W - a dW~``; the reference code adds ``a dW~`` with
``a > 0`` at the start, so an untrained MEND steps *up* the loss until training flips a sign.
kedit descends from the start (the paper's formula): an untrained MEND is one gradient step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._grads import keys_and_gradients
from kedit.methods._hypernet import ShapeSharedEditor, Shift
from kedit.methods._meta import MetaConfig, MetaMethod
from kedit.types import EditRequest


@dataclass(kw_only=True)
class MENDConfig(MetaConfig):
    """MEND hyperparameters (defaults: the reference's ``config/alg/mend.yaml`` and
    ``config/config.yaml``; edited modules: the last three MLPs, as for GPT-2 and EasyEdit's
    Llama).

    Args:
        rank: rank of each low-rank residual layer (capped at its width).
        n_hidden: hidden layers of the network (``n_hidden + 1`` residual layers).
        edit_lr: initial step ``a_W`` of every edited matrix.
        lr_lr: learning rate of the steps.
    """

    batch_size: int = 2  # config/config.yaml: two edits applied together per batch
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    lr_lr: float = 1e-4
    accumulate: int = 10

    def validate(self) -> None:
        super().validate()
        if self.rank < 1 or self.n_hidden < 0:
            raise ValueError("rank must be at least 1, n_hidden at least 0")
        if self.edit_lr <= 0 or self.lr_lr <= 0:
            raise ValueError("edit_lr and lr_lr must be positive")


class LowRankResidual(nn.Module):
    """``h + ReLU((U V h + b) * scale_m + shift_m)``: identity at the start (``U = 0``), with a
    scale and shift per matrix ``m`` sharing the network."""

    def __init__(self, width: int, rank: int, n_modes: int) -> None:
        super().__init__()
        rank = min(rank, width)
        self.u = nn.Parameter(torch.zeros(width, rank))
        self.v = nn.Parameter(torch.randn(rank, width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, width))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, width))

    def forward(self, h: torch.Tensor, mode: int) -> torch.Tensor:  # (n, width)
        pre = (h @ self.v.T) @ self.u.T + self.bias
        return h + torch.relu(pre * self.mode_scale[mode] + self.mode_shift[mode])


class MENDEditor(ShapeSharedEditor):
    """MEND's ``g`` per matrix shape (``n_hidden + 1`` :class:`LowRankResidual` layers on
    standardised ``[x; delta]``) and a step ``a_W`` per edited matrix."""

    def __init__(self, shapes: Sequence[tuple[int, int]], config: MENDConfig) -> None:
        super().__init__(
            shapes,
            lambda width, n_modes: LowRankResidual(width, config.rank, n_modes),
            config.n_hidden + 1,
            config.edit_lr,
        )


class MEND(MetaMethod):
    """Gradient-decomposition hypernetwork editor."""

    name = "mend"
    display_name = "MEND"
    paper = "Mitchell et al. 2022"
    config_cls = MENDConfig
    supports_batch = True

    def build_editor(self, model: nn.Module) -> MENDEditor:
        return MENDEditor(self.module_shapes(model), self.config)

    def optimiser(self, editor: nn.Module) -> torch.optim.Optimizer:
        """Adam on the networks at ``lr`` and on the steps at ``lr_lr`` (the reference's two
        optimisers, stepped together)."""
        assert isinstance(editor, MENDEditor)
        return torch.optim.Adam(
            [
                {"params": list(editor.nets.parameters()), "lr": self.config.lr},
                {"params": [editor.edit_lrs], "lr": self.config.lr_lr},
            ]
        )

    def shifts(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        editor: nn.Module,
    ) -> dict[str, Shift]:
        assert isinstance(editor, MENDEditor)
        paths = self.module_paths(model)
        pairs = [(r.text, r.target_new) for r in requests]
        # every token of every request in one pass, the NLL a mean over the target tokens
        keys, grads = keys_and_gradients(model, tok, pairs, paths, len(pairs), tokens="all")
        shifts = {}
        for index, path in enumerate(paths):
            rows = (keys[path] != 0).any(1) & (grads[path] != 0).any(1)  # tokens with a gradient
            keys_t, grads_t = editor.transform(index, keys[path][rows], grads[path][rows])
            # (tokens, d_in), (tokens, d_out); W - a sum_t d~_t x~_t^T, factors of rank <= tokens
            shifts[path] = Shift(left=-editor.edit_lrs[index] * grads_t.T, right=keys_t.T)
        return shifts
