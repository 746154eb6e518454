"""Scoring every probe of many cases with as few forward passes as possible.

For each probe a metric needs, up to three things are measured on a
:class:`~kedit.model.lm.LanguageModel`: the teacher-forced scores of its expected answer, of its
alternative answer, and a greedy generation. All (prompt, target) pairs of all requested cases go
through one batched ``score_targets`` call, and all generations through one ``generate`` call.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kedit.model.lm import LanguageModel, TargetScore
from kedit.types import EditCase, Probe

#: extra tokens generated beyond the expected answer's length, so a differently tokenised but
#: correct answer still fits
GENERATION_SLACK = 2


@dataclass
class ProbeScore:
    """What one model did on one probe."""

    expected: TargetScore | None = None
    alternative: TargetScore | None = None
    generation: str | None = None


@dataclass
class ProbeResult:
    """A probe with its scores before and after the edit."""

    probe: Probe
    pre: ProbeScore = field(default_factory=ProbeScore)
    post: ProbeScore = field(default_factory=ProbeScore)

    def stage(self, name: str) -> ProbeScore:
        return self.pre if name == "pre" else self.post


@dataclass(frozen=True)
class Needs:
    """Which measurements a set of metrics needs, per probe kind."""

    scores: frozenset[str] = frozenset()  # kinds needing teacher-forced scores
    generation: frozenset[str] = frozenset()  # kinds needing a greedy generation


def score_probes(
    lm: LanguageModel,
    cases: Sequence[EditCase],
    needs: Needs,
    stage: str,
    results: dict[str, list[ProbeResult]],
) -> None:
    """Fill ``results[case_id][i].<stage>`` for every probe of ``cases`` that ``needs`` covers."""
    jobs: list[tuple[ProbeScore, Probe]] = []
    for case in cases:
        rows = results.setdefault(case.case_id, [ProbeResult(p) for p in case.probes])
        for row in rows:
            if row.probe.kind in needs.scores or row.probe.kind in needs.generation:
                jobs.append((row.stage(stage), row.probe))
    pairs: list[tuple[str, str]] = []
    slots: list[tuple[ProbeScore, str]] = []
    for score, probe in jobs:
        pairs.append((probe.prompt, probe.expected))
        slots.append((score, "expected"))
        if probe.alternative is not None and probe.kind in needs.scores:
            pairs.append((probe.prompt, probe.alternative))
            slots.append((score, "alternative"))
    if pairs:
        scored = lm.score_targets([p for p, _ in pairs], [t for _, t in pairs])
        for (score, slot), value in zip(slots, scored):
            setattr(score, slot, value)
    gen_jobs = [(s, p) for s, p in jobs if p.kind in needs.generation]
    if gen_jobs:
        limits = [len(s.expected.target_ids) + GENERATION_SLACK for s, _ in gen_jobs]
        texts = lm.generate([p.prompt for _, p in gen_jobs], limits)
        for (score, _), text in zip(gen_jobs, texts):
            score.generation = text


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation or articles, single spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def generation_matches(generation: str, answers: Iterable[str]) -> bool:
    """True if the generation starts with one of the answers (normalised, whole words)."""
    produced = normalize_answer(generation)
    for answer in answers:
        wanted = normalize_answer(answer)
        if wanted and (produced == wanted or produced.startswith(wanted + " ")):
            return True
    return False
