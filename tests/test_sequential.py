"""Sequential evaluation: accumulated edits, checkpoints, both scoring protocols, resume."""

import json

import pytest

from kedit.api import evaluate
from kedit.console import format_summary
from kedit.data import load_dataset
from kedit.eval.general import general_ability
from kedit.eval.protocols import Sequential
from kedit.model.lm import as_language_model
from tests.conftest import assert_same_state, data_dir, snapshot, tiny_model
from tests.tiny_configs import TINY


def cases(n):
    return load_dataset("demo", limit=n)


def run(
    model,
    tokenizer,
    env,
    method="ft-m",
    n_edits=3,
    checkpoints=(),
    batch_size=1,
    scoring="final",
    **kwargs,
):
    protocol = Sequential.of(n_edits, checkpoints, batch_size, scoring)
    return evaluate(
        model,
        tokenizer,
        cases(4),
        method,
        protocol=protocol,
        overrides=TINY[method],
        env=env,
        progress=False,
        metrics=["efficacy_score", "neighborhood_score"],
        **kwargs,
    )


def test_final_scoring_at_checkpoints(tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    report = run(model, tokenizer, env, n_edits=3, checkpoints=[1, 2])
    assert_same_state(model, before)
    keys = sorted((r["checkpoint"], r["case_id"]) for r in report.rows if r["case_id"] != "general")
    assert keys == [
        (1, "demo-001"),
        (2, "demo-001"),
        (2, "demo-002"),
        (3, "demo-001"),
        (3, "demo-002"),
        (3, "demo-003"),
    ]
    summary = report.summary
    assert summary["protocol"].startswith("sequential-final")
    assert summary["protocol"].endswith("at checkpoints 1, 2, 3")
    assert summary["run"]["protocol"] == "sequential:1,2,3"
    assert sorted(summary["checkpoints"]) == ["1", "2", "3"]
    assert summary["checkpoints"]["2"]["efficacy_score"]["n"] == 2
    assert summary["metrics"]["efficacy_score"]["n"] == 3
    assert summary["session_restore_bytes"] > 0


def test_immediate_scoring_scores_each_case_after_its_own_edit(tokenizer, env):
    model = tiny_model("llama")
    report = run(model, tokenizer, env, n_edits=3, scoring="immediate")
    rows = [r for r in report.rows if r["case_id"] != "general"]
    assert [(r["checkpoint"], r["case_id"]) for r in rows] == [
        (1, "demo-001"),
        (2, "demo-002"),
        (3, "demo-003"),
    ]
    assert report.summary["protocol"].startswith("sequential-immediate")


def test_batches_need_a_batch_method(tokenizer, env):
    model = tiny_model("llama")
    report = run(model, tokenizer, env, method="memit", n_edits=4, batch_size=2, checkpoints=[2])
    assert sorted(report.summary["checkpoints"]) == ["2", "4"]
    # each case of an update carries its share of the update's time and the same edit figures
    first = {r["case_id"]: r for r in report.rows if r["checkpoint"] == 2}
    assert first["demo-001"]["edit_time_s"] == first["demo-002"]["edit_time_s"] > 0
    assert first["demo-001"]["details"]["edit"]["layers"] == 2
    with pytest.raises(ValueError, match="one request at a time"):
        run(model, tokenizer, env, method="rome", n_edits=2, batch_size=2)
    with pytest.raises(ValueError, match="inside a batch of 2"):
        run(model, tokenizer, env, method="memit", n_edits=4, batch_size=2, checkpoints=[3])


def test_resume_replays_edits_and_scores_only_what_is_missing(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    full = run(model, tokenizer, env, n_edits=3, checkpoints=[1, 2], out_dir=tmp_path / "a")
    out = tmp_path / "b"
    run(model, tokenizer, env, n_edits=3, checkpoints=[1, 2], out_dir=out)
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])  # killed
    resumed = run(model, tokenizer, env, n_edits=3, checkpoints=[1, 2], out_dir=out, resume=True)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["case_id"] != "general"]
    assert len(rows) == 6 == len({(r["case_id"], r["checkpoint"]) for r in rows})

    def metrics(report):
        rows = [r for r in report.rows if r["case_id"] != "general"]
        return {(r["case_id"], r["checkpoint"]): r["metrics"] for r in rows}

    assert metrics(resumed) == metrics(full)
    with pytest.raises(ValueError, match="protocol"):
        run(model, tokenizer, env, n_edits=3, out_dir=out, resume=True)


def test_bad_sequential_arguments(tokenizer, env):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="dataset has 4"):
        run(model, tokenizer, env, n_edits=5)
    with pytest.raises(ValueError, match="--limit is 2"):
        run(model, tokenizer, env, n_edits=3, limit=2)
    with pytest.raises(ValueError, match="final"):
        run(model, tokenizer, env, n_edits=2, scoring="later")
    with pytest.raises(ValueError, match="between 1 and 2"):
        run(model, tokenizer, env, n_edits=2, checkpoints=[5])
    with pytest.raises(ValueError, match="sequential checkpoints"):
        evaluate(model, tokenizer, cases(2), "ft-m", general=["wikitext"], env=env)


def test_general_ability_before_editing_and_at_checkpoints(tokenizer, env, tmp_path):
    env.data_dir = data_dir()
    model = tiny_model("gpt2")
    general = ["wikitext", "sst2"]
    kwargs = dict(n_edits=3, checkpoints=[2], general=general, general_limit=3)
    report = run(model, tokenizer, env, out_dir=tmp_path / "run", **kwargs)
    measured = report.summary["general"]
    assert sorted(measured, key=int) == ["0", "2", "3"]
    assert measured["0"]["wikitext"]["metric"] == "perplexity"
    assert measured["0"]["sst2"]["n"] == 3
    # the unedited measurement is the plain model's, and the edits change the perplexity
    plain = general_ability(as_language_model(model, tokenizer), general, data_dir(), limit=3)
    assert measured["0"]["wikitext"]["score"] == pytest.approx(plain["wikitext"]["score"])
    assert measured["3"]["wikitext"]["score"] != pytest.approx(plain["wikitext"]["score"])
    assert "general ability" in format_summary(report)
    # resuming measures nothing again
    again = run(model, tokenizer, env, out_dir=tmp_path / "run", resume=True, **kwargs)
    lines = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    general_lines = [x for x in lines if x["case_id"] == "general"]
    assert [x["checkpoint"] for x in general_lines] == [0, 2, 3]
    assert all("wikitext" in x["metrics"] for x in general_lines)
    assert again.summary["general"] == measured
    with pytest.raises(KeyError, match="general task"):
        run(model, tokenizer, env, n_edits=1, general=["nope"])
