"""Loaders for benchmarks whose cases hold several edits: MQuAKE, ConflictEdit, RoundEdit.

ConflictEdit and RoundEdit (Li et al. 2024) score each fact over its rewrite prompt plus ten
prompts of its relation, read from ``conflict_prompts.json`` / ``round_prompts.json`` next to
the data file; :func:`conflict_edit` and :func:`round_edit` take that file's folder and return
the record converter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kedit.data.loaders import rome_request
from kedit.types import SUBJECT_SLOT, EditCase, EditRequest, Probe, ProbeKind

Record = dict[str, Any]
Converter = Callable[[Record, int], EditCase]

# -- MQuAKE ------------------------------------------------------------------------------------

#: kedit's own demonstrations for the multi-hop questions in the ``mquake-cloze`` variant; facts
#: chosen to be stable and unrelated to MQuAKE's edits
MULTI_HOP_SHOTS = (
    ("What is the capital of the country where the Eiffel Tower is located?", "Paris"),
    ("What is the official language of the country where Mount Fuji is located?", "Japanese"),
    ("On which continent is the country whose capital is Nairobi?", "Africa"),
    ("What currency is used in the country where the Colosseum is located?", "Euro"),
)
MQUAKE_PROMPTS = "prompts"  # the folder beside the data file that holds MQuAKE's prompts


def multi_hop_prompt(question: str, demonstrations: str | None = None) -> str:
    """``question`` in Q/A form after ``demonstrations`` (MQuAKE's ``multihop-prompts.txt``, one
    "Q: ... A: ..." line each), ending where the answer goes; without them, after kedit's own
    four, written as kedit's earlier variant wrote them ("Q: ...\\nA: ...")."""
    if demonstrations is None:
        shots = "".join(f"Q: {q}\nA: {a}\n" for q, a in MULTI_HOP_SHOTS)
        return f"{shots}Q: {question}\nA:"
    return f"{demonstrations.rstrip()}\nQ: {question} A:"


def _aliases(values: Any) -> tuple[str, ...]:
    return tuple(v for v in values or () if isinstance(v, str) and v.strip())


def mquake(folder: Path) -> Converter:
    """MQuAKE with the benchmark's own prompts (``prompts/rel-prompts.json`` and
    ``prompts/multihop-prompts.txt`` beside the data file): ``requested_rewrite[]`` applied
    together; edited facts asked by their cloze, unedited hops by their question after the
    relation's eight demonstrations, the multi-hop questions after the few-shot prefix."""
    prompts = folder / MQUAKE_PROMPTS
    try:
        relations = json.loads((prompts / "rel-prompts.json").read_text(encoding="utf-8"))
        demonstrations = (prompts / "multihop-prompts.txt").read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"MQuAKE's prompts are read from {prompts}/ (rel-prompts.json, multihop-prompts.txt,"
            f" as the benchmark ships them): {err.filename} is missing; or use the dataset "
            "mquake-cloze, which needs none"
        ) from None

    def convert(record: Record, index: int) -> EditCase:
        hops = record.get("new_single_hops") or []
        triples = (record.get("orig") or {}).get("new_triples") or []
        edited = {tuple(t) for t in (record.get("orig") or {}).get("edit_triples") or []}
        if len(triples) != len(hops):
            raise ValueError("MQuAKE record without orig.new_triples for its single hops")
        chain = []
        for hop, triple in zip(hops, triples):
            if tuple(triple) in edited:
                chain.append(_hop(hop["cloze"], hop, "an edited hop, asked by its cloze"))
            else:
                shots = relations.get(triple[1])
                if shots is None:
                    raise ValueError(f"no demonstrations in rel-prompts.json for {triple[1]}")
                question = f"{shots.rstrip()}\nQ: {hop['question']} A:"
                chain.append(_hop(question, hop, "an unedited hop, asked as MQuAKE", exact=True))
        return _mquake_case(record, index, chain, demonstrations, exact=True)

    return convert


