"""The survey's claims about editing methods, checked against a bench.

Each :class:`Claim` states what the survey (Hsueh et al. 2024) says, which methods and scenario
it needs and the threshold that decides it; :meth:`Claim.evaluate` gives a :class:`Finding`: a
verdict (:data:`VERDICTS`) and the numbers that decided it, as a sentence. :data:`CLAIMS` is the
registry, in the survey's order; :func:`evaluate_claims` checks them all.

A claim is judged on those of its methods the bench ran; the sentence names the missing ones
(not registered in kedit, or not in this bench). A claim none of whose methods ran, or that
lacks the scenario or checkpoints it needs, is ``not run``.

Reliability and generalization are the headline measures of their groups
(:data:`kedit.bench.aggregate.HEADLINE_PREFERENCE`); "checkpoint K" is the sequential scenario
after K edits.

The survey reads its decay claims (MEND degrades after 10–20 edits, ROME and KN after about 10,
MEMIT is stable up to 40) off its downstream-task plots, so they are judged on general ability:
a method *degrades* at checkpoint K if the mean change of its downstream task scores from the
unedited model's is at most ``-DOWNSTREAM_DEGRADE``, or its perplexity (the mean relative change
of the lower-is-better general tasks) rises by at least ``PERPLEXITY_DEGRADE`` (the changes are
:class:`kedit.bench.ability.GeneralChange`). Their sentences give the reliability after 1 edit
and at the last checkpoint as context only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kedit.bench.ability import (
    GeneralChange,
    format_relative,
    format_value,
    general_changes,
    task_changes,
)
from kedit.bench.aggregate import BenchSummary, JobInfo
from kedit.methods import ALIASES, METHODS, get_method

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
        ran, missing = _available(summary, self.methods)
        if self.methods and not ran:
            return Finding(self.id, NOT_RUN, f"not run: {'; '.join(missing)}")
        verdict, sentence, numbers = self.judge(summary, ran)
        if missing and verdict == NOT_RUN:
            sentence += "; " + "; ".join(missing)
        elif missing:
            sentence += f" Missing: {'; '.join(missing)}."
        return Finding(self.id, verdict, sentence, numbers)


def evaluate_claims(summary: BenchSummary) -> list[Finding]:
    """Every claim of :data:`CLAIMS` checked against ``summary``."""
    return [claim.evaluate(summary) for claim in CLAIMS]


# -- helpers ----------------------------------------------------------------------------------


#: the papers' spellings that are not simply the name in capitals
_SPELLING = {"alphaedit": "AlphaEdit"}


def _name(method: str) -> str:
    """The survey's spelling of a method name (ROME, FT-L, AlphaEdit)."""
    return _SPELLING.get(method, method.upper())


def _fmt(value: float | None) -> str:
    return format_value(value)


#: comparisons with a threshold allow this much floating-point noise
_EPS = 1e-9
NEEDS_GENERAL = "needs general-ability tasks at sequential checkpoints"


