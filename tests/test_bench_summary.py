"""The bench's numbers on the synthetic bench of tests/synthetic_bench.py: aggregates and their
95% intervals, costs, tables and decay curves, the plan's method order, the read-only store, and
``kedit bench``'s console summary. The HTML report and the export are tested in
tests/test_bench_report.py, the survey's claims in tests/test_bench_claims.py."""

from __future__ import annotations

import re
import shutil
import sqlite3

import pytest

from kedit.bench.driver import BenchOutcome
from kedit.bench.general_change import general_change_estimate
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.store import DB_FILE, BenchStore
from kedit.bench.summary import (
    BenchSummary,
    choose_headlines,
    job_costs,
    job_means,
    summarize_bench,
)
from kedit.bench.tables import decay_plots, headline_table, scenario_table
from kedit.console import format_bench
from tests.synthetic_bench import (
    BASELINE,
    CHECKPOINTS,
    COMPACT,
    DATASET,
    DOWNSTREAM,
    MIB,
    MODEL,
    N_CASES,
    N_EXAMPLES,
    NOT_APPLICABLE_NOTE,
    SEQ_RELIABILITY,
    SEQUENTIAL,
    SINGLE,
    SKIP_REASON,
    cell,
    stopped_short,
)

SEQ_JOB = f"rome/{SEQUENTIAL}"


# -- aggregates -------------------------------------------------------------------------------


def test_weighted_means_pool_by_weight():
    base = {"job_id": "m/single", "checkpoint": 1, "measure": "x", "group": "reliability"}
    base |= {"protocol": "prob", "higher_is_better": 1}
    rows = [
        base | {"case_id": "a", "pre": 0.0, "post": 1.0, "weight": 3},
        base | {"case_id": "b", "pre": 1.0, "post": 0.0, "weight": 1},
        base | {"case_id": "c", "pre": None, "post": None, "weight": 5},
    ]
    ((key, mean),) = job_means(rows).items()
    assert key == ("m/single", 1, "x")
    assert mean.post == pytest.approx(0.75)
    assert mean.pre == pytest.approx(0.25)
    assert mean.n == 2
    # resampled over the 2 cases: all "a" (1.0) or all "b" (0.0) 1 time in 4 each
    assert (mean.post_estimate.value, mean.post_estimate.low, mean.post_estimate.high) == (
        pytest.approx(0.75),
        0.0,
        1.0,
    )


def test_headlines_follow_the_preference():
    assert choose_headlines([]) == {}
    rows = job_means(
        [
            {"job_id": "m/single", "case_id": "a", "checkpoint": 1, "measure": name, "group": g}
            | {"protocol": "p", "higher_is_better": 1, "pre": None, "post": 1.0, "weight": 1}
            for name, g in (
                ("rewrite_gen_match", "reliability"),
                ("rewrite_token_acc", "reliability"),
            )
        ]
    )
    assert choose_headlines(rows.values()) == {"reliability": "rewrite_token_acc"}