def mquake_cloze(record: Record, index: int) -> EditCase:
    """kedit's earlier MQuAKE variant: every hop of the new chain by its cloze statement,
    kedit's own four demonstrations before the multi-hop questions, every answer judged by how
    the generation starts."""
    hops = record.get("new_single_hops") or []
    chain = [_hop(h["cloze"], h, "one hop of the new reasoning chain") for h in hops]
    return _mquake_case(record, index, chain, None, exact=False)


def _hop(prompt: str, hop: Record, reason: str, exact: bool = False) -> Probe:
    aliases = _aliases(hop.get("answer_alias"))
    return Probe(
        ProbeKind.NEW_CHAIN_HOP, prompt, hop["answer"], aliases=aliases, reason=reason, exact=exact
    )


def _mquake_case(
    record: Record, index: int, chain: list[Probe], demonstrations: str | None, exact: bool
) -> EditCase:
    """The edited facts by their cloze (edit-wise success), the new chain's hops, and each
    multi-hop question with the new and with the original answer."""
    requests = tuple(rome_request(r) for r in record["requested_rewrite"])
    aliases_by_cloze = {
        h["cloze"]: _aliases(h.get("answer_alias")) for h in record.get("new_single_hops") or []
    }
    probes = [
        Probe(
            ProbeKind.EDITED_HOP,
            r.text,
            r.target_new,
            r.target_true,
            aliases_by_cloze.get(r.text, ()),
            "an edited fact, asked by its cloze statement",
        )
        for r in requests
    ]
    probes += chain
    for question in record["questions"]:
        prompt = multi_hop_prompt(question, demonstrations)
        probes.append(
            Probe(
                ProbeKind.MULTI_HOP,
                prompt,
                record["new_answer"],
                record.get("answer"),
                _aliases(record.get("new_answer_alias")),
                "multi-hop question through the edited facts; expects the new answer",
                exact=exact,
            )
        )
        probes.append(
            Probe(
                ProbeKind.MULTI_HOP_ORIGINAL,
                prompt,
                record["answer"],
                aliases=_aliases(record.get("answer_alias")),
                reason="the same question; the original answer should be gone after editing",
                exact=exact,
            )
        )
    return EditCase(str(record.get("case_id", index)), requests, tuple(probes))


# -- ConflictEdit and RoundEdit ----------------------------------------------------------------


def relation_prompts(path: Path) -> dict[str, list[str]]:
    """Relation id -> prompt templates (``{}`` for the subject), validated."""
    prompts = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(prompts, dict):
        raise ValueError(f"{path}: expected a mapping of relation ids to prompt lists")
    return {rel: [p for p in ps if p.count(SUBJECT_SLOT) == 1] for rel, ps in prompts.items()}


def _request(edit: Record) -> EditRequest:
    return EditRequest(
        edit["relation"]["prompt"],
        edit["subject"]["label"],
        edit["new_object"]["label"],
        edit["object"]["label"],
    )


def fact_probes(
    kind: str,
    relation: Record,
    subject: str,
    obj: str,
    prompts: dict[str, list[str]],
    reason: str,
    fact: str = "",
) -> list[Probe]:
    """One probe per prompt of ``relation`` (its own prompt, then the relation's prompts),
    subject filled in, all expecting ``obj``."""
    templates = [relation["prompt"], *prompts.get(relation["id"], [])]
    return [
        Probe(kind, t.replace(SUBJECT_SLOT, subject, 1), obj, reason=reason, fact=fact)
        for t in dict.fromkeys(templates)
    ]


