"""Loaders of the pitfalls benchmarks, on small records written here in their schemas."""

import json

import pytest

from kedit.data import load_dataset
from kedit.data.loaders import (
    build_cases,
    counterfact_rome,
    counterfact_subject_specificity,
    zsre_mend,
)
from kedit.data.multi_edit import (
    conflict_edit,
    mquake,
    mquake_cloze,
    multi_hop_prompt,
    reversed_relation,
    round_edit,
)
from kedit.types import ProbeKind
from tests.conftest import data_dir


def entity(label, id_="Q1"):
    return {"id": id_, "label": label}


def relation(id_, prompt):
    return {"id": id_, "prompt": prompt, "query": "?", "label": id_}


def edit(rel, subject, obj, new):
    return {
        "relation": rel,
        "subject": entity(subject),
        "object": entity(obj),
        "new_object": entity(new),
    }


CITIZEN = relation("P27", "The citizenship of {} is")
JURISDICTION = relation("P1001", "The jurisdiction of {} is")
POSITION = relation("P39", "{} held the position of")
FATHER = relation("P22", "The father of {} is")
CHILD = relation("P40", "The child of {} is")


@pytest.fixture
def pitfalls_dir(tmp_path):
    prompts = {
        "P27": ["{} is a citizen of", "The nationality of {} is"],
        "P1001": ["{} applies to"],
        "P39": ["{} served as"],
        "P22": ["{} was fathered by"],
        "P40": ["{}'s child is"],
    }
    (tmp_path / "conflict_prompts.json").write_text(json.dumps(prompts))
    (tmp_path / "round_prompts.json").write_text(json.dumps({"P27": ["{} holds citizenship of"]}))
    return tmp_path


def test_conflict_composite_case(pitfalls_dir):
    record = {
        "rule": "P39&P1001>P27",
        "type": "composite",
        "triples": [{"relation": POSITION, "subject": entity("Irwin"), "object": entity("MP")}],
        "edits": [
            edit(JURISDICTION, "MP", "Canada", "Hungary"),
            edit(CITIZEN, "Irwin", "Canada", "Ireland"),
        ],
    }
    case = conflict_edit(pitfalls_dir)(record, 0)
    assert case.steps == (1, 1) and [r.target_new for r in case.requests] == ["Hungary", "Ireland"]
    by_kind = {k: case.probes_of(k) for k in ProbeKind.CONFLICT}
    # the first edit's fact over its own prompt and the relation's prompts
    assert [p.prompt for p in by_kind[ProbeKind.CONFLICT_OLD]] == [
        "The jurisdiction of MP is",
        "MP applies to",
    ]
    assert {p.expected for p in by_kind[ProbeKind.CONFLICT_OLD]} == {"Hungary"}
    assert {p.expected for p in by_kind[ProbeKind.CONFLICT_EXPLICIT]} == {"Ireland"}
    assert len(by_kind[ProbeKind.CONFLICT_EXPLICIT]) == 3
    # composite: the first edit's subject and relation with the second edit's object
    assert [(p.prompt, p.expected) for p in by_kind[ProbeKind.CONFLICT_IMPLICIT]] == [
        ("The jurisdiction of MP is", "Ireland"),
        ("MP applies to", "Ireland"),
    ]
    assert [(p.prompt, p.expected) for p in by_kind[ProbeKind.TIED_FACT]] == [
        ("Irwin held the position of", "MP"),
        ("Irwin served as", "MP"),
    ]


def test_conflict_reverse_case(pitfalls_dir):
    record = {
        "type": "reverse",
        "triples": [],
        "edits": [edit(FATHER, "Ann", "Bob", "Carl"), edit(CHILD, "Carl", "Dan", "Eve")],
    }
    case = conflict_edit(pitfalls_dir)(record, 3)
    # reverse: the first relation asked of the second edit's new object, expecting o1
    implied = case.probes_of(ProbeKind.CONFLICT_IMPLICIT)
    assert [(p.prompt, p.expected) for p in implied] == [
        ("The father of Eve is", "Carl"),
        ("Eve was fathered by", "Carl"),
    ]
    assert not case.probes_of(ProbeKind.TIED_FACT)
    # Reversed Relation: the first edit alone, asked through the inverse relation
    single = reversed_relation(pitfalls_dir)(record, 3)
    assert [r.target_new for r in single.requests] == ["Carl"]
    backwards = single.probes_of(ProbeKind.PORTABILITY_REVERSED_RELATION)
    assert [(p.prompt, p.expected) for p in backwards] == [
        ("The child of Carl is", "Ann"),
        ("Carl's child is", "Ann"),
    ]
    with pytest.raises(ValueError, match="coverage, reverse and composite"):
        conflict_edit(pitfalls_dir)({**record, "type": "chain"}, 0)


