"""The pitfalls suite end to end on tiny models: two-step cases, every measurement, the audit."""

import json
import unicodedata

import pytest

from kedit.data import load_dataset
from kedit.data.challenges import dialogue_probes
from kedit.eval.audit import audit
from kedit.eval.evaluate import evaluate
from kedit.eval.metric import METRICS, needs_of
from kedit.eval.protocols import Sequential
from kedit.eval.scoring import dialogue_transcript, first_clause, score_probes
from kedit.model.lm import as_language_model
from kedit.model.tokens import encode
from kedit.types import EditCase, EditRequest, Probe, ProbeKind
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY


def round_trip_case() -> EditCase:
    there = EditRequest("{} is a citizen of", "Ann Lee", "Peru", "France")
    back = EditRequest(there.prompt, there.subject, "France", "Peru")
    # the edit prompt only: a tiny random model does not generalise to rewordings
    probes = [
        Probe(ProbeKind.ROUND_NEW, there.text, "Peru"),
        Probe(ProbeKind.ROUND_TRUE, there.text, "France"),
        Probe(ProbeKind.ROUND_OTHER, there.text, "Italy", fact="Italy"),
    ]
    return EditCase("round", (there, back), tuple(probes), steps=(1, 1))


def test_two_step_case_is_scored_after_each_step(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    before = snapshot(model)
    names = ["round_edit_success", "knowledge_distortion_js", "ignore_rate", "failure_rate"]
    report = evaluate(
        model,
        tokenizer,
        [round_trip_case()],
        "ft-m",
        overrides={**TINY["ft-m"], "num_steps": 40},
        metrics=names,
        out_dir=tmp_path / "run",
        env=env,
        progress=False,
    )
    assert_same_state(model, before)
    (row,) = report.rows
    assert "error" not in row, row.get("error")
    metrics = row["metrics"]
    # FT-M drives each edit's target to the top, so both halves of the round trip succeed; the
    # first half is read after the first edit, so it exists only if that step was scored
    assert metrics["round_edit_success"]["post"] == 1.0
    assert 0.0 <= metrics["knowledge_distortion_js"]["post"] <= 0.6932  # at most ln 2
    assert metrics["ignore_rate"]["post"] in (0.0, 1.0)  # one other object
    assert metrics["failure_rate"]["post"] == metrics["ignore_rate"]["post"]


def test_a_two_step_case_takes_both_edits_in_order(tokenizer, env):
    model = tiny_model("llama")
    case = round_trip_case()
    lm_before = as_language_model(model, tokenizer)
    results = {}
    needs = needs_of([METRICS["round_edit_success"]])
    score_probes(lm_before, [case], needs, "pre", results)
    assert all(r.mid.expected is None for r in results["round"])  # nothing mid before editing
    assert needs.mid == {ProbeKind.ROUND_NEW, ProbeKind.ROUND_TRUE}
    assert [len(s) for s in case.edit_steps] == [1, 1]
    with pytest.raises(ValueError, match="add up to"):
        EditCase("bad", case.requests, steps=(1,))


class RecordingLM:
    """Answers every prompt with fixed text and records what it was asked."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.asked = tokenizer, answers, []

    def generate(self, prompts, max_new_tokens, top_k=None, seed=None, stop_at_eos=True):
        self.asked.append((list(prompts), max_new_tokens, top_k, seed, stop_at_eos))
        return [self.answers[len(self.asked) - 1]] * len(prompts)

    def score_targets(self, prompts, targets):
        from kedit.model.lm import TargetScore

        return [TargetScore((1,), (-0.5,), (1,)) for _ in prompts]


def test_dialogue_reply_continues_the_models_own_answer(tokenizer):
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    probe = dialogue_probes(request)[0]
    lm = RecordingLM(tokenizer, [" Rome. It is old\nmore", " Paris, I think"])
    case = EditCase("d", (request,), (probe,))
    results = {}
    score_probes(lm, [case], needs_of([METRICS["dialogue_kept_rate"]]), "post", results)
    (result,) = results["d"]
    assert result.post.answer == "Rome"
    first, second = lm.asked
    assert first[0] == [request.text] and second[1] == 30  # Ma et al.'s 30 new tokens
    assert second[0] == [dialogue_transcript(probe, "Rome")]
    assert second[0][0].startswith(
        "The Eiffel Tower is located in the city of Rome.\nAre you sure?"
    )
    assert METRICS["dialogue_reverted_rate"]([result]) == 1.0
    assert first_clause(" Washington, D.C. is big. And") == "Washington, D.C. is big"


def test_fluency_texts_follow_rome_s_generate_fast(tokenizer):
    """ROME samples from the top 5 until the text, prompt included, is 100 tokens long, through
    the end-of-sequence token, then normalises it (NFKD, paragraph breaks as spaces)."""
    prompts = ["Café Zürich is", "A much longer prompt about the Eiffel Tower and Paris is"]
    case = EditCase(
        "f",
        (EditRequest("{} is in", "Café Zürich", "Rome"),),
        tuple(Probe(ProbeKind.GENERATION, p, "Rome") for p in prompts),
    )
    lm = RecordingLM(tokenizer, [" big.\n\nNaïve"])
    results = {}
    score_probes(lm, [case], needs_of([METRICS["fluency_ngram_entropy"]]), "post", results, 7)
    ((asked, new_tokens, top_k, seed, stop_at_eos),) = lm.asked
    assert asked == prompts and (top_k, seed, stop_at_eos) == (5, 7, False)
    assert new_tokens == [100 - len(encode(tokenizer, p).ids) for p in prompts]
    text = results["f"][0].post.text
    assert text == unicodedata.normalize("NFKD", "Café Zürich is big. Naïve")
    assert "\n" not in text and text != "Café Zürich is big. Naïve"  # decomposed accents


def test_generation_can_go_past_the_end_of_sequence_token(tokenizer):
    """Greedy generation whose first token is the end of sequence, then "Rome": stopping there
    gives nothing, going on gives the rest (the special token itself is left out of the text,
    as ROME removes "<|endoftext|>")."""
    model = tiny_model("llama")
    eos, rome = tokenizer.eos_token_id, tokenizer(" Rome", add_special_tokens=False).input_ids[0]
    calls = {"n": 0}

    def script(module, args, logits):
        logits = logits.clone()
        logits[:, -1, eos if calls["n"] == 0 else rome] = logits.max() + 10.0
        calls["n"] += 1
        return logits

    handle = model.get_output_embeddings().register_forward_hook(script)
    lm = as_language_model(model, tokenizer)
    try:
        stopped = lm.generate(["Rome is"], 4)
        calls["n"] = 0
        went_on = lm.generate(["Rome is"], 4, stop_at_eos=False)
    finally:
        handle.remove()
    assert stopped == [""]
    assert went_on == [" Rome Rome Rome"]


def test_pitfalls_suite_runs_every_measure_the_cases_feed(tokenizer, env, tmp_path):
    model = tiny_model("gpt2")
    cases = load_dataset("demo", limit=2)
    request = cases[0].request
    extra = (
        Probe(
            ProbeKind.DISTRACTING_NEIGHBORHOOD,
            f"{request.text} {request.target_new}. X is",
            "a",
            "b",
        ),
        Probe(ProbeKind.PORTABILITY_ONE_HOP, "Which language is spoken there?", "Italian"),
    )
    cases[0] = EditCase(cases[0].case_id, cases[0].requests, cases[0].probes + extra)
    report = evaluate(
        model,
        tokenizer,
        cases,
        "ft-m",
        overrides=TINY["ft-m"],
        suite="pitfalls",
        out_dir=tmp_path / "run",
        env=env,
        progress=False,
    )
    summary = report.summary
    assert summary["errors"] == 0
    for name in (
        "efficacy_score",
        "neighborhood_kl",
        "distracting_neighborhood_kl",
        "distracting_neighborhood_score",
        "portability_one_hop_token_acc",
        "fluency_ngram_entropy",
        "dialogue_kept_rate",
        "dialogue_rephrase_reverted_rate",
    ):
        assert name in summary["metrics"], name
    assert summary["metrics"]["neighborhood_kl"]["post"] >= 0.0
    assert summary["metrics"]["fluency_ngram_entropy"]["pre"] > 0.0
    # what the demo set cannot feed is listed with the reason
    assert (
        summary["skipped"]["knowledge_distortion"]
        == "the dataset has no round_true / round_other probes"
    )
    assert "dialogue_reversion_by_confidence" in summary["analyses"]
    row = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[0])
    assert len(row["details"]["dialogue"]) == 3 and row["details"]["generation_sample"]["post"]
    with pytest.raises(ValueError, match="cannot feed ignore_rate"):
        evaluate(model, tokenizer, cases, "ft-m", metrics=["ignore_rate"], env=env, progress=False)


def test_audit_writes_its_own_probes(tokenizer, env):
    model = tiny_model("gpt2")
    before = snapshot(model)
    request = EditRequest("{} is located in the city of", "the Eiffel Tower", "Rome")
    report = audit(model, tokenizer, request, "ft-m", overrides=TINY["ft-m"], env=env)
    assert_same_state(model, before)
    (row,) = report.rows
    assert "error" not in row, row.get("error")
    # the old answer is the unedited model's own answer
    (written,) = row["details"]["requests"]
    assert written["target_true"] and written["target_true"] != "Rome"
    groups = {m["group"] for m in report.summary["metrics"].values()}
    assert {"reliability", "generalization", "locality", "general ability", "robustness"} <= groups


def test_sequential_run_with_the_pitfalls_suite(tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    report = evaluate(
        model,
        tokenizer,
        load_dataset("demo", limit=2),
        "ft-m",
        protocol=Sequential.of(2, [1]),
        overrides=TINY["ft-m"],
        suite="pitfalls",
        env=env,
        progress=False,
    )
    assert_same_state(model, before)
    metrics = report.summary["metrics"]
    assert {"neighborhood_kl", "dialogue_kept_rate", "fluency_ngram_entropy"} <= set(metrics)
    assert set(report.summary["checkpoints"]) == {"1", "2"}
    assert all("details" in r for r in report.rows)


def test_probes_sharing_a_question_ask_it_once(tokenizer):
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    probes = tuple(dialogue_probes(request))  # three follow-ups after the same question
    lm = RecordingLM(tokenizer, [" Rome.", " Rome"])
    results = {}
    needs = needs_of([METRICS["dialogue_kept_rate"]])
    score_probes(lm, [EditCase("d", (request,), probes)], needs, "post", results)
    questions, replies = lm.asked
    assert questions[0] == [request.text]  # one answer, shared by the three probes
    assert len(replies[0]) == 3 and len(set(replies[0])) == 3
    assert [r.post.answer for r in results["d"]] == ["Rome"] * 3


def coverage_case() -> EditCase:
    first = EditRequest("{} is a citizen of", "Ann Lee", "Peru", "France")
    second = EditRequest(first.prompt, first.subject, "Chile", "Peru")
    probes = [
        Probe(ProbeKind.CONFLICT_OLD, first.text, "Peru"),
        Probe(ProbeKind.CONFLICT_EXPLICIT, first.text, "Chile"),
    ]
    return EditCase("cov", (first, second), tuple(probes), steps=(1, 1), last_step_alone=True)


def test_coverage_success_scores_the_second_edit_applied_alone(tokenizer, env, monkeypatch):
    """ConflictEdit's coverage: both edits in sequence (conflict score, magnitude), then the
    second edit alone on the unedited model (success), and the model restored after each."""
    from kedit.methods import EditSession

    model = tiny_model("llama")
    before = snapshot(model)
    applied = []
    real = EditSession.edit_all

    def recording(self, requests, method):
        applied.append((len(self), [r.target_new for r in requests]))
        return real(self, requests, method)

    monkeypatch.setattr(EditSession, "edit_all", recording)
    names = ["coverage_success", "conflict_score_explicit", "conflict_magnitude"]
    report = evaluate(
        model,
        tokenizer,
        [coverage_case()],
        "ft-m",
        overrides={**TINY["ft-m"], "num_steps": 40},
        metrics=names,
        env=env,
        progress=False,
    )
    assert_same_state(model, before)
    # (edits already in the session, the update's targets): Peru then Chile; Chile alone
    assert applied == [(0, ["Peru"]), (1, ["Chile"]), (0, ["Chile"])]
    (row,) = report.rows
    # FT-M drives each edit's target to the top: with Chile alone, Chile beats Peru
    assert row["metrics"]["coverage_success"] == {"post": 1.0}
    assert set(row["metrics"]) == set(names)
    sequential = evaluate(
        model,
        tokenizer,
        [coverage_case()],
        "ft-m",
        protocol="sequential:1",
        overrides=TINY["ft-m"],
        suite="pitfalls",
        env=env,
        progress=False,
    )
    assert "edit steps one by one" in sequential.summary["skipped"]["coverage_success"]
