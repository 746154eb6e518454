"""One loader per benchmark format, each turning records into :class:`~kedit.types.EditCase`.

Loaders read data in place (``--data-dir`` / ``KEDIT_DATA_DIR``); nothing is copied. A record
that cannot be an edit (subject missing from its prompt, new answer equal to the old one) is
skipped and counted in a warning, so one bad line does not stop a run of thousands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from kedit.data.challenges import dialogue_probes
from kedit.types import EditCase, EditRequest, Probe, ProbeKind

log = logging.getLogger(__name__)

Record = dict[str, Any]


def read_json_records(path: Path) -> list[Record]:
    """A JSON list, or JSON lines (``.jsonl``); errors name the file and the line at fault."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; a dataset is a JSON list of records") from None
    try:
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); a "
            "dataset file is a JSON list of records, or one JSON record per line in a .jsonl file"
        ) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON list of records (objects)")
    return data


def build_cases(
    records: Iterable[Record],
    convert: Callable[[Record, int], EditCase],
    source: str,
    limit: int | None = None,
) -> list[EditCase]:
    """Convert records, skipping (and counting) the invalid ones, up to ``limit`` cases.

    Single-edit cases with a known old answer also get the dialogue challenge probes
    (:mod:`kedit.data.challenges`).
    """
    cases: list[EditCase] = []
    skipped: list[str] = []
    for i, record in enumerate(records):
        if limit is not None and len(cases) >= limit:
            break
        try:
            cases.append(with_dialogue(convert(record, i)))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            skipped.append(f"record {i}: {err}")
    if skipped:
        log.warning(
            "%s: skipped %d record(s) that cannot be edits, first: %s",
            source,
            len(skipped),
            skipped[0],
        )
    return cases


def with_dialogue(case: EditCase) -> EditCase:
    """``case`` plus its dialogue challenge probes, if it is a single edit with an old answer."""
    if len(case.requests) != 1 or case.probes_of((*ProbeKind.DIALOGUE, *ProbeKind.MQUAKE)):
        return case
    paraphrases = case.probes_of(ProbeKind.PARAPHRASE)
    probes = dialogue_probes(case.request, paraphrases[0].prompt if paraphrases else None)
    return replace(case, probes=case.probes + tuple(probes)) if probes else case


def _str_id(record: Record, index: int, key: str = "case_id") -> str:
    return str(record.get(key, index))


# -- CounterFact, flat schema (EasyEdit / MEND split) ----------------------------------------


def counterfact_flat(record: Record, index: int) -> EditCase:
    """``prompt, subject, target_new, ground_truth, rephrase_prompt, locality_prompt,
    locality_ground_truth``."""
    request = EditRequest.from_text(
        record["prompt"], record["subject"], record["target_new"], record["ground_truth"]
    )
    neighbors = []
    if record.get("locality_prompt"):
        neighbors.append((record["locality_prompt"], record["locality_ground_truth"]))
    paraphrases = [record["rephrase_prompt"]] if record.get("rephrase_prompt") else []
    return EditCase.single(_str_id(record, index), request, paraphrases, neighbors)


# -- CounterFact, full ROME schema ------------------------------------------------------------


def rome_request(rewrite: Record) -> EditRequest:
    """A ``requested_rewrite{prompt, subject, target_new{str}, target_true{str}}`` (the ROME
    schema, also used by EVOKE and MQuAKE)."""
    return EditRequest(
        rewrite["prompt"],
        rewrite["subject"],
        rewrite["target_new"]["str"],
        rewrite["target_true"]["str"],
    )


def counterfact_rome(record: Record, index: int) -> EditCase:
    """``requested_rewrite{prompt, subject, target_new{str}, target_true{str}}`` plus
    ``paraphrase_prompts``, ``neighborhood_prompts``, ``generation_prompts``."""
    rewrite = record["requested_rewrite"]
    request = rome_request(rewrite)
    neighbors = [(p, request.target_true) for p in record.get("neighborhood_prompts", [])]
    case = EditCase.single(
        _str_id(record, index),
        request,
        paraphrases=record.get("paraphrase_prompts", []),
        neighbors=neighbors,
        generation=record.get("generation_prompts", []),
        meta={"relation_id": rewrite.get("relation_id")},
    )
    new, true = request.target_new, request.target_true
    extra = [
        Probe(
            ProbeKind.DISTRACTING_NEIGHBORHOOD,
            p,
            true,
            new,
            reason="neighbourhood prompt after the edit statement (CounterFact+)",
        )
        for p in record.get("prefix_distraction", [])
    ]
    extra += one_hop_probes(record.get("portability"))
    return replace(case, probes=case.probes + tuple(extra))


