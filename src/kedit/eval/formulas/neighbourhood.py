"""Neighbourhood KL (CounterFact+, ``apartresearch/specificityplus``)."""

from __future__ import annotations

import torch


def next_token_kl(
    pre_logits: torch.Tensor, post_logits: torch.Tensor, *, vocab_mean: bool = False
) -> torch.Tensor:
    """``KL(P_post ‖ P_pre)`` of next-token distributions, one value per row, in nats.

    ``pre_logits`` / ``post_logits`` have shape ``[V]`` or ``[N, V]``: the logits (or already
    log-softmaxed log-probabilities; ``log_softmax`` leaves those unchanged) at the *single*
    position that predicts the first token after the prompt, from the unedited and the edited
    model. CounterFact+ computes ``kl_div(-lp_unedited, -lp_edited, log_target=True)`` on the
    negated log-probabilities it saves; that equals ``KL(P_edited ‖ P_unedited)``, the direction
    used here. Nothing is averaged over answer tokens or positions: only the first next token.

    ``vocab_mean=True`` divides by V, as ``reduction='batchmean'`` does on their 1-D ``[V]``
    tensors; use it only to match published NKL numbers. Computed in float64.
    """
    if not isinstance(pre_logits, torch.Tensor) or not isinstance(post_logits, torch.Tensor):
        raise ValueError("pre_logits and post_logits must be tensors")
    if pre_logits.shape != post_logits.shape:
        raise ValueError(
            f"pre_logits and post_logits differ in shape: "
            f"{tuple(pre_logits.shape)} vs {tuple(post_logits.shape)}"
        )
    if pre_logits.dim() not in (1, 2) or pre_logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty [V] or [N, V] tensor, got {pre_logits.shape}")
    if not pre_logits.is_floating_point() or not post_logits.is_floating_point():
        raise ValueError("logits must be floating point")
    if torch.isnan(pre_logits).any() or torch.isnan(post_logits).any():
        raise ValueError("logits contain NaN")
    lp_pre = torch.log_softmax(pre_logits.to(torch.float64), dim=-1)
    lp_post = torch.log_softmax(post_logits.to(torch.float64), dim=-1)
    p_post = lp_post.exp()
    # tokens the edited model rules out (p = 0) contribute 0, not 0 * (-inf) = NaN
    terms = torch.where(p_post > 0, p_post * (lp_post - lp_pre), torch.zeros_like(p_post))
    kl = terms.sum(dim=-1).clamp_min(0.0)
    if vocab_mean:
        kl = kl / pre_logits.shape[-1]
    return kl


def neighbourhood_kl(
    pre_logits: torch.Tensor, post_logits: torch.Tensor, *, vocab_mean: bool = False
) -> float:
    """NKL of one case: the mean of :func:`next_token_kl` over its neighbourhood prompts.

    Pass the N prompts' (or, separately, the N+ distracting prompts') rows as ``[N, V]``.
    CounterFact+ averages over prompts within a case and prompt type, then over cases; do the
    second mean over this function's results. Lower is better.
    """
    return float(next_token_kl(pre_logits, post_logits, vocab_mean=vocab_mean).mean())
