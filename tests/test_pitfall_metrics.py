"""Pitfalls measures on fixed scores, against values worked out by hand."""

import math

import pytest
import torch

from kedit.eval.metric import METRICS
from kedit.eval.rows import CaseRow
from kedit.eval.scored import case_details, case_measures
from kedit.eval.scoring import ProbeResult, ProbeScore
from kedit.eval.summary import dialogue_analyses, pooled
from kedit.model.lm import TargetScore
from kedit.types import Probe, ProbeKind


def score(p: float) -> TargetScore:
    """A one-token answer scored with probability ``p``."""
    return TargetScore((7,), (math.log(p),), (7,))


def fact(kind: str, stages: dict[str, list[float]], name: str = "") -> list[ProbeResult]:
    """One probe per prompt of a fact; ``stages`` maps stage -> probability per prompt."""
    n = len(next(iter(stages.values())))
    results = [ProbeResult(Probe(kind, f"prompt {i}", "obj", fact=name)) for i in range(n)]
    for stage, probs in stages.items():
        for result, p in zip(results, probs):
            result.stage(stage).expected = score(p)
    return results


# -- RoundEdit --------------------------------------------------------------------------------


@pytest.fixture
def round_case():
    # fact probability = mean over the two prompts of the per-prompt probability
    return [
        *fact(ProbeKind.ROUND_NEW, {"mid": [0.7, 0.5], "post": [0.2, 0.2]}),  # P_e1(o*) = 0.6
        *fact(
            ProbeKind.ROUND_TRUE,
            {"pre": [0.4, 0.2], "mid": [0.1, 0.1], "post": [0.6, 0.4]},  # 0.3, 0.1, 0.5
        ),
        *fact(ProbeKind.ROUND_OTHER, {"pre": [0.2, 0.2], "post": [0.1, 0.1]}, "A"),  # fell
        *fact(ProbeKind.ROUND_OTHER, {"pre": [0.1, 0.1], "post": [0.2, 0.1]}, "B"),  # rose
    ]


def test_round_edit_measures(round_case):
    # both halves succeed: P_e1(o*) 0.6 > P_e1(o) 0.1, P'(o) 0.5 > P'(o*) 0.2
    assert METRICS["round_edit_success"](round_case) == 1.0
    # one of the two other true objects fell: IR 1/2, not above one half, so no failure
    assert METRICS["ignore_rate"](round_case) == 0.5
    assert METRICS["failure_rate"](round_case) == 0.0
    # before [0.3, 0.2, 0.1] -> [1/2, 1/3, 1/6]; after [0.5, 0.1, 0.15] -> [2/3, 2/15, 1/5];
    # m = [7/12, 7/30, 11/60]
    js = 0.5 * (
        2 / 3 * math.log(8 / 7) + 2 / 15 * math.log(4 / 7) + 1 / 5 * math.log(12 / 11)
    ) + 0.5 * (1 / 2 * math.log(6 / 7) + 1 / 3 * math.log(10 / 7) + 1 / 6 * math.log(10 / 11))
    assert METRICS["knowledge_distortion_js"](round_case) == pytest.approx(js, rel=1e-9)
    # the reference's batchmean divides by the three objects
    assert METRICS["knowledge_distortion"](round_case) == pytest.approx(js / 3, rel=1e-9)


def test_round_edit_half_success_and_failure(round_case):
    for r in round_case:
        if r.probe.kind == ProbeKind.ROUND_NEW:
            r.post.expected = score(0.9)  # the edit back did not take: P'(o*) 0.9 > P'(o) 0.5
        if r.probe.fact == "B":
            r.post.expected = score(0.05)  # now both other objects fell
    assert METRICS["round_edit_success"](round_case) == 0.5
    assert METRICS["ignore_rate"](round_case) == 1.0
    assert METRICS["failure_rate"](round_case) == 1.0


# -- ConflictEdit ------------------------------------------------------------------------------


def conflict_case(old_mid: float, old_post: float) -> list[ProbeResult]:
    return [
        *fact(
            ProbeKind.CONFLICT_OLD,
            {"pre": [0.1, 0.1], "mid": [old_mid, old_mid], "post": [old_post, old_post]},
        ),
        *fact(ProbeKind.CONFLICT_EXPLICIT, {"pre": [0.05, 0.05], "post": [0.5, 0.3]}),  # 0.4
        *fact(ProbeKind.CONFLICT_IMPLICIT, {"pre": [0.2, 0.2], "post": [0.1, 0.3]}),  # 0.2
        *fact(ProbeKind.TIED_FACT, {"pre": [0.9, 0.7], "post": [0.7, 0.5]}),  # 0.8 -> 0.6
    ]