def conflict_edit(folder: Path) -> Converter:
    """ConflictEdit records: ``edits[0]`` then ``edits[1]`` as two steps. Coverage records
    (the same subject and relation edited twice, o -> o1 -> o2) are also scored with the second
    edit applied alone to the unedited model, for the coverage success."""
    prompts = relation_prompts(folder / "conflict_prompts.json")

    def convert(record: Record, index: int) -> EditCase:
        first, second = record["edits"][:2]
        kind = record.get("type")
        if kind not in ("coverage", "reverse", "composite"):
            raise ValueError(
                f"ConflictEdit type {kind!r}: the types are coverage, reverse and composite"
            )
        old = first["new_object"]["label"]
        probes = fact_probes(
            ProbeKind.CONFLICT_OLD,
            first["relation"],
            first["subject"]["label"],
            old,
            prompts,
            "the first edit's fact (k_old)",
        )
        probes += fact_probes(
            ProbeKind.CONFLICT_EXPLICIT,
            second["relation"],
            second["subject"]["label"],
            second["new_object"]["label"],
            prompts,
            "the second edit's fact (explicit k_new)",
        )
        if kind == "reverse":  # (s', r, o1): the first relation with the second edit's subject
            implied = (first["relation"], second["new_object"]["label"], old)
        elif kind == "composite":  # the first edit's subject and relation take the second's object
            implied = (first["relation"], first["subject"]["label"], second["new_object"]["label"])
        else:  # coverage: the second edit overwrites the first; nothing is implied
            implied = None
        if implied is not None:
            probes += fact_probes(
                ProbeKind.CONFLICT_IMPLICIT, *implied, prompts, "the fact both edits imply"
            )
        if kind == "composite":
            tied = record["triples"][0]
            probes += fact_probes(
                ProbeKind.TIED_FACT,
                tied["relation"],
                tied["subject"]["label"],
                tied["object"]["label"],
                prompts,
                "the rule's other premise, which no edit touches",
            )
        return EditCase(
            str(index),
            (_request(first), _request(second)),
            tuple(probes),
            {"type": kind, "rule": record.get("rule")},
            steps=(1, 1),
            last_step_alone=kind == "coverage",
        )

    return convert


def reversed_relation(folder: Path) -> Converter:
    """Reversed Relation portability from ConflictEdit's reverse records: the first edit
    ``(s, r, o -> o*)`` alone, asked backwards through the inverse relation of the second edit,
    ``(o*, r', ?)``, which should now answer ``s``."""
    prompts = relation_prompts(folder / "conflict_prompts.json")

    def convert(record: Record, index: int) -> EditCase:
        first, second = record["edits"][:2]
        request = _request(first)
        if second["subject"]["label"] != request.target_new:
            raise ValueError("the second edit does not start from the first edit's new object")
        probes = [Probe(ProbeKind.REWRITE, request.text, request.target_new, request.target_true)]
        probes += fact_probes(
            ProbeKind.PORTABILITY_REVERSED_RELATION,
            second["relation"],
            request.target_new,
            request.subject,
            prompts,
            "the edited fact asked through the inverse relation",
        )
        return EditCase(str(index), (request,), tuple(probes), {"rule": record.get("rule")})

    return convert


def round_edit(folder: Path) -> Converter:
    """RoundEdit records: o -> o* then o* -> o as two steps; probes for o*, o and every other
    true object of the 1-to-N relation, over the relation's prompts."""
    prompts = relation_prompts(folder / "round_prompts.json")

    def convert(record: Record, index: int) -> EditCase:
        edit = record["edit"]
        there = _request(edit)
        back = EditRequest(there.prompt, there.subject, there.target_true, there.target_new)
        relation, subject = edit["relation"], there.subject
        probes = fact_probes(
            ProbeKind.ROUND_NEW, relation, subject, there.target_new, prompts, "o*, edited in"
        )
        probes += fact_probes(
            ProbeKind.ROUND_TRUE, relation, subject, there.target_true, prompts, "o, edited back"
        )
        others = dict.fromkeys(
            o["label"] for o in record["true_objects"] if o["label"] != there.target_true
        )
        if not others:
            raise ValueError("RoundEdit record without another true object")
        for label in others:
            probes += fact_probes(
                ProbeKind.ROUND_OTHER,
                relation,
                subject,
                label,
                prompts,
                "another true object; its probability should not fall",
                fact=label,
            )
        return EditCase(
            str(index), (there, back), tuple(probes), {"type": record.get("type")}, steps=(1, 1)
        )

    return convert