def test_summary_of_the_bench(summary):
    assert summary.headlines == {
        "reliability": "efficacy_score",
        "generalization": "paraphrase_score",
        "locality": "neighborhood_score",
    }
    assert summary.methods() == list(SINGLE)
    assert summary.scenarios() == ["single", "batch:10", SEQUENTIAL]
    # paraphrases pooled by weight (2 and 1): the weighted mean is the chosen value, the plain
    # mean of the cases 0.05 lower
    para = summary.means[("rome/single", 1, "paraphrase_score")]
    assert (para.post, para.pre, para.n) == pytest.approx((0.60, 0.20, N_CASES))
    values = summary.case_values("rome/single", 1, "paraphrase_score")
    assert sum(v for v, _ in values.values()) / len(values) == pytest.approx(0.55)
    assert para.post_estimate.value == pytest.approx(0.60)
    assert para.post_estimate.low < 0.60 < para.post_estimate.high
    # 0/1 outcomes: ROME fails 1 case of 20; a resample fails 3 or more 7.5% of the time, 4 or
    # more 1.6%: the interval is [0.85, 1]. IKE succeeds on every case: [1, 1]
    rome = summary.estimate("rome/single", 1, "efficacy_score")
    assert (rome.value, rome.low, rome.high, rome.n) == pytest.approx((0.95, 0.85, 1.0, N_CASES))
    ike = summary.estimate("ike/single", 1, "efficacy_score")
    assert (ike.value, ike.low, ike.high) == (1.0, 1.0, 1.0)
    assert summary.means[("ft-l/single", 1, "efficacy_score")].n == N_CASES - 1
    assert summary.headline(SEQ_JOB, 20, "reliability") == pytest.approx(0.30)
    assert summary.value(SEQ_JOB, 10, "efficacy_score", "pre") == pytest.approx(0.1)
    assert summary.checkpoints(f"ike/{SEQUENTIAL}") == list(CHECKPOINTS)
    assert summary.baseline_general() == pytest.approx(BASELINE)
    assert summary.general(SEQ_JOB, 20)["sst2"] == pytest.approx(0.60)
    assert summary.downstream_tasks() == sorted(DOWNSTREAM)
    assert summary.lower_is_better_tasks() == ["wikitext"]
    # a general-ability score's interval is over the task's examples, from the stored samples
    sst2 = summary.estimate(BASELINE_JOB, 0, "sst2")
    assert (sst2.value, sst2.n, sst2.unit) == (pytest.approx(0.80), N_EXAMPLES, "examples")
    assert sst2.low < 0.80 < sst2.high
    result = summary.general_result(SEQ_JOB, 20, "sst2")
    assert result["score"] == pytest.approx(0.60)
    assert len(result["samples"]["preds"]) == N_EXAMPLES
    assert summary.estimate(SEQ_JOB, 20, "wikitext").value == pytest.approx(42.0)
    assert summary.general_result(SEQ_JOB, 20, "nothing") is None
    # the edited model's general ability has no "pre": the unedited model's is the baseline job
    assert summary.value(SEQ_JOB, 20, "sst2", "pre") is None
    assert summary.estimate(SEQ_JOB, 20, "sst2", "pre") is None
    (skipped,) = summary.skipped()
    assert (skipped.measure, skipped.reason) == ("portability_token_acc", SKIP_REASON)
    assert skipped.scenarios == ("single", "batch:10", SEQUENTIAL, "general")
    assert summary.run_info()["model_fingerprint"] == "fp-1234"


def test_costs(summary, rows):
    rome = summary.costs["rome/single"]
    assert (rome.cases, rome.errors) == (N_CASES, 0)
    assert rome.median_edit_time_s == pytest.approx(1.095)
    assert rome.median_edit_memory_bytes == 10 * MIB
    assert rome.median_peak_memory_bytes == 500 * MIB
    assert rome.median_eval_time_s == pytest.approx(0.2)
    assert summary.costs["ft-l/single"].errors == 1
    seq = summary.costs[f"rome/{SEQUENTIAL}"]
    # each case once, with the edit that applied it; the general pseudo-case is no case
    assert seq.cases == 20
    assert seq.median_edit_time_s == pytest.approx(0.595)
    assert seq.median_eval_time_s == pytest.approx(0.1)
    assert BASELINE_JOB not in summary.costs
    # a batch:10 case row carries its share of the update
    assert summary.costs["memit/batch:10"].median_edit_time_s == pytest.approx(0.3)
    assert job_costs(rows["cases"]) == summary.costs


