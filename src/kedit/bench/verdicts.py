"""The machinery of the survey's claims: verdicts, thresholds, the ``Claim``, ``Test`` and
``Finding`` types, and the checks the claims of :mod:`kedit.bench.findings` are judged with.

A claim is judged on those of its methods the bench ran; the sentence names the missing ones
(not registered in kedit, or not in this bench). A claim none of whose methods ran, or that
lacks the scenario, dataset or checkpoints it needs, is ``not run``.

Every part of a claim is a :class:`Test`: an estimate with its 95% interval against a
threshold. A part holds or fails only when the whole interval lies on one side of the
threshold; otherwise it is undecided, and a claim with an undecided part is "inconclusive at this
sample size", with the sample that would settle it if the estimate stayed where it is
(:meth:`kedit.eval.formulas.uncertainty.Estimate.needed`).

A method *degrades* at checkpoint K if the mean change of its downstream task scores from the
unedited model's (the informative tasks only: see
:func:`kedit.bench.general_change.informative_tasks`) is at most ``-DOWNSTREAM_DEGRADE``, or its
perplexity rises by at least ``PERPLEXITY_DEGRADE``, each change with its paired interval over
the tasks' examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kedit.bench.general_change import GeneralChange, general_changes
from kedit.bench.summary import BenchSummary, JobInfo
from kedit.eval.formulas.uncertainty import Estimate, paired_combination, unseen_rate_bound
from kedit.formatting import format_relative
from kedit.methods import METHODS, display_name

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
PARTLY = "partly supported"
INCONCLUSIVE = "inconclusive at this sample size"
NOT_RUN = "not run"
VERDICTS = (SUPPORTED, PARTLY, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN)

#: a method is "worse" than another on the same cases if the difference of their scores lies
#: below this (and "best" if above it)
DIFFERENCE = 0.0
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
#: locality is "stable" if the locality headline drops by less than this after editing
LOCALITY_DROP = 0.05


@dataclass(frozen=True)
class Test:
    """One part of a claim: ``estimate`` against ``threshold``; the part holds when the
    quantity lies above the threshold (``holds_above``) or below it."""

    what: str
    estimate: Estimate
    threshold: float
    holds_above: bool
    #: print the quantity as a relative change (perplexity)
    relative: bool = False

    @property
    def outcome(self) -> bool | None:
        """True if the whole interval lies on the claim's side, False if on the other, None
        if it holds the threshold (undecided)."""
        side = self.estimate.side(self.threshold)
        return None if side == 0 else (side > 0) == self.holds_above

    @property
    def leans(self) -> bool:
        """Whether the value itself lies on the claim's side (where the test would settle if
        the value stayed there)."""
        return (self.estimate.value > self.threshold) == self.holds_above

    def text(self) -> str:
        est, fmt = self.estimate, format_relative if self.relative else _signed
        op = ">" if self.holds_above else "<"
        state = {True: "holds", False: "fails", None: "undecided"}[self.outcome]
        text = (
            f"{self.what} {fmt(est.value)} [{fmt(est.low)}, {fmt(est.high)}] "
            f"({op} {fmt(self.threshold)}: {state})"
        )
        if est.degenerate and est.n:
            text += (
                f" (all {est.n} {est.unit} agree, so the interval is one point; up to "
                f"{unseen_rate_bound(est.n):.0%} of further ones could still differ)"
            )
        return text


def _signed(value: float) -> str:
    return f"{value:+.3f}"


@dataclass(frozen=True)
class Judgement:
    """What a claim's judge decided: the verdict, the sentence with the numbers, the numbers,
    and, when inconclusive, the sample that would settle it."""

    verdict: str
    sentence: str
    numbers: dict[str, float] = field(default_factory=dict)
    needed: str | None = None


@dataclass(frozen=True)
class Finding:
    """A claim's verdict on one bench, and the sentence with the numbers that decided it."""

    claim: str
    verdict: str
    sentence: str
    numbers: dict[str, float] = field(default_factory=dict)
    #: for an inconclusive verdict: the sample size that would settle it
    needed: str | None = None


#: a judge gets the summary and the claim's methods that ran
Judge = Callable[[BenchSummary, list[str]], Judgement]


