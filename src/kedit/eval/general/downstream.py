"""Downstream tasks as general-ability tasks (SST-2, MRPC, CoLA, RTE, NLI, MMLU, ...), scored by
the likelihood of their label words (AlphaEdit, Fang et al. ICLR 2025, ``glue_eval/``; Gu et
al. 2024, "Model Editing Harms General Abilities of Large Language Models").

They follow AlphaEdit's ``glue_eval/<task>_eval.py``: the same data subsets
(``<data_dir>/downstream/<task>.json``), prompts and label words; the first 10 records are the
few-shot pool and are never tested (``FEW_SHOT_TEST_SPLIT``); AlphaEdit runs zero-shot on the
next 100 (``number_of_tests=100``, here ``limit=100, seed=None``). Each label word ``w`` is scored
as the text ``prompt + " " + w`` (the reference's ``f"{input_prompt} {suffix}"``), by its mean
token log-probability (the reference divides the summed NLL by the label's token count); the
prediction is the best label word. Deliberate differences: no greedy generation (the reference's
generation-parsed ``f1``/``mcc`` are not computed; our predictions are its likelihood-based
``highest_probability_answer``); an exact tie goes to the first label word (the reference calls a
four-way tie invalid); demonstrations are not dropped to fit the context (too long an input
raises). The default selection is the reference's first ``limit`` after the pool; a ``seed``
draws a seeded sample instead. Reported: accuracy, weighted F1 (sklearn ``average="weighted"``,
the reference's ``f1_new``), MCC and, for binary tasks, the positive-class F1; the headline
``score`` is GLUE's metric (MCC for CoLA, F1 for MRPC, accuracy otherwise).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kedit.eval.formulas.classification import (
    METRICS,
    accuracy,
    class_f1,
    confusion_matrix,
    mcc,
    weighted_f1,
)
from kedit.eval.formulas.uncertainty import Statistic
from kedit.eval.general.task import (
    GENERAL_TASKS,
    POOL,
    Record,
    Result,
    chunks,
    data_file,
    select_indices,
)
from kedit.model.lm import HFLanguageModel, LanguageModel
from kedit.model.tokens import encode, encode_prompt_target


def _field(name: str) -> Callable[[Record], int]:
    return lambda r: int(r[name])


def _index_in(name: str, values: Sequence[str]) -> Callable[[Record], int]:
    return lambda r: list(values).index(r[name])


def template_fields(template: str) -> set[str]:
    """Top-level record fields a ``str.format`` template reads (``{choices[0]}`` -> choices)."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    return {n.split("[")[0].split(".")[0] for n in names}


@dataclass(frozen=True)
class ChoiceTask:
    """A downstream task scored by comparing the likelihood of its label words.

    Args:
        name: registry name, also the file ``<data_dir>/downstream/<name>.json``.
        query: ``str.format`` template over a record's fields, ending where the label goes.
        choices: the label word of each class, in class-id order.
        label: the class id of a record.
        metric: the headline metric: ``accuracy``, ``f1`` (positive class) or ``mcc``.
        demo: template of a solved demonstration, with ``{label_word}`` (default: the query, a
            space, the answer and a newline).
        reference: the file whose prompt this follows.
    """

    name: str
    query: str
    choices: tuple[str, ...]
    label: Callable[[Record], int]
    metric: str = "accuracy"
    demo: str | None = None
    reference: str = ""
    description: str = ""
    unit: str = "examples"

    @property
    def relpath(self) -> str:
        return f"downstream/{self.name}.json"

    def prompt(self, record: Record) -> str:
        return self.query.format(**record)

    def demonstration(self, record: Record) -> str:
        template = self.demo if self.demo is not None else self.query + " {label_word}\n"
        return template.format(**{**record, "label_word": self.choices[self.label(record)]})

    def load(self, data_dir: str | Path | None) -> list[Record]:
        """All records of the task's file, checked for the fields the prompt reads."""
        path = data_file(data_dir, self.relpath)
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list) or len(records) <= POOL:
            raise ValueError(f"{path}: expected a JSON list of more than {POOL} records")
        needed = template_fields(self.query)
        for i, record in enumerate(records):
            missing = needed - set(record)
            if missing:
                raise ValueError(f"{path}: record {i} lacks {', '.join(sorted(missing))}")
        return records

    def protocol(self, shots: int, n: int, n_pool: int, seed: int | None) -> str:
        chosen = (
            f"all {n}"
            if n == n_pool
            else (f"the first {n}" if seed is None else f"{n} sampled with seed {seed}")
        )
        words = "/".join(self.choices)
        return (
            f"{self.name}: {shots}-shot, AlphaEdit glue_eval prompt; prediction = label word "
            f"({words}) with the highest mean token log-prob after the prompt; test records "
            f"after the first {POOL}, {chosen}; headline {self.metric}"
        )

    def evaluate(
        self,
        lm: LanguageModel,
        data_dir: str | Path | None,
        *,
        limit: int | None = 100,
        seed: int | None = None,
        batch_size: int = 32,
        shots: int = 0,
    ) -> Result:
        if not 0 <= shots <= POOL:
            raise ValueError(f"shots must be between 0 and {POOL}, got {shots}")
        records = self.load(data_dir)
        demos, pool = records[:POOL], records[POOL:]
        tests = [pool[i] for i in select_indices(len(pool), limit, seed)]
        context = "".join(self.demonstration(r) for r in demos[:shots])
        prompts = [context + self.prompt(r) for r in tests]
        labels = [self.label(r) for r in tests]
        scores = choice_logprobs(lm, prompts, self.choices, batch_size)  # (n, k)
        preds = [max(range(len(row)), key=row.__getitem__) for row in scores]
        result = choice_metrics(labels, preds, len(self.choices), self.metric)
        predicted = Counter(self.choices[p] for p in preds)
        return {
            **result,
            "shots": shots,
            "predicted": {w: predicted.get(w, 0) for w in self.choices},
            "chance": self.chance({"labels": labels}),
            "protocol": self.protocol(shots, len(tests), len(pool), seed),
            "samples": {"labels": labels, "preds": preds},
        }

    def statistic(self, samples: dict[str, list]) -> tuple[int, Statistic]:
        """The headline metric of a resample of the (label, prediction) pairs."""
        labels, preds, k = samples["labels"], samples["preds"], len(self.choices)
        metric = METRICS[self.metric]
        return len(labels), lambda rows: np.asarray(
            metric(confusion_matrix(labels, preds, k, rows))
        )

    def same_examples(self, a: dict[str, list], b: dict[str, list]) -> bool:
        return a["labels"] == b["labels"]

    def chance(self, samples: dict[str, list]) -> float:
        """The best headline score of a constant answer on these examples (the majority class's
        accuracy; 0 for MCC): what a model that ignores the input reaches."""
        labels, k = samples["labels"], len(self.choices)
        metric = METRICS[self.metric]
        return max(float(metric(confusion_matrix(labels, [c] * len(labels), k))) for c in range(k))


