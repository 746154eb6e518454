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


def test_checkpoints_score_a_seeded_sample_of_the_cases_edited_so_far():
    protocol = Sequential.of(10, [2, 6], sample=3)
    assert protocol.scored_positions(2, 0) == (0, 1)  # no more cases than the sample
    sixth = protocol.scored_positions(6, 0)
    assert len(sixth) == 3 and set(sixth) <= set(range(6)) and list(sixth) == sorted(sixth)
    assert protocol.scored_positions(6, 0) == sixth  # the same on every run and resume
    draws = {protocol.scored_positions(10, seed) for seed in range(20)}
    assert len(draws) > 1 and all(len(d) == 3 for d in draws)
    assert Sequential.of(10, sample=3, score_all_final=True).scored_positions(10, 0) == tuple(
        range(10)
    )
    assert Sequential.of(10, sample=None).scored_positions(10, 0) == tuple(range(10))
    immediate = Sequential.of(6, batch_size=2, scoring="immediate")
    assert immediate.scored_positions(4, 0) == (2, 3)
    with pytest.raises(ValueError, match="at least 1 case"):
        Sequential.of(4, sample=0)
    with pytest.raises(ValueError, match="final=all goes with final"):
        Sequential.of(4, scoring="immediate", score_all_final=True)


def test_the_sample_is_part_of_the_text_form():
    from kedit.eval.protocol_text import parse_protocol, parse_protocols

    default = parse_protocol("sequential:100,1000;batch=100")
    assert default.sample == 500 and str(default) == "sequential:100,1000;batch=100"
    text = "sequential:100,1000;batch=100;sample=200;final=all"
    parsed = parse_protocol(text)
    assert (parsed.sample, parsed.score_all_final, str(parsed)) == (200, True, text)
    assert parse_protocol("sequential:10;sample=all").sample is None
    assert str(parse_protocols("single," + text)[1]) == text
    for bad, message in [
        ("sequential:10;sample=0", "at least 1"),
        ("sequential:10;final=no", "final=all"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_protocol(bad)


def test_a_sampled_sequence_scores_only_its_sample_and_keeps_one_weight_copy(
    tokenizer, env, monkeypatch
):
    """Checkpoints past the sample score a seeded sample (and only those cases unedited); the
    headline is the last checkpoint's rows; restore data stays one copy of the touched weight
    however many edits (the session folds every edit)."""
    import kedit.eval.engine as engine

    unedited = []

    def spy(lm, cases, needs, stage, scores, seed):
        if stage == "pre":
            unedited.extend(c.case_id for c in cases)
        return score_probes(lm, cases, needs, stage, scores, seed)

    score_probes = engine.score_probes
    monkeypatch.setattr(engine, "score_probes", spy)
    model = tiny_model("llama")
    before = snapshot(model)
    protocol = Sequential.of(8, [4], sample=3)
    report = evaluate(
        model,
        tokenizer,
        cases(8),
        "rome",
        protocol=protocol,
        overrides=TINY["rome"],
        env=env,
        progress=False,
        metrics=["efficacy_score"],
    )
    assert_same_state(model, before)
    rows = [r for r in report.rows if r["case_id"] != "general"]
    ids = [c.case_id for c in cases(8)]
    for point in (4, 8):
        scored = sorted(r["case_id"] for r in rows if r["checkpoint"] == point)
        assert scored == [ids[i] for i in protocol.scored_positions(point, env.seed)]
    assert sorted(unedited) == sorted({r["case_id"] for r in rows})
    summary = report.summary
    assert summary["metrics"]["efficacy_score"]["n"] == 3 and summary["edits"] == 8
    assert "a seeded sample of 3" in summary["protocol"]
    weight = model.get_submodule("model.layers.0.mlp.down_proj").weight
    assert summary["session_restore_bytes"] == weight.numel() * weight.element_size()
