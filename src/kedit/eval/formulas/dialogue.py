"""Robustness in dialogue: classifying replies to follow-ups (Ma et al. 2024)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from kedit.eval.formulas._checks import (
    FloatsLike,
    _probabilities,
    _same_length,
)

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
