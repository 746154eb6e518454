"""The machinery of the survey's claims: verdicts, thresholds, the ``Claim`` and ``Finding`` types,
and the checks the claims of :mod:`kedit.bench.findings` are judged with.

A claim is judged on those of its methods the bench ran; the sentence names the missing ones
(not registered in kedit, or not in this bench). A claim none of whose methods ran, or that
lacks the scenario or checkpoints it needs, is ``not run``.

Reliability and generalization are the headline measures of their groups
(:data:`kedit.bench.summary.HEADLINE_PREFERENCE`); "checkpoint K" is the sequential scenario
after K edits. A method *degrades* at checkpoint K if the mean change of its downstream task
scores from the unedited model's is at most ``-DOWNSTREAM_DEGRADE``, or its perplexity (the mean
relative change of the lower-is-better general tasks) rises by at least ``PERPLEXITY_DEGRADE``
(the changes are :class:`kedit.bench.general_change.GeneralChange`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kedit.bench.general_change import GeneralChange, general_changes, task_changes
from kedit.bench.summary import BenchSummary, JobInfo
from kedit.formatting import format_value
from kedit.methods import METHODS, display_name

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
PARTLY = "partly supported"
NOT_RUN = "not run"
VERDICTS = (SUPPORTED, PARTLY, NOT_SUPPORTED, NOT_RUN)

#: IKE is "worse with many edits" if its reliability after the sequential edits is at least
#: this much (absolute, on a 0..1 score) below its single-edit reliability
RELIABILITY_DROP = 0.10
#: a method degrades at a checkpoint if the mean change of its downstream task scores from the
#: unedited model's is at most minus this (absolute) ...
DOWNSTREAM_DEGRADE = 0.05
#: ... or its perplexity rises by at least this fraction of the unedited model's
PERPLEXITY_DEGRADE = 0.10
#: the checkpoints at which MEND, ROME and KN are expected to have degraded
DEGRADE_CHECKPOINTS = (10, 20)
#: MEMIT is stable if no checkpoint up to this many edits degrades
STABLE_UP_TO = 40
#: "unchanged": every downstream score within this (absolute) of the unedited model's ...
DOWNSTREAM_TOLERANCE = 0.02
#: ... and perplexity within this fraction of it
PERPLEXITY_TOLERANCE = 0.01
#: parameter-modifying methods "lower" downstream scores: mean change below minus this
DOWNSTREAM_DROP = 0.01


@dataclass(frozen=True)
class Finding:
    """A claim's verdict on one bench, and the sentence with the numbers that decided it."""

    claim: str
    verdict: str
    sentence: str
    numbers: dict[str, float] = field(default_factory=dict)


#: a judge gets the summary and the claim's methods that ran, and returns (verdict, sentence,
#: numbers)
Judge = Callable[[BenchSummary, list[str]], tuple[str, str, dict[str, float]]]


@dataclass(frozen=True)
class Claim:
    """One of the survey's claims: what it says, what it needs, and how it is decided."""

    id: str
    text: str
    #: the methods it is about; empty means every method in the bench
    methods: tuple[str, ...]
    #: the scenario it needs, in words
    scenario: str
    #: the test that decides it, in words, with the thresholds
    threshold: str
    judge: Judge

    def evaluate(self, summary: BenchSummary) -> Finding:
        """The verdict on ``summary``, judged on the claim's methods that the bench ran."""
        ran, missing = available(summary, self.methods)
        if self.methods and not ran:
            return Finding(self.id, NOT_RUN, f"not run: {'; '.join(missing)}")
        verdict, sentence, numbers = self.judge(summary, ran)
        if missing and verdict == NOT_RUN:
            sentence += "; " + "; ".join(missing)
        elif missing:
            sentence += f" Missing: {'; '.join(missing)}."
        return Finding(self.id, verdict, sentence, numbers)


#: comparisons with a threshold allow this much floating-point noise
EPS = 1e-9
NEEDS_GENERAL = "needs general-ability tasks at sequential checkpoints"


