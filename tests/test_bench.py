"""kedit bench: local and Ray executors, failures, resume after SIGKILL, the commands (plans and
the store: ``test_bench_plan.py``)."""

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
from kedit.bench.work import BenchWorker, JobShard
from kedit.eval.rows import MeasureRow
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


# -- running ------------------------------------------------------------------------------------


def test_a_local_bench_stores_every_case_measure_and_checkpoint(
    model_dir, corpus_file, tmp_path, tokenizer, monkeypatch
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

    # each checkpoint a shard of its own, replaying the edits before it: the very same rows
    split = make_plan(
        model_dir,
        corpus_file,
        tmp_path / "cache",
        scenarios=["sequential:1,3,5"],
        split_checkpoints=True,
    )
    ran: list[frozenset] = []
    run_shard = BenchWorker.run

    def spy(worker: BenchWorker, piece: JobShard):
        ran.append(piece.shard.units)
        yield from run_shard(worker, piece)

    monkeypatch.setattr(BenchWorker, "run", spy)
    run_bench(split, tmp_path / "split", model=model, tok=tok, progress=False)
    per_checkpoint = ["checkpoint@0"] + 2 * [f"checkpoint@{k}" for k in (1, 3, 5)]
    assert sorted(map(sorted, ran)) == sorted([u] for u in per_checkpoint)

    def sequences(folder: str) -> list[tuple]:
        rows = stored(tmp_path / folder)[0]
        return [r for r in rows if r[0] == BASELINE_JOB or "sequential" in r[0]]

    assert len(sequences("split")) > 30 and sequences("split") == sequences("bench")
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


def test_a_finished_job_stays_done_when_its_method_cannot_be_set_up_again(
    model_dir, corpus_file, tmp_path, monkeypatch
):
    plan = make_plan(
        model_dir,
        corpus_file,
        tmp_path / "cache",
        methods=["grace"],
        scenarios=["single"],
        general=[],
        overrides={"grace": TINY["grace"]},
    )
    assert run_bench(plan, tmp_path / "bench", progress=False).status == {"grace/single": "done"}
    before = stored(tmp_path / "bench")

    def cannot_set_up(self, job):  # e.g. a trained editor no longer in the cache
        raise FileNotFoundError("no trained editor")

    monkeypatch.setattr(BenchWorker, "describe", cannot_set_up)
    again = run_bench(plan, tmp_path / "bench", progress=False)
    assert again.status == {"grace/single": "done"} and not again.failures
    with BenchStore(tmp_path / "bench") as store:
        assert [j["status"] for j in store.jobs()] == ["done"]
    assert stored(tmp_path / "bench") == before and len(before[0]) > 0
    # with a unit still to run, the job cannot be finished without its method: it fails
    with sqlite3.connect(tmp_path / "bench" / "bench.sqlite") as conn:
        conn.execute("DELETE FROM units WHERE rowid = (SELECT MIN(rowid) FROM units)")
    outcome = run_bench(plan, tmp_path / "bench", progress=False)
    assert outcome.status == {"grace/single": "failed"}
    assert "no trained editor" in outcome.failures["grace/single"]


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
    # with each checkpoint a shard of its own (so both workers share the sequences too)
    plan = make_plan(
        model_dir, corpus_file, tmp_path / "c2", executor="ray", workers=2, split_checkpoints=True
    )
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
