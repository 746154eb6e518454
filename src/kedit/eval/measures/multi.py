"""Measures of cases with several edits: MQuAKE multi-hop questions, ConflictEdit and RoundEdit
(registered in the ``pitfalls`` suite).

* **MQuAKE** (Zhong et al. 2023; all edits of a case applied together), as the benchmark's README
  sets it up: edit-wise success is the share of edited facts whose cloze statement the edited
  model completes with the new object (greedy, no demonstrations), pooled over all facts as the
  paper; instance-wise accuracy counts a case when every hop of its new chain is recalled
  (edited hops by their cloze, unedited ones by their question after the relation's eight
  demonstrations, ``prompts/rel-prompts.json``); multi-hop accuracy counts a case when any of
  its three questions, asked after ``prompts/multihop-prompts.txt``, is answered with the new
  answer or an alias. A question's answer is the generated first line, equal to the answer or an
  alias (MQuAKE's ``ans == answer or ans in aliases``, surrounding spaces stripped); a cloze
  statement counts when its continuation starts with one (SQuAD-normalised). The dataset
  ``mquake-cloze`` keeps kedit's earlier variant (every hop by its cloze, four demonstrations of
  kedit's own before the questions, every answer judged by its start).
  ``multi_hop_original_accuracy`` counts questions still answered with the old answer.
* **ConflictEdit** (Li et al. 2024, ``zjunlp/PitfallsKnowledgeEditing``): two edits in sequence;
  a fact's probability is the mean, over its rewrite prompt and the relation's ten prompts, of the
  length-normalised P(object | prompt). Conflict Score ``1[P'(k_new) > P'(k_old)]`` with k_old the
  first edit's fact and k_new the second's (explicit) or the fact the two imply (implicit);
  Conflict Magnitude ``max((P_m(k_old) - P'(k_old)) / P_m(k_old), -1)`` from after the first edit
  to after both; Tied Fact Damage ``(P_0(tied) - P'(tied)) / P_0(tied)`` (composite only);
  coverage success ``1[P_2(o2) > P_2(o1)]`` with only the second edit applied to the unedited
  model (coverage only: s, r, o -> o1, then o1 -> o2; the reference's ``S_post > S_pre``).
* **RoundEdit** (same repository): o -> o* then o* -> o. Success ``½·1[P_e1(o*) > P_e1(o)] +
  ½·1[P'(o) > P'(o*)]``; knowledge distortion, the JS divergence of the L1-normalised
  probabilities of the true objects before editing and after the round trip (reported both as the
  reference computes it, divided by the number of objects by ``batchmean``, and as the true JS
  divergence); Ignore Rate, the share of the other true objects whose probability fell; Failure
  Rate, the share of cases with an Ignore Rate above one half.
"""

from __future__ import annotations

from collections import defaultdict

from kedit.eval.formulas import (
    coverage_success,
    fact_probability,
    ignore_rate,
    knowledge_distortion,
    mquake_answer_matches,
    round_edit_success,
)
from kedit.eval.metric import GEN, Stage, register
from kedit.eval.scoring import ProbeResult, generation_matches
from kedit.types import ProbeKind

FACT = "fact probability (mean over the relation's prompts)"
PITFALLS = ("pitfalls",)

# -- MQuAKE -------------------------------------------------------------------------------------


def _answered(result: ProbeResult, stage: Stage) -> bool | None:
    """A question in Q/A form is answered by the generation's first line, equal to the answer
    or an alias (MQuAKE); a cloze statement by a continuation that starts with one."""
    text = result.stage(stage).generation
    if text is None:
        return None
    probe = result.probe
    if probe.exact:
        return mquake_answer_matches(text.strip().split("\n", 1)[0], probe.expected, probe.aliases)
    return generation_matches(text, [probe.expected, *probe.aliases])


def _all_or_any(combine):
    def compute(results: list[ProbeResult], stage: Stage) -> float | None:
        flags = [f for f in (_answered(r, stage) for r in results) if f is not None]
        return float(combine(flags)) if flags else None

    return compute


