"""KnowEdit's portability and extra locality splits: typed probes, metrics, one evaluation."""

import json

import pytest

from kedit.api import evaluate
from kedit.data import dataset_path, load_dataset
from kedit.data.loaders import KNOWEDIT_LOCALITY, KNOWEDIT_PORTABILITY, knowedit, knowedit_answers
from kedit.eval.metric import METRICS, needs_of
from kedit.eval.scoring import ProbeResult, ProbeScore
from kedit.model.lm import TargetScore
from kedit.types import Probe, ProbeKind
from tests.conftest import data_dir, tiny_model
from tests.tiny_configs import TINY

PORTABILITY_METRICS = [
    "portability_subject_aliasing_token_acc",
    "portability_reasoning_token_acc",
    "portability_logical_generalization_token_acc",
    "portability_token_acc",
]
LOCALITY_METRICS = ["relation_specificity_top1_agreement", "forgetfulness_top1_agreement"]
LOCALITY_KINDS = (ProbeKind.RELATION_SPECIFICITY, ProbeKind.FORGETFULNESS)


def made_up_record(subject: str = "Lake Vorrin", new: str = "Chile") -> dict:
    """A KnowEdit-format record about an invented lake, with every split and answer shape."""
    return {
        "subject": subject,
        "prompt": f"{subject} lies in the country of",
        "target_new": new,
        "ground_truth": ["Peru"],
        "rephrase_prompt": f"The country that contains {subject} is",
        "portability": {
            "Subject_Aliasing": [
                {"prompt": f"Old {subject} lies in the country of", "ground_truth": new}
            ],
            "Reasoning": [
                {
                    "prompt": f"The capital of the country where {subject} lies is",
                    "ground_truth": [["Santiago", "Santiago de Chile"]],
                }
            ],
            "Logical_Generalization": [
                {"prompt": f"A country that contains {subject} is", "ground_truth": [new, "CL"]},
                {"prompt": "", "ground_truth": "dropped: no prompt"},
                {"prompt": "dropped: no answer", "ground_truth": []},
            ],
            "Unknown_Split": [{"prompt": "ignored", "ground_truth": "ignored"}],
        },
        "locality": {
            "Relation_Specificity": [
                {"prompt": f"The depth of {subject} is", "ground_truth": ["212 metres"]}
            ],
            "Forgetfulness": [
                {
                    "prompt": f"{subject}, which is not in {new}, borders",
                    "ground_truth": [["Bolivia", "Plurinational State of Bolivia"]],
                }
            ],
            "Other": [{"prompt": "Water boils at", "ground_truth": "100 degrees"}],
        },
    }


def test_loader_builds_typed_probes_from_a_literal_record():
    case = knowedit(made_up_record(), 7)
    assert case.case_id == "7"
    assert case.request.target_new == "Chile" and case.request.target_true == "Peru"
    by_kind = {k: case.probes_of(k) for k in ProbeKind.ALL}
    assert len(by_kind[ProbeKind.REWRITE]) == len(by_kind[ProbeKind.PARAPHRASE]) == 1
    (alias,) = by_kind[ProbeKind.PORTABILITY_SUBJECT_ALIASING]
    assert (alias.prompt, alias.expected, alias.aliases) == (
        "Old Lake Vorrin lies in the country of",
        "Chile",
        (),
    )
    (hop,) = by_kind[ProbeKind.PORTABILITY_REASONING]
    assert (hop.expected, hop.aliases) == ("Santiago", ("Santiago de Chile",))
    (logical,) = by_kind[ProbeKind.PORTABILITY_LOGICAL_GENERALIZATION]  # empty items dropped
    assert (logical.expected, logical.aliases) == ("Chile", ("CL",))
    (spec,) = by_kind[ProbeKind.RELATION_SPECIFICITY]
    assert (spec.prompt, spec.expected) == ("The depth of Lake Vorrin is", "212 metres")
    (forget,) = by_kind[ProbeKind.FORGETFULNESS]
    assert (forget.expected, forget.aliases) == ("Bolivia", ("Plurinational State of Bolivia",))
    (other,) = by_kind[ProbeKind.LOCALITY]  # an unknown locality key stays plain locality
    assert other.expected == "100 degrees"
    split_kinds = {*ProbeKind.PORTABILITY, *LOCALITY_KINDS, ProbeKind.LOCALITY}
    assert all(p.alternative is None for p in case.probes if p.kind in split_kinds)
    assert len(case.probes) == 8  # the unknown portability split is ignored


def test_answers_are_flattened_in_order():
    assert knowedit_answers("Rome") == ("Rome",)
    assert knowedit_answers(["Rome", "Roma"]) == ("Rome", "Roma")
    assert knowedit_answers([["Rome", "Roma"], ["Milan"]]) == ("Rome", "Roma", "Milan")
    assert knowedit_answers(["", " "]) == ()
    assert knowedit_answers(None) == ()


def _first_answer(ground_truth):
    """EasyEdit's runner: ``ground_truth``, its first item, or the first item of that."""
    while isinstance(ground_truth, list):
        ground_truth = ground_truth[0]
    return ground_truth


