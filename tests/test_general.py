"""General ability: perplexity and downstream tasks scored through the LanguageModel protocol."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from kedit.eval.formulas.classification import confusion_matrix, mcc, weighted_f1
from kedit.eval.general import GENERAL_TASKS, general_ability
from kedit.eval.general.downstream import choice_logprobs, choice_metrics, single_token_choices
from kedit.eval.general.perplexity import (
    perplexity,
    split_first_word,
    truncate,
    wikitext_paragraphs,
)
from kedit.eval.general.task import POOL, select_indices
from kedit.model.lm import HFLanguageModel, TargetScore
from tests.conftest import data_dir, tiny_model


class FakeLM:
    """Hand-set token log-probs, looked up by ``(prompt, target)`` and then by ``target``."""

    def __init__(self, tokenizer, table: dict) -> None:
        self.tokenizer = tokenizer
        self.table = table
        self.calls: list[int] = []

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        self.calls.append(len(prompts))
        out = []
        for p, t in zip(prompts, targets, strict=True):
            lps = self.table.get((p, t), self.table.get(t))
            assert lps is not None, f"no log-probs set for {(p, t)!r}"
            ids = tuple(range(len(lps)))
            out.append(TargetScore(ids, tuple(lps), ids))
        return out

    def generate(self, prompts: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[str]:
        raise NotImplementedError

    def next_token_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError


def real_data() -> Path:
    return data_dir()  # the shared benchmark data are required, as for every real-data test


# -- perplexity ----------------------------------------------------------------------------------


def test_perplexity_formula_on_fake_lm(tokenizer):
    lm = FakeLM(
        tokenizer,
        {" beta gamma": [-1.0, -2.0, -3.0], " two": [-0.5], " y": [-4.0, -4.0]},
    )
    texts = ["alpha beta gamma", "one two", "solo", "x y"]
    result = perplexity(lm, texts, max_tokens=64, batch_size=2)
    per_text = [math.exp(6 / 3), math.exp(0.5), math.exp(8 / 2)]
    assert result["mean"] == pytest.approx(sum(per_text) / 3)
    assert result["score"] == result["corpus"]  # the headline is the corpus perplexity
    assert result["median"] == pytest.approx(math.exp(2.0))
    assert result["corpus"] == pytest.approx(math.exp(14.5 / 6))
    assert (result["n"], result["n_tokens"]) == (3, 6)  # the one-word text is skipped
    assert lm.calls == [2, 1]  # batch_size texts per score_targets call


def test_split_and_truncate(tokenizer):
    assert split_first_word(" The quick fox ") == ("The", " quick fox")
    assert split_first_word("alone") is None
    text = "The quick brown fox jumps over the lazy dog."
    cut = truncate(tokenizer, text, 3)
    assert text.startswith(cut)
    assert (
        tokenizer(cut, add_special_tokens=False)["input_ids"]
        == tokenizer(text, add_special_tokens=False)["input_ids"][:3]
    )
    assert truncate(tokenizer, text, 1000) == text


def test_perplexity_equals_direct_cross_entropy_without_bos(tokenizer):
    model = tiny_model("gpt2")
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer(text)["input_ids"]
    assert ids[0] != tokenizer.bos_token_id and len(tokenizer("The")["input_ids"]) == 1
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]  # (n, vocab)
    ce = F.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]))  # tokens 2..n given token 1
    result = perplexity(HFLanguageModel(model, tokenizer), [text])
    assert result["n_tokens"] == len(ids) - 1
    assert result["mean"] == pytest.approx(math.exp(ce.item()), rel=1e-4)


def test_perplexity_keeps_the_tokenizers_bos(bos_tokenizer):
    model = tiny_model("llama")
    text = "The quick brown fox jumps over the lazy dog."
    ids = bos_tokenizer(text)["input_ids"]
    assert ids[0] == bos_tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    ce = F.cross_entropy(logits[1:-1].float(), torch.tensor(ids[2:]))  # given <s> The
    result = perplexity(HFLanguageModel(model, bos_tokenizer), [text])
    assert result["mean"] == pytest.approx(math.exp(ce.item()), rel=1e-4)


def test_wikitext_selection_and_perplexity_on_real_data(tokenizer):
    root = real_data()
    paragraphs = wikitext_paragraphs(root / "wikitext-2" / "test.txt", 3)
    assert len(paragraphs) == 3
    assert paragraphs[0].startswith("Robert <unk> is an English film")
    assert not any(p.startswith("=") for p in paragraphs)
    lm = HFLanguageModel(tiny_model("gpt2"), tokenizer)
    result = general_ability(lm, ["wikitext"], root, limit=2, batch_size=2)["wikitext"]
    assert result["n"] == 2 and result["n_tokens"] <= 2 * 255
    assert 1 < result["score"] < math.inf and result["metric"] == "perplexity"
    assert "test.txt" in result["protocol"]
    # the protocol names the headline it gives: the token-weighted corpus perplexity, not the
    # mean of per-paragraph perplexities (that is the "mean" field)
    assert result["score"] == result["corpus"] != result["mean"]
    assert "token-weighted" in result["protocol"] and "'mean' field" in result["protocol"]


# -- downstream ---------------------------------------------------------------------------------


def test_metrics_on_a_hand_worked_confusion_matrix():
    # TP=3 FN=1 FP=2 TN=4
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    m = confusion_matrix(labels, preds, 2)
    assert m.tolist() == [[4, 2], [1, 3]]
    result = choice_metrics(labels, preds, 2, "mcc")
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["f1"] == pytest.approx(2 / 3)  # 2TP / (2TP + FP + FN) = 6 / 9
    assert result["mcc"] == pytest.approx(10 / math.sqrt(600))  # (3*4 - 2*1) / sqrt(5*4*6*5)
    assert result["score"] == result["mcc"] and result["n"] == 10
    assert weighted_f1(m) == pytest.approx((4 * 2 / 3 + 6 * 8 / 11) / 10)
    assert mcc([[5, 0], [5, 0]]) == 0.0  # a constant prediction


RECORDS = {
    "sst2": {"sentence": "a fine film . ", "label": 1},
    "mrpc": {"sentence1": "He left .", "sentence2": "He went away .", "label": 1},
    "cola": {"sentence": "Him left.", "label": 0},
    "rte": {"sentence1": "Cats purr.", "sentence2": "Cats make sounds.", "label": 0},
    "nli": {"sentence1": "Cats purr.", "sentence2": "Cats bark.", "label": "not_entailment"},
    "mmlu": {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
    "dialogue": {"article": "m : hi .", "options": ["a", "b", "c", "d"], "answers": "C"},
    "sentiment_analysis": {"sentence": "dull . ", "label": "0"},
}
PROMPTS = {
    "sst2": "Review :a fine film . \nSentiment :",
    "mrpc": "Are the sentences paraphrases of each other.\nSentence 1: He left .\n"
    "Sentence 2: He went away .\nAnswer:",
    "cola": "Is this sentence linguistically acceptable?\nSentence: Him left.\nAnswer: ",
    "rte": "Cats purr.\nquestion: Cats make sounds. True or False?\nanswer:",
    "nli": "Cats purr. entails the Cats bark. True or False? Answer:",
    "mmlu": "Question: 2+2?\n(A) 3\n(B) 4\n(C) 5\n(D) 6\nAnswer:",
    "dialogue": "Q: Given the following: m : hi .\nWhich choice is correct?\n"
    "(A)a\n(B)b\n(C)c\n(D)d\nAnswer:",
    "sentiment_analysis": "For each snippet of text,label the sentiment of the text as positive "
    "or negative.The answer should be exact 'positive' or 'negative'. text: dull .  answer:",
}
LABELS = {
    "sst2": "positive",
    "mrpc": "Yes",
    "cola": "No",
    "rte": "True",
    "nli": "False",
    "mmlu": "B",
    "dialogue": "C",
    "sentiment_analysis": "negative",
}


def test_rte_label_words_follow_glue():
    """GLUE's RTE: label 0 is entailment ("True"), 1 not_entailment ("False"), as two records of
    the shared subset show."""
    rte = GENERAL_TASKS["rte"]
    records = {r["idx"]: r for r in rte.load(data_dir())}
    exile = records[91]  # "The Dalai Lama has been living in exile since 10,000." is not entailed
    assert exile["label"] == 1 and rte.choices[rte.label(exile)] == "False"
    member = records[171]  # "P. Prayong is a member of Theravada." is entailed
    assert member["label"] == 0 and rte.choices[rte.label(member)] == "True"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_prompt_and_label_of_one_record(name):
    task = GENERAL_TASKS[name]
    record = RECORDS[name]
    assert task.prompt(record) == PROMPTS[name]
    assert task.choices[task.label(record)] == LABELS[name]


def test_demonstrations_follow_the_reference():
    assert GENERAL_TASKS["sst2"].demonstration(RECORDS["sst2"]) == (
        "Review : a fine film . \nSentiment : positive\n"
    )
    assert GENERAL_TASKS["cola"].demonstration(RECORDS["cola"]) == (
        "Is this sentence linguistically acceptable?\nSentence: Him left.\nAnswer: No\n"
    )
    assert GENERAL_TASKS["mmlu"].demonstration(RECORDS["mmlu"]) == PROMPTS["mmlu"] + " B\n"
    assert GENERAL_TASKS["dialogue"].demonstration(RECORDS["dialogue"]).endswith("Answer: C\n\n")


def write_sst2(root: Path, records: list[dict]) -> Path:
    (root / "downstream").mkdir(parents=True)
    (root / "downstream" / "sst2.json").write_text(json.dumps(records))
    return root


def test_downstream_picks_the_more_likely_label_word(tmp_path, tokenizer):
    pool = [{"sentence": f"demo {i}", "label": i % 2} for i in range(POOL)]
    tests = [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}]
    root = write_sst2(tmp_path, pool + tests)
    good, bad = (f"Review :{s}\nSentiment :" for s in ("good", "bad"))
    lm = FakeLM(
        tokenizer,
        {
            # length-normalised: mean -2.0 beats -2.5 although the sum is lower
            (good, " positive"): [-1.0, -3.0],
            (good, " negative"): [-2.5],
            (bad, " positive"): [-0.1],
            (bad, " negative"): [-0.2],
        },
    )
    result = general_ability(lm, ["sst2"], root, limit=None, batch_size=1)["sst2"]
    assert result["accuracy"] == 0.5 and result["n"] == 2
    assert result["predicted"] == {"negative": 0, "positive": 2}
    assert lm.calls == [2, 2]  # one call per example, both label words in it
    assert "0-shot" in result["protocol"] and "all 2" in result["protocol"]


def test_shots_prefix_the_first_demonstrations(tmp_path, tokenizer):
    pool = [{"sentence": f"demo {i}", "label": i % 2} for i in range(POOL)]
    root = write_sst2(tmp_path, [*pool, {"sentence": "good", "label": 1}])
    prompt = (
        "Review : demo 0\nSentiment : negative\nReview : demo 1\nSentiment : positive\n"
        "Review :good\nSentiment :"
    )
    lm = FakeLM(tokenizer, {(prompt, " positive"): [-1.0], (prompt, " negative"): [-2.0]})
    result = general_ability(lm, ["sst2"], root, shots=2)["sst2"]
    assert result["accuracy"] == 1.0 and result["shots"] == 2


def one_by_one(lm: HFLanguageModel, prompt: str, choices: Sequence[str]) -> list[float]:
    return [lm.score_targets([prompt], [" " + c])[0].mean_logprob for c in choices]


def test_batched_choices_match_one_by_one(tokenizer):
    lm = HFLanguageModel(tiny_model("gpt2"), tokenizer)
    rte, mmlu = GENERAL_TASKS["rte"], GENERAL_TASKS["mmlu"]
    prompts = [
        rte.prompt(RECORDS["rte"]),
        rte.prompt({**RECORDS["rte"], "sentence1": "The quick brown fox jumps over the dog."}),
        rte.prompt({**RECORDS["rte"], "sentence2": "Rome Paris London"}),
    ]
    batched = choice_logprobs(lm, prompts, rte.choices, batch_size=3)
    single = [
        [lm.score_targets([p], [" " + c])[0].mean_logprob for c in rte.choices] for p in prompts
    ]
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-5)
    mc = [mmlu.prompt(RECORDS["mmlu"]), mmlu.prompt({**RECORDS["mmlu"], "question": "Why?"})]
    batched = choice_logprobs(lm, mc, mmlu.choices, batch_size=2)
    single = [[lm.score_targets([p], [" " + c])[0].mean_logprob for c in mmlu.choices] for p in mc]
    assert [max(range(4), key=r.__getitem__) for r in batched] == [
        max(range(4), key=r.__getitem__) for r in single
    ]
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-5)


def test_downstream_tasks_on_real_data(tokenizer):
    root = real_data()
    lm = HFLanguageModel(tiny_model("gpt2"), tokenizer)
    names = ["sst2", "mrpc", "cola", "rte", "nli", "mmlu"]
    results = general_ability(lm, names, root, limit=2, seed=0, batch_size=4)
    assert list(results) == names
    for name, result in results.items():
        assert result["n"] == 2 and 0.0 <= result["accuracy"] <= 1.0
        assert result["metric"] == {"cola": "mcc", "mrpc": "f1"}.get(name, "accuracy")
        assert "0-shot" in result["protocol"] and "seed 0" in result["protocol"]


def test_selection_is_deterministic():
    assert select_indices(5, None, 0) == [0, 1, 2, 3, 4]
    assert select_indices(100, 3, None) == [0, 1, 2]
    sample = select_indices(100, 5, 0)
    assert sample == select_indices(100, 5, 0) == sorted(sample) and len(set(sample)) == 5
    assert sample != select_indices(100, 5, 1)
    with pytest.raises(ValueError, match="limit"):
        select_indices(10, 0, 0)


def test_unknown_task_names_the_known_ones(tokenizer):
    with pytest.raises(KeyError, match=r"Did you mean sst2.*Known general tasks: .*mmlu"):
        general_ability(FakeLM(tokenizer, {}), ["sst3"], None)
    assert {"wikitext", "sst2", "mrpc", "cola", "rte", "nli", "mmlu"} <= set(GENERAL_TASKS)


def test_missing_data_says_how_to_point_at_it(tmp_path, tokenizer, monkeypatch):
    lm = FakeLM(tokenizer, {})
    with pytest.raises(FileNotFoundError, match=r"mrpc\.json.*KEDIT_DATA_DIR"):
        general_ability(lm, ["mrpc"], tmp_path)
    monkeypatch.delenv("KEDIT_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        general_ability(lm, ["wikitext"], None)


def test_single_token_labels_take_one_next_token_pass(tokenizer):
    lm = HFLanguageModel(tiny_model("llama"), tokenizer)
    prompt = GENERAL_TASKS["rte"].prompt(RECORDS["rte"])
    single = ("Rome", "Paris")  # one token each in the test tokenizer (" False" is four)
    ids = single_token_choices(lm, [prompt], single)
    assert ids is not None and ids.shape == (1, 2)
    assert single_token_choices(lm, [prompt], ("False", "True")) is None
    for choices in (single, ("False", "True")):
        fast = choice_logprobs(lm, [prompt, prompt + " Maybe."], choices)
        slow = [one_by_one(lm, p, choices) for p in (prompt, prompt + " Maybe.")]
        assert torch.allclose(torch.tensor(fast), torch.tensor(slow), atol=1e-5)
