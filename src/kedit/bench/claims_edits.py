"""Judges of the survey's claims about the edits themselves: success on single and on related
edits, locality, distortion.

Comparisons between methods are paired over the cases both scored (the same cases, so that the
case-to-case spread cancels), with the interval of the difference
(:func:`kedit.eval.formulas.uncertainty.paired_combination`).

*Related edits* are the cases of a benchmark that hold several edits about connected facts,
applied together (the single scenario applies a case's edits as one update): ConflictEdit (two
edits of one subject and relation; the second should win), RoundEdit (an edit and its reversal)
and MQuAKE (the edits of a multi-hop chain). A bench on CounterFact has none, so these claims
say "not run" there; run the bench on ``--dataset conflict-reverse`` (or ``conflict-composite``),
``roundedit-easy`` (``roundedit-hard``) or ``mquake``, with ``--suite pitfalls`` (whose measures
read them).
"""

from __future__ import annotations

from collections.abc import Callable

from kedit.bench.summary import BenchSummary
from kedit.bench.verdicts import (
    DIFFERENCE,
    LOCALITY_DROP,
    Judgement,
    Part,
    Test,
    all_of,
    any_of,
    conclude,
    headline_change,
    headline_difference,
    judge_each,
    not_run,
    test_numbers,
)
from kedit.eval.formulas.uncertainty import Estimate, Term, paired_combination
from kedit.methods import METHODS, display_name

#: the measure that says whether a case's related edits all took effect, by benchmark: the
#: first one the bench has is used
RELATED_EDIT_MEASURES = (
    "conflict_score_explicit",
    "round_edit_success",
    "mquake_edit_wise_success",
)
#: the families the survey means by "fine-tuning and meta-learning"
FT_AND_META = ("fine-tuning", "meta-learning")
#: parameter-modifying methods are "good on Other-Attribution" if the share of the edited
#: subject's other attributes whose top-1 answer the edit left unchanged is above this
OTHER_ATTRIBUTION_GOOD = 0.9
OTHER_ATTRIBUTION = "relation_specificity_top1_agreement"
NEEDS_RELATED = (
    "needs a bench on a dataset with related edits (--dataset conflict-reverse, "
    "conflict-composite, roundedit-easy, roundedit-hard or mquake) with --suite pitfalls, "
    "single scenario"
)


def _single(summary: BenchSummary, method: str) -> str | None:
    job = summary.job(method, "single")
    return None if job is None else job.job_id


def _against_each_other(
    summary: BenchSummary,
    method: str,
    scores: dict[str, float],
    difference: Callable[[str], Estimate | None],
    what: str,
    holds_above: bool,
) -> tuple[list[Test], dict[str, float]]:
    """``method``'s paired difference from every other scored method (the best first), each
    a :class:`Test` against :data:`DIFFERENCE`."""
    tests, numbers = [], {}
    for other in sorted((m for m in scores if m != method), key=lambda m: -scores[m]):
        diff = difference(other)
        if diff is None:
            continue
        name = f"{display_name(method)}'s {what} minus {display_name(other)}'s"
        tests.append(Test(name, diff, DIFFERENCE, holds_above))
        numbers |= test_numbers(f"{method}_minus_{other}", diff)
    return tests, numbers


