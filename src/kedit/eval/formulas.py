"""Formulas behind the pitfalls-audit measures, as pure functions of numbers and strings.

Nothing here calls a model: callers pass log-probabilities, probabilities, logits, generated
texts or per-case flags (as the batched scorer produces them) and get numbers back. Each function
follows one reference implementation, named in its docstring together with any place where we
deliberately differ. Definitions are those of PART B (sections B3, B6, B7, B8, B11, B13) of the
project's reference notes ``methods-parameter-preserving-and-metrics.md``.

Contents:

* probabilities of facts: :func:`length_normalised_probability`, :func:`fact_probability`,
  :func:`l1_normalise`, :func:`candidate_distribution` (the Pitfalls / ROME conventions);
* divergences: :func:`kl_divergence`, :func:`js_divergence` (natural log unless told otherwise);
* RoundEdit (Li et al. 2024, ``zjunlp/PitfallsKnowledgeEditing`` ``experiments/summarize.py``):
  :func:`round_edit_success`, :func:`knowledge_distortion`, :func:`ignore_rate`,
  :func:`is_failure`, :func:`round_edit_case`, :func:`round_edit_summary`;
* ConflictEdit (same repo): :func:`conflict_score`, :func:`conflict_magnitude`,
  :func:`tied_fact_damage`, :func:`coverage_success`;
* neighbourhood KL (CounterFact+, ``apartresearch/specificityplus``
  ``experiments/e2e_analyze.py``): :func:`next_token_kl`, :func:`neighbourhood_kl`;
* fluency (ROME ``experiments/py/eval_utils_counterfact.py``): :func:`word_tokenize`,
  :func:`ngram_entropy`, :func:`mean_ngram_entropy`;
* MQuAKE (``princeton-nlp/MQuAKE``): :func:`mquake_answer_matches`,
  :func:`edit_wise_success_rate`, :func:`instance_wise_accuracy`, :func:`multi_hop_accuracy`;
* dialogue robustness (Ma et al. 2024, ``xbmxb/edit_analysis`` ``code/baseline_loced.py``):
  :func:`classify_followup`, :func:`followup_rates`, :func:`reversion_rate_by_confidence`.

Every function raises :class:`ValueError` with a message naming the bad argument on empty
inputs, mismatched lengths, NaN values, probabilities outside [0, 1] and distributions
that do not sum to 1.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch

#: tolerance on sum(p) == 1 for inputs that must already be distributions
DISTRIBUTION_ATOL = 1e-6

FloatsLike = Sequence[float] | torch.Tensor


# --------------------------------------------------------------------------------------------
# validation helpers


def _floats(values: FloatsLike, name: str) -> list[float]:
    """A non-empty list of floats without NaN (infinities pass; callers bound them)."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        out = [float(v) for v in values.tolist()]
    else:
        if isinstance(values, (str, bytes)):
            raise ValueError(f"{name} must be a sequence of numbers, got a string")
        out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} is empty")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{name} contains NaN")
    return out


def _probabilities(values: FloatsLike, name: str) -> list[float]:
    """A non-empty list of probabilities, each in [0, 1]."""
    out = _floats(values, name)
    bad = [v for v in out if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"{name} must hold probabilities in [0, 1], got {bad[0]!r}")
    return out


def _probability(value: float, name: str) -> float:
    return _probabilities([value], name)[0]


def _same_length(a: Sequence[object], b: Sequence[object], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} differ in length: {len(a)} vs {len(b)}")


def _distribution(values: FloatsLike, name: str) -> torch.Tensor:
    """A 1-D float64 tensor that is already a probability distribution."""
    t = torch.as_tensor(_probabilities(values, name), dtype=torch.float64)
    total = float(t.sum())
    if abs(total - 1.0) > DISTRIBUTION_ATOL:
        raise ValueError(
            f"{name} is not normalised: it sums to {total:.6g}, not 1 "
            "(use l1_normalise or candidate_distribution first)"
        )
    return t


