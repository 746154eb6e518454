"""Answer traces: a model that answers through steps of its own (MeLLo, DeepEdit, SERAC) says,
per prompt, how the answer came about; the evaluation keeps that in the case's details, and the
audit card and the bench report show it."""

from __future__ import annotations

from kedit.bench.details import answer_traces
from kedit.bench.report_traces import traces_section
from kedit.bench.summary import BenchSummary
from kedit.console import format_report_card
from kedit.eval.audit import audit
from kedit.eval.evaluate import evaluate
from kedit.eval.scored import case_details
from kedit.eval.scoring import Needs, score_probes
from kedit.formatting import format_trace, trace_outcome
from kedit.methods._embed import LexicalEmbedder
from kedit.methods._reasoning import FactMemory, ReasoningLM
from kedit.methods.mello import MeLLoConfig, MeLLoPipeline
from kedit.model.lm import TracingModel, as_language_model
from kedit.types import EditCase, Probe, ProbeKind
from tests.conftest import tiny_model
from tests.test_mello import CAPITAL, CITIZEN, QUESTION, SPOUSE, ScriptedLM, three_hops
from tests.test_serac import FAR, OTHER, REQUEST, serac

CLOZE = "The capital of France is"


def mello_lm(tokenizer) -> ReasoningLM:
    lm = ScriptedLM(three_hops, tokenizer)
    memory = FactMemory([SPOUSE, CITIZEN, CAPITAL], LexicalEmbedder())
    pipeline = MeLLoPipeline(lm, memory, "", MeLLoConfig(shots=0, embedder="lexical"))
    return ReasoningLM(lm, None, [SPOUSE, CITIZEN, CAPITAL], pipeline, "mello")


def test_scoring_keeps_each_prompt_s_trace_once_with_the_kinds_that_asked_it(tokenizer):
    lm = mello_lm(tokenizer)
    probes = (
        Probe(ProbeKind.MULTI_HOP, f"Q: {QUESTION} A:", "Ottawa"),
        Probe(ProbeKind.MULTI_HOP_ORIGINAL, f"Q: {QUESTION} A:", "Paris"),
        Probe(ProbeKind.EDITED_HOP, CLOZE, "Lyon"),
    )
    case = EditCase("c", (CAPITAL,), probes)
    kinds = frozenset(str(p.kind) for p in probes)
    results: dict = {}
    score_probes(lm, [case], Needs(scores=kinds), "post", results)
    traces = case_details(results["c"])["answer_traces"]
    assert [t["prompt"] for t in traces] == [f"Q: {QUESTION} A:", CLOZE]
    assert traces[0]["kinds"] == ["multi_hop", "multi_hop_original"]
    assert traces[0]["trace"] == lm.trace(f"Q: {QUESTION} A:")
    assert traces[0]["trace"]["answer"] == "Ottawa" and len(traces[0]["trace"]["hops"]) == 3
    assert traces[1]["kinds"] == ["edited_hop"] and traces[1]["trace"]["question"] == CLOZE
    # a model without steps of its own leaves no traces
    plain: dict = {}
    score_probes(ScriptedLM(three_hops, tokenizer), [case], Needs(scores=kinds), "post", plain)
    assert "answer_traces" not in case_details(plain["c"])


def test_serac_traces_which_model_answered_and_the_nearest_edit(tokenizer, env):
    model = tiny_model("llama")
    method, _ = serac(model, env, scale=1e4)
    lm = method.edit(model, tokenizer, [REQUEST, OTHER]).model
    assert isinstance(lm, TracingModel) and lm.trace(FAR) is None  # not asked yet
    assert lm.routed([REQUEST.text, FAR]) == [True, False]
    inside, outside = lm.trace(REQUEST.text), lm.trace(FAR)
    assert inside["answered_by"] == "counterfactual" and outside["answered_by"] == "base"
    assert inside["nearest_edit"] == f"{REQUEST.text} {REQUEST.target_new}"
    assert inside["scope_probability"] > 0.5 > outside["scope_probability"]
    assert outside["nearest_edit"] in (f"{r.text} {r.target_new}" for r in (REQUEST, OTHER))


