"""Formulas behind the pitfalls-audit measures, as pure functions of numbers and strings.

Nothing here calls a model: callers pass log-probabilities, probabilities, logits, generated
texts or per-case flags (as the batched scorer produces them) and get numbers back. Each function
follows one reference implementation, named in its docstring together with any place where we
deliberately differ. Definitions are those of PART B (sections B3, B6, B7, B8, B11, B13) of the
project's reference notes ``methods-parameter-preserving-and-metrics.md``.

Contents:

* probabilities of facts: :func:`length_normalised_probability`, :func:`fact_probability`,
  :func:`l1_normalise`, :func:`candidate_distribution` (the Pitfalls / ROME conventions);
* divergences: :func:`kl_divergence`, :func:`js_divergence` (natural log unless told otherwise);
* RoundEdit (Li et al. 2024, ``zjunlp/PitfallsKnowledgeEditing`` ``experiments/summarize.py``):
  :func:`round_edit_success`, :func:`knowledge_distortion`, :func:`ignore_rate`,
  :func:`is_failure`, :func:`round_edit_case`, :func:`round_edit_summary`;
* ConflictEdit (same repo): :func:`conflict_score`, :func:`conflict_magnitude`,
  :func:`tied_fact_damage`, :func:`coverage_success`;
* neighbourhood KL (CounterFact+, ``apartresearch/specificityplus``
  ``experiments/e2e_analyze.py``): :func:`next_token_kl`, :func:`neighbourhood_kl`;
* fluency (ROME ``experiments/py/eval_utils_counterfact.py``): :func:`word_tokenize`,
  :func:`ngram_entropy`, :func:`mean_ngram_entropy`;
* MQuAKE (``princeton-nlp/MQuAKE``): :func:`mquake_answer_matches`,
  :func:`edit_wise_success_rate`, :func:`instance_wise_accuracy`, :func:`multi_hop_accuracy`;
* dialogue robustness (Ma et al. 2024, ``xbmxb/edit_analysis`` ``code/baseline_loced.py``):
  :func:`classify_followup`, :func:`followup_rates`, :func:`reversion_rate_by_confidence`.

Every function raises :class:`ValueError` with a message naming the bad argument on empty
inputs, mismatched lengths, NaN values, probabilities outside [0, 1] and distributions
that do not sum to 1.
"""

from __future__ import annotations

from kedit.eval.formulas._checks import DISTRIBUTION_ATOL, FloatsLike
from kedit.eval.formulas.dialogue import (
    FOLLOWUP_OUTCOMES,
    ConfidenceBin,
    FollowupOutcome,
    classify_followup,
    followup_rates,
    reversion_rate_by_confidence,
)
from kedit.eval.formulas.fluency import (
    mean_ngram_entropy,
    ngram_entropy,
    word_tokenize,
)
from kedit.eval.formulas.mquake import (
    edit_wise_success_rate,
    instance_wise_accuracy,
    mquake_answer_matches,
    multi_hop_accuracy,
    normalize_answer,
)
from kedit.eval.formulas.neighbourhood import (
    neighbourhood_kl,
    next_token_kl,
)
from kedit.eval.formulas.pitfalls import (
    RoundEditCase,
    conflict_magnitude,
    conflict_score,
    coverage_success,
    ignore_rate,
    is_failure,
    knowledge_distortion,
    round_edit_case,
    round_edit_success,
    round_edit_summary,
    tied_fact_damage,
)
from kedit.eval.formulas.probability import (
    candidate_distribution,
    fact_probability,
    js_divergence,
    kl_divergence,
    l1_normalise,
    length_normalised_probability,
)

__all__ = [
    "DISTRIBUTION_ATOL",
    "FOLLOWUP_OUTCOMES",
    "ConfidenceBin",
    "FloatsLike",
    "FollowupOutcome",
    "RoundEditCase",
    "candidate_distribution",
    "classify_followup",
    "conflict_magnitude",
    "conflict_score",
    "coverage_success",
    "edit_wise_success_rate",
    "fact_probability",
    "followup_rates",
    "ignore_rate",
    "instance_wise_accuracy",
    "is_failure",
    "js_divergence",
    "kl_divergence",
    "knowledge_distortion",
    "l1_normalise",
    "length_normalised_probability",
    "mean_ngram_entropy",
    "mquake_answer_matches",
    "multi_hop_accuracy",
    "neighbourhood_kl",
    "next_token_kl",
    "ngram_entropy",
    "normalize_answer",
    "reversion_rate_by_confidence",
    "round_edit_case",
    "round_edit_success",
    "round_edit_summary",
    "tied_fact_damage",
    "word_tokenize",
]