def choice_logprobs(
    lm: LanguageModel, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 32
) -> list[list[float]]:
    """Mean token log-prob of each ``" " + choice`` after each prompt, ``(n_prompts, k)``;
    ``batch_size`` prompts (times ``k`` choices) per ``score_targets`` call. When every choice
    is one token after the prompt (most label words), one next-token pass per prompt gives the
    same numbers ``k`` times cheaper."""
    k = len(choices)
    rows: list[list[float]] = []
    for chunk in chunks(len(prompts), batch_size):
        chunk_prompts = [prompts[i] for i in chunk]
        token_ids = single_token_choices(lm, chunk_prompts, choices)  # (len(chunk), k) or None
        if token_ids is not None:
            logprobs = lm.next_token_logprobs(chunk_prompts)  # (len(chunk), vocab)
            rows += logprobs.gather(1, token_ids).tolist()
            continue
        flat_prompts = [p for p in chunk_prompts for _ in range(k)]
        flat_targets = [" " + c for _ in chunk for c in choices]
        scores = lm.score_targets(flat_prompts, flat_targets)  # (len(chunk) * k)
        rows += [[s.mean_logprob for s in scores[j : j + k]] for j in range(0, len(scores), k)]
    return rows


def single_token_choices(
    lm: LanguageModel, prompts: Sequence[str], choices: Sequence[str]
) -> torch.Tensor | None:
    """The token id of each ``" " + choice`` after each prompt, ``(n, k)``, when each is a
    single token and the prompt tokenises the same on its own; else None. Only for a plain
    model: a wrapper (IKE) may change the prompt before scoring it."""
    if not isinstance(lm, HFLanguageModel):
        return None
    ids = []
    for prompt in prompts:
        alone = encode(lm.tokenizer, prompt).ids
        row = []
        for choice in choices:
            joint = encode_prompt_target(lm.tokenizer, prompt, " " + choice)
            if joint.ids[: joint.n_prompt] != alone or len(joint.target_ids) != 1:
                return None
            row.append(joint.target_ids[0])
        ids.append(row)
    return torch.tensor(ids)


