"""The survey's claims about editing methods, checked against a bench.

Each :class:`~kedit.bench.verdicts.Claim` states what the survey (Hsueh et al. 2024, "Editing the
Mind of Giants", README "Discussion") says, which methods and scenario it needs and the threshold
that decides it; ``Claim.evaluate`` gives a :class:`~kedit.bench.verdicts.Finding`: a verdict
and the numbers with their 95% intervals that decided it, as a sentence. A claim is "supported"
or "not supported" only where the intervals clear its thresholds, else "inconclusive at this
sample size", with the sample that would settle it. :data:`CLAIMS` is the registry, in the
survey's order; :func:`evaluate_claims` checks them all.

The judges are in :mod:`kedit.bench.claims_edits` (single and related edits, locality,
distortion) and :mod:`kedit.bench.claims_general` (general ability after many edits).
"""

from __future__ import annotations

from kedit.bench.claims_edits import (
    OTHER_ATTRIBUTION,
    OTHER_ATTRIBUTION_GOOD,
    RELATED_EDIT_MEASURES,
    judge_ft_meta_related,
    judge_ike_locality,
    judge_ike_related,
    judge_ike_single,
    judge_memit_locality,
    judge_other_attribution,
    judge_serac_distortion,
)
from kedit.bench.claims_general import (
    judge_degrades,
    judge_each_preserving,
    judge_families,
    judge_memit,
    judge_unchanged,
)
from kedit.bench.summary import BenchSummary
from kedit.bench.verdicts import (
    DOWNSTREAM_DEGRADE,
    DOWNSTREAM_DROP,
    DOWNSTREAM_TOLERANCE,
    INCONCLUSIVE,
    LOCALITY_DROP,
    NOT_RUN,
    NOT_SUPPORTED,
    PARTLY,
    PERPLEXITY_DEGRADE,
    PERPLEXITY_TOLERANCE,
    STABLE_UP_TO,
    SUPPORTED,
    VERDICTS,
    Claim,
    Finding,
)