def judge_ike_single(summary: BenchSummary, methods: list[str]) -> Judgement:
    ike = methods[0]
    groups = ("reliability", "generalization")
    ike_job = _single(summary, ike)
    if any(g not in summary.headlines for g in groups) or ike_job is None:
        return not_run("needs reliability and generalization of IKE on single edits")
    scores = {}
    for method in summary.methods():
        job = _single(summary, method)
        values = [summary.headline(job, 1, g) for g in groups] if job else [None]
        if None not in values:
            scores[method] = sum(values) / len(values)  # type: ignore[arg-type]
    if ike not in scores or len(scores) < 2:
        return not_run("needs single-edit reliability and generalization of IKE and another")
    tests, numbers = _against_each_other(
        summary,
        ike,
        scores,
        lambda m: headline_difference(summary, (ike_job, 1), (_single(summary, m), 1), groups),
        "mean of reliability and generalization",
        holds_above=True,
    )
    if not tests:
        return not_run("IKE and the other methods share no scored case")
    numbers |= {f"{m}_single": v for m, v in scores.items()}
    sentence = "On single edits (best, IKE above every other method): "
    sentence += "; ".join(t.text() for t in tests) + "."
    return conclude([all_of([t.outcome for t in tests])], tests, sentence, numbers, "all")


def related_measure(summary: BenchSummary) -> str | None:
    """The first of :data:`RELATED_EDIT_MEASURES` that the bench's single jobs have."""
    present = {m for (job, _, m) in summary.means if summary.jobs[job].kind == "single"}
    return next((m for m in RELATED_EDIT_MEASURES if m in present), None)


def _related_scores(summary: BenchSummary, measure: str) -> dict[str, float]:
    out = {}
    for method in summary.methods():
        job = _single(summary, method)
        value = summary.value(job, 1, measure) if job else None
        if value is not None:
            out[method] = value
    return out


def judge_ike_related(summary: BenchSummary, methods: list[str]) -> Judgement:
    ike = methods[0]
    measure = related_measure(summary)
    if measure is None:
        return not_run(NEEDS_RELATED)
    scores = _related_scores(summary, measure)
    if ike not in scores or len(scores) < 2:
        return not_run(f"needs {measure} of IKE and another method on single edits")
    ike_values = summary.case_values(_single(summary, ike) or "", 1, measure)

    def difference(other: str) -> Estimate | None:
        values = summary.case_values(_single(summary, other) or "", 1, measure)
        return paired_combination([(1.0, ike_values), (-1.0, values)])

    tests, numbers = _against_each_other(
        summary, ike, scores, difference, f"{measure} on related edits", holds_above=False
    )
    if not tests:
        return not_run("IKE and the other methods share no scored case")
    numbers |= {f"{m}_{measure}": v for m, v in scores.items()}
    sentence = "Worse, IKE below some other method: " + "; ".join(t.text() for t in tests) + "."
    return conclude([any_of([t.outcome for t in tests])], tests, sentence, numbers, "any")


def _family_mean_terms(
    summary: BenchSummary, methods: list[str], measure: str, sign: float
) -> list[Term]:
    return [
        (sign / len(methods), summary.case_values(_single(summary, m) or "", 1, measure))
        for m in methods
    ]


def judge_ft_meta_related(summary: BenchSummary, methods: list[str]) -> Judgement:
    measure = related_measure(summary)
    if measure is None:
        return not_run(NEEDS_RELATED)
    scored = set(_related_scores(summary, measure))
    ours = [m for m in summary.methods() if m in scored and METHODS[m].family in FT_AND_META]
    rest = [
        m
        for m in summary.methods()
        if m in scored and m not in ours and METHODS[m].modifies_parameters()
    ]
    if not ours or not rest:
        return not_run(
            f"needs {measure} of a fine-tuning or meta-learning method and of another "
            "parameter-modifying method"
        )
    terms = _family_mean_terms(summary, ours, measure, 1.0)
    terms += _family_mean_terms(summary, rest, measure, -1.0)
    diff = paired_combination(terms)
    if diff is None:
        return not_run("the methods share no scored case")
    what = (
        f"mean {measure} of {', '.join(map(display_name, ours))} minus that of "
        f"{', '.join(map(display_name, rest))}"
    )
    test = Test(what, diff, DIFFERENCE, holds_above=True)
    numbers = test_numbers("ft_meta_minus_others_related", diff)
    return conclude([test.outcome], [test], f"On related edits: {test.text()}.", numbers)


