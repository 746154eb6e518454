"""Probabilities of facts (the ROME / Pitfalls conventions) and divergences."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kedit.eval.formulas._checks import (
    FloatsLike,
    _distribution,
    _floats,
    _mean,
    _probabilities,
    _same_length,
)


def length_normalised_probability(token_logprobs: FloatsLike) -> float:
    """``exp(mean_j log p(o_j | prompt, o_<j))``: P(o|p) of ROME, CounterFact+ and Pitfalls.

    ``token_logprobs`` are the teacher-forced log-probabilities of the answer tokens (natural
    log, as ``log_softmax`` gives them), scored with a leading space on the answer.
    """
    lps = _floats(token_logprobs, "token_logprobs")
    if any(v > 0 for v in lps):
        raise ValueError("token_logprobs must be <= 0 (log-probabilities)")
    return math.exp(_mean(lps))


def fact_probability(prompt_mean_logprobs: FloatsLike) -> float:
    """Score of one fact in Pitfalls (RoundEdit / ConflictEdit): the mean over prompts of the
    length-normalised probability.

    ``prompt_mean_logprobs[j]`` is the mean token log-probability of the object after prompt j
    (the rewrite prompt plus the relation's paraphrase prompts from ``round_prompts.json`` /
    ``conflict_prompts.json``). Pitfalls averages *probabilities*, ``mean_j exp(lp_j)``, not
    log-probabilities, so one confident prompt can dominate; we keep that for parity.
    """
    lps = _floats(prompt_mean_logprobs, "prompt_mean_logprobs")
    if any(v > 0 for v in lps):
        raise ValueError("prompt_mean_logprobs must be <= 0 (log-probabilities)")
    return _mean([math.exp(v) for v in lps])


def l1_normalise(probs: FloatsLike) -> torch.Tensor:
    """Divide non-negative scores by their sum, as ``F.normalize(p=1, dim=0)`` in Pitfalls.

    Differs from the reference only where it would divide by ~0: ``F.normalize`` clamps the norm
    at 1e-12 and returns (near) zeros, which is not a distribution; we raise instead.
    """
    t = torch.as_tensor(_probabilities(probs, "probs"), dtype=torch.float64)
    total = float(t.sum())
    if total <= 0.0:
        raise ValueError("probs sum to 0; there is no distribution to normalise")
    return t / total


def candidate_distribution(candidate_prompt_logprobs: Sequence[FloatsLike]) -> torch.Tensor:
    """The distribution over a candidate-object set that RoundEdit's distortion compares.

    ``candidate_prompt_logprobs[i]`` holds candidate i's mean token log-probability on each
    prompt. Each candidate gets :func:`fact_probability` (mean over prompts of exp(lp)), and the
    vector is L1-normalised over the candidates, as ``summarize.py::js_div`` does. Pitfalls puts
    the edit's target first, ``[P(o), P(o_i) for o_i in Obj - {o}]``; any order works as long as
    the pre- and post-edit vectors use the same one.
    """
    if len(candidate_prompt_logprobs) == 0:
        raise ValueError("candidate_prompt_logprobs is empty")
    return l1_normalise([fact_probability(row) for row in candidate_prompt_logprobs])


def _kl_nats(p: torch.Tensor, q: torch.Tensor) -> float:
    # xlogy makes 0 * log 0 = 0; a term with p > 0 and q = 0 is +inf, as it should be
    return float((torch.xlogy(p, p) - torch.xlogy(p, q)).sum())


def _check_base(base: float) -> None:
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise ValueError(f"base must be positive, finite and != 1, got {base!r}")


def kl_divergence(p: FloatsLike, q: FloatsLike, *, base: float = math.e) -> float:
    """``KL(p || q) = sum_i p_i log(p_i / q_i)`` of two distributions, natural log by default."""
    _check_base(base)
    pt, qt = _distribution(p, "p"), _distribution(q, "q")
    _same_length(pt, qt, "p", "q")
    return max(_kl_nats(pt, qt), 0.0) / math.log(base)


def js_divergence(
    p: FloatsLike, q: FloatsLike, *, base: float = math.e, size_mean: bool = False
) -> float:
    """Jensen-Shannon divergence ``½KL(p‖m) + ½KL(q‖m)``, ``m = (p + q) / 2``.

    Natural log by default, as Pitfalls' ``js_div`` (``torch.nn.KLDivLoss``), so it lies in
    [0, ln 2]; ``base=2`` gives bits, in [0, 1]. Inputs must already be distributions (see
    :func:`l1_normalise`): Pitfalls normalises inside ``js_div``, we make it the caller's step so
    that a forgotten normalisation is an error rather than a silent rescaling.

    ``size_mean=True`` reproduces ``KLDivLoss(reduction='batchmean')`` applied to 1-D tensors,
    which divides by the number of elements; use it only to match published RoundEdit numbers.
    """
    _check_base(base)
    pt, qt = _distribution(p, "p"), _distribution(q, "q")
    _same_length(pt, qt, "p", "q")
    m = (pt + qt) / 2
    js = max(0.5 * (_kl_nats(pt, m) + _kl_nats(qt, m)), 0.0)
    if size_mean:
        js /= pt.numel()
    return js / math.log(base)
