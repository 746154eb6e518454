"""RoundEdit and ConflictEdit (Li et al. 2024, ``zjunlp/PitfallsKnowledgeEditing``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kedit.eval.formulas._checks import (
    FloatsLike,
    _mean,
    _probabilities,
    _probability,
    _same_length,
)
from kedit.eval.formulas.probability import js_divergence, l1_normalise


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
