"""General ability of a (possibly edited) model: WikiText-2 perplexity and downstream tasks.

Usage::

    lm = as_language_model(model, tok)  # or ``edit.lm``, or IKE's in-context wrapper
    general_ability(lm, ["wikitext", "sst2", "mmlu"], data_dir, limit=100)
    # {"wikitext": {"score": 41.2, "metric": "perplexity", "median": ..., "corpus": ..., ...},
    #  "sst2": {"score": 0.61, "metric": "accuracy", "f1_weighted": ..., "mcc": ..., ...}, ...}

Run before editing and after N sequential edits, this is the "general ability" check of the
editing literature: perplexity as a collapse detector (Yang et al. 2024, "The Butterfly Effect of
Model Editing"; ME-PPL / EasyEdit ``compute_ppl``) and downstream tasks scored by the likelihood
of their label words (AlphaEdit, Fang et al. ICLR 2025, ``glue_eval/``; Gu et al. 2024, "Model
Editing Harms General Abilities of Large Language Models").

Everything goes through :meth:`LanguageModel.score_targets`, so a plain model, a weight-edited
model and an in-context editor are measured by the same code, in batched forward passes.

**Perplexity** (``wikitext``). Texts are the first ``limit`` paragraphs of WikiText-2's
``test.txt``: lines that, stripped, are non-empty, are not headings (``= Title =``) and hold at
least two words, in file order (``seed`` is not used). Each is cut to ``max_tokens`` tokens of the
model's tokenizer (at the character end of the last token kept). A text's perplexity is
``exp(sum NLL / n)`` over its scored tokens; the headline score is the token-weighted corpus
perplexity, with the mean over texts (ME-PPL's ``mean_perplexity``, which a few short WikiText
lines swamp: SmolLM2-135M's mean is 6106 where its median is 46) and the median beside it.
``score_targets`` needs a prompt, so the text is split at its first whitespace: the first word
is the context and every later token is scored. Deliberate differences from ME-PPL
(``add_start_token=False``, tokens 2..n given token 1): when the first word is several tokens,
its later tokens are not scored; and a tokenizer that prepends BOS (Llama, Gemma) keeps it, as
everywhere in kedit. For GPT-2-style tokenizers and one-token first words (``The``, ``In``, ...)
the two agree exactly.

**Downstream tasks** follow AlphaEdit's ``glue_eval/<task>_eval.py``: the same data subsets
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
import logging
import math
import random
import statistics
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from kedit.env import default_data_dir
from kedit.model.lm import HFLanguageModel, LanguageModel
from kedit.model.tokens import encode, encode_prompt_target
from kedit.registry import Registry

logger = logging.getLogger(__name__)

Record = dict[str, Any]
Result = dict[str, Any]

#: AlphaEdit's ``FEW_SHOT_TEST_SPLIT``: the first records of each file are demonstrations only
POOL = 10
DATA_HINT = "pass --data-dir DIR or set KEDIT_DATA_DIR to the folder that holds {}/"


def data_file(data_dir: str | Path | None, relpath: str) -> Path:
    """The file ``<data_dir>/<relpath>`` (``data_dir`` defaults to ``KEDIT_DATA_DIR``), with an
    error that says how to point at it."""
    folder = relpath.split("/")[0]
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if root is None:
        raise FileNotFoundError(f"no data directory for {relpath}; {DATA_HINT.format(folder)}")
    path = root / relpath
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; {DATA_HINT.format(folder)}")
    return path


def select_indices(n: int, limit: int | None, seed: int | None) -> list[int]:
    """Which of ``n`` records to test, in file order: all of them when ``limit`` is None or at
    least ``n``; else the first ``limit`` (``seed=None``, AlphaEdit's rule) or a sample of
    ``limit`` drawn with ``random.Random(seed)``."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    if seed is None:
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(n), limit))


def _chunks(n: int, size: int) -> list[range]:
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


# -- metrics (pure) ------------------------------------------------------------------------------


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], k: int) -> list[list[int]]:
    """``m[true][pred]`` counts over ``k`` classes."""
    m = [[0] * k for _ in range(k)]
    for t, p in zip(labels, preds, strict=True):
        m[t][p] += 1
    return m


def accuracy(m: list[list[int]]) -> float:
    total = sum(map(sum, m))
    return sum(m[i][i] for i in range(len(m))) / total if total else 0.0


