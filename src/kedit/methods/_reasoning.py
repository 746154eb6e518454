"""What MeLLo and DeepEdit share: a memory of edited facts, stop-string generation, and a
:class:`LanguageModel` whose every prompt is a question answered by a multi-step pipeline.

Both methods leave the model as it is and answer by prompting it several times, reading edited
facts from a memory between the calls. kedit's evaluation asks three things of a model: scores
of targets, next-token log-probabilities, and generations. :class:`ReasoningLM` runs the
pipeline on a prompt once (cached per wrapper: its memory only changes through a new edit, which
makes a new wrapper) and answers

* ``generate``: the pipeline's final answer (truncated to the tokens asked for);
* ``score_targets`` and ``next_token_logprobs``: the model's own scores teacher-forced after the
  pipeline's transcript up to and including its answer cue (MeLLo's ``Final answer:``,
  DeepEdit's ``Answer:``). This is kedit's: the references only generate.

A prompt in kedit's Q/A form (the MQuAKE probes: demonstrations, then ``Q: ... A:``) is asked as
its last question, since the pipelines bring their own demonstrations; any other prompt (a cloze
statement) is asked as it is.
"""

from __future__ import annotations

import logging
import re
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._embed import Embedder, shared_embedder
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.lm import HFLanguageModel, LanguageModel, TargetScore
from kedit.model.prefix import PrefixCachedLM
from kedit.model.tokens import encode, encode_prompt_target
from kedit.types import EditRequest

log = logging.getLogger(__name__)

#: the last line of a Q/A prompt: ``Q: <question> A:`` (kedit, MQuAKE) or ``Question: ...``
QA_LINE = re.compile(r"(?:Q|Question):\s*(?P<q>.+?)(?:\s+A(?:nswer)?:)?\s*")


def fact_sentence(request: EditRequest) -> str:
    """An edited fact as the references store it: ``prompt.format(subject) + " " + target``."""
    return f"{request.text} {request.target_new}"


def question_of(prompt: str) -> str:
    """The question a prompt asks: the last ``Q: ... A:`` line of a Q/A prompt, else all of it."""
    lines = [line for line in prompt.strip().split("\n") if line.strip()]
    found = QA_LINE.fullmatch(lines[-1].strip()) if lines else None
    return found.group("q").strip() if found else prompt.strip()


def read_demonstrations(path: Path | None, shots: int | None, what: str) -> str:
    """The first ``shots`` demonstrations (blocks separated by a blank line) of a benchmark
    prompt file, read in place; ``shots=0`` reads nothing."""
    if shots == 0:
        return ""
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{what} reads its few-shot prompt from {path or '<data_dir>/mquake/prompts/'} "
            "(MQuAKE's prompts folder beside MQuAKE-CF.json): set KEDIT_DATA_DIR to the folder "
            "that holds mquake/, or set shots=0 to run without demonstrations"
        )
    blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    return "\n\n".join(blocks[:shots] if shots is not None else blocks)


def generate_until(
    lm: LanguageModel,
    prompts: Sequence[str],
    cut: Callable[[str], int | None],
    max_new_tokens: int,
    chunk_tokens: int,
) -> list[str]:
    """Greedy continuations of ``prompts``, each ended where ``cut(text)`` first gives a
    position (the text is cut there), by end of text, or after ``max_new_tokens`` tokens.

    A Hugging Face model generates each prompt once, a row ending at the first token after which
    ``cut`` finds its end (:meth:`HFLanguageModel.generate`'s ``until``). Any other
    :class:`LanguageModel` (a scripted one) generates in chunks of ``chunk_tokens``, batched over
    the prompts still open, with a look for the end between chunks; a chunk that comes back
    empty ends a prompt's generation. The chunks re-encode prompt and text so far each time, so
    on a real model they cost a prompt's pass per chunk and may tokenise the text differently
    from the tokens generated: the one-pass path is both faster and the references' (one
    completion call with a stop string).
    """
    if isinstance(lm, HFLanguageModel):
        outs = lm.generate(prompts, max_new_tokens, until=cut)
        return [text[:where] if (where := cut(text)) is not None else text for text in outs]
    texts = [""] * len(prompts)
    open_rows = list(range(len(prompts)))
    spent = 0
    while open_rows and spent < max_new_tokens:
        n = min(chunk_tokens, max_new_tokens - spent)
        outs = lm.generate([prompts[i] + texts[i] for i in open_rows], n)
        spent += n
        still = []
        for i, out in zip(open_rows, outs):
            texts[i] += out
            where = cut(texts[i])
            if where is not None:
                texts[i] = texts[i][:where]
            elif out:
                still.append(i)
        open_rows = still
    return texts


