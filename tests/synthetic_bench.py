"""A synthetic bench written through ``BenchStore``, with numbers chosen so that every claim's
verdict is known (for tests/test_bench_summary.py, test_bench_report.py, test_bench_claims.py).

Cases have spread, as real ones do: reliability is a 0/1 outcome per case (a method with
reliability p succeeds on the first round(p * n) cases: the cases in order of difficulty, so
that two methods' successes are nested and their paired difference is narrow), paraphrase scores
are pooled with weights 2 and 1, and locality (tenths of flipped neighbours) drops by a chosen
amount per case. The general pseudo-case stores its task results with per-example samples, as
``kedit.eval.scored.general_ability_unit`` does: a choice task of ``N_EXAMPLES`` balanced
examples whose correct ones are the first round(a * n) of a fixed order (nested between the
unedited and the edited model, so their paired change is narrow), and WikiText perplexity over
``N_TEXTS`` texts whose NLLs the edit scales by log(ppl_edited) / log(ppl_unedited), which gives
the corpus ratio exactly.

The story: IKE best on single edits and 0.30 worse after 20 sequential edits; ROME's general
ability degrades (sst2 and rte -0.10 after 10 edits), KN's does not (-0.02 after 20); MEMIT
stable up to its last checkpoint 20; GRACE leaves general ability alone, IKE nearly, while the
parameter-modifying methods lower it; MMLU is at chance for the unedited model (4 balanced
classes, 0.27) and counts toward no claim; ROME's locality drop (4 cases lose half their
neighbours) is too uneven over 20 cases to tell from the 0.05 threshold; MEND and SERAC are not
registered. On the related-edit bench (ConflictEdit), IKE is worse than ROME and FT-L worse than
ROME and MEMIT.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kedit.bench.plan import BASELINE as UNEDITED
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.store import BenchStore, UnitResult
from kedit.bench.summary import BenchSummary
from kedit.eval.formulas.uncertainty import Estimate
from kedit.eval.rows import CaseRow, MeasureRow, Unit

MODEL = "tiny-model"
DATASET = "counterfact"
N_CASES = 20
CHECKPOINTS = (1, 10, 20)
SEQUENTIAL = "sequential:1,10,20"
MIB = 1024 * 1024
N_EXAMPLES = 200
N_TEXTS = 100
SKIP_REASON = "the dataset has no <portability> probes & aliases"
NOT_APPLICABLE_NOTE = "rome edits one request per update; batch:10 needs a batch method"

#: measure -> (group, protocol)
MEASURES = {
    "efficacy_score": ("reliability", "probability comparison"),
    "rewrite_token_acc": ("reliability", "teacher-forced token accuracy"),
    "rewrite_gen_match": ("reliability", "generation exact match"),
    "paraphrase_score": ("generalization", "probability comparison"),
    "neighborhood_score": ("locality", "probability comparison"),
}
#: the unedited model succeeds (P(new) > P(old)) on these cases: 0.10 of any 10 or 20 first ones
PRE_SUCCESS = (5, 15)
#: method -> single-edit (reliability, free-generation reliability, generalization)
SINGLE = {
    "ike": (1.00, 0.60, 0.90),
    "rome": (0.95, 0.40, 0.60),
    "memit": (0.90, 0.35, 0.55),
    "kn": (0.50, 0.10, 0.30),
    "grace": (1.00, 0.95, 0.20),
    "ft-l": (0.80, 0.30, 0.40),
}
#: method -> {neighbours lost per case, in tenths: the cases}; the mean drop of locality
#: (0.90 before editing) is 0 for IKE and GRACE, 0.01 MEMIT, 0.10 ROME and KN, 0.20 FT-L
LOCALITY_DROPS = {
    "ike": {},
    "grace": {},
    "memit": {1: (3, 12)},
    "rome": {5: (1, 6, 11, 16)},
    "kn": {2: (0, 5, 10, 15), 1: tuple(i for i in range(20) if i % 5 > 1)},
    "ft-l": {1: tuple(range(1, 20, 2)), 3: tuple(range(0, 20, 2))},
}
#: method -> reliability after 1, 10, 20 sequential edits
SEQ_RELIABILITY = {
    "ike": (1.00, 0.80, 0.70),
    "rome": (1.00, 0.50, 0.30),
    "memit": (1.00, 1.00, 0.95),
    "kn": (1.00, 0.60, 0.55),
    "grace": (1.00, 1.00, 1.00),
    "ft-l": (1.00, 0.60, 0.40),
}
#: the unedited model's general ability
BASELINE = {"wikitext": 30.0, "sst2": 0.80, "rte": 0.60, "mmlu": 0.27}
DOWNSTREAM = ("sst2", "rte", "mmlu")
#: method -> (change of sst2 and rte, relative change of perplexity) after 1, 10, 20 edits;
#: every edited model's MMLU is 0.25 (at chance, where it was)
GENERAL_CHANGE = {
    "ike": ((-0.005, 0.003),) * 3,
    "rome": ((-0.01, 0.02), (-0.10, 0.20), (-0.20, 0.40)),
    "memit": ((0.0, 0.001), (-0.005, 0.01), (-0.01, 0.02)),
    "kn": ((0.0, 0.002), (-0.01, 0.02), (-0.02, 0.04)),
    "grace": ((0.0, 0.005),) * 3,
    "ft-l": ((-0.005, 0.004), (-0.04, 0.04), (-0.08, 0.08)),
}
EDITED_MMLU = 0.25
RELATED_MEASURE = "conflict_score_explicit"
#: method -> the cases (by index mod 5) whose related edits all took effect, on ConflictEdit
RELATED = {"ike": {0}, "ft-l": {1}, "rome": {1, 2, 3, 4}, "memit": {1, 2, 3}}


def first(share: float, n: int) -> list[float]:
    """0/1 outcomes of ``n`` cases ordered by difficulty: the first round(share * n) succeed."""
    return [1.0 if i < round(share * n) else 0.0 for i in range(n)]


# -- general ability -------------------------------------------------------------------------


def _order(task: str, n: int) -> list[int]:
    """A fixed order of the examples: the easiest first."""
    order = list(range(n))
    random.Random(task).shuffle(order)
    return order


def choice_result(task: str, accuracy: float, n: int = N_EXAMPLES) -> dict[str, Any]:
    """A choice task's result: balanced labels (4 classes for MMLU, else 2), the first
    round(accuracy * n) examples of a fixed order right, the others off by one class."""
    k = 4 if task == "mmlu" else 2
    labels = [i % k for i in range(n)]
    right = set(_order(task, n)[: round(accuracy * n)])
    preds = [y if i in right else (y + 1) % k for i, y in enumerate(labels)]
    score = len(right) / n
    return {
        "score": score,
        "metric": "accuracy",
        "accuracy": score,
        "n": n,
        "higher_is_better": True,
        "chance": 1 / k,
        "protocol": f"{task}: 0-shot synthetic",
        "samples": {"labels": labels, "preds": preds},
    }


def perplexity_result(ppl: float, n: int = N_TEXTS) -> dict[str, Any]:
    """WikiText perplexity ``ppl`` (token-weighted over the corpus) over ``n`` texts of 20 to
    119 tokens whose per-token NLL varies by ±30%: the unedited model's NLLs scaled by
    log(ppl) / log(BASELINE)."""
    tokens = [20 + (i * 37) % 100 for i in range(n)]
    rates = [0.7 + 0.6 * ((i * 53) % 100) / 100 for i in range(n)]
    base = math.log(BASELINE["wikitext"])
    norm = base * sum(tokens) / sum(t * r for t, r in zip(tokens, rates))
    unedited = [t * r * norm for t, r in zip(tokens, rates)]
    return {
        "score": ppl,
        "metric": "perplexity",
        "n": n,
        "higher_is_better": False,
        "protocol": "wikitext perplexity: synthetic",
        "samples": {"nll": [x * math.log(ppl) / base for x in unedited], "tokens": tokens},
    }


def general_scores(method: str, k: int) -> dict[str, float]:
    """General-ability scores of ``method`` after ``k`` sequential edits."""
    down, ppl = GENERAL_CHANGE[method][CHECKPOINTS.index(k)]
    return {
        "wikitext": BASELINE["wikitext"] * (1 + ppl),
        "sst2": BASELINE["sst2"] + down,
        "rte": BASELINE["rte"] + down,
        "mmlu": EDITED_MMLU,
    }


def general_results(scores: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {
        task: perplexity_result(value) if task == "wikitext" else choice_result(task, value)
        for task, value in scores.items()
    }


def general_case(k: int, results: dict[str, dict[str, Any]]) -> tuple[dict, list[dict]]:
    """The general pseudo-case's case row (results with samples in its details) and measure
    rows (post = score, weight = n), as ``kedit.eval.scored.general_ability_unit`` writes them."""
    case = {"case_id": "general", "checkpoint": k, "eval_time_s": 5.0}
    case["details"] = {"general": results}
    rows = [
        {
            "case_id": "general",
            "checkpoint": k,
            "measure": task,
            "group": "general",
            "protocol": f"{r['metric']}: {r['protocol']}",
            "higher_is_better": r["higher_is_better"],
            "post": r["score"],
            "weight": r["n"],
        }
        for task, r in results.items()
    ]
    return case, rows


# -- cases -----------------------------------------------------------------------------------


def locality(method: str, i: int) -> tuple[float, float]:
    """Case ``i``'s locality (pre, post): 1.0 or 0.8 before editing, minus the method's drop."""
    pre = 1.0 if i % 2 == 0 else 0.8
    drop = sum(t for t, cases in LOCALITY_DROPS[method].items() if i in cases) / 10
    return pre, round(pre - drop, 10)


def case_rows(method: str, k: int, n: int, rel: float, free: float, gen: float) -> list[dict]:
    """The measure rows of cases 0..n-1 at checkpoint ``k``. Paraphrases are pooled with weights
    2 (even cases, ``gen`` + 0.1) and 1 (odd, ``gen`` - 0.2): the weighted mean of an even
    number of cases is ``gen``, the plain mean 0.05 lower."""
    efficacy, generation = first(rel, n), first(min(free, rel), n)
    rows = []
    for i in range(n):
        pre_loc, post_loc = locality(method, i)
        pre_eff = 1.0 if i in PRE_SUCCESS else 0.0
        values = {
            "efficacy_score": (pre_eff, efficacy[i], 1),
            "rewrite_token_acc": (0.5 * pre_eff, 0.95 * efficacy[i], 1),
            "rewrite_gen_match": (0.0, generation[i], 1),
            "paraphrase_score": (0.3, gen + 0.1, 2) if i % 2 == 0 else (0.0, gen - 0.2, 1),
            "neighborhood_score": (pre_loc, post_loc, 1),
        }
        for measure, (pre, post, weight) in values.items():
            group, protocol = MEASURES[measure]
            rows.append(
                {"case_id": f"c{i:02d}", "checkpoint": k, "measure": measure, "group": group}
                | {"protocol": protocol, "higher_is_better": True, "pre": pre, "post": post}
                | {"weight": weight}
            )
    return rows


def info(method: str, dataset: str = DATASET, measures=MEASURES) -> dict:
    return {
        "model": MODEL,
        "model_fingerprint": "fp-1234",
        "config": {"method": method},
        "versions": {"kedit": "0.1.0", "torch": "2.x", "transformers": "4.x", "python": "3.x"},
        "seed": 0,
        "device": "cpu",
        "dataset": dataset,
        "n_cases": N_CASES,
        "metrics": {m: {"group": g, "protocol": p} for m, (g, p) in measures.items()},
        "skipped": {"portability_token_acc": SKIP_REASON},
    }


def unit_result(job: str, key: str, cases=(), results=()) -> UnitResult:
    """A unit of rows written as mappings (the store's columns)."""
    return UnitResult(
        job,
        Unit(
            key,
            [CaseRow.from_dict(c) for c in cases],
            [MeasureRow.from_dict({"pre": None, "weight": 1} | r) for r in results],
        ),
    )


def build_bench(root: Path) -> None:
    with BenchStore(root) as store:
        store.check_identity({"model": MODEL, "dataset": DATASET, "limit": N_CASES, "seed": 0})
        store.open_job(BASELINE_JOB, "unedited", str(UNEDITED.protocol), info("unedited"))
        case, rows = general_case(0, general_results(BASELINE))
        store.write_unit(unit_result(BASELINE_JOB, "general", [case], rows))
        store.finish_job(BASELINE_JOB)
        for method, (rel, free, gen) in SINGLE.items():
            job = f"{method}/single"
            store.open_job(job, method, "single", info(method))
            rows = case_rows(method, 1, N_CASES, rel, free, gen)
            for i in range(N_CASES):
                case = f"c{i:02d}"
                if method == "ft-l" and i == 3:  # one failed edit: a case row, no results
                    row = {"case_id": case, "checkpoint": 1, "error": "RuntimeError: diverged"}
                    store.write_unit(unit_result(job, case, cases=[row]))
                    continue
                cost = {"case_id": case, "checkpoint": 1, "edit_time_s": 1.0 + 0.01 * i}
                cost |= {"eval_time_s": 0.2, "edit_memory_bytes": 10 * MIB}
                cost |= {"peak_memory_bytes": 500 * MIB, "memory_kind": "cpu rss"}
                mine = [r for r in rows if r["case_id"] == case]
                store.write_unit(unit_result(job, case, cases=[cost], results=mine))
            store.finish_job(job)
        for method, reliability in SEQ_RELIABILITY.items():
            job = f"{method}/{SEQUENTIAL}"
            store.open_job(job, method, SEQUENTIAL, info(method))
            _, free, gen = SINGLE[method]
            for k, rel in zip(CHECKPOINTS, reliability):
                cases = [
                    {"case_id": f"c{i:02d}", "checkpoint": k, "edit_time_s": 0.5 + 0.01 * i}
                    | {"eval_time_s": 0.1, "edit_memory_bytes": 4 * MIB, "memory_kind": "cpu rss"}
                    for i in range(k)
                ]
                results = case_rows(method, k, k, rel, free, gen)
                general, rows = general_case(k, general_results(general_scores(method, k)))
                unit = unit_result(job, f"checkpoint-{k}", [*cases, general], results + rows)
                store.write_unit(unit)
            store.finish_job(job)
        store.open_job("rome/batch:10", "rome", "batch:10", info("rome"))
        store.finish_job("rome/batch:10", "not applicable", NOT_APPLICABLE_NOTE)
        store.open_job("memit/batch:10", "memit", "batch:10", info("memit"))
        rows = case_rows("memit", 10, N_CASES, 0.85, 0.30, 0.50)
        for b in range(2):
            cases = [f"c{i:02d}" for i in range(10 * b, 10 * b + 10)]
            store.write_unit(
                unit_result(
                    "memit/batch:10",
                    f"batch-{b}",
                    # each case carries its share of the update's 3 s
                    cases=[{"case_id": c, "checkpoint": 10, "edit_time_s": 0.3} for c in cases],
                    results=[r for r in rows if r["case_id"] in cases],
                )
            )
        store.finish_job("memit/batch:10")


def build_related_bench(root: Path) -> None:
    """Single edits on ConflictEdit (conflict-reverse): ``conflict_score_explicit`` per case,
    0/1 by the case's index mod 5 (:data:`RELATED`)."""
    measures = {RELATED_MEASURE: ("distortion", "fact probability")}
    with BenchStore(root) as store:
        identity = {"model": MODEL, "dataset": "conflict-reverse", "limit": N_CASES, "seed": 0}
        store.check_identity(identity)
        for method, right in RELATED.items():
            job = f"{method}/single"
            store.open_job(job, method, "single", info(method, "conflict-reverse", measures))
            for i in range(N_CASES):
                case = f"c{i:02d}"
                row = {"case_id": case, "checkpoint": 1, "measure": RELATED_MEASURE}
                row |= {"group": "distortion", "protocol": "fact probability"}
                row |= {"higher_is_better": True, "post": float(i % 5 in right)}
                cost = {"case_id": case, "checkpoint": 1, "edit_time_s": 1.0}
                store.write_unit(unit_result(job, case, cases=[cost], results=[row]))
            store.finish_job(job)


def read_rows(root: Path) -> dict[str, Any]:
    with BenchStore(root, create=False) as store:
        return {
            "identity": store.identity(),
            "jobs": store.jobs(),
            "cases": store.cases(),
            "results": store.results(),
        }


def summary_of(
    rows: dict[str, Any],
    job: Callable[[str], bool] = lambda job_id: True,
    case: Callable[[str], bool] = lambda case_id: True,
    general: dict[tuple[str, int], dict[str, float]] | None = None,
) -> BenchSummary:
    """A summary of the rows of the jobs and cases that pass ``job`` and ``case`` (the general
    pseudo-case always does), with the general results at (job, checkpoint) of ``general``
    replaced by (or, at a new checkpoint, added as) results with those scores."""
    general = general or {}

    def kept(r: dict[str, Any]) -> bool:
        if not job(r["job_id"]):
            return False
        if r["case_id"] == "general":
            return (r["job_id"], r["checkpoint"]) not in general
        return case(r["case_id"])

    cases = [r for r in rows["cases"] if kept(r)]
    results = [r for r in rows["results"] if kept(r)]
    for (job_id, k), scores in general.items():
        row, measures = general_case(k, general_results(scores))
        cases.append(row | {"job_id": job_id})
        results += [r | {"job_id": job_id, "pre": None} for r in measures]
    jobs = [j for j in rows["jobs"] if job(j["job_id"])]
    return BenchSummary.from_rows(rows["identity"], jobs, cases, results)


#: the measures of the compact tables (the summary, the console), in order: reliability under
#: each protocol the bench has, generalization, locality
COMPACT = (
    "efficacy_score",
    "rewrite_token_acc",
    "rewrite_gen_match",
    "paraphrase_score",
    "neighborhood_score",
)


def cell(est: Estimate) -> str:
    """A value with its 95% interval, as the report and the console print it."""
    return f"{est.value:.3f} [{est.low:.3f}, {est.high:.3f}]"


def stopped_short(rows: dict[str, Any]) -> dict[str, Any]:
    """The rows with FT-L's sequential job still marked running, stopped after 10 edits."""
    job = f"ft-l/{SEQUENTIAL}"
    jobs = [j | {"status": "running"} if j["job_id"] == job else j for j in rows["jobs"]]
    results = [r for r in rows["results"] if not (r["job_id"] == job and r["checkpoint"] == 20)]
    return rows | {"jobs": jobs, "results": results}
