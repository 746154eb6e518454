"""DeepEdit: knowledge editing as decoding with constraints.

Wang, Chen, Kang, Shen, Yang, Zhang, Wang, Zhou (Yiwei Wang et al.). "Deep Knowledge Editing by
Decoding with Constraints" (also "Knowledge Editing as Decoding with Constraints"), 2024.
https://arxiv.org/abs/2401.10471 (reference: ``run_deepedit.ipynb`` and ``prompts/*.txt`` of
``wangywUST/DeepEdit``).

No parameter changes. The model reasons step by step after chain-of-thought demonstrations;
each step is either its own or an edited fact from the memory, and the choice is a depth-first
search under constraints:

1. State: the reasoning so far, the entity the last step introduced (``new_entity``) and the
   one before it (``last_entity``). The first state has no steps and, as ``new_entity``, the
   question's entity.
2. Pop the top state; a state with ``max_steps`` steps is abandoned (so the search backtracks to
   the alternatives pushed before it). The model writes one step (greedy, to the end of its
   sentence). If it ends its thoughts (or says "the answer"), the answer is ``new_entity``.
3. Otherwise the step, with the entity it introduces removed (the model's rewrite), retrieves
   the ``top_k`` (2) nearest edited facts. A fact becomes a candidate next step when it
   mentions ``new_entity`` and not ``last_entity`` (it moves the chain on), or when three
   yes/no judgements all hold against the model's step: both state the same subject and
   relation, both name a same entity, and they name different entities (the fact corrects the
   step). Candidates are pushed so that the nearest is explored first; without one the model's
   own step is pushed. Each new state's ``new_entity`` is the entity its step adds (the model's
   answer to an extraction prompt).

The answer's transcript, for scoring (``methods/_reasoning.py``): the demonstrations, the
question, the accepted steps and ``Answer:``. ``lm.traces[prompt]`` holds each expansion: the
model's step, the retrieval query, the facts retrieved, every judgement, what was taken, and
where the answer came from.

Deliberate differences from the notebook:

* The chain-of-thought demonstrations are MQuAKE's ``multihop-cot-prompts.txt`` (read in place),
  where the DeepEdit repository uses its own variant ("Thoughts with New Knowledge", steps
  separated by ``#``, last step "X is the answer."). Steps here are sentences (a step ends at
  ". " or a line end) and the thoughts end where the model starts the ``Answer:`` line.
* The judgement, rewrite and extraction prompts are kedit's own, short few-shot prompts asking
  the notebook's questions (its prompt files are not part of the benchmark data). The first
  conflict judgement ("are the same") is asked as "same subject and relation", the reading under
  which the three together select a fact that corrects the step.
* Yes/no judgements compare the model's log-probabilities of " yes" and " no" after
  ``Answer:``; the notebook generates and re-samples up to twice at temperature 1 when the
  reply is neither. A missing previous entity (the notebook's placeholder "Crouching Tiger")
  is simply absent.
* ``max_expansions`` bounds the search (the notebook has no bound); an empty step ends its
  branch. Retrieval embeds with all-MiniLM-L6-v2 rather than Contriever.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kedit.methods._reasoning import (
    FactMemory,
    Outcome,
    ReasoningConfig,
    ReasoningMethod,
    generate_until,
    yes_or_no,
)
from kedit.model.lm import HFLanguageModel, LanguageModel
from kedit.model.prefix import PrefixCachedLM

PROMPT_FILE = ("mquake", "prompts", "multihop-cot-prompts.txt")
STEP_END = re.compile(r"\.(?=[ \n])|\n")

EXIST = """Does the entity appear in the sentence, by any of its names? Answer yes or no.

Sentence: Lionel Messi plays for Inter Miami.
Entity: Messi
Answer: yes

Sentence: The Danube flows into the Black Sea.
Entity: Vienna
Answer: no"""

SAME = """Do Sentence A and Sentence B state the same relation of the same subject (whatever \
object each gives)? Answer yes or no.

Sentence A: The Louvre is located in the city of Paris.
Sentence B: The Louvre is located in the city of Lyon.
Answer: yes

