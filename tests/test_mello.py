"""MeLLo (methods/mello.py): the loop's control flow on a scripted model, the wrapper, sessions."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest

from kedit.env import Environment
from kedit.methods import METHODS
from kedit.methods._embed import LexicalEmbedder
from kedit.methods._reasoning import FactMemory, ReasoningLM, question_of, read_demonstrations
from kedit.methods.mello import CHECK, MeLLoConfig, MeLLoPipeline
from kedit.methods.session import EditSession
from kedit.model.lm import TargetScore
from kedit.types import EditRequest
from tests.conftest import assert_same_state, data_dir, snapshot, tiny_model
from tests.tiny_configs import tiny_config

SPOUSE = EditRequest("{} is married to", "Ivanka Trump", "Tom Hanks", "Jared Kushner")
CITIZEN = EditRequest("{} is a citizen of", "Jared Kushner", "Canada", "United States")
CAPITAL = EditRequest("The capital of {} is", "France", "Lyon", "Paris")
QUESTION = "What is the capital of the country of citizenship of Ivanka Trump's husband?"


class ScriptedLM:
    """A :class:`LanguageModel` that writes what ``reply(prompt)`` says (whole, whatever the
    token budget) and scores a target 0 when the reply starts with it, else -5."""

    def __init__(self, reply: Callable[[str], str], tokenizer) -> None:
        self.reply = reply
        self.tokenizer = tokenizer
        self.prompts: list[str] = []  # generated after
        self.scored: list[str] = []  # scored after

    def generate(
        self, prompts: Sequence[str], max_new_tokens, top_k=None, seed=None, stop_at_eos=True
    ):
        self.prompts += prompts
        return [self.reply(p) for p in prompts]

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        self.scored += prompts
        said = [self.reply(p).strip().lower() for p in prompts]
        return [
            TargetScore((1,), (0.0 if s.startswith(t.strip().lower()) else -5.0,), (1,))
            for s, t in zip(said, targets)
        ]


def hop(n: int, subquestion: str, generated: str) -> str:
    return f"Subquestion: {subquestion}\nGenerated answer: {generated}\nRetrieved fact:"


def three_hops(prompt: str) -> str:
    """Kushner's spouse chain: the second retrieved fact contradicts the model's answer."""
    n = prompt.count("Retrieved fact:")
    if n == 0:
        return "\n" + hop(1, "Who is Ivanka Trump married to?", "Ivanka Trump's spouse is Jared.")
    if prompt.endswith("."):  # a retrieved fact: the model writes its judgement first
        verdict = "contradicts" if n == 2 else "does not contradict"
        return f"\nRetrieved fact {verdict} to generated answer, {CHECK} United States\nJunk"
    if prompt.endswith(CHECK):  # not contradicted: the model's own intermediate answer
        if n == 1:
            sub = "What is the country of citizenship of Jared Kushner?"
            return " Jared Kushner\n" + hop(2, sub, "Jared Kushner is a citizen of United States.")
        return " Ottawa\nFinal answer: Ottawa\n\nQuestion: another one\nRetrieved fact:"
    return hop(3, "What is the capital of Canada?", "The capital of Canada is Ottawa.")


def pipeline(reply, tokenizer, facts=(SPOUSE, CITIZEN, CAPITAL), **overrides):
    lm = ScriptedLM(reply, tokenizer)
    config = MeLLoConfig(**{"shots": 0, "embedder": "lexical", **overrides})
    return lm, MeLLoPipeline(lm, FactMemory(list(facts), LexicalEmbedder()), "", config)


def test_retrieves_applies_the_self_check_and_stops_at_the_final_answer(tokenizer):
    lm, run = pipeline(three_hops, tokenizer)
    (outcome,) = run([QUESTION])
    trace = outcome.trace
    assert len(lm.prompts) == trace["calls"] == 7  # four rounds, three with a self-check
    assert outcome.answer == "Ottawa" and trace["stopped"] == "final answer"
    hops = trace["hops"]
    assert [h["retrieved_fact"] for h in hops[1:]] == [
        "Jared Kushner is a citizen of Canada",
        "The capital of France is Lyon",
    ]
    # contradicted: the fact's new object replaced the model's answer ("United States")
    assert hops[1]["judgement"] == "contradicts"
    assert (hops[1]["intermediate_answer"], hops[1]["answer_from"]) == ("Canada", "memory")
    assert f"{CHECK} Canada\nSubquestion: What is the capital of Canada?" in outcome.transcript
    assert f"{CHECK} United States" not in outcome.transcript
    # not contradicted: the model's own answer stands
    assert hops[0]["judgement"] == hops[2]["judgement"] == "does not contradict"
    assert (hops[0]["intermediate_answer"], hops[0]["answer_from"]) == ("Jared Kushner", "model")
    # the transcript ends at the cue; nothing after the final answer's line was kept
    assert outcome.transcript.endswith(
        f"Lyon.\nRetrieved fact does not contradict to generated answer, {CHECK} Ottawa\n"
        "Final answer:"
    )
    assert "another one" not in outcome.transcript and trace["answer_from"] == "model"


def test_the_notebook_self_check_leaves_every_answer_to_the_model(tokenizer):
    _, run = pipeline(three_hops, tokenizer, write_edited_answer=False)
    (outcome,) = run([QUESTION])
    hops = outcome.trace["hops"]
    assert hops[0]["judgement"] == "does not contradict"
    assert (hops[0]["intermediate_answer"], hops[0]["answer_from"]) == ("United States", "model")
    # the model's text was not cut at its judgement: no second call, its "Junk" line kept
    assert "Junk" in outcome.transcript and outcome.trace["stopped"] == "no subquestion"


def test_stops_at_the_final_answer_without_retrieving(tokenizer):
    reply = "\nSubquestion: Q1\nGenerated answer: A1\nFinal answer: Paris\n\nQuestion: Q2\nSub"
    lm, run = pipeline(lambda p: reply, tokenizer)
    (outcome,) = run(["Where is it?"])
    assert outcome.answer == "Paris" and len(lm.prompts) == 1
    assert (
        outcome.transcript
        == "Question: Where is it?\nSubquestion: Q1\nGenerated answer: A1\nFinal answer:"
    )
    assert "retrieved_fact" not in str(outcome.trace)


def test_at_most_four_hops_then_the_model_answers_after_the_transcript(tokenizer):
    def endless(prompt: str) -> str:
        if prompt.endswith("Final answer:"):
            return " Lyon\nmore"
        return (
            f"\nSubquestion: q{prompt.count('Subquestion')}\nGenerated answer: a\nRetrieved fact:"
        )

    lm, run = pipeline(endless, tokenizer, write_edited_answer=False)
    wrapper = ReasoningLM(lm, None, [SPOUSE], run, "mello")
    assert wrapper.generate([QUESTION], 5) == [" Lyon"]
    trace = wrapper.traces[QUESTION]
    assert trace["stopped"] == "hop limit" and len(trace["hops"]) == 4 and trace["answer"] is None
    assert [h["subquestion"] for h in trace["hops"]] == ["q0", "q1", "q2", "q3"]
    transcript = wrapper.outcomes([QUESTION])[0].transcript
    assert re.search(
        r"Subquestion: q3\nGenerated answer: a\nRetrieved fact: [^\n]+\.\nFinal answer:$",
        transcript,
    )
    # scoring reads the same transcript, once: the pipeline ran once for all three calls
    calls = len(lm.prompts)
    wrapper.score_targets([QUESTION], [" Lyon"])
    assert len(lm.prompts) == calls


def test_a_qa_prompt_is_asked_as_its_last_question():
    prompt = "Q: Who wrote Hamlet? A: Shakespeare\nQ: Who is the spouse of the US president? A:"
    assert question_of(prompt) == "Who is the spouse of the US president?"
    assert question_of("Tourists visit the Eiffel Tower") == "Tourists visit the Eiffel Tower"


def test_demonstrations_are_read_in_place_or_the_error_says_where():
    folder = data_dir() / "mquake" / "prompts"
    two = read_demonstrations(folder / "MeLLo-prompt.txt", 2, "MeLLo")
    assert two.count("Final answer:") == 2 and two.startswith("Question: ")
    with pytest.raises(FileNotFoundError, match="KEDIT_DATA_DIR"):
        read_demonstrations(None, None, "MeLLo")
    assert read_demonstrations(None, 0, "MeLLo") == ""


def test_session_memory_grows_and_rollback_restores_it(tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    session = EditSession(model, tokenizer, env)
    session.edit(SPOUSE, "mello", tiny_config("mello"))
    session.edit([CITIZEN, CAPITAL], "mello", tiny_config("mello"))
    assert session.model.facts == [SPOUSE, CITIZEN, CAPITAL]
    assert session.edits[-1].info["memory_facts"] == 3
    session.model.generate([QUESTION], 3)
    assert session.edits[-1].info["questions"]["questions"] == 1
    session.rollback(1)
    assert session.model.facts == [SPOUSE]
    session.rollback(1)
    assert session.model is model
    assert_same_state(model, before)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("shots", -1, "shots"),
        ("max_hops", 0, "max_hops"),
        ("chunk_tokens", 0, "chunk_tokens"),
        ("embedder", "contriever", "embedder"),
    ],
)
def test_invalid_settings_say_what_to_fix(field, value, message):
    with pytest.raises(ValueError, match=message):
        MeLLoConfig(**{field: value})


def test_without_the_benchmark_prompt_the_edit_fails_cleanly(tokenizer, tmp_path):
    model = tiny_model("gpt2")
    env = Environment(cache_dir=tmp_path, data_dir=tmp_path, progress=False)
    method = METHODS["mello"].for_model(model, {"embedder": "lexical"}, env)
    with pytest.raises(FileNotFoundError, match=r"MeLLo-prompt\.txt"):
        method.edit(model, tokenizer, SPOUSE)