def _locality_change(summary: BenchSummary, method: str) -> Part:
    job = _single(summary, method)
    name = display_name(method)
    change = headline_change(summary, job, 1, "locality") if job else None
    if change is None:
        why = f"{name} has no single-edit locality with the unedited values"
        return Part(None, why, testable=False)
    test = Test(f"{name}'s locality change", change, -LOCALITY_DROP, holds_above=True)
    numbers = test_numbers(f"{method}_locality_change", change)
    return Part(test.outcome, test.text(), numbers, (test,))


def judge_ike_locality(summary: BenchSummary, methods: list[str]) -> Judgement:
    if "locality" not in summary.headlines:
        return not_run("needs a locality measure")
    return judge_each(summary, methods, _locality_change)


def judge_memit_locality(summary: BenchSummary, methods: list[str]) -> Judgement:
    if "locality" not in summary.headlines:
        return not_run("needs a locality measure")
    others = [
        m
        for m in summary.methods()
        if m != "memit" and m in METHODS and METHODS[m].modifies_parameters()
    ]

    def part(summary: BenchSummary, method: str) -> Part:
        found = _locality_change(summary, method)
        if method == "memit" or not found.testable:
            return found
        # for the others the claim is the opposite: their locality drops
        flipped = tuple(Test(t.what, t.estimate, t.threshold, False) for t in found.tests)
        outcome = None if found.outcome is None else not found.outcome
        return Part(outcome, flipped[0].text(), found.numbers, flipped)

    return judge_each(summary, [*methods, *others], part)


def judge_other_attribution(summary: BenchSummary, methods: list[str]) -> Judgement:
    modifying = [m for m in summary.methods() if m in METHODS and METHODS[m].modifies_parameters()]

    def part(summary: BenchSummary, method: str) -> Part:
        job = _single(summary, method)
        values = summary.case_values(job, 1, OTHER_ATTRIBUTION) if job else {}
        est = paired_combination([(1.0, values)]) if values else None
        name = display_name(method)
        if est is None:
            return Part(None, f"{name} has no single-edit {OTHER_ATTRIBUTION}", testable=False)
        test = Test(f"{name}'s {OTHER_ATTRIBUTION}", est, OTHER_ATTRIBUTION_GOOD, True)
        numbers = test_numbers(f"{method}_other_attribution", est)
        return Part(test.outcome, test.text(), numbers, (test,))

    if not modifying:
        return not_run("needs a parameter-modifying method on single edits")
    found = judge_each(summary, modifying, part)
    if found.verdict == "not run":
        return not_run(
            f"needs {OTHER_ATTRIBUTION} (KnowEdit's Relation_Specificity: "
            "--dataset knowedit-counterfact)"
        )
    return found


def judge_serac_distortion(summary: BenchSummary, methods: list[str]) -> Judgement:
    serac = methods[0]
    job = _single(summary, serac)
    if job is None or summary.value(job, 1, "round_edit_success") is None:
        return not_run("needs SERAC on RoundEdit (--dataset roundedit-easy), single scenario")
    others = [m for m in summary.methods() if m != serac and _single(summary, m) is not None]
    tests: list[Test] = []
    numbers: dict[str, float] = {}
    for measure in ("round_edit_success", "knowledge_distortion"):
        terms = [(1.0, summary.case_values(job, 1, measure))]
        terms += [
            (-1 / len(others), summary.case_values(_single(summary, m), 1, measure)) for m in others
        ]
        diff = paired_combination(terms) if others else None
        if diff is None:
            return not_run(f"needs {measure} of SERAC and of other methods on the same cases")
        tests.append(Test(f"SERAC's {measure} minus the others' mean", diff, DIFFERENCE, False))
        numbers |= test_numbers(f"serac_minus_others_{measure}", diff)
    sentence = "; ".join(t.text() for t in tests) + "."
    return conclude([t.outcome for t in tests], tests, sentence, numbers)
