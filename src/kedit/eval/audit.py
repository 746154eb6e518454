"""``audit``: one edit, every measure that needs no benchmark, as a report card.

The user gives the edit (and, optionally, paraphrases and neighbours); what they do not give is
written from templates, with answers taken from the unedited model itself, so the locality
measures ask "did the edit change what the model said before?":

* paraphrases: the edit prompt after an unrelated sentence, as CounterFact's paraphrases are
  built;
* neighbours: the edit prompt with other, well-known subjects (of mixed kinds, since kedit does
  not know the subject's type; pass ``neighbors`` for a sharper test), plain and with the edit
  statement prefixed (CounterFact+);
* other relations of the edited subject, and unrelated facts;
* generation prompts about the subject (fluency) and the dialogue challenges
  (:mod:`kedit.data.challenges`).

The old answer, when not given, is the unedited model's own answer to the edit prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from kedit.data.challenges import dialogue_probes
from kedit.env import Environment
from kedit.eval.evaluate import EvalReport, evaluate
from kedit.eval.scoring import first_clause
from kedit.methods import EditMethod
from kedit.model.lm import LanguageModel, as_language_model
from kedit.types import SUBJECT_SLOT, EditCase, EditRequest, Probe, ProbeKind

PARAPHRASE_PREFIXES = (
    "The weather was mild that week. ",
    "According to the encyclopedia, ",
)
NEIGHBOR_SUBJECTS = (
    "the Statue of Liberty",
    "Mount Everest",
    "Albert Einstein",
    "Toyota",
    "the Amazon River",
    "William Shakespeare",
)
OTHER_RELATIONS = ("{} is a", "{} is famous for", "People often associate {} with")
UNRELATED_PROMPTS = (
    "The capital of Japan is",
    "Water is made of hydrogen and",
    "The largest planet in the solar system is",
)
GENERATION_PROMPTS = ("{} is", "{} is known for", "Here is what I know about {}:")
#: tokens the unedited model may use for an answer written into a probe
ANSWER_TOKENS = 6


def unedited_answers(lm: LanguageModel, prompts: Sequence[str]) -> list[str]:
    """The unedited model's short greedy answers (first clause; may be empty)."""
    return [first_clause(t) for t in lm.generate(list(prompts), ANSWER_TOKENS)]


def audit_case(
    lm: LanguageModel,
    request: EditRequest,
    paraphrases: Sequence[str] = (),
    neighbors: Sequence[tuple[str, str]] = (),
) -> EditCase:
    """The audit's case: the user's probes plus those written from templates (module docs)."""
    subject, new = request.subject, request.target_new
    own = [
        request.prompt.replace(SUBJECT_SLOT, s, 1)
        for s in NEIGHBOR_SUBJECTS
        if s.lower() != subject.lower()
    ]
    others = [t.replace(SUBJECT_SLOT, subject, 1) for t in OTHER_RELATIONS]
    asked = [request.text, *(own if not neighbors else []), *others, *UNRELATED_PROMPTS]
    answers = dict(zip(asked, unedited_answers(lm, asked)))
    old = request.target_true or answers[request.text]
    if not old or old.strip().lower() == new.strip().lower():
        raise ValueError(
            f"the unedited model already answers {answers[request.text]!r} to {request.text!r}; "
            "pass the old answer (--target-true) and a new one that differs from it"
        )
    request = EditRequest(request.prompt, subject, new, old)
    neighbors = list(neighbors) or [(p, answers[p]) for p in own if answers[p]]
    statement = f"{request.text} {new}."
    probes = [
        Probe(ProbeKind.REWRITE, request.text, new, old, reason="the edit prompt"),
        *(
            Probe(ProbeKind.PARAPHRASE, p, new, old, reason="the edit prompt reworded")
            for p in (paraphrases or [f"{x}{request.text}" for x in PARAPHRASE_PREFIXES])
        ),
        *(
            Probe(ProbeKind.NEIGHBORHOOD, p, a, new, reason="another subject, same relation")
            for p, a in neighbors
        ),
        *(
            Probe(
                ProbeKind.DISTRACTING_NEIGHBORHOOD,
                f"{statement} {p}",
                a,
                new,
                reason="a neighbour after the edit statement (CounterFact+)",
            )
            for p, a in neighbors
        ),
        *(
            Probe(ProbeKind.RELATION_SPECIFICITY, p, answers[p], reason="another relation")
            for p in others
            if answers[p]
        ),
        *(
            Probe(ProbeKind.LOCALITY, p, answers[p], reason="an unrelated fact")
            for p in UNRELATED_PROMPTS
            if answers[p]
        ),
        *(
            Probe(ProbeKind.GENERATION, t.replace(SUBJECT_SLOT, subject, 1), new)
            for t in GENERATION_PROMPTS
        ),
        *dialogue_probes(request, paraphrases[0] if paraphrases else None),
    ]
    return EditCase("audit", (request,), tuple(probes))


def audit(
    model: Any,
    tok: PreTrainedTokenizerBase,
    request: EditRequest,
    method: str | EditMethod = "rome",
    *,
    paraphrases: Sequence[str] = (),
    neighbors: Sequence[tuple[str, str]] = (),
    overrides: dict[str, Any] | None = None,
    env: Environment | None = None,
) -> EvalReport:
    """Edit once and run every measure of the ``pitfalls`` suite the audit case can feed."""
    case = audit_case(as_language_model(model, tok), request, paraphrases, neighbors)
    return evaluate(
        model, tok, [case], method, overrides=overrides, suite="pitfalls", env=env, progress=False
    )
