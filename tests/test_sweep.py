"""The sweep protocol (``sweep:layer=0-29``) and the layer-sweep analysis of Hase et al. (2023):
the text form, units and shards; a tiny-model bench whose rows at layer 0 are ROME's single
edits at layer 0, with each case's causal trace, that resumes and refuses layers past the model;
the correlations on numbers with known answers; the summary, report, console and CSV; and
``kedit eval`` under a sweep."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from kedit.bench import BenchPlan, BenchStore, run_bench
from kedit.bench.export import export_results, export_sweeps
from kedit.bench.findings import evaluate_claims
from kedit.bench.report import render_report
from kedit.bench.summary import BenchSummary
from kedit.bench.sweep import (
    added_r2,
    layer_r2,
    peak_hits,
    pearson,
    sweep_analyses,
    trace_correlation,
    within_layer_pearson,
)
from kedit.bench.tables import headline_table
from kedit.console import format_bench, format_summary
from kedit.eval.evaluate import evaluate
from kedit.eval.protocol_text import order_key, parse_protocol
from kedit.eval.protocol_text import parse_protocols as parse_all
from kedit.eval.protocols import PRE_BATCH, Single, Sweep
from kedit.eval.rows import sweep_unit
from kedit.methods import METHODS
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY

SWEEP = "sweep:layer=0-1"
JOB = f"rome/{SWEEP}"
CASES = [f"demo-{i:03d}" for i in range(1, 4)]


# -- the protocol ------------------------------------------------------------------------------


def test_the_text_form_round_trips_and_sorts_after_sequential():
    assert parse_protocol("sweep:layer=0-1") == Sweep("layer", (0, 1))
    assert str(parse_protocol("sweep:layer=0-1")) == "sweep:layer=0-1"
    assert str(parse_protocol("sweep:layer=0,1")) == "sweep:layer=0-1"  # one spelling per sweep
    assert parse_protocol("sweep:layer=0-3,8").values == (0, 1, 2, 3, 8)
    assert str(parse_protocol("sweep:layer=8,0-3,2")) == "sweep:layer=0-3,8"
    assert parse_protocol("sweep:layer=0,5,10").values == (0, 5, 10)
    assert parse_protocol("sweep:layer=0").values == (0,)  # layer 0 is a layer
    # numbers after a sweep belong to it until the next kind, as for sequential
    assert parse_all("single,sweep:layer=0,5,10,batch:2")[:2] == [
        Single(),
        Sweep("layer", (0, 5, 10)),
    ]
    order = ["sweep:layer=3", "sequential:1,2", "sweep:layer=0-1", "single", "batch:2"]
    assert sorted(order, key=order_key) == [
        "single",
        "batch:2",
        "sequential:1,2",
        "sweep:layer=0-1",
        "sweep:layer=3",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "sweep",
        "sweep:layer",
        "sweep:=1",
        "sweep:layer=",
        "sweep:layer=a",
        "sweep:layer=-1",
        "sweep:layer=3-1",
        "sweep:my layer=1",
    ],
)
def test_bad_text_is_refused(bad):
    with pytest.raises(ValueError, match="protocol"):
        parse_protocol(bad)


def test_values_are_whole_numbers_from_zero():
    with pytest.raises(ValueError, match=">= 0"):
        Sweep("layer", (-1, 0))
    with pytest.raises(ValueError, match="increasing"):
        Sweep("layer", (1, 0))


def test_a_method_without_the_field_cannot_run_it():
    sweep = Sweep("layer", (0, 1))
    assert sweep.why_not(METHODS["rome"]) is None
    assert sweep.why_not(METHODS["ft-l"]) is None
    assert "no config field 'layer'" in sweep.why_not(METHODS["memit"])  # it has layers
    # a field of another type: MEMIT's layers is a list
    assert "expects" in Sweep("layers", (0, 1)).why_not(METHODS["memit"])


def test_units_one_per_value_and_case_and_shards_cover_every_value():
    ids = [f"c{i}" for i in range(PRE_BATCH + 4)]
    sweep = Sweep("layer", (0, 2))
    assert sweep.units(ids) == {sweep_unit(v, c) for v in (0, 2) for c in ids}
    shards = sweep.shards(ids, set())
    assert [s.case_ids for s in shards] == [tuple(ids[:PRE_BATCH]), tuple(ids[PRE_BATCH:])]
    done = {sweep_unit(0, c) for c in ids} | {sweep_unit(2, c) for c in ids[:PRE_BATCH]}
    (left,) = sweep.shards(ids, done)
    assert left.case_ids == tuple(ids[PRE_BATCH:])  # fixed by position
    assert left.units == {sweep_unit(2, c) for c in ids[PRE_BATCH:]}


# -- a tiny-model bench ------------------------------------------------------------------------


def sweep_plan(corpus_file: Path, cache: Path, scenarios: list[str]) -> BenchPlan:
    return BenchPlan(
        methods=["rome"],
        scenarios=scenarios,
        model="tiny-llama",
        dataset="demo",
        limit=len(CASES),
        general=[],
        overrides={"rome": TINY["rome"]},  # layer 0: the single job is the sweep at layer 0
        stats_corpus=str(corpus_file),
        cache_dir=str(cache),
    )


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def swept(tiny, tokenizer, corpus_file, tmp_path_factory) -> tuple[Path, BenchPlan, dict]:
    root = tmp_path_factory.mktemp("sweep")
    plan = sweep_plan(corpus_file, root / "cache", ["single", SWEEP])
    before = snapshot(tiny)
    outcome = run_bench(plan, root / "bench", model=tiny, tok=tokenizer, progress=False)
    assert_same_state(tiny, before)  # every edit undone, and the traces changed nothing
    assert outcome.failures == {}
    return root / "bench", plan, outcome.status


def stored_rows(bench: Path, job: str) -> tuple[list[dict], list[dict]]:
    with BenchStore(bench, create=False) as store:
        results = [r for r in store.results() if r["job_id"] == job]
        cases = [c for c in store.cases() if c["job_id"] == job]
    return results, cases


def test_a_sweep_stores_one_unit_per_layer_and_case(swept):
    bench, _, status = swept
    assert status[JOB] == "done"
    with BenchStore(bench, create=False) as store:
        assert store.finished_units(JOB) == {sweep_unit(v, c) for v in (0, 1) for c in CASES}
    results, cases = stored_rows(bench, JOB)
    assert {(c["case_id"], c["checkpoint"]) for c in cases} == {
        (c, v) for v in (0, 1) for c in CASES
    }
    assert all(c["error"] is None for c in cases)
    assert {r["checkpoint"] for r in results} == {0, 1}


def test_layer_0_of_the_sweep_is_the_single_edit_at_layer_0(swept):
    bench = swept[0]
    single, _ = stored_rows(bench, "rome/single")
    sweep, _ = stored_rows(bench, JOB)

    def scores(rows, checkpoint):
        return {
            (r["case_id"], r["measure"]): (r["pre"], r["post"])
            for r in rows
            if r["checkpoint"] == checkpoint
        }

    at_0, at_1 = scores(sweep, 0), scores(sweep, 1)
    assert at_0 == scores(single, 1)
    assert {k: pre for k, (pre, _) in at_1.items()} == {k: pre for k, (pre, _) in at_0.items()}
    assert {k: post for k, (_, post) in at_1.items()} != {k: post for k, (_, post) in at_0.items()}


def test_each_case_keeps_its_trace_on_the_unedited_model(swept):
    _, cases = stored_rows(swept[0], JOB)
    by_case: dict[str, list[dict]] = {}
    for row in cases:
        by_case.setdefault(row["case_id"], []).append(row["details"]["trace"])
    assert set(by_case) == set(CASES)
    for traces in by_case.values():
        first = traces[0]
        assert traces == [first, first]  # computed once per case, the same at every layer
        assert len(first["mlp_effect"]) == 2 and first["peak"] in (0, 1)
        assert 0 <= first["clean"] <= 1 and 0 <= first["corrupted"] <= 1
    single = stored_rows(swept[0], "rome/single")[1]
    assert all("trace" not in (c["details"] or {}) for c in single)


def test_a_sweep_resumes_without_redoing_anything(swept, tiny, tokenizer):
    bench, plan, _ = swept
    again = run_bench(plan, bench, model=tiny, tok=tokenizer, progress=False)
    assert again.written == 0 and again.failures == {}


def test_layers_past_the_model_are_refused_before_any_edit(tiny, tokenizer, corpus_file, tmp_path):
    plan = sweep_plan(corpus_file, tmp_path / "cache", ["sweep:layer=1-5"])
    outcome = run_bench(plan, tmp_path / "bench", model=tiny, tok=tokenizer, progress=False)
    job = "rome/sweep:layer=1-5"
    assert outcome.status[job] == "failed" and outcome.written == 0
    assert "layer 2-5 is past the model's last layer: it has 2 layers, 0-1" in outcome.failures[job]


# -- the analysis on numbers with known answers --------------------------------------------------


def grids(pattern_x, pattern_y, layers: int, repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """(cases, layers) grids: layer k adds 10 * k to both; within a layer the cases follow the
    patterns (repeated)."""
    x = np.array([[a + 10 * k for k in range(layers)] for a in pattern_x * repeat], float)
    y = np.array([[b + 10 * k for k in range(layers)] for b in pattern_y * repeat], float)
    return x, y


def test_perfectly_correlated_pairs():
    x, y = grids([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], layers=3, repeat=5)
    c = trace_correlation([0, 1, 2], success=2 * y + 1, effect=x, measure="m")
    assert c.pearson.value == pytest.approx(1.0)
    assert c.pearson.low == pytest.approx(1.0) and c.pearson.high == pytest.approx(1.0)
    assert c.within_layer.value == pytest.approx(1.0)
    assert (c.cases, c.pairs) == (20, 60)
    assert c.best_success_layer == c.best_trace_layer == 2
    assert c.peak_is_best.value == 1.0  # every case succeeds best where its trace peaks


def test_the_layer_explains_everything_and_the_trace_nothing_within_layers():
    # within each layer the trace and the success are orthogonal: sum(a * b) = 0
    x, y = grids([-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0], layers=2, repeat=10)
    c = trace_correlation([3, 7], success=y, effect=x, measure="m")
    # overall: the layers' variance (±5: 25) shared, against a within-layer one of 1 each
    assert c.pearson.value == pytest.approx(25 / 26)
    assert c.within_layer.value == pytest.approx(0.0, abs=1e-12)
    assert c.layer_r2.value == pytest.approx(25 / 26)
    assert c.added_r2.value == pytest.approx(0.0, abs=1e-12)
    assert c.within_layer.low < 0 < c.within_layer.high  # resampled cases are not orthogonal
    assert (c.best_success_layer, c.best_trace_layer) == (7, 7)


def test_added_r2_is_what_the_trace_adds_to_a_regression_on_the_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)) + np.arange(4)
    y = 0.5 * x + rng.normal(size=(30, 4)) + 3 * np.arange(4) ** 2
    dummies = np.repeat(np.eye(4)[None], 30, 0).reshape(-1, 4)

    def r2(design: np.ndarray) -> float:
        fit = np.linalg.lstsq(design, y.ravel(), rcond=None)[0]
        residual = y.ravel() - design @ fit
        return 1 - residual @ residual / ((y - y.mean()) ** 2).sum()

    layer_only = r2(dummies)
    with_trace = r2(np.column_stack([dummies, x.ravel()]))
    assert layer_r2(x[None], y[None])[0] == pytest.approx(layer_only)
    assert added_r2(x[None], y[None])[0] == pytest.approx(with_trace - layer_only)
    assert within_layer_pearson(x[None], y[None])[0] ** 2 == pytest.approx(
        (with_trace - layer_only) / (1 - layer_only)
    )


def test_missing_pairs_are_left_out_and_constants_have_no_correlation():
    x = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 9.0]])
    y = np.array([[2.0, 1.0], [7.0, np.nan], [8.0, 3.0]])
    keep = np.isfinite(y)
    expected = np.corrcoef(x[keep], y[keep])[0, 1]
    assert pearson(x[None], y[None])[0] == pytest.approx(expected)
    assert math.isnan(pearson(x[None], np.full_like(x, 0.3)[None])[0])
    c = trace_correlation([0, 1], np.full((3, 2), 1.0), x, "efficacy_score")
    assert c.pearson is None and c.within_layer is None


def test_the_peak_hits_a_best_layer():
    success = np.array([[0.1, 0.9, 0.2], [0.5, 0.5, 0.1], [0.3, 0.2, 0.1], [0.1, np.nan, 0.2]])
    effect = np.array([[0.0, 0.4, 0.1], [0.3, 0.1, 0.0], [0.1, 0.0, 0.2], [0.1, 0.2, 0.3]])
    hits, chance = peak_hits(success, effect)
    # the last case misses a layer; the second's best layers tie and the peak is one of them
    assert hits.tolist() == [1.0, 1.0, 0.0]
    assert chance.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3])


# -- summary, report, console, exports -------------------------------------------------------------


def test_the_bench_summary_report_console_and_exports(swept, tmp_path):
    bench = swept[0]
    summary = BenchSummary.load(bench)
    assert set(summary.traces[JOB]) == set(CASES)
    assert summary.scenarios() == ["single", SWEEP]
    assert headline_table(summary, SWEEP) is None  # a sweep has no last value to stand for it
    (analysis,) = sweep_analyses(summary)
    assert analysis.key == "layer" and analysis.measure == "efficacy_magnitude"
    assert [(p.value, p.cases) for p in analysis.points] == [(0, 3), (1, 3)]
    assert all(p.trace_effect is not None and p.success is not None for p in analysis.points)
    assert analysis.points[0].measures["efficacy_score"] == summary.estimate(
        JOB, 0, "efficacy_score"
    )
    assert analysis.correlation.pairs == 6 and analysis.correlation.cases == 3

    html = render_report(summary, evaluate_claims(summary))
    assert "<h2>Sweeps</h2>" in html and f"<h3>{JOB}</h3>" in html
    assert "(case, layer) pairs of 3 cases" in html
    assert 'alt="edit success by layer' in html
    assert '<th rowspan="2" scope="col">layer</th>' in html  # the scenario table's value column

    text = format_bench(summary)
    assert JOB in text and "MLP indirect effect" in text

    path = export_sweeps(bench, tmp_path / "sweep.csv")
    rows = list(csv.DictReader(path.open()))
    assert [(r["job_id"], r["value"]) for r in rows] == [(JOB, "0"), (JOB, "1")]
    assert rows[0]["success_measure"] == "efficacy_magnitude" and rows[0]["trace_effect"]
    results = list(csv.DictReader(export_results(bench, tmp_path / "all.csv").open()))
    assert {r["checkpoint"] for r in results if r["job_id"] == JOB} == {"0", "1"}


def test_kedit_eval_runs_a_sweep_and_summarises_it_per_value(tiny, tokenizer, env, tmp_path):
    report = evaluate(
        tiny,
        tokenizer,
        "demo",
        "rome",
        protocol=SWEEP,
        overrides=TINY["rome"],
        metrics=["efficacy_score", "efficacy_magnitude"],
        limit=2,
        env=env,
        out_dir=tmp_path / "run",
        progress=False,
    )
    sweep = report.summary["sweep"]
    assert sweep["key"] == "layer" and set(sweep["values"]) == {"0", "1"}
    assert sweep["values"]["0"]["efficacy_score"]["n"] == 2
    assert {line["unit"] for line in report.rows} == {
        sweep_unit(v, c) for v in (0, 1) for c in CASES[:2]
    }
    assert all("trace" in line["details"] for line in report.rows)
    assert "each case edited with each layer" in format_summary(report)