@pytest.mark.parametrize("name", ["knowedit-counterfact", "knowedit-zsre"])
def test_loader_on_the_first_records_of_the_real_files(name):
    raw = json.loads(dataset_path(name, data_dir()).read_text(encoding="utf-8"))[:3]
    cases = load_dataset(name, data_dir(), limit=3)
    assert [c.case_id for c in cases] == ["0", "1", "2"]
    kinds = {**KNOWEDIT_PORTABILITY, **KNOWEDIT_LOCALITY}
    for record, case in zip(raw, cases):
        wanted = [
            (kinds[key], item["prompt"], _first_answer(item["ground_truth"]))
            for section in ("locality", "portability")
            for key, items in (record.get(section) or {}).items()
            for item in items
        ]
        got = [(p.kind, p.prompt, p.expected) for p in case.probes if p.kind in kinds.values()]
        assert sorted(got) == sorted(wanted)
        assert {k for k, _, _ in wanted} & set(ProbeKind.PORTABILITY)
        assert ProbeKind.RELATION_SPECIFICITY in {k for k, _, _ in wanted}


def ts(targets, argmax):
    return TargetScore(tuple(targets), tuple(-1.0 for _ in targets), tuple(argmax))


def result(kind, targets, pre_argmax, post_argmax):
    probe = Probe(kind, "q", "answer")
    return ProbeResult(
        probe, ProbeScore(ts(targets, pre_argmax)), ProbeScore(ts(targets, post_argmax))
    )


def test_portability_and_locality_metrics_by_hand():
    alias_a = result(ProbeKind.PORTABILITY_SUBJECT_ALIASING, [1, 2], [1, 9], [1, 2])  # .5 -> 1
    alias_b = result(ProbeKind.PORTABILITY_SUBJECT_ALIASING, [3], [4], [3])  # 0 -> 1
    hop = result(ProbeKind.PORTABILITY_REASONING, [5, 6, 7], [5, 0, 0], [5, 6, 0])  # 1/3 -> 2/3
    spec = result(ProbeKind.RELATION_SPECIFICITY, [4, 5], [4, 7], [4, 8])  # 1 of 2 kept
    forget = result(ProbeKind.FORGETFULNESS, [9, 9, 9], [1, 2, 3], [1, 2, 3])  # all kept
    rows = [alias_a, alias_b, hop, spec, forget]

    aliasing = METRICS["portability_subject_aliasing_token_acc"]
    assert aliasing(rows, "pre") == pytest.approx(0.25)
    assert aliasing(rows, "post") == pytest.approx(1.0)
    reasoning = METRICS["portability_reasoning_token_acc"]
    assert reasoning(rows, "pre") == pytest.approx(1 / 3)
    assert reasoning(rows, "post") == pytest.approx(2 / 3)
    assert METRICS["portability_logical_generalization_token_acc"](rows) is None
    pooled = METRICS["portability_token_acc"]
    assert pooled(rows, "pre") == pytest.approx((0.5 + 0 + 1 / 3) / 3)
    assert pooled(rows, "post") == pytest.approx((1 + 1 + 2 / 3) / 3)

    assert METRICS["relation_specificity_top1_agreement"](rows) == pytest.approx(0.5)
    assert METRICS["forgetfulness_top1_agreement"](rows) == pytest.approx(1.0)
    assert METRICS["locality_top1_agreement"](rows) == pytest.approx(0.75)

    for name in PORTABILITY_METRICS:
        m = METRICS[name]
        assert (m.group, m.protocol, m.paired) == (
            "portability",
            "teacher-forced token accuracy",
            False,
        )
    for name in LOCALITY_METRICS:
        m = METRICS[name]
        assert (m.group, m.protocol, m.paired) == ("locality", "top-1 agreement", True)
    needs = needs_of([METRICS[n] for n in PORTABILITY_METRICS + LOCALITY_METRICS])
    assert needs.generation == frozenset()
    assert needs.scores == {*ProbeKind.PORTABILITY, *LOCALITY_KINDS}


def test_tiny_model_evaluation_reports_the_new_metrics(tokenizer, env):
    cases = [
        knowedit(made_up_record("Lake Vorrin", "Chile"), 0),
        knowedit(made_up_record("Mount Tessaly", "Nepal"), 1),
    ]
    report = evaluate(
        tiny_model("llama"),
        tokenizer,
        cases,
        "ft-m",
        overrides=TINY["ft-m"],
        env=env,
        progress=False,
    )
    summary = report.summary
    assert summary["cases"] == 2 and summary["errors"] == 0
    for name in PORTABILITY_METRICS:
        entry = summary["metrics"][name]
        assert entry["n"] == 2 and entry["group"] == "portability"
        assert entry["protocol"] == "teacher-forced token accuracy"
        assert 0.0 <= entry["pre"] <= 1.0 and 0.0 <= entry["post"] <= 1.0
    for name in LOCALITY_METRICS:
        entry = summary["metrics"][name]
        assert entry["n"] == 2 and entry["group"] == "locality"
        assert entry["protocol"] == "top-1 agreement"
        assert "pre" not in entry and 0.0 <= entry["post"] <= 1.0