def answer_token(tok: PreTrainedTokenizerBase, prompt: str, answer: str) -> int | None:
    """The one token ``answer`` is after ``prompt``, the prompt's own tokens unchanged; None
    when it is more, or changes them."""
    pair = encode_prompt_target(tok, prompt, answer)
    if len(pair.target_ids) != 1 or pair.ids[: pair.n_prompt] != encode(tok, prompt).ids:
        return None
    return pair.target_ids[0]


def yes_or_no(lm: LanguageModel, prompts: Sequence[str]) -> list[bool]:
    """Whether ``lm`` finds " yes" likelier than " no" after each prompt: from one pass per
    prompt (its next-token distribution) where each answer is one token after it, as on
    byte-level BPE vocabularies; else by teacher-forced scores of both answers."""
    if not prompts:
        return []
    ids = [answer_token(lm.tokenizer, p, answer) for p in prompts for answer in (" yes", " no")]
    if all(i is not None for i in ids):
        dists = lm.next_token_logprobs(prompts)  # (prompts, vocab)
        return [bool(d[ids[2 * r]] > d[ids[2 * r + 1]]) for r, d in enumerate(dists)]
    scores = lm.score_targets([p for p in prompts for _ in (0, 1)], [" yes", " no"] * len(prompts))
    totals = [sum(s.logprobs) for s in scores]
    return [totals[2 * r] > totals[2 * r + 1] for r in range(len(prompts))]


@dataclass(kw_only=True)
class ReasoningConfig(MethodConfig):
    """Settings both pipelines have (each method's config adds its own and says its defaults).

    Args:
        shots: demonstrations of the method's prompt file kept, in order (None: all; 0: none,
            and no file is read).
        max_new_tokens: tokens per generation (the notebooks' ``max_tokens=256``).
        chunk_tokens: tokens generated between two looks for a stop string, for a model
            that is not a Hugging Face one (a Hugging Face model stops on the token itself).
        embedder: retrieval encoder, ``minilm`` or ``lexical`` (tests).
    """

    shots: int | None = None
    max_new_tokens: int = 256
    chunk_tokens: int = 32
    embedder: str = "minilm"

    def validate(self) -> None:
        if self.shots is not None and self.shots < 0:
            raise ValueError("shots must be None (all demonstrations) or a count >= 0")
        if self.max_new_tokens < 1 or self.chunk_tokens < 1:
            raise ValueError("max_new_tokens and chunk_tokens must be at least 1")
        if self.embedder not in ("minilm", "lexical"):
            raise ValueError(f"embedder must be 'minilm' or 'lexical', got {self.embedder!r}")


