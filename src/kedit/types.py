"""Edit requests, probes and cases: the typed records every layer of kedit passes around.

An :class:`EditRequest` is what a method edits; an :class:`EditCase` bundles one or more requests
with the :class:`Probe` s an audit asks the edited model. Both validate on construction, so bad
input fails at the door with a message saying what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SUBJECT_SLOT = "{}"


class ProbeKind:
    """Names of probe kinds. A kind says which question the probe asks of an edited model."""

    REWRITE = "rewrite"  # the edit prompt itself; expects target_new over target_true
    PARAPHRASE = "paraphrase"  # the same fact worded differently; expects target_new
    NEIGHBORHOOD = "neighborhood"  # other subjects sharing target_true; must keep it
    LOCALITY = "locality"  # unrelated prompts; top-1 predictions must not change
    GENERATION = "generation"  # free-text prompts about the subject (fluency, consistency)
    # KnowEdit's splits (Yao et al. 2023b; Zhang et al. 2024), one kind per split so each is
    # reported on its own as EasyEdit does
    PORTABILITY_SUBJECT_ALIASING = "portability_subject_aliasing"  # edited fact, subject alias
    PORTABILITY_REASONING = "portability_reasoning"  # needs the edited fact plus another hop
    PORTABILITY_LOGICAL_GENERALIZATION = "portability_logical_generalization"  # e.g. inverse
    RELATION_SPECIFICITY = "relation_specificity"  # other relations of the edited subject
    FORGETFULNESS = "forgetfulness"  # other objects of a one-to-many edited relation
    # one-hop question built on the edited fact (EVOKE / ZsRE portability, Yao et al. 2023b)
    PORTABILITY_ONE_HOP = "portability_one_hop"
    # the edited fact asked in the reverse direction (s, r, o*) -> (o*, r', s)
    PORTABILITY_REVERSED_RELATION = "portability_reversed_relation"
    # a neighbourhood prompt with the edit statement prefixed (CounterFact+ / Distract Neighbor)
    DISTRACTING_NEIGHBORHOOD = "distracting_neighborhood"
    # MQuAKE: multi-hop questions (new and original answer), and the single hops of the new chain
    MULTI_HOP = "multi_hop"
    MULTI_HOP_ORIGINAL = "multi_hop_original"
    EDITED_HOP = "edited_hop"  # cloze of one edited fact
    NEW_CHAIN_HOP = "new_chain_hop"  # cloze of every hop of the new reasoning chain
    # ConflictEdit: one prompt of a fact; ``Probe.fact`` names the fact
    CONFLICT_OLD = "conflict_old"  # k_old, the first edit's new fact
    CONFLICT_EXPLICIT = "conflict_explicit"  # k_new = the second edit's fact
    CONFLICT_IMPLICIT = "conflict_implicit"  # k_new = the fact the two edits imply together
    TIED_FACT = "tied_fact"  # composite: the rule's other premise, which no edit touches
    # RoundEdit: candidate objects of the round-tripped fact
    ROUND_NEW = "round_new"  # o*, the first edit's target
    ROUND_TRUE = "round_true"  # o, restored by the second edit
    ROUND_OTHER = "round_other"  # the other true objects of the 1-to-N relation
    # robustness in dialogue: follow-up turns that challenge the edit
    DIALOGUE_CHALLENGE = "dialogue_challenge"  # "Are you sure? I think it is <old answer>"
    DIALOGUE_DISTRACTION = "dialogue_distraction"  # a distracting context mentioning the old answer
    DIALOGUE_REPHRASE = "dialogue_rephrase"  # the question reworded several turns later

    PORTABILITY = (
        PORTABILITY_SUBJECT_ALIASING,
        PORTABILITY_REASONING,
        PORTABILITY_LOGICAL_GENERALIZATION,
        PORTABILITY_ONE_HOP,
        PORTABILITY_REVERSED_RELATION,
    )
    MQUAKE = (MULTI_HOP, MULTI_HOP_ORIGINAL, EDITED_HOP, NEW_CHAIN_HOP)
    CONFLICT = (CONFLICT_OLD, CONFLICT_EXPLICIT, CONFLICT_IMPLICIT, TIED_FACT)
    ROUND = (ROUND_NEW, ROUND_TRUE, ROUND_OTHER)
    DIALOGUE = (DIALOGUE_CHALLENGE, DIALOGUE_DISTRACTION, DIALOGUE_REPHRASE)
    ALL = (
        REWRITE,
        PARAPHRASE,
        NEIGHBORHOOD,
        DISTRACTING_NEIGHBORHOOD,
        LOCALITY,
        GENERATION,
        *PORTABILITY,
        RELATION_SPECIFICITY,
        FORGETFULNESS,
        *MQUAKE,
        *CONFLICT,
        *ROUND,
        *DIALOGUE,
    )


def _require_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into a model.

    Args:
        prompt: a template with exactly one ``{}`` where the subject goes,
            e.g. ``"{} is located in the city of"``.
        subject: the entity the fact is about, e.g. ``"The Eiffel Tower"``.
        target_new: the answer the edited model should give, e.g. ``"Rome"``.
        target_true: the answer the unedited model is expected to give (optional).

    Example:
        >>> r = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
        >>> r.text
        'The Eiffel Tower is located in the city of'
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None

    def __post_init__(self) -> None:
        _require_text(self.prompt, "prompt")
        _require_text(self.subject, "subject")
        _require_text(self.target_new, "target_new")
        if self.target_true is not None:
            _require_text(self.target_true, "target_true")
        count = self.prompt.count(SUBJECT_SLOT)
        if count != 1:
            raise ValueError(
                f"prompt must contain exactly one '{{}}' where the subject goes, found {count} in "
                f"{self.prompt!r}; write it like '{{}} is located in the city of'"
            )
        if self.subject.strip() != self.subject:
            raise ValueError(f"subject must not start or end with spaces: {self.subject!r}")
        if self.target_true is not None and self.target_new.strip() == self.target_true.strip():
            raise ValueError(
                f"target_new equals target_true ({self.target_new!r}): nothing to edit"
            )

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace(SUBJECT_SLOT, self.subject, 1)

    @property
    def subject_span(self) -> tuple[int, int]:
        """Character span of the subject inside :attr:`text`."""
        start = self.prompt.index(SUBJECT_SLOT)
        return start, start + len(self.subject)

    @classmethod
    def from_text(
        cls, text: str, subject: str, target_new: str, target_true: str | None = None
    ) -> EditRequest:
        """Build a request from a filled prompt by locating the subject in it.

        Raises:
            ValueError: if the subject does not occur in ``text``.
        """
        _require_text(text, "prompt")
        _require_text(subject, "subject")
        if SUBJECT_SLOT in text:
            return cls(text, subject, target_new, target_true)
        idx = text.find(subject)
        if idx < 0:
            raise ValueError(
                f"subject {subject!r} does not occur in prompt {text!r}; pass a prompt that "
                "contains the subject verbatim, or a template with '{}' where it goes"
            )
        if "{" in text or "}" in text:
            raise ValueError(f"prompt {text!r} contains braces; only a single '{{}}' is allowed")
        template = text[:idx] + SUBJECT_SLOT + text[idx + len(subject) :]
        return cls(template, subject, target_new, target_true)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "target_new": self.target_new,
            "target_true": self.target_true,
        }


@dataclass(frozen=True)
class Probe:
    """One question asked of an edited model, with the answer it should give and why.

    ``expected`` is the answer the edited model should give. ``alternative``, when set, is the
    competing answer for probability comparisons (e.g. the old object for a paraphrase, the new
    object for a neighbourhood prompt). ``aliases`` are accepted spellings for generation checks.
    ``fact`` names the fact a probe scores when a measure averages several prompts of one fact
    (ConflictEdit, RoundEdit). ``followup`` is, for dialogue probes, the turn said after the
    model's own answer to ``prompt``; the model's reply to it is what gets classified.
    ``alternative_aliases`` are accepted spellings of the alternative (dialogue, multi-hop).
    ``exact`` judges a generated answer by its whole first line (see the field).
    """

    kind: str
    prompt: str
    expected: str
    alternative: str | None = None
    aliases: tuple[str, ...] = ()
    reason: str = ""
    fact: str = ""
    followup: str = ""
    alternative_aliases: tuple[str, ...] = ()
    #: a question asked in Q/A form after demonstrations: the answer is the generation's first
    #: line and must equal the expected answer or an alias (MQuAKE's judging); otherwise the
    #: generation need only start with one (a cloze statement's continuation)
    exact: bool = False

    def __post_init__(self) -> None:
        _require_text(self.kind, "probe kind")
        _require_text(self.prompt, f"{self.kind} probe prompt")
        if self.kind != ProbeKind.GENERATION:
            _require_text(self.expected, f"{self.kind} probe expected answer")
        if self.kind in ProbeKind.DIALOGUE:
            _require_text(self.followup, f"{self.kind} probe follow-up turn")
            _require_text(self.alternative, f"{self.kind} probe old answer")
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "alternative_aliases", tuple(self.alternative_aliases))


@dataclass(frozen=True)
class EditCase:
    """Requests to apply plus the probes that audit them.

    By default all requests are applied together (one batch, or one after another for methods
    that edit one fact at a time). ``steps`` splits them into edits applied in sequence, e.g.
    ``(1, 1)`` for ConflictEdit's and RoundEdit's two successive edits; probes are then also
    scored after the first step (``ProbeResult.mid``).
    """

    case_id: str
    requests: tuple[EditRequest, ...]
    probes: tuple[Probe, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    steps: tuple[int, ...] = ()
    #: also score the probes on the unedited model with only the last step applied
    #: (``ProbeResult.alone``; ConflictEdit's coverage success)
    last_step_alone: bool = False

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError(f"case {self.case_id!r} has no edit request")
        object.__setattr__(self, "requests", tuple(self.requests))
        object.__setattr__(self, "probes", tuple(self.probes))
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.steps and (sum(self.steps) != len(self.requests) or min(self.steps) < 1):
            raise ValueError(
                f"case {self.case_id!r}: steps {self.steps} must be positive and add up to its "
                f"{len(self.requests)} requests"
            )

        if self.last_step_alone and len(self.steps) < 2:
            raise ValueError(f"case {self.case_id!r}: last_step_alone needs at least two steps")

    @property
    def request(self) -> EditRequest:
        """The first (for most benchmarks, the only) request."""
        return self.requests[0]

    @property
    def edit_steps(self) -> list[tuple[EditRequest, ...]]:
        """The requests grouped into the edits applied one after another."""
        sizes = self.steps or (len(self.requests),)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [self.requests[s : s + n] for s, n in zip(starts, sizes)]

    def probes_of(self, kinds: str | Iterable[str]) -> list[Probe]:
        wanted = {kinds} if isinstance(kinds, str) else set(kinds)
        return [p for p in self.probes if p.kind in wanted]

    @classmethod
    def single(
        cls,
        case_id: str,
        request: EditRequest,
        paraphrases: Iterable[str] = (),
        neighbors: Iterable[tuple[str, str]] = (),
        locality: Iterable[tuple[str, str]] = (),
        generation: Iterable[str] = (),
        meta: Mapping[str, Any] | None = None,
    ) -> EditCase:
        """The common single-edit case: rewrite, paraphrase, neighbourhood and locality probes.

        ``neighbors`` are (prompt, true answer) pairs for other subjects; they compete with
        ``request.target_new``. ``locality`` are (prompt, answer) pairs on unrelated knowledge.
        """
        new, true = request.target_new, request.target_true
        probes = [Probe(ProbeKind.REWRITE, request.text, new, true, reason="the edit prompt")]
        probes += [
            Probe(ProbeKind.PARAPHRASE, p, new, true, reason="paraphrase of the edited fact")
            for p in paraphrases
        ]
        probes += [
            Probe(ProbeKind.NEIGHBORHOOD, p, a, new, reason="other subject sharing the old answer")
            for p, a in neighbors
        ]
        probes += [
            Probe(ProbeKind.LOCALITY, p, a, reason="unrelated fact; prediction must not change")
            for p, a in locality
        ]
        probes += [
            Probe(ProbeKind.GENERATION, p, new, reason="free generation about the subject")
            for p in generation
        ]
        return cls(case_id, (request,), tuple(probes), dict(meta or {}))