def test_conflict_coverage_case(pitfalls_dir):
    """Coverage: the same subject and relation edited twice (o -> o1 -> o2), scored after both
    edits and with the second edit alone."""
    record = {
        "type": "coverage",
        "triples": [],
        "edits": [edit(FATHER, "Ann", "Bob", "Carl"), edit(FATHER, "Ann", "Carl", "Dan")],
    }
    case = conflict_edit(pitfalls_dir)(record, 5)
    assert case.steps == (1, 1) and case.last_step_alone
    assert [r.target_new for r in case.requests] == ["Carl", "Dan"]
    assert {p.expected for p in case.probes_of(ProbeKind.CONFLICT_OLD)} == {"Carl"}
    assert {p.expected for p in case.probes_of(ProbeKind.CONFLICT_EXPLICIT)} == {"Dan"}
    assert not case.probes_of(ProbeKind.CONFLICT_IMPLICIT)


def test_coverage_records_of_the_shared_data_load():
    cases = load_dataset("conflict-coverage", data_dir(), limit=5)
    assert len(cases) == 5 and all(c.last_step_alone for c in cases)


def test_round_edit_case(pitfalls_dir):
    record = {
        "type": "1-3@P27",
        "edit": edit(CITIZEN, "Ann", "France", "Peru"),
        "true_objects": [entity("France"), entity("Italy"), entity("Spain")],
    }
    case = round_edit(pitfalls_dir)(record, 0)
    there, back = case.requests
    assert (there.target_true, there.target_new) == ("France", "Peru")
    assert (back.target_true, back.target_new) == ("Peru", "France")
    assert case.steps == (1, 1)
    others = case.probes_of(ProbeKind.ROUND_OTHER)
    assert {(p.fact, p.expected) for p in others} == {("Italy", "Italy"), ("Spain", "Spain")}
    assert [p.prompt for p in case.probes_of(ProbeKind.ROUND_NEW)] == [
        "The citizenship of Ann is",
        "Ann holds citizenship of",
    ]
    alone = {**record, "true_objects": [entity("France")]}
    assert build_cases([alone], round_edit(pitfalls_dir), "test") == []  # skipped, counted


MQUAKE_RECORD = {
    "case_id": 1,
    "requested_rewrite": [
        {
            "prompt": "{} is a citizen of",
            "subject": "Ellie Kemper",
            "target_new": {"str": "Croatia"},
            "target_true": {"str": "United States of America"},
        }
    ],
    "questions": ["Who heads the state Ellie Kemper is a citizen of?", "Q2?", "Q3?"],
    "answer": "Donald Trump",
    "answer_alias": ["Trump"],
    "new_answer": "Kolinda Grabar-Kitarović",
    "new_answer_alias": ["Grabar-Kitarović"],
    "new_single_hops": [
        {
            "question": "What is the country of citizenship of Ellie Kemper?",
            "cloze": "Ellie Kemper is a citizen of",
            "answer": "Croatia",
            "answer_alias": ["CRO"],
        },
        {
            "question": "What is the name of the current head of state in Croatia?",
            "cloze": "The head of state of Croatia is",
            "answer": "Kolinda",
            "answer_alias": [],
        },
    ],
    "orig": {
        "new_triples": [["Q72077", "P27", "Q224"], ["Q224", "P35", "Q3176299"]],
        "edit_triples": [["Q72077", "P27", "Q224"]],
    },
}


def test_mquake_case_asks_as_the_benchmark_does():
    """Edited facts by their cloze; the unedited hop by its question after the relation's eight
    demonstrations (rel-prompts.json); the multi-hop questions after multihop-prompts.txt,
    judged by their whole answer line."""
    folder = data_dir() / "mquake"
    prompts = folder / "prompts"
    relations = json.loads((prompts / "rel-prompts.json").read_text())
    demonstrations = (prompts / "multihop-prompts.txt").read_text()
    case = mquake(folder)(MQUAKE_RECORD, 0)
    assert case.case_id == "1" and not case.steps  # all edits applied together
    (hop,) = case.probes_of(ProbeKind.EDITED_HOP)
    assert (hop.prompt, hop.expected, hop.aliases, hop.exact) == (
        "Ellie Kemper is a citizen of",
        "Croatia",
        ("CRO",),
        False,
    )
    edited, unedited = case.probes_of(ProbeKind.NEW_CHAIN_HOP)
    assert edited.prompt == "Ellie Kemper is a citizen of" and not edited.exact
    assert unedited.exact and unedited.prompt == (
        relations["P35"] + "\nQ: What is the name of the current head of state in Croatia? A:"
    )
    multi = case.probes_of(ProbeKind.MULTI_HOP)
    assert len(multi) == 3 and multi[0].aliases == ("Grabar-Kitarović",) and multi[0].exact
    assert multi[0].prompt == (
        demonstrations.rstrip() + "\nQ: Who heads the state Ellie Kemper is a citizen of? A:"
    )
    original = case.probes_of(ProbeKind.MULTI_HOP_ORIGINAL)
    assert {p.expected for p in original} == {"Donald Trump"}
    # multi-edit benchmarks get no dialogue probes, even with one edit
    assert not build_cases([MQUAKE_RECORD], mquake(folder), "t")[0].probes_of(ProbeKind.DIALOGUE)
    with pytest.raises(FileNotFoundError, match="mquake-cloze"):
        mquake(folder / "nowhere")