def _available(summary: BenchSummary, methods: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The methods the bench ran (a job with results), and why each other one is missing."""
    ran, missing = [], []
    in_bench = set(summary.methods())
    for method in methods:
        name = ALIASES.get(method, method)
        if name not in METHODS:
            missing.append(f"{_name(method)} is not registered in kedit yet")
        elif name not in in_bench:
            missing.append(f"{_name(method)} was not in this bench")
        elif not any(summary.job(name, kind) for kind in ("single", "batch", "sequential")):
            missing.append(f"{_name(method)} has no results in this bench")
        else:
            ran.append(name)
    return ran, missing


def _not_run(what: str) -> tuple[str, str, dict[str, float]]:
    return NOT_RUN, f"not run: {what}", {}


def _combine(held: list[bool]) -> str:
    """All of the judged parts hold: supported; some: partly; none: not supported."""
    if all(held):
        return SUPPORTED
    return PARTLY if any(held) else NOT_SUPPORTED


def _sequential(summary: BenchSummary, method: str) -> JobInfo | None:
    return summary.job(method, "sequential")


def _reliability_at_one(summary: BenchSummary, method: str) -> tuple[float | None, str]:
    """Reliability after one edit: sequential checkpoint 1, else the single scenario (also
    checkpoint 1)."""
    seq = _sequential(summary, method)
    if seq is not None and 1 in summary.checkpoints(seq.job_id):
        return summary.headline(seq.job_id, 1, "reliability"), "after 1 edit"
    single = summary.job(method, "single")
    if single is not None:
        return summary.headline(single.job_id, 1, "reliability"), "on single edits"
    return None, ""


def _degrades(change: GeneralChange) -> bool:
    """Downstream mean change at most ``-DOWNSTREAM_DEGRADE``, or perplexity up by at least
    ``PERPLEXITY_DEGRADE``."""
    down = change.downstream is not None and change.downstream <= -DOWNSTREAM_DEGRADE + _EPS
    ppl = change.perplexity is not None and change.perplexity >= PERPLEXITY_DEGRADE - _EPS
    return down or ppl


def _general_missing(summary: BenchSummary) -> str | None:
    """Why the bench cannot judge general ability at all, or None."""
    if not (summary.downstream_tasks() or summary.lower_is_better_tasks()):
        return NEEDS_GENERAL
    if not summary.baseline_general():
        return "needs the unedited model's general-ability scores (job unedited/general)"
    return None


def _reliability_context(
    summary: BenchSummary, method: str, seq: JobInfo
) -> tuple[str, dict[str, float]]:
    """``method``'s reliability after 1 edit and at its last sequential checkpoint (context
    for the general-ability verdicts, not their criterion)."""
    start, where = _reliability_at_one(summary, method)
    last = summary.checkpoints(seq.job_id)[-1]
    end = summary.headline(seq.job_id, last, "reliability")
    numbers = {}
    if start is not None:
        numbers[f"{method}_reliability_1"] = start
    if end is not None:
        numbers[f"{method}_reliability_{last}"] = end
    where = where or "after 1 edit"
    return f"reliability {_fmt(start)} {where}, {_fmt(end)} after {last} edits", numbers


def _degradation(summary: BenchSummary, method: str) -> tuple[bool | None, str, dict[str, float]]:
    """Whether ``method``'s general ability has degraded at checkpoint 10 or 20 (see
    :func:`_degrades`); None: not testable, with why."""
    seq = _sequential(summary, method)
    if seq is None:
        return None, f"{NEEDS_GENERAL} ({_name(method)} ran no sequential scenario)", {}
    checks = general_changes(summary, seq.job_id, lambda k: k in DEGRADE_CHECKPOINTS)
    if not checks:
        wanted = " or ".join(map(str, DEGRADE_CHECKPOINTS))
        ran = ",".join(map(str, summary.checkpoints(seq.job_id)))
        return (
            None,
            f"needs general-ability scores at sequential checkpoint {wanted} "
            f"({_name(method)} ran {seq.scenario}, checkpoints {ran})",
            {},
        )
    degraded = [c for c in checks if _degrades(c)]
    context, numbers = _reliability_context(summary, method, seq)
    for check in checks:
        numbers |= check.numbers(method)
    if degraded:
        verdict = f"degrades by {degraded[0].checkpoint} edits"
    else:
        verdict = f"does not degrade by {checks[-1].checkpoint} edits"
    details = "; ".join(c.text() for c in checks)
    return bool(degraded), f"{_name(method)} {verdict} ({details}; {context})", numbers


def _judge_each(
    summary: BenchSummary,
    methods: list[str],
    test: Callable[[BenchSummary, str], tuple[bool | None, str, dict[str, float]]],
) -> tuple[str, str, dict[str, float]]:
    """Apply ``test`` to each method; combine the testable ones (:func:`_combine`)."""
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
        return _not_run("; ".join(untestable))
    sentence = "; ".join(sentences) + "."
    if untestable:
        sentence += " Not tested: " + "; ".join(untestable) + "."
    return _combine(held), sentence, numbers


# -- the claims -------------------------------------------------------------------------------


def _judge_ike(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    ike = methods[0]
    single, seq = summary.job(ike, "single"), _sequential(summary, ike)
    if single is None or seq is None:
        return _not_run("needs the single scenario and sequential checkpoints for IKE")

    def score(method: str) -> float | None:
        job = summary.job(method, "single")
        if job is None:
            return None
        values = [summary.headline(job.job_id, 1, g) for g in ("reliability", "generalization")]
        return None if None in values else sum(values) / 2

    scores = {m: s for m in summary.methods() if (s := score(m)) is not None}
    others = {m: s for m, s in scores.items() if m != ike}
    if ike not in scores or not others:
        return _not_run(
            "needs reliability and generalization of IKE and another method on single edits"
        )
    best = max(others, key=others.get)
    is_best = scores[ike] >= others[best]
    last = summary.checkpoints(seq.job_id)[-1]
    rel_single = summary.headline(single.job_id, 1, "reliability")
    rel_last = summary.headline(seq.job_id, last, "reliability")
    drop = rel_single - rel_last if rel_single is not None and rel_last is not None else None
    numbers = {"ike_single": scores[ike], f"{best}_single": others[best]}
    sentence = (
        f"on single edits IKE's mean of reliability and generalization is {_fmt(scores[ike])}, "
        f"{'the highest' if is_best else 'not the highest'} "
        f"(best other: {_name(best)} {_fmt(others[best])})"
    )
    if drop is None:
        return (
            PARTLY if is_best else NOT_SUPPORTED,
            sentence + f"; its reliability after {last} sequential edits was not measured.",
            numbers,
        )
    degrades = drop >= RELIABILITY_DROP
    numbers |= {"ike_reliability_single": rel_single, f"ike_reliability_{last}": rel_last}
    sentence += (
        f"; its reliability goes from {_fmt(rel_single)} on single edits to {_fmt(rel_last)} "
        f"after {last} sequential edits (drop {_fmt(drop)}; "
        f"{'≥' if degrades else '<'} {RELIABILITY_DROP:.2f})."
    )
    return _combine([is_best, degrades]), sentence, numbers


def _judge_degrades(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    missing = _general_missing(summary)
    if missing:
        return _not_run(missing)
    return _judge_each(summary, methods, _degradation)


def _judge_memit(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    missing = _general_missing(summary)
    if missing:
        return _not_run(missing)
    memit = methods[0]
    seq = _sequential(summary, memit)
    wanted = f"needs general-ability scores at sequential checkpoints up to {STABLE_UP_TO}"
    if seq is None:
        return _not_run(f"{wanted} (MEMIT ran no sequential scenario)")
    checks = general_changes(summary, seq.job_id, lambda k: 0 < k <= STABLE_UP_TO)
    if not checks:
        return _not_run(f"{wanted} (MEMIT ran {seq.scenario})")
    context, numbers = _reliability_context(summary, memit, seq)
    for check in checks:
        numbers |= check.numbers(memit)
    details = "; ".join(c.text() for c in checks)
    degraded = [c for c in checks if _degrades(c)]
    last = checks[-1].checkpoint
    if degraded:
        sentence = f"MEMIT degrades by {degraded[0].checkpoint} edits ({details}; {context})."
        return NOT_SUPPORTED, sentence, numbers
    sentence = f"MEMIT does not degrade up to {last} edits ({details}; {context})"
    if last < STABLE_UP_TO:
        return PARTLY, sentence + f": it holds up to {last} edits only ({wanted}).", numbers
    return SUPPORTED, sentence + ".", numbers


def _general_change(
    summary: BenchSummary, method: str
) -> tuple[dict[str, float], dict[str, float], int] | str:
    """(downstream task -> change, perplexity task -> relative change, checkpoint) of
    ``method``'s last sequential checkpoint against the unedited model, or why there is none."""
    if not summary.baseline_general():
        return "needs the unedited model's general-ability scores (job unedited/general)"
    seq = _sequential(summary, method)
    if seq is None:
        return f"needs general-ability scores at sequential checkpoints ({_name(method)} ran none)"
    last = summary.checkpoints(seq.job_id)[-1]
    downstream, perplexity = task_changes(summary, seq.job_id, last)
    if not downstream and not perplexity:
        return f"needs general-ability scores at {_name(method)}'s last sequential checkpoint"
    return downstream, perplexity, last