def test_an_evaluation_stores_serac_s_traces_in_the_case_details(tokenizer, env, tmp_path):
    model = tiny_model("llama")
    method, _ = serac(model, env, scale=1e4)
    case = EditCase(
        "eiffel",
        (REQUEST,),
        (
            Probe(ProbeKind.REWRITE, REQUEST.text, "Rome", "Paris"),
            Probe(ProbeKind.NEIGHBORHOOD, FAR, "cat", "Rome"),
        ),
    )
    report = evaluate(model, tokenizer, [case], method, out_dir=tmp_path, env=env, progress=False)
    (row,) = report.rows
    by_kind = {t["kinds"][0]: t["trace"] for t in row["details"]["answer_traces"]}
    assert by_kind["rewrite"]["answered_by"] == "counterfactual"
    assert by_kind["neighborhood"]["answered_by"] == "base"
    # the unedited model ran the "pre" stage: it has no steps to trace
    assert not isinstance(as_language_model(model, tokenizer), TracingModel)


def test_a_trace_reads_as_lines_and_its_outcome_as_one(tokenizer):
    lm = mello_lm(tokenizer)
    lm.generate([f"Q: {QUESTION} A:"], 8)
    trace = lm.trace(f"Q: {QUESTION} A:")
    assert trace_outcome(trace) == "answer_from model; stopped final answer"
    lines = format_trace(trace, width=400)
    assert lines[0] == "mello: answer 'Ottawa' (answer_from model; stopped final answer)"
    assert sum(line.startswith("  hops[") for line in lines) == 3
    assert "retrieved_fact: Jared Kushner is a citizen of Canada" in lines[3]
    short = format_trace(trace, width=60)
    assert all(len(line) <= 60 for line in short) and short[3].endswith("...")


def test_the_report_counts_outcomes_at_the_last_checkpoint_and_shows_traces():
    base = {"answer_from": "memory", "stopped": "final answer", "method": "mello", "answer": "x"}
    none = {**base, "answer_from": None, "stopped": "hop limit", "answer": None}

    def row(case: str, checkpoint: int, traces: list) -> dict:
        entries = [{"prompt": f"{case}?", "kinds": ["multi_hop"], "trace": t} for t in traces]
        return {
            "job_id": "mello/single",
            "case_id": case,
            "checkpoint": checkpoint,
            "details": {"answer_traces": entries},
        }

    cases = [row("a", 0, [none]), row("a", 1, [base]), row("b", 1, [base]), row("c", 1, [none])]
    found = answer_traces(cases)
    assert [e["case_id"] for e in found["mello/single"]] == ["a", "a", "b", "c"]
    summary = BenchSummary({}, {}, {}, {}, {}, answer_traces=found)
    html = traces_section(summary)
    assert "checkpoint 1: 3 prompts" in html
    assert "<td>answer_from memory; stopped final answer</td><td>2</td><td>67%</td>" in html
    assert "<td>answer_from none; stopped hop limit</td><td>1</td><td>33%</td>" in html
    assert html.count("<pre>") == 3
    assert traces_section(BenchSummary({}, {}, {}, {}, {})) == ""


def test_the_audit_card_says_how_serac_answered_each_prompt(tokenizer, env):
    model = tiny_model("llama")
    method, _ = serac(model, env, scale=1e4)
    card = format_report_card(audit(model, tokenizer, REQUEST, method, env=env))
    assert f"how the edited model answered {REQUEST.text!r} (rewrite" in card
    assert "serac: (answered_by counterfactual)" in card
    assert "(answered_by base)" in card  # the written neighbours and unrelated prompts


def test_a_step_on_two_lists_is_printed_once_and_named_after():
    taken = {"depth": 0, "step": "Paris is in France.", "taken": "answer"}
    dropped = {"depth": 0, "step": "Paris is in Italy.", "taken": "nothing (empty step)"}
    trace = {"method": "deepedit", "answer": "France", "path": [taken], "log": [dropped, taken]}
    lines = format_trace(trace, width=400)
    assert lines[1] == "  path[0] depth: 0; step: Paris is in France.; taken: answer"
    assert lines[2].startswith("  log[0] depth: 0; step: Paris is in Italy.")
    assert lines[3] == "  log[1] = path[0]"
    assert len(lines) == 4