def _share(results: list[ProbeResult], stage: Stage) -> float | None:
    flags = [f for f in (_answered(r, stage) for r in results) if f is not None]
    return sum(flags) / len(flags) if flags else None


register(
    "mquake_edit_wise_success",
    "portability",
    GEN,
    (ProbeKind.EDITED_HOP,),
    "MQuAKE edit-wise success: share of edited facts recalled by their cloze statement "
    "(pooled over facts)",
    _share,
    suites=PITFALLS,
    pooled=True,
)
register(
    "mquake_instance_accuracy",
    "portability",
    GEN,
    (ProbeKind.NEW_CHAIN_HOP,),
    "MQuAKE instance-wise accuracy: every hop of the new chain recalled",
    _all_or_any(all),
    suites=PITFALLS,
)
register(
    "mquake_multi_hop_accuracy",
    "portability",
    GEN,
    (ProbeKind.MULTI_HOP,),
    "MQuAKE multi-hop accuracy: any of the case's questions answered with the new answer",
    _all_or_any(any),
    suites=PITFALLS,
)
register(
    "mquake_multi_hop_original_accuracy",
    "portability",
    GEN,
    (ProbeKind.MULTI_HOP_ORIGINAL,),
    "MQuAKE questions still answered with the original answer (any of the three)",
    _all_or_any(any),
    higher_is_better=False,
    suites=PITFALLS,
)

# -- fact probabilities -------------------------------------------------------------------------


def fact_probabilities(results: list[ProbeResult], stage: Stage) -> dict[tuple[str, str], float]:
    """Probability of each fact, keyed by (probe kind, fact name): the mean over its prompts of
    exp(mean token log-prob) of the object."""
    lps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in results:
        score = r.stage(stage).expected
        if score is not None:
            lps[(r.probe.kind, r.probe.fact)].append(score.mean_logprob)
    return {key: fact_probability(values) for key, values in lps.items()}


def _one(probs: dict[tuple[str, str], float], kind: str) -> float | None:
    values = [p for (k, _), p in probs.items() if k == kind]
    return values[0] if len(values) == 1 else None


# -- ConflictEdit -------------------------------------------------------------------------------


def _conflict_score(new_kind: str):
    def compute(results: list[ProbeResult], stage: Stage) -> float | None:
        probs = fact_probabilities(results, stage)
        new, old = _one(probs, new_kind), _one(probs, ProbeKind.CONFLICT_OLD)
        return None if new is None or old is None else float(new > old)

    return compute


for _kind, _which in (
    (ProbeKind.CONFLICT_EXPLICIT, "the second edit's fact"),
    (ProbeKind.CONFLICT_IMPLICIT, "the fact both edits imply"),
):
    register(
        f"conflict_score_{_kind.removeprefix('conflict_')}",
        "distortion",
        FACT,
        (ProbeKind.CONFLICT_OLD, _kind),
        f"ConflictEdit CS: after both edits, P({_which}) > P(the first edit's fact)",
        _conflict_score(_kind),
        suites=PITFALLS,
    )


def conflict_magnitude(results: list[ProbeResult], stage: Stage) -> float | None:
    mid = _one(fact_probabilities(results, "mid"), ProbeKind.CONFLICT_OLD)
    post = _one(fact_probabilities(results, "post"), ProbeKind.CONFLICT_OLD)
    if mid is None or post is None or mid == 0.0:
        return None
    return max((mid - post) / mid, -1.0)


register(
    "conflict_magnitude",
    "distortion",
    FACT,
    (ProbeKind.CONFLICT_OLD,),
    "ConflictEdit CM: relative drop of the first edit's fact from after it to after the second",
    conflict_magnitude,
    paired=True,
    suites=PITFALLS,
    mid=True,
)


def coverage(results: list[ProbeResult], stage: Stage) -> float | None:
    alone = fact_probabilities(results, "alone")
    new, old = _one(alone, ProbeKind.CONFLICT_EXPLICIT), _one(alone, ProbeKind.CONFLICT_OLD)
    return None if new is None or old is None else coverage_success([new], [old])