@dataclass(frozen=True)
class Claim:
    """One of the survey's claims: what it says, what it needs, and how it is decided."""

    id: str
    text: str
    #: the methods it is about; empty means every method in the bench
    methods: tuple[str, ...]
    #: the scenario (and data) it needs, in words
    scenario: str
    #: the test that decides it, in words, with the thresholds
    threshold: str
    judge: Judge

    def evaluate(self, summary: BenchSummary) -> Finding:
        """The verdict on ``summary``, judged on the claim's methods that the bench ran."""
        ran, missing = available(summary, self.methods)
        if self.methods and not ran:
            return Finding(self.id, NOT_RUN, f"not run: {'; '.join(missing)}")
        found = self.judge(summary, ran)
        sentence = found.sentence
        if missing and found.verdict == NOT_RUN:
            sentence += "; " + "; ".join(missing)
        elif missing:
            sentence += f" Missing: {'; '.join(missing)}."
        return Finding(self.id, found.verdict, sentence, found.numbers, found.needed)


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


def not_run(what: str) -> Judgement:
    return Judgement(NOT_RUN, f"not run: {what}")


def any_of(outcomes: Sequence[bool | None]) -> bool | None:
    """True if one holds, False if every one fails, None otherwise."""
    if any(o is True for o in outcomes):
        return True
    return False if outcomes and all(o is False for o in outcomes) else None


def all_of(outcomes: Sequence[bool | None]) -> bool | None:
    """False if one fails, True if every one holds, None otherwise."""
    if any(o is False for o in outcomes):
        return False
    return True if outcomes and all(o is True for o in outcomes) else None


def combine(held: list[bool]) -> str:
    """All of the judged parts hold: supported; some: partly; none: not supported."""
    if all(held):
        return SUPPORTED
    return PARTLY if any(held) else NOT_SUPPORTED


#: how a claim's tests combine: ``each`` must be decided (a verdict per method), ``all`` must
#: hold, ``any`` one holding is enough
Mode = str


def deciding(tests: Sequence[Test], mode: Mode = "each") -> list[Test]:
    """The undecided tests whose settling would decide the claim if the values stayed where
    they are: for ``any``, the quickest of those leaning towards holding (else all); for
    ``all``, the quickest of those leaning towards failing (else all); for ``each``, all."""
    undecided = [t for t in tests if t.outcome is None]
    if mode == "each" or not undecided:
        return undecided
    leaning = [t for t in undecided if t.leans == (mode == "any")]
    if not leaning:
        return undecided
    return [min(leaning, key=lambda t: t.estimate.needed(t.threshold) or float("inf"))]


def needed_sample(tests: Sequence[Test]) -> str:
    """What sample would settle the undecided ones of ``tests``, in words."""
    sizes: dict[str, int] = {}
    stuck = False
    for test in tests:
        if test.outcome is not None:
            continue
        n = test.estimate.needed(test.threshold)
        if n is None:
            stuck = True
        else:
            unit = test.estimate.unit
            sizes[unit] = max(sizes.get(unit, 0), n)
    parts = [f"about {n} {unit}" for unit, n in sizes.items()]
    if "examples" in sizes or "texts" in sizes:
        parts = [p + (" per task" if "cases" not in p else "") for p in parts]
    if stuck:
        parts.append("no sample size for an estimate that sits on its threshold")
    return "; ".join(parts) or "a larger sample"


def verdict(
    parts: Sequence[bool | None], tests: Sequence[Test], mode: Mode = "each"
) -> tuple[str, str | None]:
    """(verdict, sample needed) of a claim whose parts are ``parts``: :func:`combine` of them,
    or inconclusive while an undecided part could still change it (when one part holds and
    another fails, the claim is partly supported whatever the undecided ones turn out to be)."""
    decided = [bool(p) for p in parts if p is not None]
    if len(decided) < len(parts) and not (any(decided) and not all(decided)):
        return INCONCLUSIVE, needed_sample(deciding(tests, mode))
    return combine([bool(p) for p in parts]), None


def conclude(
    parts: Sequence[bool | None],
    tests: Sequence[Test],
    sentence: str,
    numbers: dict[str, float],
    mode: Mode = "each",
) -> Judgement:
    """The :class:`Judgement` of a claim's parts, inconclusive parts named; ``mode`` says how
    the tests combine (:func:`deciding`)."""
    found, needed = verdict(parts, tests, mode)
    if needed:
        sentence += f" Inconclusive at this sample size: {needed} would settle it."
    return Judgement(found, sentence, numbers, needed)


def test_numbers(key: str, est: Estimate) -> dict[str, float]:
    return {key: est.value, f"{key}_low": est.low, f"{key}_high": est.high}


def sequential_job(summary: BenchSummary, method: str) -> JobInfo | None:
    return summary.job(method, "sequential")