def one_hop_probes(portability: Any) -> list[Probe]:
    """EVOKE / ZsRE ``portability{New Question, New Answer[, Original Answer]}``: a question
    answerable only through the edited fact plus one more hop."""
    if not isinstance(portability, dict):
        return []
    question, answer = portability.get("New Question"), portability.get("New Answer")
    if not (isinstance(question, str) and question.strip() and isinstance(answer, str)):
        return []
    if not answer.strip():
        return []
    original = portability.get("Original Answer") or None
    return [
        Probe(
            ProbeKind.PORTABILITY_ONE_HOP,
            question,
            answer,
            original if isinstance(original, str) and original.strip() else None,
            reason="needs the edited fact plus one more hop",
        )
    ]


def counterfact_subject_specificity(record: Record, index: int) -> EditCase:
    """EVOKE's ``evoke_subj_spec``: a CounterFact-style rewrite plus one
    ``relation_specificity{prompt, answer{value, aliases}}`` probe on another relation of the
    same subject (the survey's Other Relations / Other Attribution)."""
    rewrite = record["requested_rewrite"]
    request = rome_request(rewrite)
    case = EditCase.single(
        _str_id(record, index), request, meta={"relation": rewrite.get("relation_label")}
    )
    spec = record["relation_specificity"]
    answer = spec["answer"]
    probe = Probe(
        ProbeKind.RELATION_SPECIFICITY,
        spec["prompt"],
        answer["value"],
        aliases=tuple(answer.get("aliases") or ()),
        reason=_LOCALITY_REASONS[ProbeKind.RELATION_SPECIFICITY],
    )
    return replace(case, probes=(*case.probes, probe))


# -- ZsRE, MEND schema -------------------------------------------------------------------------


def zsre_mend(record: Record, index: int) -> EditCase:
    """``subject, src, alt, answers, rephrase, loc, loc_ans``: question answering edits with a
    Natural Questions locality probe."""
    answers = record.get("answers") or []
    true = answers[0] if answers else None
    request = EditRequest.from_text(record["src"], record["subject"], record["alt"], true)
    locality = [(record["loc"], record["loc_ans"])] if record.get("loc") else []
    paraphrases = [record["rephrase"]] if record.get("rephrase") else []
    case = EditCase.single(_str_id(record, index), request, paraphrases, locality=locality)
    hops = one_hop_probes(record.get("portability"))
    return replace(case, probes=case.probes + tuple(hops)) if hops else case


# -- KnowEdit ----------------------------------------------------------------------------------


#: KnowEdit ``portability`` keys -> probe kinds (scored on the edited model's new world)
KNOWEDIT_PORTABILITY = {
    "Subject_Aliasing": ProbeKind.PORTABILITY_SUBJECT_ALIASING,
    "Reasoning": ProbeKind.PORTABILITY_REASONING,
    "Logical_Generalization": ProbeKind.PORTABILITY_LOGICAL_GENERALIZATION,
}
#: KnowEdit ``locality`` keys -> probe kinds (predictions that must not change); any other
#: locality key becomes a plain :attr:`ProbeKind.LOCALITY` probe
KNOWEDIT_LOCALITY = {
    "Relation_Specificity": ProbeKind.RELATION_SPECIFICITY,
    "Forgetfulness": ProbeKind.FORGETFULNESS,
}

_PORTABILITY_REASONS = {
    ProbeKind.PORTABILITY_SUBJECT_ALIASING: "edited fact asked with an alias of the subject",
    ProbeKind.PORTABILITY_REASONING: "needs the edited fact plus one more hop",
    ProbeKind.PORTABILITY_LOGICAL_GENERALIZATION: "a fact implied by the edited one",
}
_LOCALITY_REASONS = {
    ProbeKind.RELATION_SPECIFICITY: "another relation of the edited subject; must not change",
    ProbeKind.FORGETFULNESS: "another object of the edited relation; must not change",
    ProbeKind.LOCALITY: "unrelated fact; prediction must not change",
}


def knowedit_answers(ground_truth: Any) -> tuple[str, ...]:
    """All answers of a KnowEdit ``ground_truth``, flattened in order, empty ones dropped.

    KnowEdit stores a string, a list of strings, or a list of alias lists (one list per
    answer). The first answer is the teacher-forced target, as in EasyEdit's KnowEdit runner
    (``ground_truth[0]``, or ``ground_truth[0][0]`` for nested lists); the rest are kept as
    aliases for generation checks only.
    """
    if isinstance(ground_truth, str):
        return (ground_truth,) if ground_truth.strip() else ()
    if isinstance(ground_truth, list):
        return tuple(a for item in ground_truth for a in knowedit_answers(item))
    return ()


