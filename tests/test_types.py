import pytest

from kedit.types import EditCase, EditRequest, ProbeKind


def test_request_fills_subject_and_span():
    r = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    assert r.text == "The Eiffel Tower is located in the city of"
    start, end = r.subject_span
    assert r.text[start:end] == "The Eiffel Tower"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower"}, "exactly one"),
        ({"prompt": "{} and {}", "subject": "x"}, "exactly one"),
        ({"target_new": "  "}, "target_new"),
        ({"target_new": ""}, "target_new"),
        ({"subject": ""}, "subject"),
        ({"subject": " padded "}, "spaces"),
        ({"target_true": "Rome"}, "nothing to edit"),
    ],
)
def test_invalid_requests_are_rejected(kwargs, message):
    base = {"prompt": "{} is in", "subject": "Louvre", "target_new": "Rome", "target_true": "Paris"}
    with pytest.raises(ValueError, match=message):
        EditRequest(**{**base, **kwargs})


def test_from_text_locates_the_subject():
    r = EditRequest.from_text("Where is the Louvre? In", "the Louvre", "Rome")
    assert r.prompt == "Where is {}? In"
    with pytest.raises(ValueError, match="does not occur"):
        EditRequest.from_text("Where is the Louvre?", "Notre-Dame", "Rome")


def test_single_case_builds_typed_probes():
    r = EditRequest("{} is in", "Louvre", "Rome", "Paris")
    case = EditCase.single(
        "c1",
        r,
        paraphrases=["The Louvre lies in"],
        neighbors=[("Notre-Dame is in", "Paris")],
        locality=[("The sky is", "blue")],
    )
    kinds = [p.kind for p in case.probes]
    assert kinds == [
        ProbeKind.REWRITE,
        ProbeKind.PARAPHRASE,
        ProbeKind.NEIGHBORHOOD,
        ProbeKind.LOCALITY,
    ]
    neighbour = case.probes_of(ProbeKind.NEIGHBORHOOD)[0]
    assert (neighbour.expected, neighbour.alternative) == ("Paris", "Rome")
    paraphrase = case.probes_of(ProbeKind.PARAPHRASE)[0]
    assert (paraphrase.expected, paraphrase.alternative) == ("Rome", "Paris")


def test_case_needs_a_request():
    with pytest.raises(ValueError, match="no edit request"):
        EditCase("c", ())