def test_mquake_cloze_keeps_kedit_s_earlier_variant():
    case = mquake_cloze(MQUAKE_RECORD, 0)
    hops = case.probes_of(ProbeKind.NEW_CHAIN_HOP)
    assert [h.prompt for h in hops] == [h["cloze"] for h in MQUAKE_RECORD["new_single_hops"]]
    multi = case.probes_of(ProbeKind.MULTI_HOP)
    assert multi[0].prompt == multi_hop_prompt(MQUAKE_RECORD["questions"][0]) and not multi[0].exact
    assert multi[0].prompt.endswith("Q: Who heads the state Ellie Kemper is a citizen of?\nA:")


def test_evoke_record_gets_distracting_neighbours_one_hop_and_dialogue():
    record = {
        "case_id": 0,
        "requested_rewrite": {
            "prompt": "{} originates from",
            "subject": "Spike Hughes",
            "target_new": {"str": "Philadelphia"},
            "target_true": {"str": "London"},
        },
        "paraphrase_prompts": ["Spike Hughes is native to"],
        "neighborhood_prompts": ["Max Mosley originates from"],
        "prefix_distraction": [
            "Spike Hughes originates from Philadelphia. Max Mosley originates from"
        ],
        "portability": {
            "New Question": "What food is the city Spike Hughes comes from known for?",
            "New Answer": "Cheesesteaks",
            "Original Answer": "Fish and chips",
        },
    }
    (case,) = build_cases([record], counterfact_rome, "t")
    (n_plus,) = case.probes_of(ProbeKind.DISTRACTING_NEIGHBORHOOD)
    assert (n_plus.expected, n_plus.alternative) == ("London", "Philadelphia")
    (hop,) = case.probes_of(ProbeKind.PORTABILITY_ONE_HOP)
    assert (hop.expected, hop.alternative) == ("Cheesesteaks", "Fish and chips")
    dialogue = {p.kind: p for p in case.probes_of(ProbeKind.DIALOGUE)}
    assert set(dialogue) == set(ProbeKind.DIALOGUE)
    challenge = dialogue[ProbeKind.DIALOGUE_CHALLENGE]
    assert challenge.prompt == "Spike Hughes originates from"
    assert (challenge.expected, challenge.alternative) == ("Philadelphia", "London")
    assert "I am pretty sure that Spike Hughes originates from London" in challenge.followup
    assert challenge.followup.endswith("\nSpike Hughes originates from")
    # several turns later, the question is asked with the case's paraphrase
    assert dialogue[ProbeKind.DIALOGUE_REPHRASE].followup.endswith("\nSpike Hughes is native to")


def test_subject_specificity_and_zsre_one_hop():
    spec = {
        "requested_rewrite": {
            "prompt": "The citizenship of {} is",
            "subject": "Leonardo DiCaprio",
            "target_new": {"str": "Syria"},
            "target_true": {"str": "United States of America"},
        },
        "relation_specificity": {
            "prompt": "The mother of Leonardo DiCaprio is",
            "answer": {"value": "Irmelin DiCaprio", "aliases": ["Irmelin Indenbirken"]},
        },
    }
    (probe,) = counterfact_subject_specificity(spec, 0).probes_of(ProbeKind.RELATION_SPECIFICITY)
    assert (probe.expected, probe.aliases) == ("Irmelin DiCaprio", ("Irmelin Indenbirken",))
    zsre = {
        "subject": "IAAF Combined Events Challenge",
        "src": "When was the inception of IAAF Combined Events Challenge?",
        "alt": "2006",
        "answers": ["1998"],
        "portability": {"New Question": "What sport is it?", "New Answer": "Athletics"},
    }
    (hop,) = zsre_mend(zsre, 0).probes_of(ProbeKind.PORTABILITY_ONE_HOP)
    assert (hop.prompt, hop.expected, hop.alternative) == ("What sport is it?", "Athletics", None)


def test_a_pitfalls_file_is_recognised_by_its_keys(pitfalls_dir):
    record = {
        "type": "1-2@P27",
        "edit": edit(CITIZEN, "Ann", "France", "Peru"),
        "true_objects": [entity("France"), entity("Italy")],
    }
    path = pitfalls_dir / "mine.json"
    path.write_text(json.dumps([record]))
    (case,) = load_dataset(str(path))
    assert case.steps == (1, 1) and case.probes_of(ProbeKind.ROUND_OTHER)
