"""The survey's claims about editing methods, checked against a bench.

Each :class:`~kedit.bench.verdicts.Claim` states what the survey (Hsueh et al. 2024) says, which
methods and scenario it needs and the threshold that decides it; ``Claim.evaluate`` gives a
:class:`~kedit.bench.verdicts.Finding`: a verdict and the numbers that decided it, as a sentence.
:data:`CLAIMS` is the registry, in the survey's order; :func:`evaluate_claims` checks them all.

The survey reads its decay claims (MEND degrades after 10–20 edits, ROME and KN after about 10,
MEMIT is stable up to 40) off its downstream-task plots, so they are judged on general ability
(see :mod:`kedit.bench.verdicts`). Their sentences give the reliability after 1 edit and at the
last checkpoint as context only.
"""

from __future__ import annotations

from kedit.bench.general_change import general_changes
from kedit.bench.summary import BenchSummary
from kedit.bench.verdicts import (
    DOWNSTREAM_DEGRADE,
    DOWNSTREAM_DROP,
    DOWNSTREAM_TOLERANCE,
    NOT_RUN,
    NOT_SUPPORTED,
    PARTLY,
    PERPLEXITY_DEGRADE,
    PERPLEXITY_TOLERANCE,
    RELIABILITY_DROP,
    STABLE_UP_TO,
    SUPPORTED,
    VERDICTS,
    Claim,
    Finding,
    change_at_last,
    combine,
    degradation,
    degrades,
    general_missing,
    judge_each,
    not_run,
    reliability_context,
    sequential_job,
)
from kedit.formatting import format_relative, format_value
from kedit.methods import METHODS, display_name


def _judge_ike(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    ike = methods[0]
    single, seq = summary.job(ike, "single"), sequential_job(summary, ike)
    if single is None or seq is None:
        return not_run("needs the single scenario and sequential checkpoints for IKE")

    def score(method: str) -> float | None:
        job = summary.job(method, "single")
        if job is None:
            return None
        values = [summary.headline(job.job_id, 1, g) for g in ("reliability", "generalization")]
        return None if None in values else sum(values) / 2

    scores = {m: s for m in summary.methods() if (s := score(m)) is not None}
    others = {m: s for m, s in scores.items() if m != ike}
    if ike not in scores or not others:
        return not_run(
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
        "on single edits IKE's mean of reliability and generalization is "
        f"{format_value(scores[ike])}, "
        f"{'the highest' if is_best else 'not the highest'} "
        f"(best other: {display_name(best)} {format_value(others[best])})"
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
        f"; its reliability goes from {format_value(rel_single)} on single edits to "
        f"{format_value(rel_last)} "
        f"after {last} sequential edits (drop {format_value(drop)}; "
        f"{'≥' if degrades else '<'} {RELIABILITY_DROP:.2f})."
    )
    return combine([is_best, degrades]), sentence, numbers


def _judge_degrades(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    missing = general_missing(summary)
    if missing:
        return not_run(missing)
    return judge_each(summary, methods, degradation)


def _judge_memit(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    missing = general_missing(summary)
    if missing:
        return not_run(missing)
    memit = methods[0]
    seq = sequential_job(summary, memit)
    wanted = f"needs general-ability scores at sequential checkpoints up to {STABLE_UP_TO}"
    if seq is None:
        return not_run(f"{wanted} (MEMIT ran no sequential scenario)")
    checks = general_changes(summary, seq.job_id, lambda k: 0 < k <= STABLE_UP_TO)
    if not checks:
        return not_run(f"{wanted} (MEMIT ran {seq.scenario})")
    context, numbers = reliability_context(summary, memit, seq)
    for check in checks:
        numbers |= check.numbers(memit)
    details = "; ".join(c.text() for c in checks)
    degraded = [c for c in checks if degrades(c)]
    last = checks[-1].checkpoint
    if degraded:
        sentence = f"MEMIT degrades by {degraded[0].checkpoint} edits ({details}; {context})."
        return NOT_SUPPORTED, sentence, numbers
    sentence = f"MEMIT does not degrade up to {last} edits ({details}; {context})"
    if last < STABLE_UP_TO:
        return PARTLY, sentence + f": it holds up to {last} edits only ({wanted}).", numbers
    return SUPPORTED, sentence + ".", numbers


def _unchanged(summary: BenchSummary, method: str) -> tuple[bool | None, str, dict[str, float]]:
    change = change_at_last(summary, method)
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
    return ok, f"{display_name(method)} after {last} edits: {', '.join(parts)}", numbers


def _judge_unchanged(
    summary: BenchSummary, methods: list[str]
) -> tuple[str, str, dict[str, float]]:
    return judge_each(summary, methods, _unchanged)


def _judge_families(summary: BenchSummary, methods: list[str]) -> tuple[str, str, dict[str, float]]:
    sides: dict[bool, dict[str, float]] = {True: {}, False: {}}
    for method in summary.methods():
        if method not in METHODS:
            continue
        change = change_at_last(summary, method)
        if isinstance(change, str) or not change[0]:
            continue
        sides[METHODS[method].modifies_parameters()][method] = sum(change[0].values()) / len(
            change[0]
        )
    if not sides[True] and not sides[False]:
        return not_run(
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
        each = ", ".join(f"{display_name(m)} {v:+.3f}" for m, v in changes.items())
        want = f"< -{DOWNSTREAM_DROP:.2f}" if modifying else f"≥ -{DOWNSTREAM_DROP:.2f}"
        parts.append(
            f"{label} methods change downstream scores by {mean:+.3f} on average "
            f"({each}; {'holds' if ok else 'fails'}: {want})"
        )
    verdict = combine(held)
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


def evaluate_claims(summary: BenchSummary) -> list[Finding]:
    """Every claim of :data:`CLAIMS` checked against ``summary``."""
    return [claim.evaluate(summary) for claim in CLAIMS]


__all__ = [
    "CLAIMS",
    "NOT_RUN",
    "NOT_SUPPORTED",
    "PARTLY",
    "SUPPORTED",
    "VERDICTS",
    "Claim",
    "Finding",
    "evaluate_claims",
]