def test_tables_and_decay_curves(summary):
    table = scenario_table(summary, SEQUENTIAL)
    measures = [c.measure for c in table.columns]
    assert measures[:3] == ["efficacy_score", "rewrite_gen_match", "rewrite_token_acc"]
    assert table.columns[-1].group == "general"
    labels = [(r.label, r.checkpoint) for r in table.rows]
    assert labels[:2] == [("unedited", 1), ("ike", 1)]
    assert len(labels) == len(CHECKPOINTS) * (1 + len(SEQ_RELIABILITY))
    # every value with its interval: over the cases, or over a general task's examples
    rome = next(r for r in table.rows if (r.label, r.checkpoint) == ("rome", 20))
    assert rome.estimates == tuple(summary.estimate(SEQ_JOB, 20, m) for m in measures)
    assert rome.estimates[measures.index("sst2")].unit == "examples"
    unedited = next(r for r in table.rows if (r.label, r.checkpoint) == ("unedited", 20))
    assert unedited.estimates[0] == summary.estimate(SEQ_JOB, 20, "efficacy_score", "pre")
    assert unedited.estimates[-1] == summary.estimate(BASELINE_JOB, 0, "wikitext")
    single = scenario_table(summary, "single")
    assert not [c for c in single.columns if c.group == "general"]
    batch = scenario_table(summary, "batch:10")
    assert [j.method for j in batch.not_applicable] == ["rome"]

    # the compact table: reliability under each protocol the bench has, and for general ability
    # each method's change from the unedited model, paired on the same examples
    compact = headline_table(summary, SEQUENTIAL)
    assert [compact.heading(c) for c in compact.columns] == [
        "reliability: P(new)>P(old)",
        "reliability: teacher-forced",
        "reliability: free generation",
        "generalization",
        "locality",
        *sorted(BASELINE),
    ]
    assert compact.rows[0].label == "unedited" and compact.rows[0].changes == ()
    grace = next(r for r in compact.rows if r.label == "grace")
    assert grace.changes[:5] == (None,) * 5
    for i in (6, 7):  # rte, sst2: the same answers on every example
        assert (grace.changes[i].value, grace.changes[i].low, grace.changes[i].high) == (0, 0, 0)
    rome_row = next(r for r in compact.rows if r.label == "rome")
    assert rome_row.changes[6] == general_change_estimate(summary, SEQ_JOB, 20, "rte")
    assert rome_row.changes[6].value == pytest.approx(-0.20)
    assert compact.change(rome_row, 8) == pytest.approx(0.40)  # perplexity: relative

    plots = decay_plots(summary, SEQUENTIAL)
    assert [p.quantity for p in plots] == [
        "efficacy_score",
        "paraphrase_score",
        "neighborhood_score",
        "wikitext",
        *sorted(DOWNSTREAM),
    ]
    curve = next(c for c in plots[0].curves if c.label == "rome")
    assert [k for k, _ in curve.points] == [0, 1, 10, 20]
    assert [v for _, v in curve.points] == pytest.approx([0.10, 1.0, 0.5, 0.3])
    sst2 = next(p for p in plots if p.quantity == "sst2")
    assert next(c for c in sst2.curves if c.label == "grace").points[0] == (0, 0.80)
    assert decay_plots(summary, "single") == []