def _unchanged(summary: BenchSummary, method: str) -> tuple[bool | None, str, dict[str, float]]:
    change = _general_change(summary, method)
    if isinstance(change, str):
        return None, change, {}
    downstream, perplexity, last = change
    parts, numbers, ok = [], {}, True
    if downstream:
        task = max(downstream, key=lambda t: abs(downstream[t]))
        ok &= all(abs(d) <= DOWNSTREAM_TOLERANCE for d in downstream.values())
        numbers[f"{method}_max_downstream_change"] = downstream[task]
        parts.append(
            f"largest downstream change {downstream[task]:+.3f} ({task}; "
            f"tolerance ±{DOWNSTREAM_TOLERANCE:.2f})"
        )
    if perplexity:
        task = max(perplexity, key=lambda t: abs(perplexity[t]))
        ok &= all(abs(p) <= PERPLEXITY_TOLERANCE for p in perplexity.values())
        numbers[f"{method}_perplexity_change"] = perplexity[task]
        parts.append(
            f"perplexity {task} {format_relative(perplexity[task])} "
            f"(tolerance ±{PERPLEXITY_TOLERANCE:.0%})"
        )
    return ok, f"{_name(method)} after {last} edits: {', '.join(parts)}", numbers


def _judge_unchanged(
    summary: BenchSummary, methods: list[str]
) -> tuple[str, str, dict[str, float]]:
    return _judge_each(summary, methods, _unchanged)