_CI = "its 95% interval"
_DEGRADES = (
    f"degrades: the mean change of the informative downstream task scores from the unedited "
    f"model's is at most -{DOWNSTREAM_DEGRADE:.2f}, or perplexity rises by at least "
    f"{PERPLEXITY_DEGRADE:.0%}, each with {_CI} past the threshold"
)
_RELATED = (
    f"the related-edit measure (the first present of {', '.join(RELATED_EDIT_MEASURES)}), "
    "single scenario on ConflictEdit, RoundEdit or MQuAKE"
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "ike-best-single",
        "IKE is best on single edits.",
        ("ike",),
        "single",
        "IKE's mean of the reliability and generalization headlines minus that of every other "
        f"method, paired over the cases, is above 0 with {_CI}.",
        judge_ike_single,
    ),
    Claim(
        "ike-related",
        "IKE is worse with many related edits.",
        ("ike",),
        _RELATED,
        f"IKE's related-edit measure minus some other method's, paired over the cases, is "
        f"below 0 with {_CI} (IKE is no longer the best).",
        judge_ike_related,
    ),
    Claim(
        "ft-meta-related",
        "Fine-tuning and meta-learning methods handle multiple related edits better.",
        (),
        _RELATED,
        "the mean related-edit measure of the fine-tuning and meta-learning methods minus that "
        f"of the other parameter-modifying methods, paired over the cases, is above 0 with {_CI}.",
        judge_ft_meta_related,
    ),
    Claim(
        "ike-locality-single",
        "On locality, IKE is stable in single edits.",
        ("ike",),
        "single, with the unedited model's locality values",
        f"IKE's locality headline after the edit minus before it, paired over the cases, is "
        f"above -{LOCALITY_DROP:.2f} with {_CI}.",
        judge_ike_locality,
    ),
    Claim(
        "memit-locality",
        "Parameter-modifying methods drop on locality, except MEMIT.",
        ("memit",),
        "single, with the unedited model's locality values",
        f"per method, the locality headline after the edit minus before it: above "
        f"-{LOCALITY_DROP:.2f} for MEMIT and below it for every other parameter-modifying "
        f"method, each with {_CI}; partly supported if some parts hold.",
        judge_memit_locality,
    ),
    Claim(
        "modifying-other-attribution",
        "Parameter-modifying methods are good on Other-Attribution.",
        (),
        f"single, with {OTHER_ATTRIBUTION} (KnowEdit)",
        f"per parameter-modifying method, {OTHER_ATTRIBUTION} is above "
        f"{OTHER_ATTRIBUTION_GOOD:.2f} with {_CI}; partly supported if some hold.",
        judge_other_attribution,
    ),
    Claim(
        "serac-distortion",
        "SERAC has low success and low distortion on RoundEdit-style multi-edits.",
        ("serac",),
        "single, on RoundEdit",
        "SERAC's round_edit_success and knowledge_distortion minus the mean of the other "
        f"methods', paired over the cases, are each below 0 with {_CI}.",
        judge_serac_distortion,
    ),
    Claim(
        "mend-degrades",
        "MEND degrades after 10–20 edits.",
        ("mend",),
        "sequential with general-ability tasks at checkpoint 10 or 20, and the unedited model's",
        f"general ability {_DEGRADES}, at checkpoint 10 or 20.",
        judge_degrades,
    ),
    Claim(
        "rome-kn-degrade",
        "ROME and KN degrade after about 10 edits.",
        ("rome", "kn"),
        "sequential with general-ability tasks at checkpoint 10 or 20, and the unedited model's",
        f"per method, general ability {_DEGRADES}, at checkpoint 10 or 20; partly supported if "
        f"one of the two degrades.",
        judge_degrades,
    ),
    Claim(
        "memit-stable",
        f"MEMIT is stable up to {STABLE_UP_TO} edits.",
        ("memit",),
        f"sequential with general-ability tasks at checkpoints up to {STABLE_UP_TO}, and the "
        f"unedited model's",
        f"general ability does not degrade at any sequential checkpoint up to {STABLE_UP_TO}: "
        f"every change has {_CI} clear of the degradation thresholds ({_DEGRADES}); partly "
        f"supported if the last checkpoint run is below {STABLE_UP_TO}.",
        judge_memit,
    ),
    Claim(
        "grace-serac-downstream",
        "GRACE and SERAC leave downstream scores unchanged.",
        ("grace", "serac"),
        "sequential with general-ability tasks, and the unedited model's scores",
        f"at the last sequential checkpoint every informative downstream change lies within "
        f"±{DOWNSTREAM_TOLERANCE:.2f} and the perplexity change within "
        f"±{PERPLEXITY_TOLERANCE:.0%}, with {_CI}; partly supported if one of the two holds.",
        judge_unchanged,
    ),
    Claim(
        "modifying-vs-preserving",
        "Parameter-modifying methods lower downstream scores; parameter-preserving ones do not.",
        (),
        "sequential with general-ability tasks, and the unedited model's scores",
        f"the change of the informative downstream scores (last sequential checkpoint against "
        f"the unedited model), averaged over the parameter-modifying methods run, is below "
        f"-{DOWNSTREAM_DROP:.2f}, and over the parameter-preserving ones above it, each with "
        f"{_CI}; partly supported if only one half holds or can be tested.",
        judge_families,
    ),
    Claim(
        "preserving-downstream-each",
        "Parameter-preserving methods leave downstream scores unchanged (each method).",
        (),
        "sequential with general-ability tasks, and the unedited model's scores",
        f"for every parameter-preserving method run (added parameters, external memory, in "
        f"context), at its last sequential checkpoint every informative downstream change lies "
        f"within ±{DOWNSTREAM_TOLERANCE:.2f} and the perplexity change within "
        f"±{PERPLEXITY_TOLERANCE:.0%}, with {_CI}; partly supported if some hold.",
        judge_each_preserving,
    ),
)


def evaluate_claims(summary: BenchSummary) -> list[Finding]:
    """Every claim of :data:`CLAIMS` checked against ``summary``."""
    return [claim.evaluate(summary) for claim in CLAIMS]


__all__ = [
    "CLAIMS",
    "INCONCLUSIVE",
    "NOT_RUN",
    "NOT_SUPPORTED",
    "PARTLY",
    "SUPPORTED",
    "VERDICTS",
    "Claim",
    "Finding",
    "evaluate_claims",
]