def available(summary: BenchSummary, methods: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The methods the bench ran (a job with results), and why each other one is missing."""
    ran, missing = [], []
    in_bench = set(summary.methods())
    for method in methods:
        name = METHODS.canonical(method) if method in METHODS else method
        if name not in METHODS:
            missing.append(f"{display_name(method)} is not registered in kedit yet")
        elif name not in in_bench:
            missing.append(f"{display_name(method)} was not in this bench")
        elif not any(summary.job(name, kind) for kind in ("single", "batch", "sequential")):
            missing.append(f"{display_name(method)} has no results in this bench")
        else:
            ran.append(name)
    return ran, missing


def not_run(what: str) -> tuple[str, str, dict[str, float]]:
    return NOT_RUN, f"not run: {what}", {}


def combine(held: list[bool]) -> str:
    """All of the judged parts hold: supported; some: partly; none: not supported."""
    if all(held):
        return SUPPORTED
    return PARTLY if any(held) else NOT_SUPPORTED


def sequential_job(summary: BenchSummary, method: str) -> JobInfo | None:
    return summary.job(method, "sequential")


def reliability_at_one(summary: BenchSummary, method: str) -> tuple[float | None, str]:
    """Reliability after one edit: sequential checkpoint 1, else the single scenario (also
    checkpoint 1)."""
    seq = sequential_job(summary, method)
    if seq is not None and 1 in summary.checkpoints(seq.job_id):
        return summary.headline(seq.job_id, 1, "reliability"), "after 1 edit"
    single = summary.job(method, "single")
    if single is not None:
        return summary.headline(single.job_id, 1, "reliability"), "on single edits"
    return None, ""


def degrades(change: GeneralChange) -> bool:
    """Downstream mean change at most ``-DOWNSTREAM_DEGRADE``, or perplexity up by at least
    ``PERPLEXITY_DEGRADE``."""
    down = change.downstream is not None and change.downstream <= -DOWNSTREAM_DEGRADE + EPS
    ppl = change.perplexity is not None and change.perplexity >= PERPLEXITY_DEGRADE - EPS
    return down or ppl


def general_missing(summary: BenchSummary) -> str | None:
    """Why the bench cannot judge general ability at all, or None."""
    if not (summary.downstream_tasks() or summary.lower_is_better_tasks()):
        return NEEDS_GENERAL
    if not summary.baseline_general():
        return "needs the unedited model's general-ability scores (job unedited/general)"
    return None


def reliability_context(
    summary: BenchSummary, method: str, seq: JobInfo
) -> tuple[str, dict[str, float]]:
    """``method``'s reliability after 1 edit and at its last sequential checkpoint (context
    for the general-ability verdicts, not their criterion)."""
    start, where = reliability_at_one(summary, method)
    last = summary.checkpoints(seq.job_id)[-1]
    end = summary.headline(seq.job_id, last, "reliability")
    numbers = {}
    if start is not None:
        numbers[f"{method}_reliability_1"] = start
    if end is not None:
        numbers[f"{method}_reliability_{last}"] = end
    where = where or "after 1 edit"
    return (
        f"reliability {format_value(start)} {where}, {format_value(end)} after {last} edits",
        numbers,
    )


def degradation(summary: BenchSummary, method: str) -> tuple[bool | None, str, dict[str, float]]:
    """Whether ``method``'s general ability has degraded at checkpoint 10 or 20 (see
    :func:`degrades`); None: not testable, with why."""
    seq = sequential_job(summary, method)
    if seq is None:
        return None, f"{NEEDS_GENERAL} ({display_name(method)} ran no sequential scenario)", {}
    checks = general_changes(summary, seq.job_id, lambda k: k in DEGRADE_CHECKPOINTS)
    if not checks:
        wanted = " or ".join(map(str, DEGRADE_CHECKPOINTS))
        ran = ",".join(map(str, summary.checkpoints(seq.job_id)))
        return (
            None,
            f"needs general-ability scores at sequential checkpoint {wanted} "
            f"({display_name(method)} ran {seq.scenario}, checkpoints {ran})",
            {},
        )
    degraded = [c for c in checks if degrades(c)]
    context, numbers = reliability_context(summary, method, seq)
    for check in checks:
        numbers |= check.numbers(method)
    if degraded:
        verdict = f"degrades by {degraded[0].checkpoint} edits"
    else:
        verdict = f"does not degrade by {checks[-1].checkpoint} edits"
    details = "; ".join(c.text() for c in checks)
    return bool(degraded), f"{display_name(method)} {verdict} ({details}; {context})", numbers


def judge_each(
    summary: BenchSummary,
    methods: list[str],
    test: Callable[[BenchSummary, str], tuple[bool | None, str, dict[str, float]]],
) -> tuple[str, str, dict[str, float]]:
    """Apply ``test`` to each method; combine the testable ones (:func:`combine`)."""
    held, sentences, untestable, numbers = [], [], [], {}
    for method in methods:
        ok, sentence, values = test(summary, method)
        if ok is None:
            untestable.append(sentence)
            continue
        held.append(ok)
        sentences.append(sentence)
        numbers.update(values)
    if not held:
        return not_run("; ".join(untestable))
    sentence = "; ".join(sentences) + "."
    if untestable:
        sentence += " Not tested: " + "; ".join(untestable) + "."
    return combine(held), sentence, numbers


def change_at_last(
    summary: BenchSummary, method: str
) -> tuple[dict[str, float], dict[str, float], int] | str:
    """(downstream task -> change, perplexity task -> relative change, checkpoint) of
    ``method``'s last sequential checkpoint against the unedited model, or why there is none."""
    if not summary.baseline_general():
        return "needs the unedited model's general-ability scores (job unedited/general)"
    seq = sequential_job(summary, method)
    if seq is None:
        name = display_name(method)
        return f"needs general-ability scores at sequential checkpoints ({name} ran none)"
    last = summary.checkpoints(seq.job_id)[-1]
    downstream, perplexity = task_changes(summary, seq.job_id, last)
    if not downstream and not perplexity:
        return (
            f"needs general-ability scores at {display_name(method)}'s last sequential checkpoint"
        )
    return downstream, perplexity, last