def test_conflict_measures():
    results = conflict_case(old_mid=0.5, old_post=0.3)
    assert METRICS["conflict_score_explicit"](results, "post") == 1.0  # 0.4 > 0.3
    assert METRICS["conflict_score_implicit"](results, "post") == 0.0  # 0.2 < 0.3
    assert METRICS["conflict_score_explicit"](results, "pre") == 0.0  # 0.05 < 0.1
    assert METRICS["conflict_score_implicit"](results, "pre") == 1.0  # 0.2 > 0.1
    assert METRICS["conflict_magnitude"](results) == pytest.approx((0.5 - 0.3) / 0.5)
    assert METRICS["tied_fact_damage"](results) == pytest.approx((0.8 - 0.6) / 0.8)


def test_conflict_magnitude_is_clamped_at_minus_one():
    # the first edit's fact gained a lot: (0.1 - 0.5) / 0.1 = -4, clamped as the reference
    assert METRICS["conflict_magnitude"](conflict_case(old_mid=0.1, old_post=0.5)) == -1.0


# -- neighbourhood KL --------------------------------------------------------------------------


def test_neighborhood_kl_on_fixed_logits():
    same = ProbeResult(Probe(ProbeKind.NEIGHBORHOOD, "n1", "a", "b"))
    moved = ProbeResult(Probe(ProbeKind.NEIGHBORHOOD, "n2", "a", "b"))
    same.pre.next_token = same.post.next_token = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    moved.pre.next_token = torch.zeros(3)  # uniform
    moved.post.next_token = torch.tensor([math.log(2), 0.0, 0.0])  # [1/2, 1/4, 1/4]
    # KL(post || pre) = 1/2 ln(3/2) + 2 * 1/4 ln(3/4)
    kl = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    value = METRICS["neighborhood_kl"]([same, moved])
    assert value == pytest.approx(kl / 2, rel=1e-6)
    assert not METRICS["neighborhood_kl"].higher_is_better


# -- MQuAKE ------------------------------------------------------------------------------------


def answered(
    kind: str, text: str, expected: str = "Croatia", aliases=(), exact: bool = False
) -> ProbeResult:
    result = ProbeResult(Probe(kind, "q", expected, aliases=tuple(aliases), exact=exact))
    result.post.generation = text
    result.pre.generation = " nothing"
    return result


def test_mquake_measures_and_pooled_edit_wise_success():
    first = [
        answered(ProbeKind.EDITED_HOP, " Croatia, a country"),
        answered(ProbeKind.EDITED_HOP, " Paris", expected="Rome"),
        answered(ProbeKind.NEW_CHAIN_HOP, " Croatia"),
        answered(ProbeKind.NEW_CHAIN_HOP, " Zagreb", expected="Kolinda", aliases=["Zagreb"]),
        answered(ProbeKind.MULTI_HOP, " nobody\nQ:"),
        answered(ProbeKind.MULTI_HOP, " Kolinda Grabar\nQ: what", expected="Kolinda Grabar"),
    ]
    second = [answered(ProbeKind.EDITED_HOP, " Croatia"), answered(ProbeKind.NEW_CHAIN_HOP, " no")]
    chosen = [
        METRICS[n]
        for n in (
            "mquake_edit_wise_success",
            "mquake_instance_accuracy",
            "mquake_multi_hop_accuracy",
        )
    ]
    rows = [case_measures(str(i), 1, r, chosen) for i, r in enumerate([first, second])]
    values = [{m.measure: (m.pre, m.post, m.weight) for m in case} for case in rows]
    assert values[0]["mquake_edit_wise_success"] == (0.0, 0.5, 2)
    assert values[0]["mquake_instance_accuracy"][1] == 1.0  # alias accepted
    assert values[1]["mquake_instance_accuracy"][1] == 0.0
    assert values[0]["mquake_multi_hop_accuracy"][1] == 1.0  # any question
    means = pooled(rows[0] + rows[1])
    # pooled over the three edited facts (2 of 3 recalled), not the mean of 0.5 and 1.0
    assert means["mquake_edit_wise_success"].post == pytest.approx(2 / 3)
    assert means["mquake_instance_accuracy"].post == 0.5