def test_plan_order_and_read_only_store(bench, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(bench, root)
    order = ["memit", "ft-l", "mend", "rome", "kn", "grace", "ike"]
    with BenchStore(root) as store:
        store.record_plan({"methods": ["ike", "rome"], "seed": 0})
        store.record_plan({"methods": order, "seed": 0})  # a run of them all sets the order
        store.record_plan({"methods": ["ft-l"], "seed": 0})  # finishing one job keeps it
        assert store.plan()["methods"] == order
        store.record_plan({"methods": ["wise", "ike"], "seed": 0})  # a new method goes last
        store.check_identity({"model": MODEL, "dataset": DATASET, "limit": N_CASES, "seed": 0})
        assert store.plan()["methods"] == [*order, "wise"]
        # a reader while the writer is open
        assert summarize_bench(root).plan["methods"] == [*order, "wise"]
    with BenchStore(root, create=False) as store:
        assert store.read_only
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.record_plan({})
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.finish_job("rome/single", "failed")
    summary = summarize_bench(root)
    assert summary.jobs["rome/single"].status == "done"
    planned = [m for m in order if m != "mend"]
    assert summary.methods() == planned
    table = scenario_table(summary, SEQUENTIAL)
    assert [r.label for r in table.rows if r.checkpoint == 1] == ["unedited", *planned]
    assert [c.label for c in decay_plots(summary, SEQUENTIAL)[0].curves] == planned
    # without a plan: the store's job order
    with BenchStore(bench, create=False) as store:
        assert BenchSummary.from_store(store).methods() == list(SINGLE)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(FileNotFoundError, match="a bench folder"):
        BenchStore(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing").exists()
    assert (root / DB_FILE).is_file()


# -- console ----------------------------------------------------------------------------------


def columns(line: str) -> list[str]:
    """A console table line's cells (separated by two spaces or more)."""
    return re.split(r"\s{2,}", line.strip())


def test_format_bench(summary, rows, bench):
    outcome = BenchOutcome(
        bench,
        status={BASELINE_JOB: "done", "rome/batch:10": "not applicable", "ike/single": "done"},
        written=12,
        elapsed_s=192.0,
    )
    text = format_bench(summary, outcome)
    blocks = text.split("\n\n")
    assert blocks[0] == "12 units written in 3.2 min; 2 jobs done, 1 not applicable, 0 failed"
    assert blocks[1].startswith("headline measures after editing: reliability = efficacy_score")
    single, batch, sequential, not_done = blocks[2:]
    lines = single.splitlines()
    assert lines[0] == "single"
    assert columns(lines[1]) == [
        "method",
        "reliability: P(new)>P(old)",
        "reliability: teacher-forced",
        "reliability: free generation",
        "generalization",
        "locality",
        "s/edit",
    ]
    unedited = [cell(summary.estimate("ike/single", 1, m, "pre")) for m in COMPACT]
    # one formatter: a missing value prints as in the report
    assert columns(lines[3]) == ["unedited", *unedited, "–"]
    rome = columns(lines[5])
    assert rome == [
        "rome",
        *(cell(summary.estimate("rome/single", 1, m)) for m in COMPACT),
        "1.095",
    ]
    assert rome[1] == "0.950 [0.850, 1.000]"
    assert lines[-1].startswith("values with their 95% interval [low, high]")
    lines = batch.splitlines()
    assert lines[0] == "batch:10, batches of 10"
    memit = columns(lines[-2])
    assert memit[0] == "memit" and memit[1].startswith("0.850 [")
    assert memit[-1] == "0.300"  # 3 s / 10 edits
    lines = sequential.splitlines()
    assert lines[0] == f"{SEQUENTIAL}, after 20 edits"
    assert columns(lines[1])[6:] == ["mmlu", "rte", "sst2", "wikitext", "s/edit"]
    base = [cell(summary.estimate(BASELINE_JOB, 0, t)) for t in sorted(BASELINE)]
    assert columns(lines[3]) == ["unedited", *unedited, *base, "–"]
    rome = next(columns(line) for line in lines if line.startswith("rome"))
    tasks = (cell(summary.estimate(SEQ_JOB, 20, t)) for t in sorted(BASELINE))
    assert rome == [
        "rome",
        *(cell(summary.estimate(SEQ_JOB, 20, m)) for m in COMPACT),
        *tasks,
        "0.595",
    ]
    assert rome[1].startswith("0.300 [") and rome[-2].startswith("42.000 [")
    assert lines[-1] == "lower is better: wikitext"
    assert not_done == f"jobs not done:\n  rome/batch:10: not applicable: {NOT_APPLICABLE_NOTE}"

    # no outcome: no first line; a failed job and a job stopped short are named
    partial = stopped_short(rows)
    partial["jobs"] = [
        j | {"status": "failed", "note": "CUDA out of memory"} if j["job_id"] == "kn/single" else j
        for j in partial["jobs"]
    ]
    text = format_bench(BenchSummary.from_rows(**partial))
    assert text.startswith("headline measures")
    assert "ft-l (after 10) (incomplete)" in text
    assert "  kn/single: failed: CUDA out of memory" in text
    assert f"  ft-l/{SEQUENTIAL}: running" in text
    outcome = BenchOutcome(bench, {"kn/single": "failed"}, 0, {"kn/single": "boom"}, 5.0)
    assert format_bench(summary, outcome).startswith(
        "0 units written in 5.0 s; 0 jobs done, 0 not applicable, 1 failed"
    )
    assert format_bench(BenchSummary.from_rows({}, [], [], [])) == "the bench has no results yet"
