"""Training an addition to the last residual stream without running the blocks below it.

A method that trains only something added to the residual stream after the last block (T-Patcher's
neurons beside the last FFN) sees the same blocks' outputs at every step: the logits are
``unembed(final_norm(resid + added))``, with ``resid`` fixed. :class:`HeadPass` records ``resid``
once and computes the logits from it, a pass through the final norm and the unembedding alone.
Whether that holds for a model (no post-FFN norm, no logit soft-capping, the addition really
after the last block) is checked, not assumed: :meth:`HeadPass.matches` compares it with a full
pass, and the caller keeps the full pass where it does not match.
"""

from __future__ import annotations

import torch
from torch import nn

from kedit.model.arch import arch_of, get_module
from kedit.model.hooks import Trace
from kedit.model.tokens import Batch


class HeadPass:
    """The logits of ``batch`` as a function of an addition to the residual stream just before
    the final norm, for a model whose weights stay fixed."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, batch: Batch) -> None:
        arch = arch_of(model)
        self.norm = get_module(model, arch.path("final_norm"))
        self.unembed = get_module(model, arch.path("unembed"))
        with Trace(model, arch.path("final_norm"), retain_input=True) as trace:
            model(**batch.model_inputs(), use_cache=False)
        self.resid = trace.input  # (batch, seq, d_model)

    def logits(self, added: torch.Tensor) -> torch.Tensor:
        """``(batch, seq, vocab)`` with ``added`` (batch, seq, d_model) in the residual stream."""
        return self.unembed(self.norm(self.resid + added.to(self.resid.dtype)))

    def matches(self, added: torch.Tensor, full_logits: torch.Tensor) -> bool:
        """Whether :meth:`logits` of ``added`` equals a full pass's logits with it, to float
        noise (relative to the logits' scale)."""
        with torch.no_grad():
            fast = self.logits(added).float()
        scale = full_logits.detach().float().abs().max().clamp_min(1.0)
        return bool((fast - full_logits.detach().float()).abs().max() <= 1e-4 * scale)
