"""The measure contract: a ``Metric`` is a pure function of probe scores, tagged with its group
and protocol, and lives in the :data:`METRICS` registry.

A metric reads the :class:`~kedit.eval.scoring.ProbeResult` s of one case and returns a number
(or ``None`` when the case has no probe it needs). ``per_stage`` metrics are computed on the
model before the edit and after it; ``paired`` metrics compare the two (e.g. how many top-1
predictions stayed the same) and exist only after.

This module holds the definitions only. The measures are registered by the modules of
:mod:`kedit.eval.measures` (``core``, ``pitfalls``, ``multi``), which :data:`METRICS` imports the
first time it is read; so they import this module, never the reverse.

Protocols, as the literature names them:

* ``probability comparison``: 1[P(expected) > P(alternative)], P the length-normalised
  probability exp(mean token log-prob) (ROME / CounterFact's ES, PS, NS);
* ``probability magnitude``: P(expected) - P(alternative) (EM, PM, NM);
* ``teacher-forced token accuracy``: share of answer tokens that are the top-1 prediction given
  the previous answer tokens (ZsRE / EasyEdit's rewrite_acc);
* ``generation exact match``: the greedy continuation starts with the answer, compared after
  SQuAD normalisation;
* ``top-1 agreement``: share of answer positions whose top-1 token is unchanged by the edit
  (EasyEdit's locality);
* ``routing decision``: share of prompts on which the method's added part fired (GRACE's
  codebook, MELO's blocks, WISE's side memory, T-Patcher's neurons), asked of the edited model
  at each prompt's last token (:class:`~kedit.model.lm.RoutingModel`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kedit.eval.scoring import Needs, ProbeResult
from kedit.registry import Registry

Stage = str  # "pre" | "post"


#: what a metric needs measured on its probes (see :class:`~kedit.eval.scoring.Needs`)
MEASUREMENTS = ("scores", "generation", "next_token", "text", "dialogue", "routing")
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
    #: it reads the scores with only a case's last step applied (``ProbeResult.alone``)
    alone: bool = False

    def __call__(self, results: list[ProbeResult], stage: Stage = "post") -> float | None:
        relevant = [r for r in results if r.probe.kind in self.kinds]
        if not relevant:
            return None
        return self.compute(relevant, stage)


#: every registered measure; the modules that register them are imported on first read
METRICS: Registry[Metric] = Registry(
    "metric",
    base=Metric,
    providers=(
        "kedit.eval.measures.core",
        "kedit.eval.measures.pitfalls",
        "kedit.eval.measures.multi",
    ),
)

PROB = "probability comparison"
MAG = "probability magnitude"
TF = "teacher-forced token accuracy"
GEN = "generation exact match"
AGREE = "top-1 agreement"
ROUTE = "routing decision"


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
    alone: bool = False,
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
            alone,
        ),
    )


def needs_of(metrics: list[Metric]) -> Needs:
    kinds: dict[str, set[str]] = {m: set() for m in MEASUREMENTS}
    for metric in metrics:
        kinds[metric.measure].update(metric.kinds)
    mid = frozenset(k for m in metrics if m.mid for k in m.kinds)
    alone = frozenset(k for m in metrics if m.alone for k in m.kinds)
    return Needs(**{m: frozenset(k) for m, k in kinds.items()}, mid=mid, alone=alone)


#: the group of general-ability tasks (perplexity, downstream tasks), measured on the model as a
#: whole at sequential checkpoints; ``general ability`` is that of per-case measures (fluency)
GENERAL_GROUP = "general"
#: the survey's order of measure groups, for every table (``routing``, kedit's own, beside the
#: locality it explains)
GROUP_ORDER = (
    "reliability",
    "generalization",
    "locality",
    "routing",
    "portability",
    "distortion",
    "general ability",
    "robustness",
    GENERAL_GROUP,
)


def group_rank(group: str) -> tuple[float, str]:
    """Sort key of a group: :data:`GROUP_ORDER`, unknown groups (alphabetically) just before
    the general-ability tasks."""
    rank = GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER) - 1.5
    return (rank, group)


def resolve_metrics(names: list[str] | None, suite: str = "core") -> list[Metric]:
    """The named metrics (all of ``suite`` when ``names`` is None), in group order."""
    if names is None and suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    chosen = (
        [METRICS[n] for n in names]
        if names is not None
        else [METRICS[n] for n in METRICS.names() if suite in METRICS[n].suites]
    )
    return sorted(chosen, key=lambda m: (group_rank(m.group), m.name))


def missing_probes(metrics: list[Metric], cases: list) -> dict[str, str]:
    """Metrics none of the cases can feed, each with the reason (the probe kinds it lacks)."""
    present = {p.kind for case in cases for p in case.probes}
    return {
        m.name: f"the dataset has no {' / '.join(m.kinds)} probes"
        for m in metrics
        if not present.intersection(m.kinds)
    }