def _flags(values: Sequence[bool], name: str) -> list[bool]:
    """Booleans (0/1 ints accepted); anything else, e.g. a probability, is an error."""
    out = []
    for v in values:
        if isinstance(v, bool) or v in (0, 1):
            out.append(bool(v))
        else:
            raise ValueError(f"{name} must hold booleans, got {v!r}")
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# --------------------------------------------------------------------------------------------
# probabilities of facts


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


# --------------------------------------------------------------------------------------------
# divergences


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


# --------------------------------------------------------------------------------------------
# RoundEdit (B7): e1 = (s, r, o -> o*), then e2 = (s, r, o* -> o); Obj = all true objects


def round_edit_success(
    p_new_after_e1: float, p_true_after_e1: float, p_true_after_e2: float, p_new_after_e2: float
) -> float:
    """Succ of one case: ``½·1[P_θe1(o*) > P_θe1(o)] + ½·1[P_θ′(o) > P_θ′(o*)]``.

    As ``summarize.py`` (there named ``success_pre/post``): each half compares the two objects
    *within* one model, θe1 after the first edit and θ′ after both. Ties count as failures.
    """
    a = _probability(p_new_after_e1, "p_new_after_e1")
    b = _probability(p_true_after_e1, "p_true_after_e1")
    c = _probability(p_true_after_e2, "p_true_after_e2")
    d = _probability(p_new_after_e2, "p_new_after_e2")
    return 0.5 * (a > b) + 0.5 * (c > d)


def knowledge_distortion(
    probs_after: FloatsLike, probs_before: FloatsLike, *, size_mean: bool = False
) -> float:
    """Knowledge distortion ``D = JS(P̂_θ′(Obj|s,r) ‖ P̂_θ(Obj|s,r))`` in nats.

    Both arguments are raw fact probabilities (see :func:`fact_probability`) over the same
    candidates in the same order, the reference's ``[P(o)] + [P(o_i), o_i in Obj - {o}]``; θ is
    the unedited model and θ′ the model after both edits. Each vector is L1-normalised over Obj
    before the JS divergence, as ``summarize.py``. By default this is the true JS divergence;
    ``size_mean=True`` also divides by |Obj| as the reference's ``batchmean`` does.
    """
    after = _probabilities(probs_after, "probs_after")
    before = _probabilities(probs_before, "probs_before")
    _same_length(after, before, "probs_after", "probs_before")
    return js_divergence(l1_normalise(after), l1_normalise(before), size_mean=size_mean)


def ignore_rate(others_before: FloatsLike, others_after: FloatsLike) -> float:
    """Ignore Rate of one case: share of the *other* true objects whose probability fell.

    ``IR = (1/|Obj - {o}|) Σ 1[P_θ(o_i|s,r) > P_θ′(o_i|s,r)]`` over o_i in Obj - {o}, θ the
    unedited model, θ′ after both edits; strict ``>``, so an unchanged probability is not
    ignored. This follows ``summarize.py``; the survey's ``Σ_{o∈Obj}`` (a sum over all of Obj,
    target included) is not what the code computes. The reference divides by zero when the
    target is the only true object; we raise.
    """
    before = _probabilities(others_before, "others_before")
    after = _probabilities(others_after, "others_after")
    _same_length(before, after, "others_before", "others_after")
    return sum(b > a for b, a in zip(before, after)) / len(before)


def is_failure(ignore_rate_value: float) -> bool:
    """A case fails when its ignore rate is strictly above one half (``summarize.py``)."""
    return _probability(ignore_rate_value, "ignore_rate_value") > 0.5


@dataclass(frozen=True)
class RoundEditCase:
    """RoundEdit measures of one case; :func:`round_edit_summary` averages them."""

    success: float
    distortion: float
    ignore_rate: float
    failed: bool


