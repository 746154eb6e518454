"""Metrics against values worked out by hand on fixed scores."""

import math

import pytest

from kedit.eval.metric import GROUP_ORDER, METRICS, needs_of, resolve_metrics
from kedit.eval.scoring import ProbeResult, ProbeScore, generation_matches, normalize_answer
from kedit.model.lm import TargetScore
from kedit.types import Probe, ProbeKind


def ts(logprobs, targets, argmax):
    return TargetScore(tuple(targets), tuple(logprobs), tuple(argmax))


def rewrite(new_lp, true_lp, gen=None, argmax=None):
    probe = Probe(ProbeKind.REWRITE, "p", "Rome", "Paris")
    score = ProbeScore(
        ts(new_lp, [1] * len(new_lp), argmax or [1] * len(new_lp)),
        ts(true_lp, [2] * len(true_lp), [2] * len(true_lp)),
        gen,
    )
    return ProbeResult(probe, pre=score, post=score)


def test_efficacy_score_and_magnitude_by_hand():
    # P(new) = exp(mean(-0.1, -0.3)) = exp(-0.2); P(true) = exp(-1.0)
    a = rewrite([-0.1, -0.3], [-1.0])
    # P(new) = exp(-2.0) < P(true) = exp(-0.5)
    b = rewrite([-2.0], [-0.25, -0.75])
    results = [a, b]
    assert METRICS["efficacy_score"](results) == pytest.approx(0.5)
    expected = ((math.exp(-0.2) - math.exp(-1.0)) + (math.exp(-2.0) - math.exp(-0.5))) / 2
    assert METRICS["efficacy_magnitude"](results) == pytest.approx(expected)


def test_length_normalisation_decides_the_comparison():
    # sum favours the shorter target (-1.2 > -1.5), the mean favours the longer one
    r = rewrite([-0.5, -0.5, -0.5], [-1.2])
    assert METRICS["efficacy_score"]([r]) == 1.0


def test_token_accuracy_counts_top1_positions():
    r = rewrite([-0.1, -0.2, -0.3], [-1.0], argmax=[1, 9, 1])
    assert METRICS["rewrite_token_acc"]([r]) == pytest.approx(2 / 3)


def test_generation_match_is_normalised_and_word_bounded():
    assert generation_matches(" Rome, the capital", ["Rome"])
    assert generation_matches("the Rome.", ["Rome"])
    assert not generation_matches(" Romeo and Juliet", ["Rome"])
    assert not generation_matches(" Paris", ["Rome"])
    assert generation_matches(" New York City", ["new york"])
    assert normalize_answer("The  U.S.A!") == "usa"
    r1, r2 = rewrite([-1.0], [-2.0], gen=" Rome is"), rewrite([-1.0], [-2.0], gen=" Milan")
    assert METRICS["rewrite_gen_match"]([r1, r2]) == 0.5


def test_neighbourhood_and_top1_agreement():
    probe = Probe(ProbeKind.NEIGHBORHOOD, "n", "Paris", "Rome")
    pre = ProbeScore(ts([-0.5], [2], [2]), ts([-3.0], [1], [2]))
    post = ProbeScore(ts([-2.0], [2], [1]), ts([-1.0], [1], [1]))
    r = ProbeResult(probe, pre, post)
    assert METRICS["neighborhood_score"]([r], "pre") == 1.0
    assert METRICS["neighborhood_score"]([r], "post") == 0.0
    assert METRICS["neighborhood_magnitude"]([r], "post") == pytest.approx(
        math.exp(-2.0) - math.exp(-1.0)
    )
    loc = Probe(ProbeKind.LOCALITY, "q", "blue sky")
    l_pre = ProbeScore(ts([-1.0, -1.0], [4, 5], [4, 7]))
    l_post = ProbeScore(ts([-1.0, -1.0], [4, 5], [4, 8]))
    agreement = METRICS["locality_top1_agreement"]
    # neighbour: 0 of 1 positions kept; locality: 1 of 2 kept -> mean(0, 0.5)
    assert agreement([r, ProbeResult(loc, l_pre, l_post)]) == pytest.approx(0.25)
    assert agreement.paired


def test_metrics_without_probes_return_none():
    probe = Probe(ProbeKind.LOCALITY, "q", "a")
    assert METRICS["efficacy_score"]([ProbeResult(probe)]) is None


def test_every_metric_names_group_and_protocol():
    for metric in resolve_metrics(None, "pitfalls"):
        assert metric.group in GROUP_ORDER
        assert metric.protocol and metric.description
    core = resolve_metrics(None)
    groups = {"reliability", "generalization", "locality", "routing", "portability"}
    assert {m.group for m in core} == groups
    assert set(core) < set(resolve_metrics(None, "pitfalls"))
    needs = needs_of([METRICS["rewrite_gen_match"], METRICS["neighborhood_score"]])
    assert needs.generation == {ProbeKind.REWRITE}
    assert needs.scores == {ProbeKind.NEIGHBORHOOD}  # a generation needs no teacher forcing
    needs = needs_of([METRICS["neighborhood_kl"], METRICS["round_edit_success"]])
    assert needs.next_token == {ProbeKind.NEIGHBORHOOD}
    assert needs.mid == {ProbeKind.ROUND_NEW, ProbeKind.ROUND_TRUE}
    needs = needs_of([METRICS["routed_neighborhood"]])
    assert needs.routing == {ProbeKind.NEIGHBORHOOD} and not needs.scores
    with pytest.raises(ValueError, match="unknown suite"):
        resolve_metrics(None, "everything")
