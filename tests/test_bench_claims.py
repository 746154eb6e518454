"""The survey's claims judged on the synthetic bench of tests/synthetic_bench.py, with 95%
intervals: every verdict on the full bench, paired intervals, MMLU at chance left out, an
undecided part and the sample that would settle it, related edits, and benches that lack what a
claim needs."""

from __future__ import annotations

import math

import pytest

from kedit.bench.claims_edits import related_measure
from kedit.bench.findings import (
    INCONCLUSIVE,
    NOT_RUN,
    NOT_SUPPORTED,
    PARTLY,
    SUPPORTED,
    evaluate_claims,
)
from kedit.bench.general_change import general_change_estimate, informative_tasks
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.summary import BenchSummary
from kedit.bench.verdicts import (
    DOWNSTREAM_DEGRADE,
    LOCALITY_DROP,
    available,
    headline_difference,
    verdict,
)
from kedit.bench.verdicts import (
    Test as ClaimTest,
)
from kedit.eval.formulas.uncertainty import Estimate, paired_combination
from tests.synthetic_bench import (
    BASELINE,
    N_CASES,
    N_EXAMPLES,
    SEQUENTIAL,
    build_bench,
    build_related_bench,
    general_scores,
    read_rows,
    summary_of,
)

#: every claim's verdict on the synthetic bench (tests/synthetic_bench.py says why); "not
#: supported" comes from the related-edit bench and from changed general results below
VERDICTS = {
    "ike-best-single": SUPPORTED,
    "ike-related": NOT_RUN,  # CounterFact has no related edits
    "ft-meta-related": NOT_RUN,
    "ike-locality-single": SUPPORTED,
    "memit-locality": INCONCLUSIVE,  # ROME's uneven locality drop
    "modifying-other-attribution": NOT_RUN,  # a KnowEdit measure
    "serac-distortion": NOT_RUN,
    "mend-degrades": NOT_RUN,
    "rome-kn-degrade": PARTLY,
    "memit-stable": PARTLY,  # checkpoints up to 20 only
    "grace-serac-downstream": SUPPORTED,  # SERAC missing
    "modifying-vs-preserving": SUPPORTED,
    "preserving-downstream-each": SUPPORTED,  # GRACE and IKE, each on its own
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    build_bench(root)
    return read_rows(root)


@pytest.fixture(scope="module")
def summary(rows) -> BenchSummary:
    return summary_of(rows)


@pytest.fixture(scope="module")
def found(summary) -> dict:
    return findings_of(summary)


def findings_of(summary: BenchSummary) -> dict:
    return {f.claim: f for f in evaluate_claims(summary)}


def estimate_of(numbers: dict[str, float], key: str, n: int, unit: str = "cases") -> Estimate:
    """The estimate a finding reports under ``key``, ``key_low``, ``key_high``."""
    return Estimate(numbers[key], numbers[f"{key}_low"], numbers[f"{key}_high"], n, unit)


def test_a_claim_names_a_method_kedit_lacks(summary):
    ran, missing = available(summary, ("rome", "no-such-editor"))
    assert ran == ["rome"] and missing == ["NO-SUCH-EDITOR is not registered in kedit yet"]


def test_verdicts_on_the_synthetic_bench(found):
    assert {k: f.verdict for k, f in found.items()} == VERDICTS
    assert found["mend-degrades"].sentence == "not run: MEND was not in this bench"
    assert found["serac-distortion"].sentence == "not run: SERAC was not in this bench"
    assert "SERAC was not in this bench" in found["grace-serac-downstream"].sentence
    each = found["preserving-downstream-each"]
    assert "GRACE: " in each.sentence and "IKE: " in each.sentence
    assert {"grace_sst2_change", "ike_sst2_change_low"} <= set(each.numbers)
    for claim in ("ike-related", "ft-meta-related"):
        assert found[claim].sentence.startswith("not run: needs a bench on a dataset with related")
    assert "relation_specificity_top1_agreement" in found["modifying-other-attribution"].sentence
    # only an inconclusive verdict says what sample would settle it
    assert [k for k, f in found.items() if f.needed] == ["memit-locality"]


def test_ike_best_is_a_paired_difference(summary, found):
    ike = found["ike-best-single"]
    # IKE (1.00 + 0.90) / 2 against the best other, ROME (0.95 + 0.60) / 2, on the same cases
    assert ike.numbers["ike_single"] == pytest.approx(0.95)
    assert ike.numbers["rome_single"] == pytest.approx(0.775)
    diff = estimate_of(ike.numbers, "ike_minus_rome", N_CASES)
    assert diff.value == pytest.approx(0.175)
    assert 0 < diff.low < diff.value < diff.high
    # against every other method, the best first
    assert "IKE's mean of reliability and generalization minus ROME's +0.175 [" in ike.sentence
    assert ike.sentence.index("minus ROME's") < ike.sentence.index("minus KN's")
    assert estimate_of(ike.numbers, "ike_minus_kn", N_CASES).low > 0
    # paired: the paraphrases' case-to-case spread cancels, so the interval is far narrower than
    # that of the two means resampled apart
    headlines = ("efficacy_score", "paraphrase_score")
    apart = [
        paired_combination([(0.5, summary.case_values(job, 1, m)) for m in headlines])
        for job in ("ike/single", "rome/single")
    ]
    width = math.hypot(*(e.high - e.low for e in apart))
    assert diff.high - diff.low < 0.7 * width
    pair = (("ike/single", 1), ("rome/single", 1))
    assert headline_difference(summary, *pair, ("reliability", "generalization")) == diff


def test_locality_claims(rows, found):
    ike = found["ike-locality-single"]
    # IKE leaves every neighbour alone: every per-case difference is 0, and so is its interval
    assert [ike.numbers[f"ike_locality_change{s}"] for s in ("", "_low", "_high")] == [0, 0, 0]
    memit = found["memit-locality"]
    numbers = memit.numbers
    assert numbers["memit_locality_change"] == pytest.approx(-0.01)
    assert numbers["memit_locality_change_low"] > -LOCALITY_DROP  # MEMIT is stable
    for method, change in (("kn", -0.10), ("ft-l", 0.7 - (10 * 1.0 + 9 * 0.8) / 19)):
        assert numbers[f"{method}_locality_change"] == pytest.approx(change)
        assert numbers[f"{method}_locality_change_high"] < -LOCALITY_DROP  # they drop
    # ROME drops 0.10 on average, but 4 cases of 20 lose half their neighbours and the rest
    # none: the interval holds the threshold, and the sample it would take is named
    rome = estimate_of(numbers, "rome_locality_change", N_CASES)
    assert rome.value == pytest.approx(-0.10)
    assert rome.low < -LOCALITY_DROP < rome.high
    needed = rome.needed(-LOCALITY_DROP)
    assert needed > N_CASES
    assert memit.needed == f"about {needed} cases"
    assert f"Inconclusive at this sample size: about {needed} cases would settle it." in (
        memit.sentence
    )
    assert "ROME's locality change -0.100 [" in memit.sentence
    # without ROME, every part is decided
    without_rome = findings_of(summary_of(rows, job=lambda j: not j.startswith("rome/")))
    assert without_rome["memit-locality"].verdict == SUPPORTED


def test_general_ability_claims(summary, found):
    rome_kn = found["rome-kn-degrade"]
    numbers = rome_kn.numbers
    # the mean change of sst2 and rte (MMLU left out), paired on the same examples
    assert numbers["rome_downstream_change_10"] == pytest.approx(-0.10)
    assert numbers["rome_downstream_change_10_high"] < -DOWNSTREAM_DEGRADE
    assert numbers["rome_perplexity_change_10"] == pytest.approx(0.20)
    assert numbers["kn_downstream_change_20"] == pytest.approx(-0.02)
    assert numbers["kn_downstream_change_20_low"] > -DOWNSTREAM_DEGRADE
    assert numbers["kn_perplexity_change_20"] == pytest.approx(0.04)
    assert "ROME degrades (ROME's downstream change after 10 -0.100 [" in rome_kn.sentence
    assert "KN does not degrade (" in rome_kn.sentence
    memit = found["memit-stable"]
    assert memit.sentence.startswith("MEMIT up to 20 edits: ")
    assert "It holds up to 20 edits only" in memit.sentence
    assert memit.numbers["memit_downstream_change_20"] == pytest.approx(-0.01)
    grace = found["grace-serac-downstream"].numbers
    for task in ("sst2", "rte"):  # the same answers on every example: a [0, 0] interval
        assert [grace[f"grace_{task}_change{s}"] for s in ("", "_low", "_high")] == [0, 0, 0]
    assert grace["grace_wikitext_change"] == pytest.approx(0.005)
    assert "grace_mmlu_change" not in grace
    families = found["modifying-vs-preserving"].numbers
    assert families["parameter-modifying_mean_change"] == pytest.approx(
        (-0.20 - 0.01 - 0.02 - 0.08) / 4
    )
    assert families["parameter-preserving_mean_change"] == pytest.approx(-0.005 / 2)
    # a paired change is much narrower than the scores' own intervals: ROME's perplexity after
    # 20 edits against the unedited model's, on the same texts
    change = general_change_estimate(summary, f"rome/{SEQUENTIAL}", 20, "wikitext")
    base = summary.estimate(BASELINE_JOB, 0, "wikitext")
    assert change.value == pytest.approx(0.40) and change.unit == "texts"
    assert change.low < 0.40 < change.high
    assert change.high - change.low < (base.high - base.low) / base.value / 4


def test_mmlu_at_chance_is_left_out(rows, summary, found):
    kept, excluded = informative_tasks(summary)
    assert kept == ["rte", "sst2"]
    assert list(excluded) == ["mmlu"]
    assert excluded["mmlu"].startswith("the unedited model is at chance (0.270 [")
    assert excluded["mmlu"].endswith("a constant answer scores 0.250)")
    # had the unedited model been well above chance on MMLU, its drop to 0.25 would count
    above = summary_of(rows, general={(BASELINE_JOB, 0): dict(BASELINE, mmlu=0.60)})
    assert informative_tasks(above) == (["mmlu", "rte", "sst2"], {})
    clear = findings_of(above)
    assert clear["grace-serac-downstream"].verdict == NOT_SUPPORTED  # GRACE's MMLU -0.35
    assert clear["rome-kn-degrade"].numbers["rome_downstream_change_10"] == pytest.approx(
        (-0.10 - 0.10 - 0.35) / 3
    )


def test_a_change_near_its_threshold_is_inconclusive(rows):
    # KN's sst2 and rte fall 0.06 after 20 edits: near the 0.05 that means degraded
    scores = general_scores("kn", 20) | {"sst2": 0.74, "rte": 0.54}
    found = findings_of(summary_of(rows, general={(f"kn/{SEQUENTIAL}", 20): scores}))
    rome_kn = found["rome-kn-degrade"]
    assert rome_kn.verdict == INCONCLUSIVE
    kn = estimate_of(rome_kn.numbers, "kn_downstream_change_20", N_EXAMPLES, "examples")
    assert kn.value == pytest.approx(-0.06)
    assert kn.low < -DOWNSTREAM_DEGRADE < kn.high
    needed = kn.needed(-DOWNSTREAM_DEGRADE)
    assert needed > N_EXAMPLES
    assert rome_kn.needed == f"about {needed} examples per task"
    assert "KN undecided whether it degrades" in rome_kn.sentence


def test_related_edit_claims(tmp_path):
    build_related_bench(tmp_path / "related")
    rows = read_rows(tmp_path / "related")
    summary = summary_of(rows)
    assert related_measure(summary) == "conflict_score_explicit"
    found = findings_of(summary)
    ike = found["ike-related"]
    assert ike.verdict == SUPPORTED
    assert "IKE's conflict_score_explicit on related edits minus ROME's -0.600 [" in ike.sentence
    diff = estimate_of(ike.numbers, "ike_minus_rome", N_CASES)
    assert diff.value == pytest.approx(-0.6) and diff.high < 0
    ft = found["ft-meta-related"]
    assert ft.verdict == NOT_SUPPORTED  # FT-L 0.20 against ROME 0.80 and MEMIT 0.60
    assert "mean conflict_score_explicit of FT-L minus that of ROME, MEMIT -0.500 [" in ft.sentence
    assert found["ike-best-single"].verdict == NOT_RUN  # no reliability measure here
    # the same bench on its first 5 cases: the same difference, too few cases to tell
    small = findings_of(summary_of(rows, case=lambda c: c < "c05"))["ike-related"]
    assert small.verdict == INCONCLUSIVE
    few = estimate_of(small.numbers, "ike_minus_rome", 5)
    assert few.value == pytest.approx(-0.6)
    assert few.low < 0 < few.high
    needed = few.needed(0.0)
    assert 5 < needed <= N_CASES  # 20 cases settled it
    assert small.needed == f"about {needed} cases"


def test_findings_on_partial_benches(rows):
    no_kn = findings_of(summary_of(rows, job=lambda j: not j.startswith("kn/")))
    assert no_kn["rome-kn-degrade"].verdict == SUPPORTED
    assert "KN was not in this bench" in no_kn["rome-kn-degrade"].sentence

    single_only = findings_of(summary_of(rows, job=lambda j: "sequential" not in j))
    memit = single_only["memit-stable"]
    assert memit.verdict == NOT_RUN
    assert memit.sentence.startswith(
        "not run: needs general-ability scores at sequential checkpoints up to 40"
    )
    assert single_only["ike-best-single"].verdict == SUPPORTED  # judged on single edits
    assert single_only["modifying-vs-preserving"].verdict == NOT_RUN

    no_grace = findings_of(summary_of(rows, job=lambda j: not j.startswith("grace/")))
    grace = no_grace["grace-serac-downstream"]
    assert grace.verdict == NOT_RUN
    assert "GRACE was not in this bench" in grace.sentence


def test_decay_claims_need_general_tasks(rows):
    results = [r for r in rows["results"] if r["group"] != "general"]
    found = findings_of(BenchSummary.from_rows(rows["identity"], rows["jobs"], [], results))
    for claim in ("rome-kn-degrade", "memit-stable"):
        assert found[claim].verdict == NOT_RUN
        assert found[claim].sentence == (
            "not run: needs general-ability tasks at sequential checkpoints"
        )
    assert found["ike-best-single"].verdict == SUPPORTED  # judged on reliability

    # scores stored without their per-example results (an older bench): no interval, no claim
    cases = [c | {"details": None} for c in rows["cases"]]
    bare = BenchSummary.from_rows(rows["identity"], rows["jobs"], cases, rows["results"])
    assert set(informative_tasks(bare)[1]) == {"mmlu", "rte", "sst2"}
    found = findings_of(bare)
    assert found["rome-kn-degrade"].verdict == NOT_RUN
    assert "needs general-ability scores with per-example results" in (
        found["rome-kn-degrade"].sentence
    )
    assert found["modifying-vs-preserving"].verdict == NOT_RUN


def test_findings_not_supported_and_supported_up_to_40(rows):
    general = {(f"rome/{SEQUENTIAL}", k): dict(BASELINE) for k in (1, 10, 20)}
    general[(f"memit/{SEQUENTIAL}", 40)] = general_scores("memit", 20)  # unchanged after 40
    found = findings_of(summary_of(rows, general=general))
    rome_kn = found["rome-kn-degrade"]
    assert rome_kn.verdict == NOT_SUPPORTED
    assert rome_kn.numbers["rome_downstream_change_10"] == 0
    assert rome_kn.numbers["rome_downstream_change_10_low"] == 0
    memit = found["memit-stable"]
    assert memit.verdict == SUPPORTED
    assert memit.sentence.startswith("MEMIT up to 40 edits: ")
    assert "holds up to" not in memit.sentence


def test_perplexity_alone_is_a_degradation(rows):
    # perplexity up 15% after 10 edits, downstream scores as they were
    general = {
        (f"{m}/{SEQUENTIAL}", 10): general_scores(m, 10) | {"wikitext": BASELINE["wikitext"] * 1.15}
        for m in ("kn", "memit")
    }
    found = findings_of(summary_of(rows, general=general))
    rome_kn = found["rome-kn-degrade"]
    assert rome_kn.verdict == SUPPORTED
    assert "KN degrades (" in rome_kn.sentence
    memit = found["memit-stable"]
    assert memit.verdict == NOT_SUPPORTED
    assert memit.sentence.startswith("MEMIT degrades (")
    assert memit.numbers["memit_perplexity_change_10"] == pytest.approx(0.15)
    assert memit.numbers["memit_perplexity_change_10_low"] > 0.10
    assert memit.numbers["memit_downstream_change_10"] == pytest.approx(-0.005)


def test_a_claim_with_a_part_held_and_a_part_failed_is_partly_supported_already():
    """Undecided parts keep a claim inconclusive only while they could change its verdict: once
    one part holds and another fails it is partly supported whatever the rest turn out to be."""
    undecided = ClaimTest("x", Estimate(0.0, -0.2, 0.2, 20), 0.05, holds_above=True)
    assert undecided.outcome is None
    assert verdict([True, False, None], [undecided]) == (PARTLY, None)
    assert verdict([True, None], [undecided])[0] == INCONCLUSIVE  # supported or partly
    assert verdict([False, None], [undecided])[0] == INCONCLUSIVE  # partly or not supported
    assert verdict([True, True], []) == (SUPPORTED, None)
    assert verdict([False, False], []) == (NOT_SUPPORTED, None)