def round_edit_case(
    *,
    p_new_after_e1: float,
    p_true_after_e1: float,
    p_true_after_e2: float,
    p_new_after_e2: float,
    p_true_before: float,
    others_before: FloatsLike,
    others_after: FloatsLike,
    size_mean: bool = False,
) -> RoundEditCase:
    """All RoundEdit measures of one case from its fact probabilities.

    ``p_*_after_e1`` are on θe1 (first edit only), ``p_*_after_e2`` and ``others_after`` on θ′
    (both edits), ``p_true_before`` and ``others_before`` on the unedited θ; ``others_*`` list
    Obj - {o} in one fixed order. Distortion compares ``[p_true_after_e2] + others_after`` with
    ``[p_true_before] + others_before``, as ``summarize.py``.
    """
    before = _probabilities(others_before, "others_before")
    after = _probabilities(others_after, "others_after")
    ir = ignore_rate(before, after)
    return RoundEditCase(
        success=round_edit_success(
            p_new_after_e1, p_true_after_e1, p_true_after_e2, p_new_after_e2
        ),
        distortion=knowledge_distortion(
            [p_true_after_e2, *after], [p_true_before, *before], size_mean=size_mean
        ),
        ignore_rate=ir,
        failed=is_failure(ir),
    )


def round_edit_summary(cases: Sequence[RoundEditCase]) -> dict[str, float]:
    """Means over cases: ``succ``, ``distortion`` (D), ``ignore_rate`` (IR), ``failure_rate``
    (FR = share of failed cases). Fractions in [0, 1]; the paper reports them ×100."""
    if not cases:
        raise ValueError("cases is empty")
    return {
        "succ": _mean([c.success for c in cases]),
        "distortion": _mean([c.distortion for c in cases]),
        "ignore_rate": _mean([c.ignore_rate for c in cases]),
        "failure_rate": _mean([float(c.failed) for c in cases]),
    }


# --------------------------------------------------------------------------------------------
# ConflictEdit (B7): e1 then e2; θm after e1, θ′ after both; k_old = e1's new fact


def conflict_score(p_new_final: FloatsLike, p_old_final: FloatsLike) -> float:
    """Conflict Score over cases: ``CS = E 1[P_θ′(k_new) > P_θ′(k_old)]``.

    ``p_new_final[i]`` is the fact probability on θ′ of k_new: e2's fact for CS_exp, or the
    implied fact for CS_imp (reverse: e1's prompt with subject = e2's new target; composite: e1's
    prompt and subject with object = e2's new target). ``p_old_final[i]`` is k_old on θ′.
    Strict ``>`` as ``summarize.py``; a tie is no conflict resolved.
    """
    new = _probabilities(p_new_final, "p_new_final")
    old = _probabilities(p_old_final, "p_old_final")
    _same_length(new, old, "p_new_final", "p_old_final")
    return _mean([float(n > o) for n, o in zip(new, old)])


def conflict_magnitude(p_old_mid: FloatsLike, p_old_final: FloatsLike) -> float:
    """Conflict Magnitude over cases: ``CM = E max((P_θm(k_old) − P_θ′(k_old)) / P_θm(k_old), −1)``.

    The relative drop of e1's fact from θm (after e1) to θ′ (after e1 and e2). The clamp at −1
    is the code's (``summarize.py``); the paper's formula has none. A case with
    ``P_θm(k_old) = 0`` has no relative drop, and we raise where the reference divides by zero.
    """
    mid = _probabilities(p_old_mid, "p_old_mid")
    final = _probabilities(p_old_final, "p_old_final")
    _same_length(mid, final, "p_old_mid", "p_old_final")
    if any(m == 0.0 for m in mid):
        raise ValueError("p_old_mid contains 0; the relative drop is undefined")
    return _mean([max((m - f) / m, -1.0) for m, f in zip(mid, final)])


def tied_fact_damage(p_tied_base: FloatsLike, p_tied_final: FloatsLike) -> float:
    """Tied Fact Damage over composite cases: ``TFD = E (P_θ0(tied) − P_θ′(tied)) / P_θ0(tied)``.

    The tied fact is the rule's other premise (``triples[0]``), scored on the unedited θ0 and on
    θ′. Lower is better. No clamp, as the code (``FFD`` in ``summarize.py``), so a tied fact that
    gained probability gives a negative term.
    """
    base = _probabilities(p_tied_base, "p_tied_base")
    final = _probabilities(p_tied_final, "p_tied_final")
    _same_length(base, final, "p_tied_base", "p_tied_final")
    if any(b == 0.0 for b in base):
        raise ValueError("p_tied_base contains 0; the relative damage is undefined")
    return _mean([(b - f) / b for b, f in zip(base, final)])