Sentence A: Toyota was founded by Kiichiro Toyoda.
Sentence B: Kiichiro Toyoda is a citizen of Japan.
Answer: no"""

SHARED = """Do Sentence A and Sentence B mention a same named entity? Answer yes or no.

Sentence A: Canberra is the capital of Australia.
Sentence B: Australia is located in the continent of Oceania.
Answer: yes

Sentence A: Mozart was born in Salzburg.
Sentence B: The Nile flows through Egypt.
Answer: no"""

DIFFERENT = """Do Sentence A and Sentence B mention different named entities? Answer yes or no.

Sentence A: The Louvre is located in the city of Paris.
Sentence B: The Louvre is located in the city of Lyon.
Answer: yes

Sentence A: Apple was founded by Steve Jobs.
Sentence B: Apple was founded by Steve Jobs.
Answer: no"""

ENTITY = """Name the named entity of Sentence B that Sentence A does not mention, as short as \
possible.

Sentence A: Inception was directed by Christopher Nolan.
Sentence B: Christopher Nolan is a citizen of United Kingdom.
Answer: United Kingdom

Sentence A: No entity appears.
Sentence B: Who is the spouse of the founder of Microsoft?
Answer: Microsoft"""

QUERY = """Remove from Sentence B the named entity that Sentence A does not mention.

Sentence A: Inception was directed by Christopher Nolan.
Sentence B: Christopher Nolan is a citizen of United Kingdom.
Sentence B after removal: Christopher Nolan is a citizen of