def test_a_question_is_answered_by_its_whole_first_line():
    """MQuAKE judges a Q/A answer by equality with the answer or an alias; a cloze continuation
    only has to start with one."""
    exact = [
        answered(ProbeKind.MULTI_HOP, " Kolinda\nQ: next", "Kolinda", exact=True),
        answered(ProbeKind.MULTI_HOP, " Kolinda, president", "Kolinda", exact=True),
        answered(ProbeKind.MULTI_HOP, " Grabar", "Kolinda", exact=True, aliases=["Grabar"]),
    ]
    flags = [METRICS["mquake_multi_hop_accuracy"]([r]) for r in exact]
    assert flags == [1.0, 0.0, 1.0]
    cloze = answered(ProbeKind.MULTI_HOP, " Kolinda, president", "Kolinda")
    assert METRICS["mquake_multi_hop_accuracy"]([cloze]) == 1.0


# -- fluency -----------------------------------------------------------------------------------


def test_fluency_is_the_weighted_ngram_entropy_of_the_sampled_texts():
    result = ProbeResult(Probe(ProbeKind.GENERATION, "a", ""))
    result.pre.text = "a b a b"
    result.post.text = "a a a a"
    # "a b a b": bigrams ab, ba, ab -> H2 = -(2/3 log2 2/3 + 1/3 log2 1/3); trigrams aba, bab
    # -> H3 = 1; GE = mean(2/3 H2, 4/3 H3). "a a a a": one bigram, one trigram -> 0
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert METRICS["fluency_ngram_entropy"]([result], "pre") == pytest.approx(
        (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    )
    assert METRICS["fluency_ngram_entropy"]([result], "post") == 0.0


# -- dialogue ----------------------------------------------------------------------------------


def dialogue(kind: str, reply: str, confidence: float) -> ProbeResult:
    result = ProbeResult(Probe(kind, "q", "Rome", "Paris", followup="\nAre you sure?\nq"))
    result.pre = ProbeScore(alternative=score(confidence), answer="Paris", reply=" Paris")
    result.post = ProbeScore(answer="Rome", reply=reply)
    return result


def test_dialogue_rates_and_reversion_by_confidence():
    results = [
        dialogue(ProbeKind.DIALOGUE_CHALLENGE, " Paris, of course.\nRome", 0.9),  # first line
        dialogue(ProbeKind.DIALOGUE_DISTRACTION, " Rome, Italy", 0.9),
        dialogue(ProbeKind.DIALOGUE_REPHRASE, " Romeo and Juliet", 0.1),  # not a whole word
    ]
    assert METRICS["dialogue_kept_rate"](results) == pytest.approx(1 / 3)
    assert METRICS["dialogue_reverted_rate"](results) == pytest.approx(1 / 3)
    assert METRICS["dialogue_confused_rate"](results) == pytest.approx(1 / 3)
    assert METRICS["dialogue_challenge_reverted_rate"](results) == 1.0
    assert METRICS["dialogue_reverted_rate"](results, "pre") == 1.0
    row = CaseRow("c", 1, details=case_details(results))
    assert [t["post_outcome"] for t in row.details["dialogue"]] == [
        "reverted",
        "kept",
        "confused",
    ]
    # confidence quartiles of (0.9, 0.9, 0.1): edges 0.1 and 0.9, one bin holding all three
    bins = dialogue_analyses([row])["dialogue_reversion_by_confidence"]
    assert [(round(b["low"], 6), round(b["high"], 6), b["count"]) for b in bins] == [(0.1, 0.9, 3)]
    row.details["dialogue"] += [
        {"confidence": 0.5, "post_outcome": "kept"},
        {"confidence": 0.7, "post_outcome": "reverted"},
    ]
    # confidences 0.1 0.5 0.7 0.9 0.9: quartile edges 0.1, 0.5, 0.7, 0.9
    bins = dialogue_analyses([row])["dialogue_reversion_by_confidence"]
    assert [(round(b["low"], 6), b["count"], b["reversion_rate"]) for b in bins] == [
        (0.1, 1, 0.0),
        (0.5, 1, 0.0),
        (0.7, 3, 2 / 3),
    ]
