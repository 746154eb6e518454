"""MQuAKE's answer matching and aggregates (``princeton-nlp/MQuAKE``)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence

from kedit.eval.formulas._checks import _flags, _mean

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation or articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def mquake_answer_matches(
    prediction: str, answer: str, aliases: Iterable[str] = (), *, normalise: bool = False
) -> bool:
    """True if ``prediction`` is the answer or one of its aliases.

    MQuAKE's ``run_mello.ipynb`` compares ``ans == new_answer or ans in new_answer_alias`` after
    taking the text behind "Final answer: " from the stripped generation: exact, case-sensitive
    equality. We strip surrounding whitespace from all strings and otherwise do the same.
    ``normalise=True`` (our addition, off by default) compares after SQuAD normalisation (lower
    case, no punctuation or articles), which forgives "paris" for "Paris".
    """
    candidates = [answer, *aliases]
    if not any(c.strip() for c in candidates):
        raise ValueError("answer and aliases are all empty")
    norm = normalize_answer if normalise else str.strip
    produced = norm(prediction)
    return any(produced == norm(c) for c in candidates if c.strip())


def edit_wise_success_rate(edits_recalled: Sequence[Sequence[bool]]) -> float:
    """Share of edited facts the edited model recalls (cloze statement, no ICL, greedy).

    ``edits_recalled[i]`` holds one flag per requested rewrite of instance i. The MQuAKE paper
    states "how many facts can be successfully recalled", so this pools all facts (a micro
    average), not a mean of per-instance rates; a fact shared by instances counts each time.
    """
    if len(edits_recalled) == 0:
        raise ValueError("edits_recalled is empty")
    flags = [f for i, row in enumerate(edits_recalled) for f in _flags(row, f"edits_recalled[{i}]")]
    return sum(flags) / len(flags)


def instance_wise_accuracy(hops_recalled: Sequence[Sequence[bool]]) -> float:
    """Share of instances whose new chain is recalled hop by hop: an instance counts iff **all**
    its single-hop facts are recalled (edited hops by cloze, unedited ones with the relation's
    8-shot question prompt)."""
    if len(hops_recalled) == 0:
        raise ValueError("hops_recalled is empty")
    return _mean(
        [float(all(_flags(row, f"hops_recalled[{i}]"))) for i, row in enumerate(hops_recalled)]
    )


def multi_hop_accuracy(questions_correct: Sequence[Sequence[bool]]) -> float:
    """Share of instances answered correctly on **any** of their (three) multi-hop questions,
    as MQuAKE's README and ``run_mello.ipynb`` (which stops at the first correct question)."""
    if len(questions_correct) == 0:
        raise ValueError("questions_correct is empty")
    return _mean(
        [
            float(any(_flags(row, f"questions_correct[{i}]")))
            for i, row in enumerate(questions_correct)
        ]
    )
