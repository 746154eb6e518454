"""MeLLo: Memory-based Editing for Large Language Models, by multi-hop question decomposition.

Zhong, Wu, Manning, Potts, Chen. "MQuAKE: Assessing Knowledge Editing in Language Models via
Multi-Hop Questions", EMNLP 2023. https://arxiv.org/abs/2305.14795 (reference: the notebook
``run_mello.ipynb`` and ``prompts/MeLLo-prompt.txt`` of ``princeton-nlp/MQuAKE``).

No parameter changes: the edited facts are kept as sentences in an external memory, and the
unchanged model answers a question by decomposing it:

1. Memory: each request as the sentence ``"{prompt with subject} {target_new}"``, embedded.
2. The transcript starts with MeLLo's few-shot prompt (the benchmark's file, read in place) and
   ``Question: {q}``. At most ``max_hops`` times (the notebook's four):
   a. the model writes (greedily) until ``Retrieved fact:``: a subquestion
      (``Subquestion: ...``) and its tentative answer (``Generated answer: ...``), or
      ``Final answer: ...``, which ends the loop;
   b. the subquestion retrieves the top-1 fact of the memory, appended as
      ``Retrieved fact: {fact}.``;
   c. the self-check: the model then judges whether the fact contradicts its generated answer
      (``Retrieved fact (does not) contradict(s) to generated answer, so the intermediate answer
      is: X``), and goes on with the next subquestion.
3. The answer is what follows ``Final answer:``. Without one (the model did not write a
   subquestion, or the hops ran out) the notebook has no answer; kedit appends
   ``Final answer:`` and lets the model answer after the transcript.

How kedit scores it (``methods/_reasoning.py``): ``generate`` returns the answer;
``score_targets`` and ``next_token_logprobs`` are the model's own, teacher-forced after the
transcript up to and including ``Final answer:``. ``lm.traces[prompt]`` holds each question's
subquestions, generated answers, retrieved facts, judgements and where its answer came from.

Deliberate differences from the notebook:

* The self-check is applied, not only asked for (``write_edited_answer``): when the model judges
  that the fact contradicts its answer, kedit writes the fact's new object as the intermediate
  answer (the notebook lets the model copy it, which small models get wrong); when it judges
  no contradiction the model writes its own. ``write_edited_answer=False`` is the notebook's.
* Retrieval embeds with all-MiniLM-L6-v2 (normalised, kedit's offline encoder) rather than
  ``facebook/contriever-msmarco`` (mean pooling, unnormalised dot product).
* Local models go on past an answer where the API model stopped: generation also stops after
  the ``Final answer:`` line and at a blank line (the start of a new demonstration).
* The subquestion is the last ``Subquestion:`` line written (the notebook: the second-to-last
  line, else it gives up).
* The notebook asks ``"Qustion: "`` (a typo not copied: its demonstrations say ``Question:``),
  and after the last hop appends the last generation a second time (not copied).
* ``shots`` keeps only the first demonstrations, for models with a short context (GPT-2's 1,024
  positions cannot hold the prompt and four hops).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kedit.methods._reasoning import (
    FactMemory,
    Outcome,
    ReasoningConfig,
    ReasoningMethod,
    generate_until,
)
from kedit.model.lm import LanguageModel
from kedit.types import EditRequest

PROMPT_FILE = ("mquake", "prompts", "MeLLo-prompt.txt")
RETRIEVED = "Retrieved fact:"
FINAL = "Final answer:"
SUBQUESTION = "Subquestion:"
GENERATED = "Generated answer:"
CHECK = "so the intermediate answer is:"
FINAL_LINE = re.compile(rf"(?:^|\n){FINAL}[^\n]*\n")


@dataclass(kw_only=True)
class MeLLoConfig(ReasoningConfig):
    """MeLLo settings (defaults: the notebook's; ``shots`` count demonstrations of
    ``MeLLo-prompt.txt``; the shared ones in :class:`ReasoningConfig`).

    Args:
        max_hops: generation rounds per question, each ending at a retrieved fact or the final
            answer (the notebook's ``range(4)``).
        write_edited_answer: apply the self-check (see the module's notes); False: the
            notebook's, where the model writes every intermediate answer.
    """

    max_hops: int = 4
    write_edited_answer: bool = True

    def validate(self) -> None:
        super().validate()
        if self.max_hops < 1:
            raise ValueError("max_hops must be at least 1")


@dataclass
class _Run:
    """One question's progress through the loop."""

    question: str
    transcript: str
    hops: list[dict[str, Any]] = field(default_factory=list)
    pending: EditRequest | None = None  # the retrieved fact awaiting its self-check
    answer: str | None = None
    stopped: str | None = None
    unread: str | None = None  # the text that held no subquestion
    calls: int = 0


class MeLLoPipeline:
    """MeLLo's loop over a batch of questions, prompting ``lm`` (any :class:`LanguageModel`),
    in lockstep: each round's generations are batched."""

    def __init__(
        self, lm: LanguageModel, memory: FactMemory, demos: str, config: MeLLoConfig
    ) -> None:
        self.lm = lm
        self.memory = memory
        self.head = f"{demos}\n\nQuestion: " if demos else "Question: "
        self.config = config

    def __call__(self, questions: list[str]) -> list[Outcome]:
        runs = [_Run(q, self.head + q) for q in questions]
        for _ in range(self.config.max_hops):
            active = [r for r in runs if r.stopped is None]
            if not active:
                break
            texts = self._generate(active)
            asking = [(r, sub) for r, t in zip(active, texts) if (sub := self._read(r, t))]
            nearest = self.memory.retrieve([sub for _, sub in asking], 1)
            for (run, _), (index, *_) in zip(asking, nearest):
                run.pending = self.memory.facts[index]
                run.hops[-1]["retrieved_fact"] = self.memory.sentences[index]
                run.transcript += f"{RETRIEVED} {self.memory.sentences[index]}."
        for run in runs:
            run.stopped = run.stopped or "hop limit"
        return [self._outcome(r) for r in runs]

    # -- one round ---------------------------------------------------------------------------

    def _generate(self, runs: list[_Run]) -> list[str]:
        """Each run's text of this round, appended to its transcript: up to ``Retrieved fact:``
        or the final answer, the self-check's answer written in where it applies."""
        cfg = self.config
        texts = generate_until(
            self.lm, [r.transcript for r in runs], self._cut, cfg.max_new_tokens, cfg.chunk_tokens
        )
        checked = [i for i, t in enumerate(texts) if t.endswith(CHECK)]
        for i in checked:
            texts[i] += self._self_check(runs[i], texts[i])
        if checked:
            more = generate_until(
                self.lm,
                [runs[i].transcript + texts[i] for i in checked],
                lambda text: self._cut(text, check=False),
                cfg.max_new_tokens,
                cfg.chunk_tokens,
            )
            for i, text in zip(checked, more):
                texts[i] += text
        for i, (run, text) in enumerate(zip(runs, texts)):
            run.transcript += text
            run.calls += 2 if i in checked else 1
        return texts

    def _cut(self, text: str, check: bool = True) -> int | None:
        """Where this round's text ends: before ``Retrieved fact:``, after the final answer's
        line, at a blank line, or (the self-check) after ``so the intermediate answer is:``."""
        ends = [text.find(RETRIEVED), text.find("\n\n")]
        final = FINAL_LINE.search(text)
        ends.append(final.end() - 1 if final else -1)
        if check and self.config.write_edited_answer and CHECK in text:
            ends.append(text.index(CHECK) + len(CHECK))
        ends = [e for e in ends if e >= 0]
        return min(ends) if ends else None

    def _self_check(self, run: _Run, text: str) -> str:
        """The model judged the pending fact against its answer: a contradicting fact's new
        object is written as the intermediate answer; otherwise the model writes its own."""
        if run.pending is None:
            return ""
        line = text[text.rfind("\n") + 1 :]
        contradicts = "contradict" in line and "not contradict" not in line
        hop = run.hops[-1]
        hop["judgement"] = "contradicts" if contradicts else "does not contradict"
        if not contradicts:
            return ""
        hop["intermediate_answer"], hop["answer_from"] = run.pending.target_new, "memory"
        return f" {run.pending.target_new}\n"

    def _read(self, run: _Run, text: str) -> str | None:
        """Record the round in the trace; the subquestion to retrieve for, if any."""
        lines = [line.strip() for line in text.strip().split("\n") if line.strip()]
        if run.pending is not None:
            self._record_check(run.hops[-1], lines)
            run.pending = None
        final = [line for line in lines if line.startswith(FINAL)]
        if final:
            run.answer, run.stopped = final[0][len(FINAL) :].strip(), "final answer"
            return None
        asked = [line for line in lines if line.startswith(SUBQUESTION)]
        if not asked:
            run.stopped, run.unread = "no subquestion", text.strip()[:300]
            return None
        answers = [line for line in lines if line.startswith(GENERATED)]
        subquestion = asked[-1][len(SUBQUESTION) :].strip()
        generated = answers[-1][len(GENERATED) :].strip() if answers else None
        run.hops.append({"subquestion": subquestion, "generated_answer": generated})
        return subquestion

    @staticmethod
    def _record_check(hop: dict[str, Any], lines: list[str]) -> None:
        """The model's own self-check line, where kedit did not write the answer."""
        said = next((line for line in lines if "contradict" in line), None)
        if said is None:
            return
        if "judgement" not in hop:
            hop["judgement"] = "does not contradict" if "not contradict" in said else "contradicts"
        if "intermediate_answer" not in hop and CHECK in said:
            hop["intermediate_answer"] = said.split(CHECK, 1)[1].strip()
            hop["answer_from"] = "model"

    def _outcome(self, run: _Run) -> Outcome:
        if run.answer is not None:
            transcript = run.transcript[: run.transcript.rindex(FINAL) + len(FINAL)]
        else:
            transcript = run.transcript.rstrip(" ") + (
                "" if run.transcript.endswith("\n") else "\n"
            )
            transcript += FINAL
        fresh = {h.get("intermediate_answer") for h in run.hops if h.get("answer_from") == "memory"}
        source = None if run.answer is None else "memory" if run.answer in fresh else "model"
        trace = {
            "method": "mello",
            "question": run.question,
            "hops": run.hops,
            "answer": run.answer,
            "answer_from": source,
            "stopped": run.stopped,
            "unread": run.unread,
            "calls": run.calls,
        }
        return Outcome(transcript, run.answer, trace)


class MeLLo(ReasoningMethod):
    """Multi-hop editing by decomposition and retrieval from a memory of edited facts."""

    name = "mello"
    display_name = "MeLLo"
    paper = "Zhong et al. 2023"
    family = "external-memory"
    config_cls = MeLLoConfig
    prompt_file = PROMPT_FILE

    def pipeline(
        self, lm: LanguageModel, memory: FactMemory, demos: str
    ) -> Callable[[list[str]], list[Outcome]]:
        return MeLLoPipeline(lm, memory, demos, self.config)