def choice_metrics(labels: Sequence[int], preds: Sequence[int], k: int, headline: str) -> Result:
    """Accuracy, weighted F1, MCC (and positive-class F1 when ``k == 2``) of predictions."""
    m = confusion_matrix(labels, preds, k)
    result: Result = {"accuracy": accuracy(m), "f1_weighted": weighted_f1(m), "mcc": mcc(m)}
    if k == 2:
        result["f1"] = class_f1(m, 1)
    if headline not in result:
        raise ValueError(f"headline metric {headline!r} is not one of {', '.join(result)}")
    return {
        "score": result[headline],
        "metric": headline,
        **result,
        "n": len(labels),
        "higher_is_better": True,
    }


_GLUE = "jianghoucheng/AlphaEdit glue_eval/"
_MC = "(A) {choices[0]}\n(B) {choices[1]}\n(C) {choices[2]}\n(D) {choices[3]}\n"
_DIALOGUE = "(A){options[0]}\n(B){options[1]}\n(C){options[2]}\n(D){options[3]}\n"
_SENTIMENT = (
    "For each snippet of text,label the sentiment of the text as positive or negative.The "
    "answer should be exact 'positive' or 'negative'. text: {sentence} answer:"
)
_TASKS: list[ChoiceTask] = [
    ChoiceTask(
        "sst2",
        # the reference glues the sentence to "Review :" in the query but not in demonstrations
        "Review :{sentence}\nSentiment :",
        ("negative", "positive"),
        _field("label"),
        demo="Review : {sentence}\nSentiment : {label_word}\n",
        reference=_GLUE + "sst_eval.py",
        description="SST-2 sentiment (GLUE)",
    ),
    ChoiceTask(
        "mrpc",
        "Are the sentences paraphrases of each other.\nSentence 1: {sentence1}\n"
        "Sentence 2: {sentence2}\nAnswer:",
        ("No", "Yes"),
        _field("label"),
        metric="f1",
        reference=_GLUE + "mrpc_eval.py",
        description="MRPC paraphrase (GLUE)",
    ),
    ChoiceTask(
        "cola",
        # the reference's query ends in "Answer: ", so the label follows two spaces
        "Is this sentence linguistically acceptable?\nSentence: {sentence}\nAnswer: ",
        ("No", "Yes"),
        _field("label"),
        metric="mcc",
        demo="Is this sentence linguistically acceptable?\nSentence: {sentence}\n"
        "Answer: {label_word}\n",
        reference=_GLUE + "cola_eval.py",
        description="CoLA acceptability (GLUE)",
    ),
    ChoiceTask(
        "rte",
        "{sentence1}\nquestion: {sentence2} True or False?\nanswer:",
        # GLUE's RTE labels 0 entailment, 1 not_entailment; the reference's rte_eval.py reads
        # label 1 as "True", inverting every answer (its own bug, not copied)
        ("True", "False"),
        _field("label"),
        reference=_GLUE + "rte_eval.py",
        description="RTE entailment (GLUE)",
    ),
    ChoiceTask(
        "nli",
        "{sentence1} entails the {sentence2} True or False? Answer:",
        ("False", "True"),
        lambda r: int(r["label"] == "entailment"),
        reference=_GLUE + "nli_eval.py",
        description="entailment / not_entailment",
    ),
    ChoiceTask(
        "mmlu",
        "Question: {question}\n" + _MC + "Answer:",
        ("A", "B", "C", "D"),
        _field("answer"),
        reference=_GLUE + "mmlu_eval.py",
        description="MMLU multiple choice (4 options)",
    ),
    ChoiceTask(
        "dialogue",
        "Q: Given the following: {article}\nWhich choice is correct?\n" + _DIALOGUE + "Answer:",
        ("A", "B", "C", "D"),
        _index_in("answers", "ABCD"),
        demo="Q: Given the following: {article}\nWhich choice is correct?\n"
        + _DIALOGUE
        + "Answer: {label_word}\n\n",
        reference=_GLUE + "dialogue_eval.py",
        description="MuTual-style dialogue continuation (4 options)",
    ),
    ChoiceTask(
        "sentiment_analysis",
        _SENTIMENT,
        ("negative", "positive"),
        _field("label"),
        reference=_GLUE + "sentiment_analysis_eval.py",
        description="SST-style sentiment, instruction prompt",
    ),
]
for _task in _TASKS:
    GENERAL_TASKS.register(_task.name, _task, _task.description)