def coverage_success(p_e2_new: FloatsLike, p_e1_new: FloatsLike) -> float:
    """Succ of the coverage setting: on the model with only e2 applied,
    ``E 1[P(e2's new object) > P(e1's new object)]`` (``S_post > S_pre`` in ``summarize.py``)."""
    new2 = _probabilities(p_e2_new, "p_e2_new")
    new1 = _probabilities(p_e1_new, "p_e1_new")
    _same_length(new2, new1, "p_e2_new", "p_e1_new")
    return _mean([float(a > b) for a, b in zip(new2, new1)])


# --------------------------------------------------------------------------------------------
# neighbourhood KL (B3, CounterFact+)


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


# --------------------------------------------------------------------------------------------
# fluency (B8): ROME's weighted n-gram entropy

# Treebank-like word tokenisation without nltk: contractions split off as nltk does
# ("don't" -> "do", "n't"; "John's" -> "John", "'s"), numbers keep inner separators
# ("1,000", "3.14"), an ellipsis and "--" stay whole, every other punctuation mark is a token.
_WORD_RE = re.compile(
    r"""
    \w+?(?=n't\b)                     # "do" of "don't", "ca" of "can't"
    | n't\b
    | '(?:s|m|d|ll|re|ve)\b           # clitics
    | \d+(?:[.,]\d+)+                 # 1,000 and 3.14
    | \w+(?:-\w+)*                    # words, hyphenated compounds
    | \.\.\.|--
    | [^\w\s]                         # any other symbol on its own
    """,
    re.VERBOSE | re.IGNORECASE,
)


def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into words and punctuation, approximating ``nltk.word_tokenize``.

    nltk is not a dependency, so this is our own regex tokenizer. Known differences from nltk's
    Treebank tokenizer: double quotes stay ``"`` (nltk writes `````` and ``''``), periods of
    abbreviations are split off ("Mr." -> "Mr", "."; nltk keeps "Mr." whole), a typographic
    apostrophe ("don’t") is not treated as a contraction, and nltk's special cases ("cannot" ->
    "can not", "gonna") are not applied. On plain generated prose the tokens, and hence the
    entropies, usually agree; pass ``tokenizer=nltk.word_tokenize`` to :func:`ngram_entropy`
    for exact parity.
    """
    return _WORD_RE.findall(text)


def ngram_entropy(
    text: str,
    *,
    ns: Sequence[int] = (2, 3),
    weights: Sequence[float] = (2 / 3, 4 / 3),
    tokenizer: Callable[[str], list[str]] | None = None,
) -> float:
    """ROME's ``compute_n_gram_entropy`` of one text, in bits.

    For each n, ``H_n = −Σ f log2 f`` over the relative frequencies f of the text's word n-grams;
    the result is the arithmetic mean of ``w_n · H_n`` (default ``mean(2/3·H2, 4/3·H3)``).
    A text with fewer than n words has ``H_n = 0``, as ROME's empty frequency table gives.
    ROME scores the whole generated text, prompt included; pass the same string to match.
    """
    if len(ns) == 0 or len(ns) != len(weights):
        raise ValueError(f"ns and weights must be non-empty and equal in length: {ns}, {weights}")
    if any(n < 1 for n in ns):
        raise ValueError(f"n-gram orders must be >= 1, got {ns}")
    tokens = (tokenizer or word_tokenize)(text)
    weighted = []
    for n, w in zip(ns, weights):
        counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        total = sum(counts.values())
        h = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        weighted.append(w * h)
    return _mean(weighted)


def mean_ngram_entropy(
    texts: Iterable[str], *, tokenizer: Callable[[str], list[str]] | None = None
) -> float:
    """Generation entropy (GE) of a case: the arithmetic mean of :func:`ngram_entropy` over its
    generated texts, as ROME's ``n_gram_entropy(gen_texts, agg="arith")``."""
    values = [ngram_entropy(t, tokenizer=tokenizer) for t in texts]
    if not values:
        raise ValueError("texts is empty")
    return _mean(values)


