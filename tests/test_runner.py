"""evaluate() under the single protocol: one JSON line per finished case, resume, summary,
errors kept per case."""

import json

import pytest

from kedit.data import load_dataset
from kedit.eval.engine import Engine
from kedit.eval.evaluate import evaluate
from kedit.methods import METHODS
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY


def demo_cases(n):
    return load_dataset("demo", limit=n)


def test_evaluate_writes_results_and_leaves_the_model_unchanged(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    before = snapshot(model)
    report = evaluate(
        model,
        tokenizer,
        demo_cases(3),
        "ft-m",
        overrides=TINY["ft-m"],
        out_dir=tmp_path / "run",
        env=env,
        progress=False,
    )
    assert_same_state(model, before)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["case_id"] for x in lines] == ["demo-001", "demo-002", "demo-003"]
    row = json.loads(lines[0])
    assert {"pre", "post"} <= set(row["metrics"]["efficacy_score"])
    assert set(row["metrics"]["locality_top1_agreement"]) == {"post"}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["errors"] == 0
    eff = summary["metrics"]["efficacy_magnitude"]
    assert eff["group"] == "reliability" and eff["protocol"] == "probability magnitude"
    assert eff["post"] > eff["pre"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["method"] == "ft-m" and run["config"]["num_steps"] == TINY["ft-m"]["num_steps"]
    assert {"torch", "transformers", "kedit"} <= set(run["versions"])
    assert report.summary == summary


def test_resume_skips_finished_cases_and_survives_a_torn_line(
    tokenizer, env, tmp_path, monkeypatch
):
    model = tiny_model("llama")
    out = tmp_path / "run"
    evaluate(
        model,
        tokenizer,
        demo_cases(2),
        "ft-m",
        overrides=TINY["ft-m"],
        out_dir=out,
        env=env,
        progress=False,
    )
    with open(out / "results.jsonl", "a") as f:
        f.write('{"case_id": "demo-003", "metr')  # a writer killed mid-line
    edited = []
    real = Engine.edit_case

    def counting(self, case, *args):
        edited.append(case.case_id)
        return real(self, case, *args)

    monkeypatch.setattr(Engine, "edit_case", counting)
    report = evaluate(
        model,
        tokenizer,
        demo_cases(4),
        "ft-m",
        overrides=TINY["ft-m"],
        out_dir=out,
        resume=True,
        env=env,
        progress=False,
    )
    assert edited == ["demo-003", "demo-004"]
    ids = [json.loads(x)["case_id"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert ids == ["demo-001", "demo-002", "demo-003", "demo-004"]
    assert report.summary["cases"] == 4


def test_existing_results_need_resume_and_a_matching_run(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    out = tmp_path / "run"
    evaluate(
        model,
        tokenizer,
        demo_cases(1),
        "ft-m",
        overrides=TINY["ft-m"],
        out_dir=out,
        env=env,
        progress=False,
    )
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(
            model,
            tokenizer,
            demo_cases(1),
            "ft-m",
            overrides=TINY["ft-m"],
            out_dir=out,
            env=env,
            progress=False,
        )
    with pytest.raises(ValueError, match="config"):
        evaluate(
            model,
            tokenizer,
            demo_cases(1),
            "ft-m",
            overrides={**TINY["ft-m"], "lr": 1.0},
            out_dir=out,
            resume=True,
            env=env,
            progress=False,
        )


def test_a_failing_case_is_recorded_and_the_run_goes_on(tokenizer, env, monkeypatch):
    model = tiny_model("llama")
    method = METHODS["ft-m"].for_model(model, TINY["ft-m"], env)
    real = method.apply

    def flaky(model, tok, requests, edit):
        if requests[0].subject == "The Eiffel Tower":
            raise RuntimeError("no luck")
        return real(model, tok, requests, edit)

    monkeypatch.setattr(method, "apply", flaky)
    report = evaluate(model, tokenizer, demo_cases(2), method, env=env, progress=False)
    assert report.summary["errors"] == 1
    assert "RuntimeError: no luck" in report.rows[0]["error"]
    assert report.summary["metrics"]["efficacy_score"]["n"] == 1


def test_scores_before_edit_are_batched_across_cases(tokenizer, env, monkeypatch):
    model = tiny_model("llama")
    calls = []
    from kedit.model.lm import HFLanguageModel

    real = HFLanguageModel.score_targets

    def spy(self, prompts, targets):
        calls.append(len(prompts))
        return real(self, prompts, targets)

    monkeypatch.setattr(HFLanguageModel, "score_targets", spy)
    evaluate(
        model,
        tokenizer,
        demo_cases(4),
        "ft-m",
        overrides=TINY["ft-m"],
        metrics=["efficacy_score", "neighborhood_score"],
        env=env,
        progress=False,
    )
    # one call for the 4 unedited cases, then one per edited case
    assert len(calls) == 5 and calls[0] == sum(calls[1:])


def test_a_run_that_would_measure_nothing_says_which_suite_would():
    """ConflictEdit's probes feed only the pitfalls suite's measures: the core suite is refused
    before anything is edited, naming the suite to use (not a run that stores no result)."""
    from kedit.env import Environment
    from kedit.eval.protocols import Single
    from kedit.eval.selection import choose_metrics, select_cases
    from tests.conftest import data_dir

    cases = select_cases("conflict-reverse", Environment(data_dir=data_dir()), 3)
    with pytest.raises(ValueError, match="--suite pitfalls"):
        choose_metrics(None, "core", cases, Single())
    chosen, _ = choose_metrics(None, "pitfalls", cases, Single())
    assert "conflict_score_explicit" in [m.name for m in chosen]