register(
    "coverage_success",
    "distortion",
    FACT,
    (ProbeKind.CONFLICT_OLD, ProbeKind.CONFLICT_EXPLICIT),
    "ConflictEdit coverage Succ: with only the second edit applied, P(its object o2) > "
    "P(the first edit's object o1)",
    coverage,
    paired=True,
    suites=PITFALLS,
    alone=True,
)


def tied_fact_damage(results: list[ProbeResult], stage: Stage) -> float | None:
    pre = _one(fact_probabilities(results, "pre"), ProbeKind.TIED_FACT)
    post = _one(fact_probabilities(results, "post"), ProbeKind.TIED_FACT)
    return None if pre is None or post is None or pre == 0.0 else (pre - post) / pre


register(
    "tied_fact_damage",
    "distortion",
    FACT,
    (ProbeKind.TIED_FACT,),
    "ConflictEdit TFD (composite): relative drop of the untouched premise the edits depend on",
    tied_fact_damage,
    paired=True,
    higher_is_better=False,
    suites=PITFALLS,
)

# -- RoundEdit ----------------------------------------------------------------------------------


def round_success(results: list[ProbeResult], stage: Stage) -> float | None:
    mid, post = fact_probabilities(results, "mid"), fact_probabilities(results, "post")
    values = [
        _one(probs, kind)
        for probs, kind in (
            (mid, ProbeKind.ROUND_NEW),
            (mid, ProbeKind.ROUND_TRUE),
            (post, ProbeKind.ROUND_TRUE),
            (post, ProbeKind.ROUND_NEW),
        )
    ]
    return None if None in values else round_edit_success(*values)


def _true_objects(results: list[ProbeResult], stage: Stage) -> tuple[float | None, list[float]]:
    """P(o) and P(o_i) for the other true objects in a fixed order (by fact name)."""
    probs = fact_probabilities(results, stage)
    others = [p for (k, _), p in sorted(probs.items()) if k == ProbeKind.ROUND_OTHER]
    return _one(probs, ProbeKind.ROUND_TRUE), others


def _distortion(size_mean: bool):
    def compute(results: list[ProbeResult], stage: Stage) -> float | None:
        true_pre, others_pre = _true_objects(results, "pre")
        true_post, others_post = _true_objects(results, "post")
        if true_pre is None or true_post is None:
            return None
        return knowledge_distortion(
            [true_post, *others_post], [true_pre, *others_pre], size_mean=size_mean
        )

    return compute


def _ignore(failure: bool):
    def compute(results: list[ProbeResult], stage: Stage) -> float | None:
        _, before = _true_objects(results, "pre")
        _, after = _true_objects(results, "post")
        if not before or len(before) != len(after):
            return None
        rate = ignore_rate(before, after)
        return float(rate > 0.5) if failure else rate

    return compute


_ROUND = (ProbeKind.ROUND_NEW, ProbeKind.ROUND_TRUE)
_OBJECTS = (ProbeKind.ROUND_TRUE, ProbeKind.ROUND_OTHER)
for _name, _kinds, _compute, _better, _mid, _what in (
    ("round_edit_success", _ROUND, round_success, True, True, "Succ: both edits took effect"),
    (
        "knowledge_distortion",
        _OBJECTS,
        _distortion(True),
        False,
        False,
        "D: JS divergence over the true objects, before vs after the round trip, divided by "
        "their number (the reference's batchmean)",
    ),
    (
        "knowledge_distortion_js",
        _OBJECTS,
        _distortion(False),
        False,
        False,
        "D as the true JS divergence (nats) over the true objects, before vs after",
    ),
    (
        "ignore_rate",
        (ProbeKind.ROUND_OTHER,),
        _ignore(False),
        False,
        False,
        "IR: share of the other true objects whose probability fell",
    ),
    (
        "failure_rate",
        (ProbeKind.ROUND_OTHER,),
        _ignore(True),
        False,
        False,
        "FR: share of cases whose ignore rate is above one half",
    ),
):
    register(
        _name,
        "distortion",
        FACT,
        _kinds,
        f"RoundEdit {_what}",
        _compute,
        paired=True,
        higher_is_better=_better,
        suites=PITFALLS,
        mid=_mid,
    )
