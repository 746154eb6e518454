"""Scoring every probe of many cases with as few forward passes as possible.

For each probe a metric needs, these are measured on a :class:`~kedit.model.lm.LanguageModel`:
the teacher-forced scores of its expected answer and of its alternative answer, a short greedy
answer, the next-token distribution after its prompt (neighbourhood KL), a long sampled text
(fluency), and, for dialogue probes, the model's own answer followed by its reply to a
challenging follow-up turn. Every kind of measurement goes through one batched call over all
probes of all requested cases.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from kedit.eval.formulas.mquake import normalize_answer
from kedit.model.lm import LanguageModel, RoutingModel, TargetScore, TracingModel
from kedit.model.tokens import encode
from kedit.types import EditCase, Probe

Key = TypeVar("Key")

#: extra tokens generated beyond the longest accepted answer, so a differently tokenised but
#: correct answer still fits
GENERATION_SLACK = 2
#: fluency texts: ROME's ``generate_fast(max_out_len=100)`` samples from the top 5 until the text
#: is 100 tokens long, prompt included, without stopping at the end-of-sequence token
TEXT_TOKENS, TEXT_TOP_K = 100, 5
#: dialogue: the model's first answer is cut at the end of its first clause; its reply to the
#: follow-up gets 30 new tokens, as Ma et al. (``max_new_tokens=30``)
ANSWER_TOKENS, REPLY_TOKENS = 8, 30


@dataclass
class ProbeScore:
    """What one model did on one probe."""

    expected: TargetScore | None = None
    alternative: TargetScore | None = None
    generation: str | None = None  # short greedy answer
    next_token: torch.Tensor | None = None  # (vocab,) log-probabilities after the prompt
    text: str | None = None  # long sampled continuation (fluency)
    answer: str | None = None  # dialogue: the model's own first answer
    reply: str | None = None  # dialogue: its reply to the follow-up turn
    routed: bool | None = None  # whether an added part fired (a RoutingModel only)
    trace: dict | None = None  # how the answer came about (a TracingModel only)


@dataclass
class ProbeResult:
    """A probe with its scores before the edit, after the first of several edit steps (``mid``,
    only for cases with ``steps``) and after all of them (``post``)."""

    probe: Probe
    pre: ProbeScore = field(default_factory=ProbeScore)
    post: ProbeScore = field(default_factory=ProbeScore)
    mid: ProbeScore = field(default_factory=ProbeScore)
    #: on the unedited model with only the last of several steps applied
    alone: ProbeScore = field(default_factory=ProbeScore)

    def stage(self, name: str) -> ProbeScore:
        return {"pre": self.pre, "mid": self.mid, "post": self.post, "alone": self.alone}[name]


@dataclass(frozen=True)
class Needs:
    """Which measurements a set of metrics needs, per probe kind."""

    scores: frozenset[str] = frozenset()  # kinds needing teacher-forced scores
    generation: frozenset[str] = frozenset()  # kinds needing a greedy generation
    next_token: frozenset[str] = frozenset()  # kinds needing the next-token distribution
    text: frozenset[str] = frozenset()  # kinds needing a long sampled text
    dialogue: frozenset[str] = frozenset()  # kinds needing answer + reply to a follow-up
    routing: frozenset[str] = frozenset()  # kinds whose routing decision is asked
    mid: frozenset[str] = frozenset()  # kinds also scored after the first edit step
    alone: frozenset[str] = frozenset()  # kinds also scored with the last step applied alone

    @property
    def kinds(self) -> frozenset[str]:
        measured = self.scores | self.generation | self.next_token | self.text | self.dialogue
        return measured | self.routing

    def at_stage(self, stage: str) -> Needs:
        """Only what is measured at ``stage`` (the ``mid`` and ``alone`` stages score their
        kinds' teacher-forced scores)."""
        if stage == "mid":
            return Needs(self.scores & self.mid)
        if stage == "alone":
            return Needs(self.scores & self.alone)
        return self


def score_probes(
    lm: LanguageModel,
    cases: Sequence[EditCase],
    needs: Needs,
    stage: str,
    results: dict[str, list[ProbeResult]],
    seed: int = 0,
) -> None:
    """Fill ``results[case_id][i].<stage>`` for every probe of ``cases`` that ``needs`` covers.

    ``seed`` seeds the sampled fluency texts, so the same model gives the same texts.
    """
    needs = needs.at_stage(stage)
    jobs: list[tuple[ProbeScore, Probe]] = []
    for case in cases:
        rows = results.setdefault(case.case_id, [ProbeResult(p) for p in case.probes])
        for row in rows:
            if row.probe.kind in needs.kinds:
                jobs.append((row.stage(stage), row.probe))
    _score_targets(lm, jobs, needs)
    _generate_answers(lm, [(s, p) for s, p in jobs if p.kind in needs.generation])
    _next_tokens(lm, [(s, p) for s, p in jobs if p.kind in needs.next_token])
    _sample_texts(lm, [(s, p) for s, p in jobs if p.kind in needs.text], seed)
    _dialogues(lm, [(s, p) for s, p in jobs if p.kind in needs.dialogue])
    _routing(lm, [(s, p) for s, p in jobs if p.kind in needs.routing])
    _traces(lm, jobs)


def _score_targets(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]], needs: Needs) -> None:
    jobs = [(s, p) for s, p in jobs if p.kind in needs.scores]
    pairs: list[tuple[str, str]] = []
    slots: list[tuple[ProbeScore, str]] = []
    for score, probe in jobs:
        pairs.append((probe.prompt, probe.expected))
        slots.append((score, "expected"))
        if probe.alternative is not None:
            pairs.append((probe.prompt, probe.alternative))
            slots.append((score, "alternative"))
    if pairs:
        distinct, where = once(pairs)
        scored = lm.score_targets([p for p, _ in distinct], [t for _, t in distinct])
        for (score, slot), i in zip(slots, where):
            setattr(score, slot, scored[i])