def class_f1(m: list[list[int]], c: int) -> float:
    """F1 of class ``c``: 2TP / (2TP + FP + FN), 0 when the class never occurs."""
    tp = m[c][c]
    fp = sum(m[t][c] for t in range(len(m))) - tp
    fn = sum(m[c]) - tp
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def weighted_f1(m: list[list[int]]) -> float:
    """Per-class F1 averaged with the true-class supports as weights (sklearn's
    ``average="weighted"``, what AlphaEdit reports)."""
    total = sum(map(sum, m))
    return sum(sum(m[c]) * class_f1(m, c) for c in range(len(m))) / total if total else 0.0


def mcc(m: list[list[int]]) -> float:
    """Matthews correlation (Gorodkin's multi-class form; the usual one for two classes), 0 when
    a marginal is constant, as in sklearn."""
    k = len(m)
    s = sum(map(sum, m))
    c = sum(m[i][i] for i in range(k))
    t = [sum(m[i]) for i in range(k)]  # true counts
    p = [sum(m[i][j] for i in range(k)) for j in range(k)]  # predicted counts
    denom = math.sqrt((s * s - sum(x * x for x in p)) * (s * s - sum(x * x for x in t)))
    return (c * s - sum(a * b for a, b in zip(t, p))) / denom if denom else 0.0


# -- perplexity ----------------------------------------------------------------------------------


def wikitext_paragraphs(path: Path, limit: int | None) -> list[str]:
    """The first ``limit`` paragraphs of a WikiText file: stripped lines that are non-empty, not
    headings (``= Title =``, ``= = Section = =``) and hold at least two words."""
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = line.strip()
            if text and not text.startswith("=") and len(text.split()) >= 2:
                texts.append(text)
                if limit is not None and len(texts) >= limit:
                    break
    return texts


