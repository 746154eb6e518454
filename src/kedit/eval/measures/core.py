"""The core measures: reliability, generalization, locality and portability from teacher-forced
scores and short answers (``kedit eval``'s default suite), and the score functions the other
measure modules reuse.

KnowEdit's splits (Zhang et al. 2024, after Yao et al. 2023b) follow EasyEdit's conventions:
portability (``Subject_Aliasing``, ``Reasoning``, ``Logical_Generalization``) is the
teacher-forced token accuracy of the split's ground truth after its prompt (EasyEdit's
``portability[key]_acc``), reported before and after the edit; ``Relation_Specificity`` and
``Forgetfulness`` are top-1 agreement before vs after (EasyEdit's ``locality[key]_acc``). A list
ground truth is scored on its first answer, as EasyEdit's KnowEdit runner does. One deliberate
difference: a case with several prompts of a split counts once (mean over its prompts), and the
summary averages cases, where EasyEdit averages all prompts of the split together.
"""

from __future__ import annotations

from kedit.eval.metric import AGREE, GEN, MAG, PROB, ROUTE, TF, Stage, register
from kedit.eval.scoring import ProbeResult, generation_matches
from kedit.types import ProbeKind


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def prob_comparison(results: list[ProbeResult], stage: Stage) -> float | None:
    values = []
    for r in results:
        s = r.stage(stage)
        if s.expected is not None and s.alternative is not None:
            values.append(float(s.expected.mean_logprob > s.alternative.mean_logprob))
    return _mean(values)


def prob_magnitude(results: list[ProbeResult], stage: Stage) -> float | None:
    values = []
    for r in results:
        s = r.stage(stage)
        if s.expected is not None and s.alternative is not None:
            values.append(s.expected.prob - s.alternative.prob)
    return _mean(values)


def token_accuracy(results: list[ProbeResult], stage: Stage) -> float | None:
    return _mean(
        [
            r.stage(stage).expected.token_accuracy
            for r in results
            if r.stage(stage).expected is not None
        ]
    )


def generation_match(results: list[ProbeResult], stage: Stage) -> float | None:
    values = []
    for r in results:
        text = r.stage(stage).generation
        if text is not None:
            answers = [r.probe.expected, *r.probe.aliases]
            values.append(float(generation_matches(text, answers)))
    return _mean(values)


def top1_agreement(results: list[ProbeResult], stage: Stage) -> float | None:
    values = []
    for r in results:
        if r.pre.expected is not None and r.post.expected is not None:
            pre, post = r.pre.expected.argmax_ids, r.post.expected.argmax_ids
            values.append(sum(a == b for a, b in zip(pre, post)) / len(pre))
    return _mean(values)


def routed_share(results: list[ProbeResult], stage: Stage) -> float | None:
    """Share of the probes on which the edit's added part fired; None for a model that does
    not route (every method but the added-parameter ones, and the unedited model)."""
    return _mean(
        [float(r.stage(stage).routed) for r in results if r.stage(stage).routed is not None]
    )


_QUESTIONS = [
    ("reliability", (ProbeKind.REWRITE,), "efficacy", "rewrite", "the edit prompt itself"),
    (
        "generalization",
        (ProbeKind.PARAPHRASE,),
        "paraphrase",
        "paraphrase",
        "paraphrases of the edit prompt",
    ),
]
for _group, _kinds, _score, _prefix, _what in _QUESTIONS:
    register(
        f"{_score}_score",
        _group,
        PROB,
        _kinds,
        f"share of {_what} where P(new) > P(old)",
        prob_comparison,
    )
    register(
        f"{_score}_magnitude",
        _group,
        MAG,
        _kinds,
        f"mean P(new) - P(old) on {_what}",
        prob_magnitude,
    )
    register(
        f"{_prefix}_token_acc",
        _group,
        TF,
        _kinds,
        f"teacher-forced token accuracy of the new answer on {_what}",
        token_accuracy,
    )
    register(
        f"{_prefix}_gen_match",
        _group,
        GEN,
        _kinds,
        f"greedy generation starts with the new answer on {_what}",
        generation_match,
    )

register(
    "neighborhood_score",
    "locality",
    PROB,
    (ProbeKind.NEIGHBORHOOD,),
    "share of neighbourhood prompts where P(their answer) > P(new)",
    prob_comparison,
)
register(
    "neighborhood_magnitude",
    "locality",
    MAG,
    (ProbeKind.NEIGHBORHOOD,),
    "mean P(their answer) - P(new) on neighbourhood prompts",
    prob_magnitude,
)
register(
    "locality_top1_agreement",
    "locality",
    AGREE,
    # KnowEdit's locality splits were plain locality probes before they got kinds of their own;
    # they stay in this pooled measure so its value on KnowEdit is unchanged
    (
        ProbeKind.NEIGHBORHOOD,
        ProbeKind.LOCALITY,
        ProbeKind.RELATION_SPECIFICITY,
        ProbeKind.FORGETFULNESS,
    ),
    "share of answer tokens whose top-1 prediction the edit left unchanged",
    top1_agreement,
    paired=True,
)
register(
    "relation_specificity_top1_agreement",
    "locality",
    AGREE,
    (ProbeKind.RELATION_SPECIFICITY,),
    "KnowEdit Relation_Specificity: share of answer tokens (other relations of the edited "
    "subject) whose top-1 prediction the edit left unchanged",
    top1_agreement,
    paired=True,
)
register(
    "forgetfulness_top1_agreement",
    "locality",
    AGREE,
    (ProbeKind.FORGETFULNESS,),
    "KnowEdit Forgetfulness: share of answer tokens (other objects of the edited relation) "
    "whose top-1 prediction the edit left unchanged",
    top1_agreement,
    paired=True,
)

_PORTABILITY = [
    (ProbeKind.PORTABILITY_SUBJECT_ALIASING, "Subject_Aliasing (the subject's aliases)"),
    (ProbeKind.PORTABILITY_REASONING, "Reasoning (one more hop)"),
    (ProbeKind.PORTABILITY_LOGICAL_GENERALIZATION, "Logical_Generalization (implied facts)"),
    (ProbeKind.PORTABILITY_ONE_HOP, "One Hop (EVOKE / ZsRE one-hop question)"),
    (ProbeKind.PORTABILITY_REVERSED_RELATION, "Reversed Relation (the edit asked backwards)"),
]
for _kind, _what in _PORTABILITY:
    register(
        f"{_kind}_token_acc",
        "portability",
        TF,
        (_kind,),
        f"portability {_what}: teacher-forced token accuracy of the ground truth",
        token_accuracy,
    )
register(
    "portability_token_acc",
    "portability",
    TF,
    ProbeKind.PORTABILITY,
    "portability, all splits pooled: teacher-forced token accuracy of the ground truth",
    token_accuracy,
)

# Routing (kedit's own): an added-parameter method's part should fire on the edit and its
# paraphrases and stay silent on neighbours; a locality failure with the part firing is a
# routing failure, one without it is the base model's (or a shared part's) doing.
_ROUTED = [
    ("rewrite", ProbeKind.REWRITE, "the edit prompt itself", True),
    ("paraphrase", ProbeKind.PARAPHRASE, "paraphrases of the edit prompt", True),
    ("neighborhood", ProbeKind.NEIGHBORHOOD, "neighbourhood prompts", False),
]
for _name, _kind, _what, _higher in _ROUTED:
    register(
        f"routed_{_name}",
        "routing",
        ROUTE,
        (_kind,),
        f"share of {_what} on which the edit's added part fired",
        routed_share,
        higher_is_better=_higher,
        measure="routing",
    )
