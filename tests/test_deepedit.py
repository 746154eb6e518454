"""DeepEdit (methods/deepedit.py): the search's control flow on a scripted model, sessions."""

from __future__ import annotations

import pytest

from kedit.methods._embed import LexicalEmbedder
from kedit.methods._reasoning import FactMemory, ReasoningLM, answer_token
from kedit.methods.deepedit import (
    DIFFERENT,
    ENTITY,
    EXIST,
    QUERY,
    SAME,
    SHARED,
    DeepEditConfig,
    DeepEditPipeline,
)
from kedit.methods.session import EditSession
from kedit.model.lm import HFLanguageModel
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model, train_tokenizer
from tests.test_mello import ScriptedLM
from tests.tiny_configs import tiny_config

QUESTION = "Which company employs the spouse of Ivanka Trump?"
MARRIED = EditRequest("{} is married to", "Ivanka Trump", "Tom Hanks", "Jared Kushner")
WORKS = EditRequest("{} works for", "Ivanka Trump", "Apple", "Trump Organization")
CITIZEN = EditRequest("{} is a citizen of", "Jared Kushner", "Canada", "United States")
ENTITIES = {  # Sentence B -> the entity it adds
    QUESTION: "Ivanka Trump",
    "Ivanka Trump is married to Tom Hanks.": "Tom Hanks",
    "Ivanka Trump works for Apple.": "Apple",
    "Jared Kushner is a citizen of Canada.": "Canada",
}


def sentence_b(prompt: str) -> str:
    return prompt.rsplit("Sentence B: ", 1)[1].split("\n", 1)[0]


def script(steps, yes=()):
    """A scripted model: ``steps(transcript)`` writes reasoning steps; the judgements named in
    ``yes`` answer yes (every other judgement no); entities come from ENTITIES."""

    def reply(prompt: str) -> str:
        for name, head in (("same", SAME), ("shared", SHARED), ("different", DIFFERENT)):
            if prompt.startswith(head):
                return "yes" if name in yes else "no"
        if prompt.startswith(EXIST):
            return "yes" if "exist" in yes else "no"
        if prompt.startswith(ENTITY):
            return f" {ENTITIES.get(sentence_b(prompt), 'Somebody')}\n"
        if prompt.startswith(QUERY):
            return f" {sentence_b(prompt).rsplit(' ', 1)[0]}\n"
        return steps(prompt)

    return reply


def pipeline(reply, tokenizer, facts=(MARRIED, WORKS, CITIZEN), **overrides):
    lm = ScriptedLM(reply, tokenizer)
    config = DeepEditConfig(**{"shots": 0, "embedder": "lexical", **overrides})
    return lm, DeepEditPipeline(lm, FactMemory(list(facts), LexicalEmbedder()), "", config)


def married_dead_end(prompt: str) -> str:
    """After the nearest fact (the spouse) the model never answers; after the second it does."""
    if prompt.endswith("Ivanka Trump works for Apple."):
        return "\nAnswer: Apple\n"
    if prompt.endswith("Thoughts:"):
        return " Ivanka Trump is married to Jared Kushner. "
    return " Tom Hanks likes films. "


def test_takes_the_top_two_facts_and_backtracks_when_a_branch_fails(tokenizer):
    _, run = pipeline(script(married_dead_end), tokenizer, max_steps=3)
    (outcome,) = run([QUESTION])
    trace = outcome.trace
    first = trace["log"][0]
    assert first["retrieved"] == [
        "Ivanka Trump is married to Tom Hanks.",
        "Ivanka Trump works for Apple.",
    ]
    # both mention the question's entity (and no previous one): both are candidates
    assert [j["accepted"] for j in first["judgements"]] == [True, True]
    assert first["taken"] == first["retrieved"]
    # the nearest fact's branch (explored first) ran into the step limit; the search went back
    # to the second fact
    assert trace["abandoned"] == 1
    assert trace["log"][1]["step"] == "Tom Hanks likes films."
    assert [r["depth"] for r in trace["log"]] == [0, 1, 2, 3, 1]
    assert [r["taken"] for r in trace["log"][3:]] == ["abandoned (step limit)", "answer"]
    assert outcome.answer == "Apple" and trace["answer_from"] == "memory"
    assert trace["steps"] == ["Ivanka Trump works for Apple."]
    assert (
        outcome.transcript
        == f"Question: {QUESTION}\nThoughts: Ivanka Trump works for Apple.\nAnswer:"
    )


def test_with_one_fact_per_step_there_is_nothing_to_go_back_to(tokenizer):
    _, run = pipeline(script(married_dead_end), tokenizer, max_steps=3, top_k=1)
    (outcome,) = run([QUESTION])
    assert len(outcome.trace["log"][0]["retrieved"]) == 1
    assert outcome.answer is None and outcome.trace["stopped"] == "search exhausted"


def test_respects_the_step_limit(tokenizer):
    lm, run = pipeline(
        script(lambda p: " The sky is blue. "), tokenizer, facts=[CITIZEN], max_steps=3
    )
    (outcome,) = run(["Why?"])
    steps = [p for p in lm.prompts if p.startswith("Question: ")]
    assert len(steps) == 3 and outcome.trace["steps"] == ["The sky is blue."] * 3
    assert outcome.answer is None and outcome.trace["abandoned"] == 1
    assert outcome.transcript.endswith(
        "Thoughts: The sky is blue. The sky is blue. The sky is blue.\nAnswer:"
    )


