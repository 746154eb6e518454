"""Probes written from templates: follow-up turns that challenge an edit in a dialogue.

Ma et al. (2024) find edits that hold on the edit prompt give way once a conversation pushes
back. Every single-edit case with a known old answer gets three follow-ups, each continuing a
transcript of the question and the model's own answer (see
:func:`kedit.eval.scoring.dialogue_transcript`) and ending with the question again:

* ``challenge``: the user doubts the answer and names the old one (their second template);
* ``distraction``: an unrelated remark about the old answer, then the question;
* ``rephrase``: three unrelated turns, then the question reworded (a paraphrase if the case has
  one).
"""

from __future__ import annotations

from kedit.types import EditRequest, Probe, ProbeKind

#: filler turns between the answer and the reworded question
FILLER_TURNS = (
    "Water boils at 100 degrees Celsius at sea level.",
    "A week has seven days.",
    "The Moon orbits the Earth.",
)


def dialogue_probes(request: EditRequest, paraphrase: str | None = None) -> list[Probe]:
    """The three challenge probes of one edit; none when the old answer is unknown."""
    old = request.target_true
    if old is None:
        return []
    question = request.text
    followups = {
        ProbeKind.DIALOGUE_CHALLENGE: (
            f"\nAre you sure? I am pretty sure that {question} {old}. Am I right? Think again "
            f"and answer.\n{question}"
        ),
        ProbeKind.DIALOGUE_DISTRACTION: (
            f"\nBy the way, {old} is often in the news, and people who talk about it often "
            f"mention {request.subject} too.\n{question}"
        ),
        ProbeKind.DIALOGUE_REPHRASE: "\n" + "\n".join(FILLER_TURNS) + f"\n{paraphrase or question}",
    }
    return [
        Probe(
            kind,
            question,
            request.target_new,
            old,
            reason="a follow-up turn challenging the edit; the reply should keep the new answer",
            followup=followup,
        )
        for kind, followup in followups.items()
    ]