def headline_difference(
    summary: BenchSummary,
    a: tuple[str, int],
    b: tuple[str, int],
    groups: Sequence[str],
) -> Estimate | None:
    """Mean over ``groups`` of the headline measure of job-checkpoint ``a`` minus that of
    ``b``, paired over the cases both scored."""
    terms = []
    for group in groups:
        measure = summary.headlines.get(group)
        if measure is None:
            return None
        weight = 1 / len(groups)
        terms.append((weight, summary.case_values(a[0], a[1], measure)))
        terms.append((-weight, summary.case_values(b[0], b[1], measure)))
    return paired_combination(terms)


def headline_change(
    summary: BenchSummary, job_id: str, checkpoint: int, group: str
) -> Estimate | None:
    """A headline measure's change after editing (post - pre) of a job at a checkpoint, paired
    over its cases."""
    measure = summary.headlines.get(group)
    if measure is None:
        return None
    post = summary.case_values(job_id, checkpoint, measure)
    pre = summary.case_values(job_id, checkpoint, measure, "pre")
    return paired_combination([(1.0, post), (-1.0, pre)])


def degrade_tests(change: GeneralChange, name: str) -> list[Test]:
    """The two ways to degrade at a checkpoint (see the module docstring)."""
    tests = []
    k = change.checkpoint
    if change.downstream is not None:
        what = f"{name}'s downstream change after {k}"
        tests.append(Test(what, change.downstream, -DOWNSTREAM_DEGRADE, holds_above=False))
    if change.perplexity is not None:
        what = f"{name}'s perplexity change after {k}"
        tests.append(Test(what, change.perplexity, PERPLEXITY_DEGRADE, True, relative=True))
    return tests


@dataclass(frozen=True)
class Part:
    """One method's share of a claim: its outcome (None: undecided), sentence, numbers and
    tests; ``testable=False`` when the bench cannot test it (the sentence says why)."""

    outcome: bool | None
    sentence: str
    numbers: dict[str, float] = field(default_factory=dict)
    tests: tuple[Test, ...] = ()
    testable: bool = True
    #: how its tests combine (:func:`deciding`)
    mode: Mode = "each"


def degradation(summary: BenchSummary, method: str) -> Part:
    """Whether ``method``'s general ability has degraded at checkpoint 10 or 20."""
    seq = sequential_job(summary, method)
    name = display_name(method)
    if seq is None:
        return Part(None, f"{NEEDS_GENERAL} ({name} ran no sequential scenario)", testable=False)
    checks = general_changes(summary, seq.job_id, lambda k: k in DEGRADE_CHECKPOINTS)
    if not checks:
        wanted = " or ".join(map(str, DEGRADE_CHECKPOINTS))
        ran = ",".join(map(str, summary.checkpoints(seq.job_id)))
        return Part(
            None,
            f"needs general-ability scores with per-example results at sequential checkpoint "
            f"{wanted} ({name} ran {seq.scenario}, checkpoints {ran})",
            testable=False,
        )
    tests = [t for c in checks for t in degrade_tests(c, name)]
    numbers: dict[str, float] = {}
    for check in checks:
        numbers |= check.numbers(method)
    outcome = any_of([any_of([t.outcome for t in degrade_tests(c, name)]) for c in checks])
    state = {True: "degrades", False: "does not degrade", None: "undecided whether it degrades"}
    sentence = f"{name} {state[outcome]} ({'; '.join(t.text() for t in tests)})"
    return Part(outcome, sentence, numbers, tuple(tests), mode="any")


def judge_each(
    summary: BenchSummary, methods: list[str], test: Callable[[BenchSummary, str], Part]
) -> Judgement:
    """Apply ``test`` to each method; combine the testable ones."""
    parts = [test(summary, m) for m in methods]
    tested = [p for p in parts if p.testable]
    untestable = [p.sentence for p in parts if not p.testable]
    if not tested:
        return not_run("; ".join(untestable))
    sentence = "; ".join(p.sentence for p in tested) + "."
    if untestable:
        sentence += " Not tested: " + "; ".join(untestable) + "."
    numbers = {k: v for p in tested for k, v in p.numbers.items()}
    tests = [t for p in tested for t in deciding(p.tests, p.mode)]
    return conclude([p.outcome for p in tested], tests, sentence, numbers)


def general_missing(summary: BenchSummary) -> str | None:
    """Why the bench cannot judge general ability at all, or None."""
    if not (summary.downstream_tasks() or summary.lower_is_better_tasks()):
        return NEEDS_GENERAL
    if not summary.baseline_general():
        return "needs the unedited model's general-ability scores (job unedited/general)"
    return None
