"""kedit bench: plans, the SQLite store, local and Ray executors, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kedit.bench import BenchPlan, BenchStore, run_bench
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.store import UnitResult
from kedit.eval.protocol_text import parse_protocol, parse_protocols
from kedit.eval.protocols import Batch, Sequential, Single
from kedit.eval.rows import CaseRow, MeasureRow, Unit
from tests.conftest import REPO, assert_same_state, data_dir, snapshot, tiny_model
from tests.tiny_configs import TINY

METHODS = ["grace", "memit"]  # grace edits one request per update


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny Llama saved with its tokenizer, so that other processes can load it."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_plan(model_dir: Path, corpus_file: Path, cache: Path, **changes) -> BenchPlan:
    fields = {
        "methods": METHODS,
        "scenarios": ["single", "batch:2", "sequential:1,3,5"],
        "model": str(model_dir),
        "dataset": "demo",
        "limit": 5,
        "general": ["wikitext", "sst2"],
        "general_limit": 3,
        "overrides": {m: TINY[m] for m in METHODS},
        "stats_corpus": str(corpus_file),
        "cache_dir": str(cache),
        "data_dir": str(data_dir()),
    }
    return BenchPlan(**(fields | changes))


def stored(bench_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """Every result row and the identity and outcome of every case row, sorted."""
    conn = sqlite3.connect(bench_dir / "bench.sqlite")
    results = conn.execute(
        "SELECT job_id, case_id, checkpoint, measure, grp, protocol, higher_is_better, pre, "
        "post, weight FROM results ORDER BY 1, 2, 3, 4"
    ).fetchall()
    cases = conn.execute(
        "SELECT job_id, case_id, checkpoint, unit, error FROM cases ORDER BY 1, 2, 3"
    ).fetchall()
    conn.close()
    return results, cases


# -- plans ------------------------------------------------------------------------------------


def test_scenarios_parse_from_the_command_line_form():
    text = "single,batch:10,sequential:1,10,20,40,sequential:100,200;batch=100"
    assert [str(s) for s in parse_protocols(text)] == [
        "single",
        "batch:10",
        "sequential:1,10,20,40",
        "sequential:100,200;batch=100",
    ]
    assert parse_protocol("sequential:20,1,10").checkpoints == (1, 10, 20)
    assert parse_protocol("sequential:5;scoring=immediate") == Sequential((5,), 1, "immediate")
    assert parse_protocols("single,batch:3") == [Single(), Batch(3)]
    for bad in (
        "double",
        "batch",
        "batch:2,3",
        "sequential",
        "single:3",
        "batch:0",
        "batch:x",
        "sequential:1,3;batch=2",  # a checkpoint inside a batch
        "sequential:1,3;scoring=immediate",  # immediate scoring has no checkpoints
        "sequential:3;colour=red",
        "general",  # the unedited baseline is the bench's own job, not a scenario
    ):
        with pytest.raises(ValueError):
            parse_protocol(bad)


def test_a_plan_fails_on_every_problem_before_loading_anything():
    with pytest.raises(ValueError) as err:
        BenchPlan(
            methods=["rome", "no-such-method"],
            scenarios=["single", "sequential:1,10,40"],
            limit=20,
            general=["wikitext", "no-task"],
            overrides={"memit": {"layers": [1]}},
        )
    message = str(err.value)
    for part in ("no-such-method", "edits 40 cases but --limit is 20", "no-task", "memit"):
        assert part in message
    with pytest.raises(ValueError, match="did you mean 'layer'"):
        BenchPlan(methods=["rome"], scenarios=["single"], overrides={"rome": {"layerr": 3}})
    assert BenchPlan(methods=["ft"], scenarios=["single"]).methods == ["ft-l"]  # alias


def test_a_plan_file_reads_like_the_options(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "methods": "rome,memit",
                "scenarios": ["single", "sequential:1,10"],
                "limit": 10,
                "overrides": {"rome": {"layer": 3}},
            }
        )
    )
    plan = BenchPlan.from_yaml(path)
    assert plan.methods == ["rome", "memit"]
    assert [str(s) for s in plan.scenarios] == ["single", "sequential:1,10"]
    assert BenchPlan.from_dict(plan.to_dict()) == plan
    path.write_text(yaml.safe_dump({"methods": ["rome"], "scenarios": ["single"], "lmit": 3}))
    with pytest.raises(ValueError, match="unknown plan key"):
        BenchPlan.from_yaml(path)


def test_shards_are_fixed_by_position_and_skip_finished_units():
    ids = [f"c{i}" for i in range(20)]
    plan = BenchPlan(methods=["memit"], scenarios=["single", "batch:3", "sequential:1,10"])
    single, batch, sequential = (job.protocol for job in plan.jobs())
    shards = single.shards(ids, {"c0", "c1"})
    assert [len(s.case_ids) for s in shards] == [16, 4]  # c0, c1 still pre-scored with c2..c15
    assert "c0" not in shards[0].units and len(shards[0].units) == 14
    assert single.shards(ids, set(ids[:16]))[0].case_ids == tuple(ids[16:])
    assert batch.units(ids) == {f"batch@c{i}" for i in range(0, 20, 3)}
    assert [len(s.case_ids) for s in batch.shards(ids, set())] == [15, 5]
    (seq,) = sequential.shards(ids, {"checkpoint@1"})
    assert seq.case_ids == tuple(ids[:10]) and seq.units == {"checkpoint@10"}
    assert sequential.shards(ids, {"checkpoint@1", "checkpoint@10"}) == []
    immediate = Sequential((4,), 2, "immediate")
    assert immediate.units(ids) == {"edit@2", "edit@4"}


# -- the store ----------------------------------------------------------------------------------


def test_a_unit_is_written_once_and_a_different_bench_is_refused(tmp_path):
    unit = UnitResult(
        "rome/single",
        Unit(
            "c1",
            [CaseRow("c1", 1, edit_time_s=1.0, details={"x": 1})],
            [MeasureRow("c1", 1, "efficacy_score", "reliability", "prob", True, 0.0, 1.0)],
        ),
    )
    with BenchStore(tmp_path) as store:
        store.check_identity({"model": "m", "seed": 0})
        assert store.open_job("rome/single", "rome", "single", {"config": {"layer": 1}}) == set()
        assert store.write_unit(unit) is True
        assert store.write_unit(unit) is False  # a unit already stored is left alone
        assert store.open_job("rome/single", "rome", "single", {"config": {"layer": 1}}) == {"c1"}
        with pytest.raises(ValueError, match="different config"):
            store.open_job("rome/single", "rome", "single", {"config": {"layer": 2}})
        with pytest.raises(ValueError, match="differs in seed"):
            store.check_identity({"model": "m", "seed": 1})
        assert (store.count("units"), store.count("cases"), store.count("results")) == (1, 1, 1)
        (case,) = store.cases()
        assert case["details"] == {"x": 1} and case["method"] == "rome"
    with pytest.raises(FileNotFoundError, match="bench folder"):
        BenchStore(tmp_path / "nothing", create=False)


def test_a_failing_unit_write_leaves_nothing_behind(tmp_path):
    broken = MeasureRow("c1", 1, "m", "g", "p", None, 0.0, 1.0)  # no direction: cannot be stored
    bad = UnitResult("j/single", Unit("c1", [CaseRow("c1", 1)], [broken]))
    with BenchStore(tmp_path) as store:
        store.open_job("j/single", "j", "single", {})
        with pytest.raises(TypeError):
            store.write_unit(bad)
        assert store.count("cases") == 0 and store.count("units") == 0


# -- running ------------------------------------------------------------------------------------


def test_a_local_bench_stores_every_case_measure_and_checkpoint(
    model_dir, corpus_file, tmp_path, tokenizer
):
    from kedit.model.loading import load_model

    model, tok = load_model(str(model_dir), device="cpu", dtype="float32")
    before = snapshot(model)
    plan = make_plan(model_dir, corpus_file, tmp_path / "cache")
    outcome = run_bench(plan, tmp_path / "bench", model=model, tok=tok, progress=False)
    assert_same_state(model, before)  # every job undid its edits
    assert outcome.failures == {}
    assert outcome.status["grace/batch:2"] == "not applicable"
    assert all(outcome.status[j] == "done" for j in outcome.status if j != "grace/batch:2")

    with BenchStore(tmp_path / "bench") as store:
        jobs = {j["job_id"]: j for j in store.jobs()}
        rows = store.results()
        cases = store.cases()
    assert "batch method" in jobs["grace/batch:2"]["note"]
    info = jobs["memit/single"]["info"]
    assert info["config"]["layers"] == [0, 1] and len(info["model_fingerprint"]) > 8
    assert {"kedit", "torch", "transformers"} <= set(info["versions"])
    assert info["family"] == "locate-and-edit" and info["seed"] == 0

    def keys(job):
        return {(r["case_id"], r["checkpoint"]) for r in rows if r["job_id"] == job}

    ids = [f"demo-{i:03d}" for i in range(1, 6)]
    assert keys("memit/single") == {(c, 1) for c in ids}
    assert keys("memit/batch:2") == {(c, 2) for c in ids[:4]} | {(ids[4], 1)}
    assert keys("memit/sequential:1,3,5") == {(c, k) for k in (1, 3, 5) for c in ids[:k]} | {
        ("general", k) for k in (1, 3, 5)
    }
    assert keys(BASELINE_JOB) == {("general", 0)}
    measures = {r["measure"] for r in rows if r["job_id"] == "memit/single"}
    assert {"efficacy_score", "paraphrase_score", "neighborhood_score"} <= measures
    general = [r for r in rows if r["case_id"] == "general"]
    assert {r["measure"] for r in general} == {"wikitext", "sst2"}
    assert all(r["group"] == "general" and r["post"] is not None for r in general)
    efficacy = [r for r in rows if r["measure"] == "efficacy_score"]
    assert all(r["pre"] is not None and 0 <= r["post"] <= 1 for r in efficacy)
    edits = [c for c in cases if c["job_id"] == "memit/single"]
    assert all(c["edit_time_s"] > 0 and c["edit_memory_bytes"] >= 0 for c in edits)
    assert all(c["memory_kind"].startswith("cpu rss") for c in edits)

    # the same command again finds everything done and writes nothing
    again = run_bench(plan, tmp_path / "bench", model=model, tok=tok, progress=False)
    assert again.written == 0
    with pytest.raises(ValueError, match="differs in seed"):
        run_bench(make_plan(model_dir, corpus_file, tmp_path / "cache", seed=1), tmp_path / "bench")


def test_failures_are_recorded_and_the_bench_goes_on(model_dir, corpus_file, tmp_path):
    overrides = {
        "grace": TINY["grace"] | {"layer": 7},  # the tiny model has 2 layers: every edit fails
        "memit": {"no_such_key": 1},  # the method cannot even be set up
    }
    plan = make_plan(model_dir, corpus_file, tmp_path / "cache", scenarios=["single"], general=[])
    plan.overrides = overrides
    outcome = run_bench(plan, tmp_path / "bench", progress=False)
    assert outcome.status == {"grace/single": "done", "memit/single": "failed"}
    assert "no_such_key" in outcome.failures["memit/single"]
    with BenchStore(tmp_path / "bench") as store:
        jobs = {j["job_id"]: j for j in store.jobs()}
        errors = [c["error"] for c in store.cases()]
        assert store.count("results") == 0
    assert (
        jobs["memit/single"]["status"] == "failed" and "no_such_key" in jobs["memit/single"]["note"]
    )
    assert len(errors) == 5 and all("out of range" in e for e in errors)


def test_a_method_without_its_trained_editor_fails_before_any_case(
    model_dir, corpus_file, tmp_path
):
    plan = make_plan(
        model_dir,
        corpus_file,
        tmp_path / "cache",
        methods=["grace", "mend"],
        scenarios=["single"],
        general=[],
        overrides={"grace": TINY["grace"], "mend": TINY["mend"]},
    )
    outcome = run_bench(plan, tmp_path / "bench", progress=False)
    assert outcome.status == {"grace/single": "done", "mend/single": "failed"}
    assert "kedit train --method mend" in outcome.failures["mend/single"]
    with BenchStore(tmp_path / "bench") as store:
        assert not [c for c in store.cases() if c["job_id"] == "mend/single"]


def _bench_command(plan_file: Path, out: Path) -> list[str]:
    options = ["--plan", str(plan_file), "--out", str(out), "--quiet", "--no-report"]
    return [sys.executable, "-m", "kedit.cli", "bench", *options]


def _env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


@pytest.mark.subprocess
def test_a_bench_killed_at_any_moment_resumes_to_the_same_rows(model_dir, corpus_file, tmp_path):
    plan = make_plan(model_dir, corpus_file, tmp_path / "cache").to_dict()
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    reference = tmp_path / "reference"
    subprocess.run(_bench_command(plan_file, reference), env=_env(), check=True, timeout=600)
    expected = stored(reference)
    total = len(expected[1])

    resumed = tmp_path / "resumed"
    db = resumed / "bench.sqlite"
    seen = []
    for kill_after in (3, 12):  # killed twice: in the single jobs, then in a later job
        proc = subprocess.Popen(_bench_command(plan_file, resumed), env=_env())
        deadline = time.monotonic() + 300
        count = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
                count = conn.execute("SELECT COUNT(*) FROM cases").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:  # not created yet, or its tables not yet
                count = 0
            if count >= kill_after:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the bench finished before it was killed"
        seen.append(count)
    assert seen[0] < seen[1] < total
    subprocess.run(_bench_command(plan_file, resumed), env=_env(), check=True, timeout=600)
    assert stored(resumed) == expected  # same rows and values, none twice, none missing


@pytest.mark.ray
def test_a_ray_bench_gives_the_local_numbers(model_dir, corpus_file, tmp_path):
    import ray  # the ray extra, installed by scripts/setup.sh

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker here (one CPU each), so sums add up alike
    try:
        run_bench(make_plan(model_dir, corpus_file, tmp_path / "c1"), tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    plan = make_plan(model_dir, corpus_file, tmp_path / "c2", executor="ray", workers=2)
    try:
        outcome = run_bench(plan, tmp_path / "ray", progress=False)
    finally:
        ray.shutdown()
    assert outcome.failures == {}
    with BenchStore(tmp_path / "ray") as store:
        workers = {r[0] for r in store.conn.execute("SELECT DISTINCT worker FROM units").fetchall()}
    assert workers == {"ray-0", "ray-1"}  # both workers ran shards
    assert stored(tmp_path / "ray") == stored(tmp_path / "local")


def test_the_bench_and_report_commands(model_dir, corpus_file, tmp_path, capsys):
    from kedit.cli import main

    out = tmp_path / "bench"
    common = ["--out", str(out), "--quiet", "--model", str(model_dir), "--dataset", "demo"]
    bad = main(["bench", "--methods", "rome,nope", *common])
    assert bad == 2 and "nope" in capsys.readouterr().err
    assert not out.exists()  # a bad plan changes nothing

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "overrides": {"grace": TINY["grace"]},
                "stats_corpus": str(corpus_file),
                "cache_dir": str(tmp_path / "cache"),
                "data_dir": str(data_dir()),
                "general": ["wikitext"],
                "general_limit": 2,
            }
        )
    )
    args = ["bench", "--plan", str(plan), "--methods", "grace", "--limit", "3"]
    assert main([*args, "--scenarios", "single,sequential:1,3", *common]) == 0
    printed = capsys.readouterr().out
    assert "jobs done" in printed and "grace" in printed and "report:" in printed
    assert (out / "report.html").is_file()
    with BenchStore(out, create=False) as store:
        assert {j["job_id"] for j in store.jobs()} == {
            "grace/single",
            "grace/sequential:1,3",
            BASELINE_JOB,
        }
        assert store.plan()["methods"] == ["grace"]
    assert main(["report", str(out), "--csv", "--parquet"]) == 0
    printed = capsys.readouterr().out
    assert (out / "results.csv").is_file() and (out / "results.parquet").is_file()
    assert "results.csv" in printed
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_eval_and_bench_are_two_sinks_of_the_same_rows(model_dir, corpus_file, tmp_path):
    """One engine: the rows ``kedit eval`` writes as JSON lines are the rows the bench stores."""
    from kedit.env import Environment
    from kedit.eval.evaluate import evaluate
    from kedit.eval.results import rows_of
    from kedit.model.loading import load_model

    model, tok = load_model(str(model_dir), device="cpu", dtype="float32")
    plan = make_plan(
        model_dir,
        corpus_file,
        tmp_path / "cache",
        methods=["memit"],
        overrides={"memit": TINY["memit"]},
    )
    plan.scenarios = plan.scenarios[:1] + plan.scenarios[2:]  # single and sequential:1,3,5
    run_bench(plan, tmp_path / "bench", model=model, tok=tok, progress=False)
    with BenchStore(tmp_path / "bench", create=False) as store:
        stored_rows = store.results()
    env = Environment(
        cache_dir=tmp_path / "cache", data_dir=data_dir(), stats_corpus=str(corpus_file), seed=0
    )

    def values(rows) -> set[tuple]:
        return {(r.case_id, r.checkpoint, r.measure, r.pre, r.post, r.weight) for r in rows}

    for protocol in plan.scenarios:
        report = evaluate(
            model,
            tok,
            "demo",
            "memit",
            protocol=protocol,
            overrides=TINY["memit"],
            limit=plan.limit,
            general=plan.general if protocol.kind == "sequential" else (),
            general_limit=plan.general_limit,
            env=env,
            progress=False,
        )
        written = [m for line in report.rows for m in rows_of(line)[1]]
        job = f"memit/{protocol}"
        in_store = [
            MeasureRow.from_dict(r) for r in stored_rows if r["job_id"] in (job, BASELINE_JOB)
        ]
        if protocol.kind != "sequential":
            in_store = [r for r in in_store if r.checkpoint != 0]
        assert written and values(written) == values(in_store), protocol