class FactMemory:
    """Edited facts as sentences (duplicates once, in order) and their sentence embeddings;
    retrieval by the dot product of embeddings, as the references' ``retrieve_facts``."""

    def __init__(self, facts: Sequence[EditRequest], embedder: Embedder) -> None:
        by_sentence = {fact_sentence(f): f for f in facts}
        self.facts = list(by_sentence.values())
        self.sentences = list(by_sentence)
        self.embedder = embedder
        self.vectors = embedder.encode(self.sentences)  # (facts, dim)

    def retrieve(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """Indices of the ``k`` facts nearest to each query, nearest first."""
        if not queries or not self.sentences:
            return [[] for _ in queries]
        sims = self.embedder.encode(list(queries)) @ self.vectors.T  # (queries, facts)
        return sims.topk(min(k, len(self.sentences)), dim=-1).indices.tolist()


@dataclass
class Outcome:
    """One question's run: the transcript up to and including the answer cue, the answer (None
    when the pipeline ran out of steps: then the model answers after the transcript) and a
    JSON-safe trace of why."""

    transcript: str
    answer: str | None
    trace: dict[str, Any] = field(default_factory=dict)


class ReasoningLM:
    """A :class:`LanguageModel` whose prompts are questions answered by ``pipeline``.

    Args:
        lm: the model the pipeline prompts, and that scores after its transcripts.
        hf_model: the Hugging Face model inside (for ``hf_module``); None for a scripted ``lm``.
        facts: the edited facts so far (a later edit of a session adds to them).
        pipeline: questions -> their :class:`Outcome`\\ s.
        method: the registry name of the method whose pipeline it is.

    ``traces[prompt]`` is the trace of every prompt asked so far; ``summary`` counts them
    (JSON-safe, shared with the edit's ``info``).
    """

    def __init__(
        self,
        lm: LanguageModel,
        hf_model: Any,
        facts: Sequence[EditRequest],
        pipeline: Callable[[list[str]], list[Outcome]],
        method: str,
    ) -> None:
        self.lm = lm
        self.method = method
        self.tokenizer = lm.tokenizer
        self.hf_model = hf_model
        self.facts = list(facts)
        self.pipeline = pipeline
        self.traces: dict[str, dict[str, Any]] = {}
        self.summary: dict[str, Any] = {"questions": 0, "answered": 0, "answers_from_memory": 0}
        self._outcomes: dict[str, Outcome] = {}

    def outcomes(self, prompts: Sequence[str]) -> list[Outcome]:
        """Each prompt's outcome, running the pipeline once for the questions not seen yet."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._outcomes))
        if missing:
            for prompt, outcome in zip(missing, self.pipeline([question_of(p) for p in missing])):
                self._outcomes[prompt] = outcome
                self.traces[prompt] = outcome.trace
                self.summary["questions"] += 1
                self.summary["answered"] += outcome.answer is not None
                self.summary["answers_from_memory"] += outcome.trace.get("answer_from") == "memory"
        return [self._outcomes[p] for p in prompts]

    def trace(self, prompt: str) -> dict[str, Any] | None:
        """How the pipeline answered ``prompt`` (a :class:`~kedit.model.lm.TracingModel`)."""
        return self.traces.get(prompt)

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        transcripts = [o.transcript for o in self.outcomes(prompts)]
        return self.lm.score_targets(transcripts, targets)

    def next_token_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.lm.next_token_logprobs([o.transcript for o in self.outcomes(prompts)])

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int],
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> list[str]:
        """The pipeline's answers (the pipeline is greedy, as the references); where it found
        none, the model's greedy first line after the transcript. With ``top_k`` (sampled
        texts), the model's samples after the transcripts."""
        outcomes = self.outcomes(prompts)
        transcripts = [o.transcript for o in outcomes]
        if top_k is not None:
            return self.lm.generate(transcripts, max_new_tokens, top_k, seed, stop_at_eos)
        limits = (
            [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else max_new_tokens
        )
        open_rows = [i for i, o in enumerate(outcomes) if o.answer is None]
        texts = [f" {o.answer}" if o.answer is not None else "" for o in outcomes]
        if open_rows:
            outs = self.lm.generate(
                [transcripts[i] for i in open_rows], [limits[i] for i in open_rows]
            )
            for i, out in zip(open_rows, outs):
                texts[i] = out.split("\n", 1)[0]
        return [self._truncate(t, n) for t, n in zip(texts, limits)]

    def _truncate(self, text: str, n: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= n else self.tokenizer.decode(ids[:n])


def prompted_model(
    model: Any, tok: PreTrainedTokenizerBase, method: str, prefix: str
) -> tuple[LanguageModel, Any, list[EditRequest]]:
    """What an edit of ``method`` prompts, the Hugging Face model inside, and the facts of the
    earlier edits: those of ``model`` when it is this method's wrapper (a later edit of a
    session), else none, with a model whose prompts' common start ``prefix`` (the few-shot
    demonstrations) has its keys and values computed now, once (and again if a weight
    changes)."""
    if isinstance(model, ReasoningLM):
        if model.method != method:
            raise ValueError(f"{method} cannot add its memory to a {model.method} edit")
        return model.lm, model.hf_model, model.facts
    if not isinstance(model, nn.Module):
        raise ValueError(f"{method} edits a Hugging Face model, not a {type(model).__name__}")
    lm = PrefixCachedLM(HFLanguageModel(model, tok), prefix)
    lm.prefix_kv()
    return lm, model, []


class ReasoningMethod(EditMethod):
    """What MeLLo and DeepEdit share as methods: an edit adds its facts to the memory (those of
    the session's earlier edits kept) and wraps the model in a :class:`ReasoningLM` over the
    method's pipeline. A subclass names its benchmark prompt file and builds its pipeline."""

    supports_batch = True
    reads_context = True
    #: the few-shot prompt, under the data directory
    prompt_file: ClassVar[tuple[str, ...]]

    @abstractmethod
    def pipeline(
        self, lm: LanguageModel, memory: FactMemory, demos: str
    ) -> Callable[[list[str]], list[Outcome]]:
        """The method's pipeline over ``lm`` and ``memory``, after ``demos``."""

    def apply(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        demos = self._demonstrations()
        prefix = f"{demos}\n\nQuestion:" if demos else "Question:"
        lm, hf_model, earlier = prompted_model(model, tok, self.name, prefix)
        facts = [*earlier, *requests]
        memory = FactMemory(facts, shared_embedder(self.env, self.config.embedder))
        pipeline = self.pipeline(lm, memory, demos)
        wrapper = ReasoningLM(lm, hf_model, facts, pipeline, self.name)
        edit.wrap(wrapper)
        edit.info["memory_facts"] = len(memory.sentences)
        edit.info["questions"] = wrapper.summary  # counts of the questions asked so far

    def _demonstrations(self) -> str:
        data = self.env.data_dir
        path = data.joinpath(*self.prompt_file) if data is not None else None
        return read_demonstrations(path, self.config.shots, self.display_name)
