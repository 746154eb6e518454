"""Registered metrics: pure functions of probe scores, each tagged with its protocol.

A metric reads the :class:`~kedit.eval.scoring.ProbeResult` s of one case and returns a number
(or ``None`` when the case has no probe it needs). ``per_stage`` metrics are computed on the
model before the edit and after it; ``paired`` metrics compare the two (e.g. how many top-1
predictions stayed the same) and exist only after.

Protocols, as the literature names them:

* ``probability comparison``: 1[P(expected) > P(alternative)], P the length-normalised
  probability exp(mean token log-prob) (ROME / CounterFact's ES, PS, NS);
* ``probability magnitude``: P(expected) - P(alternative) (EM, PM, NM);
* ``teacher-forced token accuracy``: share of answer tokens that are the top-1 prediction given
  the previous answer tokens (ZsRE / EasyEdit's rewrite_acc);
* ``generation exact match``: the greedy continuation starts with the answer, compared after
  SQuAD normalisation;
* ``top-1 agreement``: share of answer positions whose top-1 token is unchanged by the edit
  (EasyEdit's locality).

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

from collections.abc import Callable
from dataclasses import dataclass

from kedit.eval.scoring import Needs, ProbeResult, generation_matches
from kedit.registry import Registry
from kedit.types import ProbeKind

Stage = str  # "pre" | "post"


#: what a metric needs measured on its probes (see :class:`~kedit.eval.scoring.Needs`)
MEASUREMENTS = ("scores", "generation", "next_token", "text", "dialogue")
#: suites: ``core`` is the cheap default (reliability, generalization, locality, portability
#: from teacher-forced scores and short answers); ``pitfalls`` is every registered measure
SUITES = ("core", "pitfalls")


@dataclass(frozen=True)
class Metric:
    """A registered measure of an edit.

    ``measure`` says what is measured on its probes, ``mid`` that it also reads scores after the
    first of two edit steps, ``pooled`` that the summary weights each case by its number of
    probes (a micro average, e.g. MQuAKE's edit-wise success pools all edited facts).
    """

    name: str
    group: str  # reliability | generalization | locality | portability | ...
    protocol: str
    kinds: tuple[str, ...]  # probe kinds it reads
    measure: str
    paired: bool
    higher_is_better: bool
    description: str
    compute: Callable[[list[ProbeResult], Stage], float | None]
    suites: tuple[str, ...] = SUITES
    mid: bool = False
    pooled: bool = False

    def __call__(self, results: list[ProbeResult], stage: Stage = "post") -> float | None:
        relevant = [r for r in results if r.probe.kind in self.kinds]
        if not relevant:
            return None
        return self.compute(relevant, stage)


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


METRICS: Registry[Metric] = Registry("metric")

PROB = "probability comparison"
MAG = "probability magnitude"
TF = "teacher-forced token accuracy"
GEN = "generation exact match"
AGREE = "top-1 agreement"


def register(
    name: str,
    group: str,
    protocol: str,
    kinds: tuple[str, ...],
    description: str,
    compute: Callable[[list[ProbeResult], Stage], float | None],
    paired: bool = False,
    higher_is_better: bool = True,
    measure: str | None = None,
    suites: tuple[str, ...] = SUITES,
    mid: bool = False,
    pooled: bool = False,
) -> None:
    """Register a metric; ``measure`` defaults to generation for the generation protocol and to
    teacher-forced scores otherwise."""
    measure = measure or ("generation" if protocol == GEN else "scores")
    if measure not in MEASUREMENTS:
        raise ValueError(f"measure must be one of {MEASUREMENTS}, got {measure!r}")
    METRICS.register(
        name,
        Metric(
            name,
            group,
            protocol,
            kinds,
            measure,
            paired,
            higher_is_better,
            description,
            compute,
            suites,
            mid,
            pooled,
        ),
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


def needs_of(metrics: list[Metric]) -> Needs:
    kinds: dict[str, set[str]] = {m: set() for m in MEASUREMENTS}
    for metric in metrics:
        kinds[metric.measure].update(metric.kinds)
    mid = {k for m in metrics if m.mid for k in m.kinds}
    return Needs(**{m: frozenset(k) for m, k in kinds.items()}, mid=frozenset(mid))


#: the survey's order of measure groups, used for tables
GROUP_ORDER = (
    "reliability",
    "generalization",
    "locality",
    "portability",
    "distortion",
    "general ability",
    "robustness",
)


def resolve_metrics(names: list[str] | None, suite: str = "core") -> list[Metric]:
    """The named metrics (all of ``suite`` when ``names`` is None), in group order."""
    if names is None and suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    chosen = (
        [METRICS[n] for n in names]
        if names is not None
        else [METRICS[n] for n in METRICS.names() if suite in METRICS[n].suites]
    )
    rank = {g: i for i, g in enumerate(GROUP_ORDER)}
    return sorted(chosen, key=lambda m: (rank.get(m.group, len(rank)), m.name))


def missing_probes(metrics: list[Metric], cases: list) -> dict[str, str]:
    """Metrics none of the cases can feed, each with the reason (the probe kinds it lacks)."""
    present = {p.kind for case in cases for p in case.probes}
    return {
        m.name: f"the dataset has no {' / '.join(m.kinds)} probes"
        for m in metrics
        if not present.intersection(m.kinds)
    }


# the pitfalls measures register themselves on import
from kedit.eval import metrics_multi, metrics_pitfalls  # noqa: E402, F401