def _judge_families(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    sides: dict[bool, dict[str, float]] = {True: {}, False: {}}
    for method in summary.methods():
        if method not in METHODS:
            continue
        change = _general_change(summary, method)
        if isinstance(change, str) or not change[0]:
            continue
        sides[get_method(method).modifies_parameters()][method] = sum(change[0].values()) / len(
            change[0]
        )
    if not sides[True] and not sides[False]:
        return _not_run(
            "needs downstream scores at sequential checkpoints and of the unedited model"
        )
    held, parts, numbers = [], [], {}
    for modifying, label in ((True, "parameter-modifying"), (False, "parameter-preserving")):
        changes = sides[modifying]
        if not changes:
            parts.append(f"no {label} method has downstream scores, so that half is untested")
            continue
        mean = sum(changes.values()) / len(changes)
        ok = mean < -DOWNSTREAM_DROP if modifying else mean >= -DOWNSTREAM_DROP
        held.append(ok)
        numbers[f"{label}_mean_change"] = mean
        each = ", ".join(f"{_name(m)} {v:+.3f}" for m, v in changes.items())
        want = f"< -{DOWNSTREAM_DROP:.2f}" if modifying else f"≥ -{DOWNSTREAM_DROP:.2f}"
        parts.append(
            f"{label} methods change downstream scores by {mean:+.3f} on average "
            f"({each}; {'holds' if ok else 'fails'}: {want})"
        )
    verdict = _combine(held)
    if len(held) == 1 and verdict == SUPPORTED:
        verdict = PARTLY
    return verdict, "; ".join(parts) + ".", numbers


_DEGRADES = (
    f"degrades: the mean change of the downstream task scores from the unedited model's is at "
    f"most -{DOWNSTREAM_DEGRADE:.2f}, or perplexity rises by at least {PERPLEXITY_DEGRADE:.0%}"
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "ike-single-vs-many",
        "IKE is best on single edits but worse with many related edits.",
        ("ike",),
        "single, and sequential",
        f"IKE has the highest mean of the reliability and generalization headlines among the "
        f"methods on single edits, and its reliability at the last sequential checkpoint is at "
        f"least {RELIABILITY_DROP:.2f} below its single-edit reliability.",
        _judge_ike,
    ),
    Claim(
        "mend-degrades",
        "MEND degrades after 10–20 edits.",
        ("mend",),
        "sequential with general-ability tasks at checkpoint 10 or 20, and the unedited model's",
        f"general ability {_DEGRADES}, at checkpoint 10 or 20.",
        _judge_degrades,
    ),
    Claim(
        "rome-kn-degrade",
        "ROME and KN degrade after about 10 edits.",
        ("rome", "kn"),
        "sequential with general-ability tasks at checkpoint 10 or 20, and the unedited model's",
        f"per method, general ability {_DEGRADES}, at checkpoint 10 or 20; partly supported if "
        f"one of the two degrades.",
        _judge_degrades,
    ),
    Claim(
        "memit-stable",
        f"MEMIT is stable up to {STABLE_UP_TO} edits.",
        ("memit",),
        f"sequential with general-ability tasks at checkpoints up to {STABLE_UP_TO}, and the "
        f"unedited model's",
        f"general ability does not degrade ({_DEGRADES}) at any sequential checkpoint up to "
        f"{STABLE_UP_TO}; partly supported if the last checkpoint run is below {STABLE_UP_TO}.",
        _judge_memit,
    ),
    Claim(
        "grace-serac-downstream",
        "GRACE and SERAC leave downstream scores unchanged.",
        ("grace", "serac"),
        "sequential with general-ability tasks, and the unedited model's scores",
        f"at the last sequential checkpoint every downstream score is within "
        f"±{DOWNSTREAM_TOLERANCE:.2f} of the unedited model's and perplexity within "
        f"±{PERPLEXITY_TOLERANCE:.0%}; partly supported if one of the two holds.",
        _judge_unchanged,
    ),
    Claim(
        "modifying-vs-preserving",
        "Parameter-modifying methods lower downstream scores; parameter-preserving ones do not.",
        (),
        "sequential with general-ability tasks, and the unedited model's scores",
        f"the change of the downstream scores (mean over tasks, last sequential checkpoint "
        f"against the unedited model), averaged over the parameter-modifying methods run, is "
        f"below -{DOWNSTREAM_DROP:.2f}, and over the parameter-preserving ones at least "
        f"-{DOWNSTREAM_DROP:.2f}; partly supported if only one half holds or can be tested.",
        _judge_families,
    ),
)
