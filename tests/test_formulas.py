"""The audit formulas against values worked out by hand, plus their input validation."""

from __future__ import annotations

import math

import pytest
import torch

from kedit.eval.formulas import (
    RoundEditCase,
    candidate_distribution,
    conflict_magnitude,
    conflict_score,
    coverage_success,
    fact_probability,
    ignore_rate,
    is_failure,
    js_divergence,
    kl_divergence,
    knowledge_distortion,
    l1_normalise,
    length_normalised_probability,
    neighbourhood_kl,
    next_token_kl,
    round_edit_case,
    round_edit_success,
    round_edit_summary,
    tied_fact_damage,
)

LN2 = math.log(2)
# JS([.5, .25, .25], [.25, .25, .5]): m = [.375, .25, .375];
# KL(p‖m) = .5 ln(.5/.375) + .25 ln(1) + .25 ln(.25/.375) = .5 ln(4/3) + .25 ln(2/3), and KL(q‖m)
# is the same by symmetry, so JS = .5 ln(4/3) + .25 ln(2/3) = .143841 - .101366 = .042475 nats
JS_ASYM = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3)


# ---------------------------------------------------------------------------------------------
# probabilities of facts


def test_length_normalised_probability_is_exp_of_mean_logprob():
    assert length_normalised_probability([-0.1, -0.3]) == pytest.approx(math.exp(-0.2))
    with pytest.raises(ValueError, match="<= 0"):
        length_normalised_probability([-0.1, 0.2])


def test_fact_probability_averages_probabilities_not_logprobs():
    # mean(0.5, 0.1) = 0.3, whereas exp(mean(ln .5, ln .1)) = sqrt(0.05) = 0.2236
    value = fact_probability([math.log(0.5), math.log(0.1)])
    assert value == pytest.approx(0.3)
    assert value != pytest.approx(math.sqrt(0.05))
    # a prompt with probability 0 (log-prob -inf) contributes 0
    assert fact_probability([math.log(0.4), float("-inf")]) == pytest.approx(0.2)


def test_l1_normalise_and_candidate_distribution():
    assert l1_normalise([0.2, 0.6]).tolist() == pytest.approx([0.25, 0.75])
    # candidate 0: mean(0.4, 0.2) = 0.3; candidate 1: 0.1 -> [0.3, 0.1] / 0.4 = [0.75, 0.25]
    dist = candidate_distribution([[math.log(0.4), math.log(0.2)], [math.log(0.1)]])
    assert dist.tolist() == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError, match="sum to 0"):
        l1_normalise([0.0, 0.0])
    with pytest.raises(ValueError, match="empty"):
        candidate_distribution([])


# ---------------------------------------------------------------------------------------------
# divergences