# --------------------------------------------------------------------------------------------
# MQuAKE (B6)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _squad_normalise(text: str) -> str:
    # same rule as kedit.eval.scoring.normalize_answer, repeated to keep this module model-free
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def mquake_answer_matches(
    prediction: str, answer: str, aliases: Iterable[str] = (), *, normalise: bool = False
) -> bool:
    """True if ``prediction`` is the answer or one of its aliases.

    MQuAKE's ``run_mello.ipynb`` compares ``ans == new_answer or ans in new_answer_alias`` after
    taking the text behind "Final answer: " from the stripped generation: exact, case-sensitive
    equality. We strip surrounding whitespace from all strings and otherwise do the same.
    ``normalise=True`` (our addition, off by default) compares after SQuAD normalisation (lower
    case, no punctuation or articles), which forgives "paris" for "Paris".
    """
    candidates = [answer, *aliases]
    if not any(c.strip() for c in candidates):
        raise ValueError("answer and aliases are all empty")
    norm = _squad_normalise if normalise else str.strip
    produced = norm(prediction)
    return any(produced == norm(c) for c in candidates if c.strip())


def edit_wise_success_rate(edits_recalled: Sequence[Sequence[bool]]) -> float:
    """Share of edited facts the edited model recalls (cloze statement, no ICL, greedy).

    ``edits_recalled[i]`` holds one flag per requested rewrite of instance i. The MQuAKE paper
    states "how many facts can be successfully recalled", so this pools all facts (a micro
    average), not a mean of per-instance rates; a fact shared by instances counts each time.
    """
    if len(edits_recalled) == 0:
        raise ValueError("edits_recalled is empty")
    flags = [f for i, row in enumerate(edits_recalled) for f in _flags(row, f"edits_recalled[{i}]")]
    return sum(flags) / len(flags)


def instance_wise_accuracy(hops_recalled: Sequence[Sequence[bool]]) -> float:
    """Share of instances whose new chain is recalled hop by hop: an instance counts iff **all**
    its single-hop facts are recalled (edited hops by cloze, unedited ones with the relation's
    8-shot question prompt)."""
    if len(hops_recalled) == 0:
        raise ValueError("hops_recalled is empty")
    return _mean(
        [float(all(_flags(row, f"hops_recalled[{i}]"))) for i, row in enumerate(hops_recalled)]
    )


def multi_hop_accuracy(questions_correct: Sequence[Sequence[bool]]) -> float:
    """Share of instances answered correctly on **any** of their (three) multi-hop questions,
    as MQuAKE's README and ``run_mello.ipynb`` (which stops at the first correct question)."""
    if len(questions_correct) == 0:
        raise ValueError("questions_correct is empty")
    return _mean(
        [
            float(any(_flags(row, f"questions_correct[{i}]")))
            for i, row in enumerate(questions_correct)
        ]
    )


# --------------------------------------------------------------------------------------------
# dialogue robustness (B11)

FollowupOutcome = Literal["kept", "reverted", "confused"]
FOLLOWUP_OUTCOMES: tuple[FollowupOutcome, ...] = ("kept", "reverted", "confused")


def _spans(text: str, needles: Sequence[str], whole_word: bool) -> list[tuple[int, int]]:
    spans = []
    for needle in needles:
        pattern = re.escape(needle.casefold())
        if whole_word:
            pattern = rf"(?<!\w){pattern}(?!\w)"
        spans.extend(m.span() for m in re.finditer(pattern, text))
    return spans


def _mentioned(own: list[tuple[int, int]], other: list[tuple[int, int]]) -> bool:
    # a mention lying inside a longer mention of the other answer does not count
    # ("York" inside "New York")
    return any(
        not any(o0 <= s0 and s1 <= o1 and (o1 - o0) > (s1 - s0) for o0, o1 in other)
        for s0, s1 in own
    )


