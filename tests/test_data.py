"""Loaders on the shared benchmark data (read in place) and the bundled demo set."""

import json

import pytest

from kedit.data import DATASETS, dataset_path, load_dataset
from kedit.data.loaders import probe_summary
from kedit.types import ProbeKind
from tests.conftest import data_dir


def test_demo_set_is_bundled_and_complete():
    cases = load_dataset("demo")
    assert len(cases) >= 30
    relations = {c.meta["relation"] for c in cases}
    assert len(relations) >= 8
    for case in cases:
        assert case.request.target_true and case.request.target_true != case.request.target_new
        assert len(case.probes_of(ProbeKind.PARAPHRASE)) >= 2
        neighbours = case.probes_of(ProbeKind.NEIGHBORHOOD)
        assert len(neighbours) >= 3
        assert all(n.expected == case.request.target_true for n in neighbours)
        assert all(case.request.subject in p.prompt for p in case.probes_of(ProbeKind.PARAPHRASE))


KNOWEDIT_PORTABILITY = {
    ProbeKind.PORTABILITY_SUBJECT_ALIASING,
    ProbeKind.PORTABILITY_REASONING,
    ProbeKind.PORTABILITY_LOGICAL_GENERALIZATION,
}
DIALOGUE = set(ProbeKind.DIALOGUE)


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        (
            "counterfact",
            {ProbeKind.REWRITE, ProbeKind.PARAPHRASE, ProbeKind.NEIGHBORHOOD, *DIALOGUE},
        ),
        (
            "counterfact-full",
            {
                ProbeKind.REWRITE,
                ProbeKind.PARAPHRASE,
                ProbeKind.NEIGHBORHOOD,
                ProbeKind.DISTRACTING_NEIGHBORHOOD,
                ProbeKind.GENERATION,
                ProbeKind.PORTABILITY_ONE_HOP,
                *DIALOGUE,
            },
        ),
        (
            "zsre",
            {
                ProbeKind.REWRITE,
                ProbeKind.PARAPHRASE,
                ProbeKind.LOCALITY,
                ProbeKind.PORTABILITY_ONE_HOP,
                *DIALOGUE,
            },
        ),
        (
            "knowedit-counterfact",
            {
                ProbeKind.REWRITE,
                *KNOWEDIT_PORTABILITY,
                ProbeKind.RELATION_SPECIFICITY,
                ProbeKind.FORGETFULNESS,
                *DIALOGUE,
            },
        ),
        (
            "knowedit-zsre",
            {
                ProbeKind.REWRITE,
                ProbeKind.PARAPHRASE,
                *KNOWEDIT_PORTABILITY,
                ProbeKind.RELATION_SPECIFICITY,
                *DIALOGUE,
            },
        ),
        ("counterfact-subj-spec", {ProbeKind.REWRITE, ProbeKind.RELATION_SPECIFICITY, *DIALOGUE}),
        ("mquake", set(ProbeKind.MQUAKE)),
        (
            "conflict-reverse",
            {ProbeKind.CONFLICT_OLD, ProbeKind.CONFLICT_EXPLICIT, ProbeKind.CONFLICT_IMPLICIT},
        ),
        ("conflict-composite", set(ProbeKind.CONFLICT)),
        (
            "reversed-relation",
            {ProbeKind.REWRITE, ProbeKind.PORTABILITY_REVERSED_RELATION, *DIALOGUE},
        ),
        ("roundedit-easy", set(ProbeKind.ROUND)),
        ("roundedit-hard", set(ProbeKind.ROUND)),
    ],
)
def test_benchmark_loaders(name, kinds):
    cases = load_dataset(name, data_dir(), limit=25)
    assert len(cases) == 25
    counts = probe_summary(cases)
    assert {k for k, n in counts.items() if n} == kinds
    if ProbeKind.REWRITE in kinds:
        assert counts[ProbeKind.REWRITE] == 25


def test_full_schema_keeps_all_neighbours_and_paraphrases():
    case = load_dataset("counterfact-full", data_dir(), limit=1)[0]
    assert case.request.prompt == "{} originates from"
    assert (case.request.subject, case.request.target_new, case.request.target_true) == (
        "Spike Hughes",
        "Philadelphia",
        "London",
    )
    assert len(case.probes_of(ProbeKind.PARAPHRASE)) == 2
    assert len(case.probes_of(ProbeKind.NEIGHBORHOOD)) == 10


def test_flat_counterfact_record_maps_to_a_request():
    case = load_dataset("counterfact", data_dir(), limit=1)[0]
    r = case.request
    assert (r.text, r.subject, r.target_new, r.target_true) == (
        "The mother tongue of Danielle Darrieux is",
        "Danielle Darrieux",
        "English",
        "French",
    )
    neighbour = case.probes_of(ProbeKind.NEIGHBORHOOD)[0]
    assert (neighbour.expected, neighbour.alternative) == ("French", "English")


def test_zsre_skips_records_that_are_no_edit(caplog):
    cases = load_dataset("zsre", data_dir())
    raw = json.loads(dataset_path("zsre", data_dir()).read_text())
    same = sum(1 for r in raw if r["alt"].strip() == r["answers"][0].strip())
    assert same > 0 and len(cases) == len(raw) - same
    assert "skipped" in caplog.text


def test_any_file_is_read_by_detecting_its_format(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps(
            [
                {
                    "prompt": "Where is the Louvre? In",
                    "subject": "the Louvre",
                    "target_new": "Rome",
                    "ground_truth": "Paris",
                    "rephrase_prompt": "The Louvre is in",
                    "locality_prompt": "Notre-Dame is in",
                    "locality_ground_truth": "Paris",
                },
            ]
        )
    )
    (case,) = load_dataset(str(path))
    assert case.request.prompt == "Where is {}? In"


def test_clear_errors_for_missing_data(tmp_path, monkeypatch):
    monkeypatch.delenv("KEDIT_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("counterfact", None)
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("no-such-set")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_dataset("counterfact", tmp_path)
    assert set(DATASETS) >= {"demo", "counterfact", "counterfact-full", "zsre"}