def test_js_of_disjoint_point_masses_is_log_two():
    # m = [.5, .5]; KL([1,0]‖m) = ln 2 = KL([0,1]‖m), so JS = ln 2 nats = 1 bit
    assert js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(LN2)
    assert js_divergence([1.0, 0.0], [0.0, 1.0], base=2) == pytest.approx(1.0)
    assert js_divergence([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0, abs=1e-12)


def test_js_of_three_element_distributions_by_hand():
    # p = [.5, .5, 0], q = [0, .5, .5]: m = [.25, .5, .25];
    # KL(p‖m) = .5 ln(.5/.25) + .5 ln(.5/.5) = .5 ln 2 = KL(q‖m) -> JS = .5 ln 2
    assert js_divergence([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5 * LN2)
    p, q = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
    assert js_divergence(p, q) == pytest.approx(JS_ASYM)
    assert js_divergence(q, p) == pytest.approx(JS_ASYM)
    assert js_divergence(torch.tensor(p), torch.tensor(q)) == pytest.approx(JS_ASYM)
    # the reference's batchmean on a 1-D vector divides by its length, 3
    assert js_divergence(p, q, size_mean=True) == pytest.approx(JS_ASYM / 3)


def test_kl_divergence_by_hand_and_direction():
    # KL([.75,.25]‖[.5,.5]) = .75 ln 1.5 + .25 ln .5 = .304099 - .173287 = .130812
    assert kl_divergence([0.75, 0.25], [0.5, 0.5]) == pytest.approx(0.130812, abs=1e-6)
    # KL([.5,.5]‖[.75,.25]) = .5 ln(2/3) + .5 ln 2 = .143841: not symmetric
    assert kl_divergence([0.5, 0.5], [0.75, 0.25]) == pytest.approx(0.143841, abs=1e-6)
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


@pytest.mark.parametrize(
    ("p", "q", "message"),
    [
        ([0.5, 0.5], [0.2, 0.3, 0.5], "differ in length"),
        ([0.5, 0.4], [0.5, 0.5], "not normalised"),
        ([], [], "empty"),
        ([1.5, -0.5], [0.5, 0.5], r"\[0, 1\]"),
        ([float("nan"), 1.0], [0.5, 0.5], "NaN"),
    ],
)
def test_js_rejects_bad_distributions(p, q, message):
    with pytest.raises(ValueError, match=message):
        js_divergence(p, q)


def test_divergences_reject_a_bad_base():
    with pytest.raises(ValueError, match="base"):
        js_divergence([1.0, 0.0], [0.0, 1.0], base=1)
    with pytest.raises(ValueError, match="base"):
        kl_divergence([1.0, 0.0], [0.5, 0.5], base=-2)


# ---------------------------------------------------------------------------------------------
# RoundEdit


def test_round_edit_success_halves():
    # after e1: P(o*) = .7 > P(o) = .1 -> 1/2; after e2: P(o) = .2 < P(o*) = .3 -> 0
    assert round_edit_success(0.7, 0.1, 0.2, 0.3) == pytest.approx(0.5)
    assert round_edit_success(0.7, 0.1, 0.4, 0.3) == pytest.approx(1.0)
    # ties fail both halves
    assert round_edit_success(0.2, 0.2, 0.3, 0.3) == pytest.approx(0.0)


def test_ignore_rate_counts_strict_drops_and_failure_needs_more_than_half():
    before = [0.3, 0.2, 0.1, 0.05]
    after = [0.1, 0.25, 0.05, 0.05]
    # dropped: .3>.1 yes, .2>.25 no, .1>.05 yes, .05>.05 no (tie) -> 2/4
    ir = ignore_rate(before, after)
    assert ir == pytest.approx(0.5)
    assert not is_failure(ir)  # 0.5 is not > 0.5
    # now the second object drops too -> 3/4, a failure
    ir3 = ignore_rate(before, [0.1, 0.15, 0.05, 0.05])
    assert ir3 == pytest.approx(0.75)
    assert is_failure(ir3)


def test_knowledge_distortion_normalises_over_obj_first():
    # after [.4, .2, .2] -> [.5, .25, .25]; before [.1, .1, .2] -> [.25, .25, .5]
    assert knowledge_distortion([0.4, 0.2, 0.2], [0.1, 0.1, 0.2]) == pytest.approx(JS_ASYM)
    assert knowledge_distortion([0.4, 0.2, 0.2], [0.1, 0.1, 0.2], size_mean=True) == pytest.approx(
        JS_ASYM / 3
    )


def test_round_edit_case_and_summary_by_hand():
    # case a: after e1 .7 > .1 and after e2 .4 > .1 -> succ 1/2 + 1/2
    a = round_edit_case(
        p_new_after_e1=0.7,
        p_true_after_e1=0.1,
        p_true_after_e2=0.4,
        p_new_after_e2=0.1,
        p_true_before=0.1,
        others_before=[0.1, 0.2],
        others_after=[0.2, 0.2],
    )
    # after = [.4, .2, .2] -> [.5, .25, .25]; before = [.1, .1, .2] -> [.25, .25, .5]
    # others: .1 > .2 no, .2 > .2 no -> IR 0
    assert isinstance(a, RoundEditCase)
    assert a.success == 1.0
    assert a.distortion == pytest.approx(JS_ASYM)
    assert a.ignore_rate == 0.0
    assert not a.failed
    # case b: succ 0 + 0; after [.5, 0, 0] -> [1, 0, 0]; before [.5, .25, .25] -> [.5, .25, .25]
    # m = [.75, .125, .125]; KL(after‖m) = ln(4/3); KL(before‖m) = .5 ln(2/3) + .5 ln 2 = .5 ln(4/3)
    # JS = .75 ln(4/3) = .215762; IR: .25 > 0 twice -> 1, a failure
    b = round_edit_case(
        p_new_after_e1=0.1,
        p_true_after_e1=0.2,
        p_true_after_e2=0.5,
        p_new_after_e2=0.6,
        p_true_before=0.5,
        others_before=[0.25, 0.25],
        others_after=[0.0, 0.0],
    )
    assert b.success == 0.0
    assert b.distortion == pytest.approx(0.75 * math.log(4 / 3))
    assert b.ignore_rate == 1.0
    assert b.failed
    summary = round_edit_summary([a, b])
    assert summary["succ"] == pytest.approx(0.5)
    assert summary["distortion"] == pytest.approx((JS_ASYM + 0.75 * math.log(4 / 3)) / 2)
    assert summary["ignore_rate"] == pytest.approx(0.5)
    assert summary["failure_rate"] == pytest.approx(0.5)


def test_round_edit_validation():
    with pytest.raises(ValueError, match="differ in length"):
        ignore_rate([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="empty"):
        ignore_rate([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        round_edit_success(1.2, 0.1, 0.1, 0.1)
    with pytest.raises(ValueError, match="empty"):
        round_edit_summary([])
    with pytest.raises(ValueError, match="sum to 0"):
        knowledge_distortion([0.0, 0.0], [0.5, 0.5])


# ---------------------------------------------------------------------------------------------
# ConflictEdit


def test_conflict_score_magnitude_and_tied_fact_damage_by_hand():
    # CS: .5 > .2 yes, .1 > .4 no, .3 > .3 no (tie) -> 1/3
    assert conflict_score([0.5, 0.1, 0.3], [0.2, 0.4, 0.3]) == pytest.approx(1 / 3)
    # CM terms: (.8-.2)/.8 = .75; (.5-.4)/.5 = .2; (.1-.3)/.1 = -2 clamped to -1
    # mean = (.75 + .2 - 1) / 3 = -.05 / 3
    assert conflict_magnitude([0.8, 0.5, 0.1], [0.2, 0.4, 0.3]) == pytest.approx(-0.05 / 3)
    # TFD terms: (.5-.25)/.5 = .5; (.2-.3)/.2 = -.5 (no clamp) -> mean 0
    assert tied_fact_damage([0.5, 0.2], [0.25, 0.3]) == pytest.approx(0.0)
    # TFD is not clamped: (.1 - .4)/.1 = -3
    assert tied_fact_damage([0.1], [0.4]) == pytest.approx(-3.0)
    # coverage: .6 > .3 yes, .2 > .5 no -> 1/2
    assert coverage_success([0.6, 0.2], [0.3, 0.5]) == pytest.approx(0.5)


def test_conflict_validation():
    with pytest.raises(ValueError, match="differ in length"):
        conflict_score([0.5, 0.1], [0.2])
    with pytest.raises(ValueError, match="p_old_mid contains 0"):
        conflict_magnitude([0.0, 0.5], [0.1, 0.1])
    with pytest.raises(ValueError, match="p_tied_base contains 0"):
        tied_fact_damage([0.0], [0.1])
    with pytest.raises(ValueError, match="empty"):
        coverage_success([], [])


# ---------------------------------------------------------------------------------------------
# neighbourhood KL


def test_next_token_kl_direction_is_post_to_pre():
    pre = torch.tensor([0.0, 0.0])  # P_pre = [.5, .5]
    post = torch.tensor([math.log(3.0), 0.0])  # P_post = [.75, .25]
    # KL(P_post‖P_pre) = .130812; the other direction would be .143841
    assert float(next_token_kl(pre, post)) == pytest.approx(0.130812, abs=1e-6)
    # logits are shift invariant, and log-probabilities are accepted as they are
    assert float(next_token_kl(pre + 7.0, torch.log(torch.tensor([0.75, 0.25])))) == pytest.approx(
        0.130812, abs=1e-6
    )
    # batchmean on a [V] vector divides by V = 2
    assert float(next_token_kl(pre, post, vocab_mean=True)) == pytest.approx(0.065406, abs=1e-6)


def test_neighbourhood_kl_averages_over_prompts():
    pre = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    post = torch.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])  # second prompt unchanged: KL 0
    per_prompt = next_token_kl(pre, post)
    assert per_prompt.shape == (2,)
    assert per_prompt.tolist() == pytest.approx([0.130812, 0.0], abs=1e-6)
    assert neighbourhood_kl(pre, post) == pytest.approx(0.130812 / 2, abs=1e-6)


def test_next_token_kl_handles_impossible_tokens():
    pre = torch.tensor([0.0, 0.0])
    # edited model rules token 1 out: KL([1, 0]‖[.5, .5]) = ln 2, not NaN
    assert float(next_token_kl(pre, torch.tensor([0.0, -math.inf]))) == pytest.approx(LN2)
    # unedited model ruled out a token the edited one uses: infinite
    assert float(next_token_kl(torch.tensor([0.0, -math.inf]), pre)) == math.inf


@pytest.mark.parametrize(
    ("pre", "post", "message"),
    [
        (torch.zeros(3), torch.zeros(4), "differ in shape"),
        (torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), r"\[V\] or \[N, V\]"),
        (torch.zeros(0), torch.zeros(0), "non-empty"),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), "floating"),
        (torch.tensor([0.0, math.nan]), torch.zeros(2), "NaN"),
    ],
)
def test_next_token_kl_validation(pre, post, message):
    with pytest.raises(ValueError, match=message):
        next_token_kl(pre, post)