def truncate(tok: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """``text`` cut after its ``max_tokens``-th token (no special tokens counted)."""
    if tok.is_fast:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= max_tokens:
            return text
        return text[: enc["offset_mapping"][max_tokens - 1][1]]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tok.decode(ids[:max_tokens])


def split_first_word(text: str) -> tuple[str, str] | None:
    """``(first word, rest)`` with the rest keeping its leading whitespace, so that
    ``score_targets`` joins them back into ``text`` exactly; None for a single word."""
    stripped = text.strip()
    cut = next((i for i, ch in enumerate(stripped) if ch.isspace()), None)
    if cut is None or not stripped[cut:].strip():
        return None
    return stripped[:cut], stripped[cut:]


def text_nlls(
    lm: LanguageModel, texts: Sequence[str], *, max_tokens: int = 256, batch_size: int = 32
) -> list[tuple[float, int] | None]:
    """``(sum NLL, n scored tokens)`` per text (None for a text of one word), scoring every
    token after the first word given it, ``batch_size`` texts per ``score_targets`` call."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    splits = {
        i: s
        for i, t in enumerate(texts)
        if (s := split_first_word(truncate(lm.tokenizer, t, max_tokens))) is not None
    }
    kept = list(splits)
    out: list[tuple[float, int] | None] = [None] * len(texts)
    for chunk in _chunks(len(kept), batch_size):
        idx = [kept[j] for j in chunk]
        scores = lm.score_targets([splits[i][0] for i in idx], [splits[i][1] for i in idx])
        for i, score in zip(idx, scores):
            out[i] = (-sum(score.logprobs), len(score.logprobs))
    return out


def perplexity(
    lm: LanguageModel, texts: Sequence[str], *, max_tokens: int = 256, batch_size: int = 32
) -> Result:
    """The token-weighted corpus perplexity ``exp(sum NLL / sum n)`` (the headline ``score``),
    the mean per-text perplexity (ME-PPL's ``mean_perplexity``), its median, and the counts."""
    nlls = [x for x in text_nlls(lm, texts, max_tokens=max_tokens, batch_size=batch_size) if x]
    if not nlls:
        raise ValueError("no text of at least two words to measure perplexity on")
    if len(nlls) < len(texts):
        logger.warning("perplexity: skipped %d one-word texts", len(texts) - len(nlls))
    per_text = [math.exp(nll / n) for nll, n in nlls]
    n_tokens = sum(n for _, n in nlls)
    corpus = math.exp(sum(nll for nll, _ in nlls) / n_tokens)
    return {
        # the mean over texts is ME-PPL's figure, but a few short WikiText lines (table
        # fragments) reach perplexities in the 1e5s and swamp it: the headline is the
        # token-weighted corpus perplexity, as WikiText perplexity is usually reported
        "score": corpus,
        "metric": "perplexity",
        "mean": statistics.fmean(per_text),
        "median": statistics.median(per_text),
        "corpus": corpus,
        "n": len(nlls),
        "n_tokens": n_tokens,
        "higher_is_better": False,
    }


# -- tasks ---------------------------------------------------------------------------------------


class GeneralTask(Protocol):
    """A registered measure of general ability."""

    name: str
    description: str
    metric: str  # the headline measure

    def evaluate(
        self,
        lm: LanguageModel,
        data_dir: str | Path | None,
        *,
        limit: int | None,
        seed: int | None,
        batch_size: int,
        shots: int,
    ) -> Result: ...


@dataclass(frozen=True)
class PerplexityTask:
    """Perplexity on the first paragraphs of a plain-text corpus in the data directory."""

    name: str
    relpath: str  # under the data directory
    max_tokens: int = 256
    description: str = ""
    metric: str = "perplexity"

    def protocol(self, n: int) -> str:
        return (
            f"{self.name} perplexity: mean over the first {n} paragraphs of {self.relpath} "
            f"(non-heading, >= 2 words, cut to {self.max_tokens} tokens) of exp(mean NLL of "
            "the tokens after the first word, given it); ME-PPL / Yang et al. 2024"
        )

    def evaluate(
        self,
        lm: LanguageModel,
        data_dir: str | Path | None,
        *,
        limit: int | None,
        seed: int | None = None,
        batch_size: int = 32,
        shots: int = 0,
    ) -> Result:
        """``seed`` and ``shots`` are not used: the selection is the first ``limit``."""
        texts = wikitext_paragraphs(data_file(data_dir, self.relpath), limit)
        result = perplexity(lm, texts, max_tokens=self.max_tokens, batch_size=batch_size)
        return {**result, "protocol": self.protocol(len(texts))}


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
            "protocol": self.protocol(shots, len(tests), len(pool), seed),
        }


def choice_logprobs(
    lm: LanguageModel, prompts: Sequence[str], choices: Sequence[str], batch_size: int = 32
) -> list[list[float]]:
    """Mean token log-prob of each ``" " + choice`` after each prompt, ``(n_prompts, k)``;
    ``batch_size`` prompts (times ``k`` choices) per ``score_targets`` call. When every choice
    is one token after the prompt (most label words), one next-token pass per prompt gives the
    same numbers ``k`` times cheaper."""
    k = len(choices)
    rows: list[list[float]] = []
    for chunk in _chunks(len(prompts), batch_size):
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


GENERAL_TASKS: Registry[GeneralTask] = Registry("general task")

_GLUE = "jianghoucheng/AlphaEdit glue_eval/"
_MC = "(A) {choices[0]}\n(B) {choices[1]}\n(C) {choices[2]}\n(D) {choices[3]}\n"
_DIALOGUE = "(A){options[0]}\n(B){options[1]}\n(C){options[2]}\n(D){options[3]}\n"
_SENTIMENT = (
    "For each snippet of text,label the sentiment of the text as positive or negative.The "
    "answer should be exact 'positive' or 'negative'. text: {sentence} answer:"
)
_TASKS: list[GeneralTask] = [
    PerplexityTask(
        "wikitext",
        "wikitext-2/test.txt",
        description="perplexity on WikiText-2 test paragraphs (collapse detector)",
    ),
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
        ("False", "True"),
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


def general_ability(
    lm: LanguageModel,
    tasks: Sequence[str],
    data_dir: str | Path | None = None,
    *,
    limit: int | None = 100,
    seed: int | None = None,
    batch_size: int = 32,
    shots: int = 0,
) -> dict[str, Result]:
    """Measure ``lm`` on each named task of :data:`GENERAL_TASKS`.

    Args:
        lm: any :class:`LanguageModel` (plain, weight-edited, or an in-context wrapper).
        tasks: task names, e.g. ``["wikitext", "sst2", "mrpc", "cola", "rte", "nli", "mmlu"]``.
        data_dir: the folder holding ``wikitext-2/`` and ``downstream/`` (default
            ``KEDIT_DATA_DIR``).
        limit: examples per task (paragraphs for perplexity); None for all.
        seed: seeds the sample of test records; None takes the first ``limit`` (AlphaEdit).
        batch_size: texts or examples per ``score_targets`` call.
        shots: demonstrations before each downstream prompt (AlphaEdit uses 0; at most 10).

    Returns:
        Per task: ``score`` and ``metric`` (the headline), the other scores, ``n`` and the
        ``protocol`` string.
    """
    specs = [GENERAL_TASKS[name] for name in tasks]  # unknown names fail before any work
    results: dict[str, Result] = {}
    for spec in specs:
        results[spec.name] = spec.evaluate(
            lm, data_dir, limit=limit, seed=seed, batch_size=batch_size, shots=shots
        )
        logger.info(
            "%s: %s %.4f (n=%d)",
            spec.name,
            results[spec.name]["metric"],
            results[spec.name]["score"],
            results[spec.name]["n"],
        )
    return results