Sentence A: The Eiffel Tower is located in France.
Sentence B: The capital of France is Paris.
Sentence B after removal: The capital of France is"""


@dataclass(kw_only=True)
class DeepEditConfig(ReasoningConfig):
    """DeepEdit settings (defaults: the notebook's; ``shots`` count demonstrations of
    ``multihop-cot-prompts.txt``; the shared ones in :class:`ReasoningConfig`).

    Args:
        top_k: edited facts retrieved per step (the notebook's ``k=2``).
        max_steps: steps on one branch before it is abandoned (the notebook skips a state
            whose count, starting at 1, reaches 9).
        max_expansions: states expanded per question (None: no bound, the notebook's).
    """

    top_k: int = 2
    max_steps: int = 8
    max_expansions: int | None = 30

    def validate(self) -> None:
        super().validate()
        if self.top_k < 1 or self.max_steps < 1:
            raise ValueError("top_k and max_steps must be at least 1")
        if self.max_expansions is not None and self.max_expansions < 1:
            raise ValueError("max_expansions must be None (no bound) or at least 1")


@dataclass
class _State:
    """A node of the search: the steps so far and the entities the last two steps added."""

    steps: list[str]
    new_entity: str
    last_entity: str | None
    last_thought: str
    entity_from: str  # "question", "memory" or "model": the step that added new_entity
    trace: list[dict[str, Any]] = field(default_factory=list)


#: the few-shot heads of the judgement, extraction and rewrite prompts
HEADS = (EXIST, SAME, SHARED, DIFFERENT, ENTITY, QUERY)
#: each model's views with the heads' keys and values: one set however many edits of a session
#: prompt the model (each edit's pipeline would otherwise hold its own copies)
HEAD_VIEWS: weakref.WeakKeyDictionary[HFLanguageModel, dict[str, LanguageModel]] = (
    weakref.WeakKeyDictionary()
)


class DeepEditPipeline:
    """DeepEdit's search, one question at a time, prompting ``lm`` (any
    :class:`LanguageModel`).

    On a Hugging Face model each prompt head of :data:`HEADS` gets a view that computes its
    keys and values once (:class:`PrefixCachedLM`): a judgement then runs only its two
    sentences, about a quarter of its tokens."""

    def __init__(
        self, lm: LanguageModel, memory: FactMemory, demos: str, config: DeepEditConfig
    ) -> None:
        self.lm = lm
        self.memory = memory
        self.head = f"{demos}\n\nQuestion: " if demos else "Question: "
        self.config = config
        self.views: dict[str, LanguageModel] = {}
        if isinstance(lm, HFLanguageModel):
            if lm not in HEAD_VIEWS:
                HEAD_VIEWS[lm] = {h: PrefixCachedLM(lm, f"{h}\n\nSentence") for h in HEADS}
            self.views = HEAD_VIEWS[lm]

    def _model_for(self, prompt: str) -> LanguageModel:
        """The view whose cached head starts ``prompt``, else the pipeline's model."""
        return next((v for h, v in self.views.items() if prompt.startswith(h)), self.lm)

    def _by_model(self, prompts: list[str]) -> list[tuple[LanguageModel, list[int]]]:
        """The prompts' indices grouped by the model (view) that runs them."""
        groups: dict[int, tuple[LanguageModel, list[int]]] = {}
        for i, prompt in enumerate(prompts):
            lm = self._model_for(prompt)
            groups.setdefault(id(lm), (lm, []))[1].append(i)
        return list(groups.values())

    def __call__(self, questions: list[str]) -> list[Outcome]:
        return [self._search(q) for q in questions]

    def _search(self, question: str) -> Outcome:
        entity = self._entity("No entity appears.", question)
        stack = [_State([], entity, None, question, "question")]
        log: list[dict[str, Any]] = []  # every expansion, in order (abandoned branches too)
        limit = self.config.max_expansions
        while stack and (limit is None or len(log) < limit):
            state = stack.pop()
            if len(state.steps) >= self.config.max_steps:
                log.append({"depth": len(state.steps), "taken": "abandoned (step limit)"})
                continue
            children = self._expand(question, state, log)
            if children is None:
                return self._outcome(question, state, state.new_entity, log)
            stack.extend(children)
        return self._outcome(question, state, None, log)

    def _transcript(self, question: str, state: _State) -> str:
        return f"{self.head}{question}\nThoughts:" + "".join(f" {s}" for s in state.steps)

    def _expand(
        self, question: str, state: _State, log: list[dict[str, Any]]
    ) -> list[_State] | None:
        """The states after one more step (last: explored first); None when the model has
        reached the answer. The expansion's record goes to ``log``."""
        (text,) = self._generate([self._transcript(question, state)], _step_end)
        step = text.strip()
        record: dict[str, Any] = {"depth": len(state.steps), "entity": state.new_entity}
        record["step"] = step
        log.append(record)
        if text.lstrip(" ").startswith(("\n", "Answer:")) or "the answer" in step:
            record["taken"] = "answer"
            state.trace.append(record)
            return None
        if not step:
            record["taken"] = "nothing (empty step)"
            return []
        step = step if step.endswith(".") else f"{step}."
        record["query"] = self._query(state.last_thought, step)
        nearest = self.memory.retrieve([record["query"]], self.config.top_k)[0]
        facts = [f"{self.memory.sentences[i]}." for i in nearest]
        record["retrieved"] = facts
        record["judgements"] = [self._judge(state, fact, step) for fact in facts]
        taken = [f for f, j in zip(facts, record["judgements"]) if j["accepted"]]
        record["taken"] = taken or [step]
        source = "memory" if taken else "model"
        children = [
            _State(
                [*state.steps, thought],
                self._entity(state.last_thought, thought),
                state.new_entity,
                thought,
                source,
                [*state.trace, record],
            )
            for thought in reversed(taken or [step])  # the nearest fact is popped first
        ]
        return children

    def _judge(self, state: _State, fact: str, step: str) -> dict[str, Any]:
        """The constraints for a retrieved fact: it moves the chain on (mentions the current
        entity, not the previous one), or it corrects the model's step (three judgements)."""
        pairs = f"\n\nSentence A: {fact}\nSentence B: {step}\nAnswer:"
        asks = {
            "mentions_new_entity": self._exist_prompt(state.new_entity, fact),
            "mentions_last_entity": self._exist_prompt(state.last_entity, fact),
            "same_relation": SAME + pairs,
            "shared_entity": SHARED + pairs,
            "different_entities": DIFFERENT + pairs,
        }
        found = {k: v for k, v in asks.items() if isinstance(v, bool)}
        asked = [k for k, v in asks.items() if isinstance(v, str)]
        found |= dict(zip(asked, self._yes([asks[k] for k in asked])))
        moves_on = found["mentions_new_entity"] and not found["mentions_last_entity"]
        corrects = found["same_relation"] and found["shared_entity"] and found["different_entities"]
        return {"fact": fact, **found, "accepted": moves_on or corrects}

    @staticmethod
    def _exist_prompt(entity: str | None, sentence: str) -> str | bool:
        """The question whether ``entity`` appears in ``sentence``; answered without the model
        when it is absent or appears verbatim (the notebook's shortcut)."""
        if entity is None or not entity.strip():
            return False
        if entity.lower() in sentence.lower():
            return True
        return f"{EXIST}\n\nSentence: {sentence}\nEntity: {entity}\nAnswer:"

    def _yes(self, prompts: list[str]) -> list[bool]:
        """Whether the model finds " yes" likelier than " no" after each prompt."""
        found: list[bool] = [False] * len(prompts)
        for lm, rows in self._by_model(prompts):
            for i, yes in zip(rows, yes_or_no(lm, [prompts[i] for i in rows])):
                found[i] = yes
        return found

    def _entity(self, before: str, sentence: str) -> str:
        """The entity ``sentence`` adds to ``before`` (the extraction prompt)."""
        prompt = f"{ENTITY}\n\nSentence A: {before}\nSentence B: {sentence}\nAnswer:"
        return self._generate([prompt], _line_end)[0].strip()

    def _query(self, before: str, step: str) -> str:
        """The step without the entity it adds (the notebook's retrieval query); the step
        itself when the model's rewrite comes back empty."""
        prompt = f"{QUERY}\n\nSentence A: {before}\nSentence B: {step}\nSentence B after removal:"
        return self._generate([prompt], _line_end)[0].strip() or step

    def _generate(self, prompts: list[str], cut: Callable[[str], int | None]) -> list[str]:
        cfg = self.config
        texts = [""] * len(prompts)
        for lm, rows in self._by_model(prompts):
            asked = [prompts[i] for i in rows]
            for i, text in zip(
                rows, generate_until(lm, asked, cut, cfg.max_new_tokens, cfg.chunk_tokens)
            ):
                texts[i] = text
        return texts

    def _outcome(
        self, question: str, state: _State, answer: str | None, log: list[dict[str, Any]]
    ) -> Outcome:
        trace = {
            "method": "deepedit",
            "question": question,
            "steps": state.steps,
            "path": state.trace,  # the expansions on the answer's branch
            "log": log,
            "answer": answer,
            "answer_from": state.entity_from if answer is not None else None,
            "abandoned": sum(r["taken"] == "abandoned (step limit)" for r in log),
            "stopped": "answer" if answer is not None else "search exhausted",
        }
        return Outcome(f"{self._transcript(question, state)}\nAnswer:", answer, trace)


def _step_end(text: str) -> int | None:
    """Where a step ends: after its sentence's full stop, or at a line end; where the thoughts
    end (a line break before any step), after the ``Answer:`` line's first line."""
    body = len(text) - len(text.lstrip())
    if "\n" in text[:body]:
        end = text.find("\n", body)
        return end if end >= 0 else None
    found = STEP_END.search(text, body)
    if found is None:
        return None
    return found.end() if found.group() == "." else found.start()


def _line_end(text: str) -> int | None:
    """A short answer ends at its line's end (leading blank space skipped)."""
    body = len(text) - len(text.lstrip())
    end = text.find("\n", body)
    return end if end >= 0 else None


class DeepEdit(ReasoningMethod):
    """Multi-hop editing by constrained, depth-first decoding over reasoning steps."""

    name = "deepedit"
    display_name = "DeepEdit"
    paper = "Wang et al. 2024"
    family = "in-context"
    config_cls = DeepEditConfig
    prompt_file = PROMPT_FILE

    def pipeline(
        self, lm: LanguageModel, memory: FactMemory, demos: str
    ) -> Callable[[list[str]], list[Outcome]]:
        return DeepEditPipeline(lm, memory, demos, self.config)
