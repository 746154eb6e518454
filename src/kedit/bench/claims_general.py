"""Judges of the survey's claims about general ability after many edits.

The survey reads its decay claims (MEND degrades after 10–20 edits, ROME and KN after about 10,
MEMIT is stable up to 40) off its downstream-task plots, so they are judged on general ability:
the informative downstream tasks and perplexity, each change from the unedited model with its
paired interval over the tasks' examples (:mod:`kedit.bench.general_change`).
"""

from __future__ import annotations

from kedit.bench.general_change import general_changes, informative_tasks, task_changes
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.summary import BenchSummary
from kedit.bench.verdicts import (
    DOWNSTREAM_DROP,
    DOWNSTREAM_TOLERANCE,
    NOT_SUPPORTED,
    PARTLY,
    PERPLEXITY_TOLERANCE,
    STABLE_UP_TO,
    SUPPORTED,
    Judgement,
    Part,
    Test,
    all_of,
    conclude,
    degradation,
    degrade_tests,
    general_missing,
    judge_each,
    not_run,
    sequential_job,
    test_numbers,
)
from kedit.eval.formulas.uncertainty import (
    Estimate,
    Statistic,
    draws,
    mean_of_draws,
    seed_for,
    value_of,
)
from kedit.eval.general.task import change_statistic
from kedit.methods import METHODS, display_name


def judge_degrades(summary: BenchSummary, methods: list[str]) -> Judgement:
    missing = general_missing(summary)
    if missing:
        return not_run(missing)
    return judge_each(summary, methods, degradation)


def judge_memit(summary: BenchSummary, methods: list[str]) -> Judgement:
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
    numbers: dict[str, float] = {}
    for check in checks:
        numbers |= check.numbers(memit)
    tests = [t for c in checks for t in degrade_tests(c, "MEMIT")]
    # stable = no test shows degradation: every one must fail (the interval clear of it)
    stable = all_of([t.outcome is False if t.outcome is not None else None for t in tests])
    last = checks[-1].checkpoint
    details = "; ".join(t.text() for t in tests)
    if stable is False:
        return Judgement(NOT_SUPPORTED, f"MEMIT degrades ({details}).", numbers)
    sentence = f"MEMIT up to {last} edits: {details}."
    judgement = conclude([stable], tests, sentence, numbers, mode="any")
    if judgement.verdict == SUPPORTED and last < STABLE_UP_TO:
        return Judgement(
            PARTLY, sentence + f" It holds up to {last} edits only ({wanted}).", numbers
        )
    return judgement


def unchanged(summary: BenchSummary, method: str) -> Part:
    """Every informative downstream score within ±DOWNSTREAM_TOLERANCE of the unedited model's
    and perplexity within ±PERPLEXITY_TOLERANCE, at the last sequential checkpoint, each
    interval inside the band."""
    seq = sequential_job(summary, method)
    name = display_name(method)
    if seq is None:
        why = f"needs general-ability scores at sequential checkpoints ({name} ran none)"
        return Part(None, why, testable=False)
    last = summary.checkpoints(seq.job_id)[-1]
    downstream, perplexity = task_changes(summary, seq.job_id, last)
    if not downstream and not perplexity:
        return Part(
            None,
            f"needs general-ability scores with per-example results at {name}'s last "
            "sequential checkpoint",
            testable=False,
        )
    tests: list[Test] = []
    numbers: dict[str, float] = {}
    for changes, band, relative in (
        (downstream, DOWNSTREAM_TOLERANCE, False),
        (perplexity, PERPLEXITY_TOLERANCE, True),
    ):
        for task, est in changes.items():
            what = f"{name}'s {task} change after {last}"
            tests.append(Test(what, est, -band, True, relative))
            tests.append(Test(what, est, band, False, relative))
            numbers |= test_numbers(f"{method}_{task}_change", est)
    outcome = all_of([t.outcome for t in tests])
    texts = list(dict.fromkeys(t.text() for t in tests))
    return Part(outcome, f"{name}: {'; '.join(texts)}", numbers, tuple(tests), mode="all")


def judge_unchanged(summary: BenchSummary, methods: list[str]) -> Judgement:
    return judge_each(summary, methods, unchanged)


def judge_each_preserving(summary: BenchSummary, methods: list[str]) -> Judgement:
    """:func:`judge_unchanged` on every parameter-preserving method the bench ran (added
    parameters, external memory, in context), each with its own intervals."""
    preserving = [
        m for m in summary.methods() if m in METHODS and not METHODS[m].modifies_parameters()
    ]
    if not preserving:
        return not_run("no parameter-preserving method in this bench")
    return judge_unchanged(summary, preserving)


def _mean_downstream_change(
    summary: BenchSummary, methods: list[str]
) -> tuple[Estimate | None, list[str]]:
    """The mean over ``methods`` of their mean informative downstream change at their last
    sequential checkpoint, every method's examples resampled together (the same examples)."""
    tasks, _ = informative_tasks(summary)
    per_task: dict[str, list[tuple[int, Statistic]]] = {}
    used = []
    for method in methods:
        seq = sequential_job(summary, method)
        if seq is None:
            continue
        last = summary.checkpoints(seq.job_id)[-1]
        found: dict[str, tuple[int, Statistic]] = {}
        for task in tasks:
            base = summary.general_result(BASELINE_JOB, 0, task)
            edited = summary.general_result(seq.job_id, last, task)
            if base is not None and edited is not None:
                statistic = change_statistic(task, base, edited)
                if statistic is not None:
                    found[task] = statistic
        if found:
            used.append(method)
            for task, statistic in found.items():
                per_task.setdefault(task, []).append(statistic)
    if not per_task:
        return None, used
    parts = []
    for task, statistics in per_task.items():
        n = statistics[0][0]

        def mean(rows, s=statistics):  # the methods' changes on the same resample
            return sum(f(rows) for _, f in s) / len(s)

        parts.append((value_of(mean, n), draws(mean, n, seed=seed_for(task))))
    n = min(s[0][0] for s in per_task.values())
    return mean_of_draws(parts, n, "examples"), used


def judge_families(summary: BenchSummary, methods: list[str]) -> Judgement:
    sides: dict[bool, list[str]] = {True: [], False: []}
    for method in summary.methods():
        if method in METHODS:
            sides[METHODS[method].modifies_parameters()].append(method)
    tests, parts, sentences, numbers = [], [], [], {}
    for modifying, label in ((True, "parameter-modifying"), (False, "parameter-preserving")):
        est, used = _mean_downstream_change(summary, sides[modifying])
        if est is None:
            sentences.append(f"no {label} method has downstream results to compare")
            continue
        names = ", ".join(display_name(m) for m in used)
        what = f"{label} methods ({names}) change downstream scores by"
        test = Test(what, est, -DOWNSTREAM_DROP, holds_above=not modifying)
        tests.append(test)
        parts.append(test.outcome)
        sentences.append(test.text())
        numbers |= test_numbers(f"{label}_mean_change", est)
    if not tests:
        return not_run(
            "needs downstream scores with per-example results at sequential checkpoints and "
            "of the unedited model"
        )
    judgement = conclude(parts, tests, "; ".join(sentences) + ".", numbers)
    if len(tests) == 1 and judgement.verdict == SUPPORTED:
        return Judgement(PARTLY, judgement.sentence + " Only one half could be tested.", numbers)
    return judgement