def classify_followup(
    reply: str,
    new_target: str,
    old_answer: str,
    *,
    new_aliases: Iterable[str] = (),
    old_aliases: Iterable[str] = (),
    whole_word: bool = False,
) -> FollowupOutcome:
    """Classify the model's reply to an adversarial follow-up after an edit.

    * ``kept``: the reply mentions the new target o* (or an alias);
    * ``reverted``: it mentions the old answer o (or an alias) and not o*;
    * ``confused``: neither.

    This is the reference doc's inferred operationalisation of Ma et al.'s reversion and
    confusion; their code (``baseline_loced.py``) only measures the share of replies containing
    ``target_new``, case-insensitively, which equals our ``kept`` rate. A reply naming both
    counts as kept, as there. Matching is case-insensitive substring search like theirs;
    ``whole_word=True`` (our addition) requires word boundaries ("Rome" not in "Romeo").
    Deliberate difference: a mention nested inside a longer mention of the other answer is
    ignored, so with o = "New York" and o* = "York" the reply "New York" is reverted, not kept.
    Pass only the model's reply: the second follow-up template quotes o itself.
    """
    news = [s.casefold() for s in (new_target, *new_aliases) if s.strip()]
    olds = [s.casefold() for s in (old_answer, *old_aliases) if s.strip()]
    if not news:
        raise ValueError("new_target is empty")
    if not olds:
        raise ValueError("old_answer is empty")
    text = reply.casefold()
    new_spans = _spans(text, news, whole_word)
    old_spans = _spans(text, olds, whole_word)
    if _mentioned(new_spans, old_spans):
        return "kept"
    if _mentioned(old_spans, new_spans):
        return "reverted"
    return "confused"


def _outcomes(outcomes: Sequence[str], name: str) -> list[str]:
    if len(outcomes) == 0:
        raise ValueError(f"{name} is empty")
    for o in outcomes:
        if o not in FOLLOWUP_OUTCOMES:
            raise ValueError(f"{name} holds {o!r}; expected one of {FOLLOWUP_OUTCOMES}")
    return list(outcomes)


def followup_rates(outcomes: Sequence[FollowupOutcome]) -> dict[str, float]:
    """Shares of ``kept``, ``reverted`` and ``confused`` replies (they sum to 1).

    Pooled over all replies. The reference averages each case's replies and then the cases;
    the two agree when every case has the same number of follow-ups, as in their setup.
    """
    outs = _outcomes(outcomes, "outcomes")
    return {k: outs.count(k) / len(outs) for k in FOLLOWUP_OUTCOMES}


@dataclass(frozen=True)
class ConfidenceBin:
    """Reversion among cases whose unedited confidence lies in ``[low, high)`` (the last bin
    also includes ``high``); ``reversion_rate`` is None for an empty bin."""

    low: float
    high: float
    count: int
    reversion_rate: float | None


def reversion_rate_by_confidence(
    outcomes: Sequence[FollowupOutcome],
    confidences: FloatsLike,
    edges: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> list[ConfidenceBin]:
    """Reversion rate (reverted / all replies in the bin) binned by the unedited model's
    confidence in the old fact, e.g. its length-normalised P(o | prompt).

    Ma et al. find that popular (well-known) facts revert more; this is our binned version of
    that stratification, with confidence as the measurable proxy for popularity.
    """
    outs = _outcomes(outcomes, "outcomes")
    conf = _probabilities(confidences, "confidences")
    _same_length(outs, conf, "outcomes", "confidences")
    edge_list = [float(e) for e in edges]
    if len(edge_list) < 2 or any(b <= a for a, b in pairwise(edge_list)):
        raise ValueError(f"edges must be at least two strictly increasing values, got {edges}")
    outside = [c for c in conf if not edge_list[0] <= c <= edge_list[-1]]
    if outside:
        raise ValueError(f"confidence {outside[0]!r} lies outside the edges {edge_list}")
    bins = []
    last = len(edge_list) - 2
    for i, (low, high) in enumerate(pairwise(edge_list)):
        members = [o for o, c in zip(outs, conf) if low <= c < high or (i == last and c == high)]
        rate = members.count("reverted") / len(members) if members else None
        bins.append(ConfidenceBin(low, high, len(members), rate))
    return bins