def knowedit(record: Record, index: int) -> EditCase:
    """KnowEdit (WikiData_counterfact, ZsRE, WikiData_recent): ``subject, prompt, target_new,
    ground_truth``, optional ``rephrase_prompt``, ``portability{Subject_Aliasing, Reasoning,
    Logical_Generalization}`` and ``locality{Relation_Specificity, Forgetfulness}``.

    Each split becomes its own probe kind (see :data:`KNOWEDIT_PORTABILITY` and
    :data:`KNOWEDIT_LOCALITY`). A list ground truth is scored on its first answer, as EasyEdit
    does; the other answers become the probe's aliases. Portability items without a prompt or
    an answer are dropped (EasyEdit's filter); unknown portability keys are ignored. A malformed
    locality item makes the record invalid, as before portability was read.
    """
    truth = record.get("ground_truth")
    truth = truth[0] if isinstance(truth, list) and truth else truth
    request = EditRequest.from_text(
        record["prompt"], record["subject"], record["target_new"], truth or None
    )
    paraphrases = [record["rephrase_prompt"]] if record.get("rephrase_prompt") else []
    case = EditCase.single(_str_id(record, index), request, paraphrases)
    probes = list(case.probes)
    for key, items in (record.get("locality") or {}).items():
        kind = KNOWEDIT_LOCALITY.get(key, ProbeKind.LOCALITY)
        for item in items or []:
            answers = knowedit_answers(item["ground_truth"])
            probes.append(
                Probe(kind, item["prompt"], answers[0], None, answers[1:], _LOCALITY_REASONS[kind])
            )
    for key, items in (record.get("portability") or {}).items():
        kind = KNOWEDIT_PORTABILITY.get(key)
        if kind is None:
            continue
        for item in items or []:
            answers = knowedit_answers(item.get("ground_truth"))
            prompt = item.get("prompt")
            if not answers or not isinstance(prompt, str) or not prompt.strip():
                continue
            probes.append(
                Probe(kind, prompt, answers[0], None, answers[1:], _PORTABILITY_REASONS[kind])
            )
    return EditCase(case.case_id, case.requests, tuple(probes), case.meta)


# -- the bundled demo set ----------------------------------------------------------------------


def demo(record: Record, index: int) -> EditCase:
    """kedit's own demo schema: template prompt, paraphrases, neighbours with answers."""
    request = EditRequest(
        record["prompt"], record["subject"], record["target_new"], record["target_true"]
    )
    neighbors = [(n["prompt"], n["answer"]) for n in record.get("neighborhood_prompts", [])]
    return EditCase.single(
        record["case_id"],
        request,
        record.get("paraphrase_prompts", []),
        neighbors,
        generation=record.get("generation_prompts", []),
        meta={"relation": record.get("relation")},
    )


def detect_format(record: Record) -> Callable[[Record, int], EditCase]:
    """Pick a converter for a record of unknown origin by its keys."""
    keys = set(record)
    if "relation_specificity" in keys and "requested_rewrite" in keys:
        return counterfact_subject_specificity
    if "requested_rewrite" in keys:
        return counterfact_rome
    if {"src", "alt", "subject"} <= keys:
        return zsre_mend
    if "locality_prompt" in keys and "ground_truth" in keys:
        return counterfact_flat
    if "target_true" in keys and "neighborhood_prompts" in keys:
        return demo
    if {"prompt", "subject", "target_new"} <= keys:
        return knowedit
    raise ValueError(
        f"cannot tell the format of a record with keys {sorted(keys)}; kedit reads CounterFact "
        "(flat or ROME schema), ZsRE (MEND schema), KnowEdit and its demo schema"
    )


def probe_summary(cases: list[EditCase]) -> dict[str, int]:
    """How many probes of each kind the cases hold."""
    counts = dict.fromkeys(ProbeKind.ALL, 0)
    for case in cases:
        for probe in case.probes:
            counts[probe.kind] = counts.get(probe.kind, 0) + 1
    return counts


__all__ = [
    "Probe",
    "build_cases",
    "counterfact_flat",
    "counterfact_rome",
    "counterfact_subject_specificity",
    "demo",
    "detect_format",
    "knowedit",
    "knowedit_answers",
    "one_hop_probes",
    "read_json_records",
    "rome_request",
    "with_dialogue",
    "zsre_mend",
]