def once(keys: list[Key]) -> tuple[list[Key], list[int]]:
    """The distinct keys in first-seen order, and for each key its position among them: probes
    often share a measurement (the dialogue probes of a case ask the same question, MQuAKE's
    new- and old-answer probes the same prompt), and each is computed once."""
    index: dict[Key, int] = {}
    where = [index.setdefault(k, len(index)) for k in keys]
    return list(index), where


def _answer_length(lm: LanguageModel, probe: Probe) -> int:
    """Tokens of the longest accepted answer (expected or an alias)."""
    answers = [probe.expected, *probe.aliases]
    return max(
        len(lm.tokenizer(" " + a.strip(), add_special_tokens=False).input_ids) for a in answers
    )


def _generate_answers(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]]) -> None:
    if not jobs:
        return
    distinct, where = once([(p.prompt, _answer_length(lm, p) + GENERATION_SLACK) for _, p in jobs])
    texts = lm.generate([p for p, _ in distinct], [n for _, n in distinct])
    for (score, _), i in zip(jobs, where):
        score.generation = texts[i]


def _next_tokens(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]]) -> None:
    if not jobs:
        return
    distinct, where = once([p.prompt for _, p in jobs])
    logprobs = lm.next_token_logprobs(distinct)  # (n_distinct_prompts, vocab)
    for (score, _), i in zip(jobs, where):
        score.next_token = logprobs[i]


def _sample_texts(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]], seed: int) -> None:
    """ROME's fluency texts: seeded top-5 samples filling each prompt up to ``TEXT_TOKENS``
    tokens in all, through the end-of-sequence token, scored with the prompt and normalised as
    ROME's ``generate_fast`` does."""
    if not jobs:
        return
    prompts = [p.prompt for _, p in jobs]
    new = [max(1, TEXT_TOKENS - len(encode(lm.tokenizer, p).ids)) for p in prompts]
    texts = lm.generate(prompts, new, top_k=TEXT_TOP_K, seed=seed, stop_at_eos=False)
    for (score, probe), text in zip(jobs, texts):
        score.text = rome_text(probe.prompt + text)  # ROME scores the prompt with its text


def _routing(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]]) -> None:
    """Whether the edit's added part fired on each probe (only a model that routes says)."""
    if not jobs or not isinstance(lm, RoutingModel):
        return
    distinct, where = once([p.prompt for _, p in jobs])
    fired = lm.routed(distinct)
    for (score, _), i in zip(jobs, where):
        score.routed = fired[i]


def _traces(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]]) -> None:
    """How a model that answers through steps of its own answered each probe's prompt (read
    after every measurement, which is what ran the steps)."""
    if isinstance(lm, TracingModel):
        for score, probe in jobs:
            score.trace = lm.trace(probe.prompt)


def rome_text(text: str) -> str:
    """ROME's normalisation of generated text: Unicode NFKD, and paragraph breaks as spaces (the
    end-of-text token it also removes is left out of our texts already)."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")


def first_clause(text: str) -> str:
    """The text up to its first line break or sentence end, stripped."""
    line = text.strip().split("\n", 1)[0]
    return re.split(r"(?<=[^A-Z.])[.!?](?:\s|$)", line, maxsplit=1)[0].strip()


def dialogue_transcript(probe: Probe, answer: str) -> str:
    """The conversation a dialogue probe's reply continues: question, the model's own answer,
    then the follow-up turn."""
    return f"{probe.prompt} {answer}.{probe.followup}"


def _dialogues(lm: LanguageModel, jobs: list[tuple[ProbeScore, Probe]]) -> None:
    if not jobs:
        return
    pairs, where = once([(p.prompt, p.alternative) for _, p in jobs])
    # the model's confidence in the old answer, for reversion by confidence
    olds = lm.score_targets([p for p, _ in pairs], [a for _, a in pairs])
    questions, asked = once([p.prompt for _, p in jobs])
    answers = lm.generate(questions, ANSWER_TOKENS)
    transcripts = []
    for (score, probe), i, j in zip(jobs, where, asked):
        score.alternative = olds[i]
        score.answer = first_clause(answers[j])
        transcripts.append(dialogue_transcript(probe, score.answer))
    replies = lm.generate(transcripts, REPLY_TOKENS)
    for (score, _), reply in zip(jobs, replies):
        score.reply = reply


def generation_matches(generation: str, answers: Iterable[str]) -> bool:
    """True if the generation starts with one of the answers (normalised, whole words)."""
    produced = normalize_answer(generation)
    for answer in answers:
        wanted = normalize_answer(answer)
        if wanted and (produced == wanted or produced.startswith(wanted + " ")):
            return True
    return False