@pytest.mark.parametrize(
    ("yes", "corrected"),
    [
        ({"same", "shared", "different"}, True),
        ({"same", "shared"}, False),
        ({"shared", "different"}, False),
        ({"same", "different"}, False),
    ],
)
def test_a_fact_replaces_the_step_it_contradicts_only_when_all_three_judgements_agree(
    tokenizer, yes, corrected
):
    def steps(prompt: str) -> str:
        if prompt.endswith("Thoughts:"):
            return " Jared Kushner is a citizen of United States. "
        return "\nAnswer: X\n"

    _, run = pipeline(script(steps, yes), tokenizer, facts=[CITIZEN], top_k=1)
    (outcome,) = run(["Where is Kushner from?"])
    (judged,) = outcome.trace["log"][0]["judgements"]
    # the question's entity (Somebody) is absent from the fact: only the judgements can take it
    assert judged["mentions_new_entity"] is False and judged["accepted"] is corrected
    fact = "Jared Kushner is a citizen of Canada."
    assert outcome.trace["steps"] == [
        fact if corrected else "Jared Kushner is a citizen of United States."
    ]
    assert outcome.answer == ("Canada" if corrected else "Somebody")


@pytest.mark.parametrize("one_token", [True, False])
def test_yes_or_no_from_one_pass_equals_scoring_both_answers(one_token, tokenizer):
    """Where " yes" and " no" are one token each after ``Answer:`` (byte-level BPE vocabularies
    such as SmolLM2's) a judgement is one row of one pass; else both answers are scored. Either
    way it decides as teacher-forced scores of both answers do, and each prompt head's keys and
    values are computed once per model, for every edit: the passes run only what follows."""
    if one_token:  # a toy vocabulary that learned the two words
        tokenizer = train_tokenizer(bos=False, extra=["Answer: yes. Answer: no."] * 200)
    lm = HFLanguageModel(tiny_model("llama"), tokenizer)
    config = DeepEditConfig(shots=0, embedder="lexical")
    run = DeepEditPipeline(lm, FactMemory([MARRIED], LexicalEmbedder()), "", config)
    facts = ("Ivanka Trump is married to Tom Hanks.", "Jared Kushner is a citizen of Canada.")
    steps = ("Ivanka Trump is married to Jared Kushner.", "Apple makes phones.", "Canada is big.")
    prompts = [
        f"{head}\n\nSentence A: {fact}\nSentence B: {step}\nAnswer:"
        for head in (SAME, SHARED, DIFFERENT)
        for fact in facts
        for step in steps
    ]
    tokens = {answer_token(tokenizer, p, a) for p in prompts for a in (" yes", " no")}
    assert (None not in tokens) is one_token
    scores = lm.score_targets([p for p in prompts for _ in (0, 1)], [" yes", " no"] * len(prompts))
    totals = [sum(s.logprobs) for s in scores]
    expected = [totals[2 * i] > totals[2 * i + 1] for i in range(len(prompts))]
    assert run._yes(prompts) == expected  # computes the three heads' caches
    # a later edit's pipeline over the same model (a session) uses the same heads' caches
    later = DeepEditPipeline(lm, FactMemory([MARRIED, WORKS], LexicalEmbedder()), "", config)
    shapes = []
    handle = lm.model.register_forward_hook(
        lambda _, args, kw, out: shapes.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        assert later._yes(prompts) == expected
    finally:
        handle.remove()
    assert len(shapes) == 3  # one pass per head
    assert sum(rows for rows, _ in shapes) == (len(prompts) if one_token else 2 * len(prompts))
    shortest = min(len(tokenizer(p)["input_ids"]) for p in prompts)
    assert all(width < shortest / 2 for _, width in shapes)  # the heads are not run again


def test_wrapper_answers_and_scores_after_the_answer_cue(tokenizer):
    lm, run = pipeline(script(married_dead_end), tokenizer, max_steps=3)
    wrapper = ReasoningLM(lm, None, [MARRIED, WORKS], run, "deepedit")
    prompt = f"Q: Who wrote Hamlet? A: Shakespeare\nQ: {QUESTION} A:"
    assert wrapper.generate([prompt], 8) == [" Apple"]
    assert wrapper.traces[prompt]["question"] == QUESTION
    wrapper.score_targets([prompt], [" Apple"])
    assert (
        lm.scored[-1] == f"Question: {QUESTION}\nThoughts: Ivanka Trump works for Apple.\nAnswer:"
    )


def test_session_memory_grows_and_rollback_restores_it(tokenizer, env):
    model = tiny_model("gpt2")
    before = snapshot(model)
    session = EditSession(model, tokenizer, env)
    session.edit(MARRIED, "deepedit", tiny_config("deepedit"))
    session.edit(WORKS, "deepedit", tiny_config("deepedit"))
    assert session.model.facts == [MARRIED, WORKS]
    assert session.model.generate(["Who?"], 2)[0] is not None
    assert session.model.traces["Who?"]["method"] == "deepedit"
    session.rollback(1)
    assert session.model.facts == [MARRIED]
    session.rollback(1)
    assert_same_state(model, before)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("top_k", 0, "top_k"), ("max_expansions", 0, "max_expansions"), ("shots", -2, "shots")],
)
def test_invalid_settings_say_what_to_fix(field, value, message):
    with pytest.raises(ValueError, match=message):
        DeepEditConfig(**{field: value})
