"""Confidence intervals: the seeded bootstrap, the scores it resamples, the general tasks'
per-example samples and paired changes, and the intervals in ``kedit eval``'s summary."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from kedit.eval.formulas.classification import accuracy, class_f1, confusion_matrix, mcc
from kedit.eval.formulas.uncertainty import (
    Estimate,
    estimate,
    mean_estimate,
    paired_combination,
    resample_rows,
    unseen_rate_bound,
    weighted_mean,
)
from kedit.eval.general import GENERAL_TASKS
from kedit.eval.general.task import change_estimate, mean_change_estimate, task_estimate
from kedit.eval.protocols import Single
from kedit.eval.rows import GENERAL_CASE, CaseRow, MeasureRow
from kedit.eval.summary import pooled, summarize_run


def test_bootstrap_interval_matches_the_normal_approximation():
    values = [1.0] * 60 + [0.0] * 40  # p = 0.6, n = 100: standard error 0.049
    est = mean_estimate(values)
    assert est.value == pytest.approx(0.6)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 100)
    assert est.low == pytest.approx(0.6 - half, abs=0.02)
    assert est.high == pytest.approx(0.6 + half, abs=0.02)
    assert est.n == 100 and est.unit == "cases"
    assert mean_estimate(values) == est  # seeded: the same rows give the same interval


def test_weighted_mean_pools_by_weight():
    statistic = weighted_mean([1.0, 0.0], [3, 1])
    assert statistic(np.arange(2)[None])[0] == pytest.approx(0.75)
    assert statistic(np.array([[1, 1]]))[0] == 0.0


def test_resamples_are_fixed_and_read_only():
    rows = resample_rows(5, 10, 0)
    assert rows.shape == (10, 5) and rows.max() < 5
    assert np.array_equal(rows, resample_rows(5, 10, 0))
    with pytest.raises(ValueError):
        rows[0, 0] = 1


def test_sides_and_the_sample_that_would_settle_it():
    est = Estimate(0.10, 0.00, 0.20, 100)
    assert est.side(-0.05) == 1 and est.side(0.25) == -1 and est.side(0.05) == 0
    # the half-width 0.10 must shrink below the gap 0.05: four times the sample
    assert est.needed(0.05) == 401
    assert est.needed(-0.05) == 100  # already clear
    assert est.needed(0.10) is None  # on the threshold: no sample settles it
    assert estimate(weighted_mean([]), 0) is None


def test_paired_differences_cancel_what_the_cases_share():
    rng = random.Random(0)
    base = {f"c{i}": (rng.random(), 1) for i in range(40)}
    shifted = {c: (v + 0.1, 1) for c, (v, _) in base.items()}
    diff = paired_combination([(1.0, shifted), (-1.0, base)])
    assert (diff.value, diff.low, diff.high) == pytest.approx((0.1, 0.1, 0.1))
    # unpaired, the same shift is lost in the spread of the cases
    assert (
        mean_estimate([v for v, _ in base.values()]).high
        - mean_estimate([v for v, _ in base.values()]).low
        > 0.1
    )
    # only the cases both have count
    partial = paired_combination([(1.0, {"c0": (1.0, 1), "x": (0.0, 1)}), (-1.0, base)])
    assert partial.n == 1
    assert paired_combination([(1.0, {"x": (1.0, 1)}), (-1.0, base)]) is None


def test_batched_classification_scores_equal_the_single_ones():
    rng = random.Random(1)
    labels = [rng.randrange(3) for _ in range(50)]
    preds = [rng.randrange(3) for _ in range(50)]
    rows = resample_rows(50, 7, 3)
    stacked = confusion_matrix(labels, preds, 3, rows)
    for r in range(7):
        single = confusion_matrix([labels[i] for i in rows[r]], [preds[i] for i in rows[r]], 3)
        assert np.array_equal(stacked[r], single)
        assert mcc(stacked)[r] == pytest.approx(mcc(single))
        assert accuracy(stacked)[r] == pytest.approx(accuracy(single))
        assert class_f1(stacked, 1)[r] == pytest.approx(class_f1(single, 1))


def choice_result(labels: list[int], preds: list[int]) -> dict:
    return {"samples": {"labels": labels, "preds": preds}, "higher_is_better": True}


def test_task_samples_give_the_score_and_chance():
    labels = [0] * 30 + [1] * 70
    preds = labels[:80] + [1 - x for x in labels[80:]]  # 80 right
    sst2 = GENERAL_TASKS["sst2"]
    n, statistic = sst2.statistic({"labels": labels, "preds": preds})
    assert n == 100 and statistic(np.arange(100)[None])[0] == pytest.approx(0.80)
    assert sst2.chance({"labels": labels}) == pytest.approx(0.70)  # the majority class
    assert GENERAL_TASKS["cola"].chance({"labels": labels}) == 0.0  # MCC of a constant answer
    est = task_estimate("sst2", choice_result(labels, preds))
    assert est.value == pytest.approx(0.80) and est.low < 0.80 < est.high
    assert est.unit == "examples"
    assert task_estimate("sst2", {"score": 0.8}) is None  # stored before samples existed


def test_paired_change_of_a_task_on_the_same_examples():
    labels = [i % 2 for i in range(200)]
    before = labels[:150] + [1 - x for x in labels[150:]]  # 0.75
    after = labels[:140] + [1 - x for x in labels[140:]]  # 0.70: ten answers flipped
    change = change_estimate("sst2", choice_result(labels, before), choice_result(labels, after))
    assert change.value == pytest.approx(-0.05)
    assert change.high < 0  # ten flips and no others: clearly below zero
    same = change_estimate("sst2", choice_result(labels, before), choice_result(labels, before))
    assert (same.low, same.high) == (0.0, 0.0)
    other = choice_result(labels[::-1], after)
    assert change_estimate("sst2", choice_result(labels, before), other) is None


def test_perplexity_change_is_relative():
    nll = [30.0, 50.0, 20.0]
    tokens = [10, 20, 10]
    base = {"samples": {"nll": nll, "tokens": tokens}, "higher_is_better": False}
    scale = math.log(1.2 * math.exp(100 / 40)) / (100 / 40)  # corpus perplexity x 1.2
    edited = {"samples": {"nll": [x * scale for x in nll], "tokens": tokens}}
    edited["higher_is_better"] = False
    assert task_estimate("wikitext", base).value == pytest.approx(math.exp(100 / 40))
    change = change_estimate("wikitext", base, edited)
    assert change.value == pytest.approx(0.2)
    assert change.unit == "texts"


def test_mean_change_over_tasks():
    labels = [i % 2 for i in range(100)]
    right = choice_result(labels, labels)
    half = choice_result(labels, labels[:50] + [1 - x for x in labels[50:]])
    from kedit.eval.general.task import change_statistic

    changes = {
        "sst2": change_statistic("sst2", right, half),
        "rte": change_statistic("rte", right, right),
    }
    est = mean_change_estimate(changes)
    assert est.value == pytest.approx(-0.25)
    assert est.high < 0


def test_eval_summary_carries_intervals():
    rows = [
        MeasureRow(f"c{i}", 1, "efficacy_score", "reliability", "prob", True, 0.0, float(i % 2))
        for i in range(20)
    ]
    (mean,) = pooled(rows).values()
    assert mean.post == pytest.approx(0.5)
    assert mean.post_estimate.low < 0.5 < mean.post_estimate.high
    assert (mean.pre_estimate.low, mean.pre_estimate.high) == (0.0, 0.0)
    labels = [i % 2 for i in range(40)]
    general = CaseRow(GENERAL_CASE, 1, details={"general": {"sst2": choice_result(labels, labels)}})
    general.details["general"]["sst2"] |= {"score": 1.0, "metric": "accuracy", "n": 40}
    summary = summarize_run([CaseRow("c0", 1), general], rows, {"method": "x"}, Single())
    entry = summary["metrics"]["efficacy_score"]
    assert entry["post_ci"] == [mean.post_estimate.low, mean.post_estimate.high]
    assert entry["pre_ci"] == [0.0, 0.0]
    shown = summary["general"]["1"]["sst2"]
    assert "samples" not in shown and shown["ci"] == [1.0, 1.0]


def test_unseen_rate_bound_is_the_exact_binomial_bound():
    """When all n units agree, (1 - bound)^n = 5%: 0.95 for one unit (not 3/1 = 300%), 0.139
    for 20, and close to the rule of three (3/n) for large n."""
    assert unseen_rate_bound(1) == pytest.approx(0.95)
    assert unseen_rate_bound(20) == pytest.approx(0.1391, abs=1e-4)
    assert (1 - unseen_rate_bound(20)) ** 20 == pytest.approx(0.05)
    assert unseen_rate_bound(1000) == pytest.approx(3 / 1000, rel=0.01)
