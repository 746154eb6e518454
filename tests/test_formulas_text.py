"""The audit formulas of generated text and answers (fluency n-gram entropy, MQuAKE's answer
matching and aggregations, dialogue follow-ups) against values worked out by hand, plus their
input validation; the probability and divergence formulas are in ``test_formulas.py``."""

from __future__ import annotations

import math

import pytest

from kedit.eval.formulas import (
    ConfidenceBin,
    classify_followup,
    edit_wise_success_rate,
    followup_rates,
    instance_wise_accuracy,
    mean_ngram_entropy,
    mquake_answer_matches,
    multi_hop_accuracy,
    ngram_entropy,
    reversion_rate_by_confidence,
    word_tokenize,
)

# ---------------------------------------------------------------------------------------------
# fluency


def test_word_tokenize_splits_punctuation_and_contractions():
    assert word_tokenize("Don't stop, John's 1,000 well-known cats.") == [
        "Do",
        "n't",
        "stop",
        ",",
        "John",
        "'s",
        "1,000",
        "well-known",
        "cats",
        ".",
    ]
    assert word_tokenize("") == []


def test_ngram_entropy_of_tiny_strings_by_hand():
    # "a b a b": bigrams ab, ba, ab -> f = [2/3, 1/3], H2 = log2 3 - 2/3 = .918296;
    # trigrams aba, bab -> H3 = 1; GE = mean(2/3 * .918296, 4/3 * 1) = .972765
    h2 = math.log2(3) - 2 / 3
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert ngram_entropy("a b a b") == pytest.approx(expected)
    assert expected == pytest.approx(0.972765, abs=1e-6)
    # a repeated word has one bigram and one trigram type: entropy 0
    assert ngram_entropy("a a a a") == pytest.approx(0.0)
    # fewer words than n: H_n = 0, as ROME's empty frequency table gives
    assert ngram_entropy("word") == 0.0
    assert ngram_entropy("") == 0.0
    # punctuation is a token: "a , a , a" -> bigrams (a ,)x2 (, a)x2 -> H2 = 1;
    # trigrams (a , a)x2 (, a ,)x1 -> H3 = .918296; GE = (2/3 + 4/3 * .918296) / 2
    assert ngram_entropy("a, a, a") == pytest.approx((2 / 3 + 4 / 3 * h2) / 2)


def test_ngram_entropy_uses_a_given_tokenizer_and_averages_texts():
    # str.split keeps "a," whole: bigrams (a, a,), (a, a) -> H2 = 1; one trigram -> H3 = 0
    assert ngram_entropy("a, a, a", tokenizer=str.split) == pytest.approx(1 / 3)
    h2 = math.log2(3) - 2 / 3
    ge = (2 / 3 * h2 + 4 / 3) / 2
    assert mean_ngram_entropy(["a b a b", "a a a a"]) == pytest.approx(ge / 2)


def test_ngram_entropy_validation():
    with pytest.raises(ValueError, match="empty"):
        mean_ngram_entropy([])
    with pytest.raises(ValueError, match="equal in length"):
        ngram_entropy("a b c", ns=(2, 3), weights=(1.0,))
    with pytest.raises(ValueError, match=">= 1"):
        ngram_entropy("a b c", ns=(0,), weights=(1.0,))


# ---------------------------------------------------------------------------------------------
# MQuAKE


def test_mquake_aggregations_on_three_cases():
    # edit-wise: 1/2, 1/1, 2/3 recalled -> pooled 4/6; the per-instance mean would be .7222
    edits = [[True, False], [True], [True, True, False]]
    assert edit_wise_success_rate(edits) == pytest.approx(4 / 6)
    # instance-wise: all hops in cases 1 and 3 -> 2/3
    assert instance_wise_accuracy([[True, True, True], [True, False], [True, True]]) == (
        pytest.approx(2 / 3)
    )
    # multi-hop: any question right in cases 1 and 3 -> 2/3
    questions = [[False, False, True], [False, False, False], [True, True, True]]
    assert multi_hop_accuracy(questions) == pytest.approx(2 / 3)


def test_mquake_answer_matching_is_exact_after_strip():
    aliases = ["City of Light", "Paris, France"]
    assert mquake_answer_matches("Paris", "Paris", aliases)
    assert mquake_answer_matches("  Paris\n", "Paris", aliases)
    assert mquake_answer_matches("City of Light", "Paris", aliases)
    assert not mquake_answer_matches("paris", "Paris", aliases)
    assert not mquake_answer_matches("Paris is the answer", "Paris", aliases)
    # SQuAD normalisation is opt-in
    assert mquake_answer_matches("paris.", "Paris", aliases, normalise=True)
    assert mquake_answer_matches("the city of light", "Paris", aliases, normalise=True)


def test_mquake_validation():
    with pytest.raises(ValueError, match="edits_recalled is empty"):
        edit_wise_success_rate([])
    with pytest.raises(ValueError, match=r"hops_recalled\[1\] is empty"):
        instance_wise_accuracy([[True], []])
    with pytest.raises(ValueError, match="booleans"):
        multi_hop_accuracy([[0.7, True]])
    with pytest.raises(ValueError, match="all empty"):
        mquake_answer_matches("x", " ", [""])


# ---------------------------------------------------------------------------------------------
# dialogue robustness


def test_classify_followup():
    old = {"old_answer": "Paris", "old_aliases": ["City of Light"]}
    assert classify_followup("It is Rome.", "Rome", **old) == "kept"
    assert classify_followup("Actually it's PARIS.", "Rome", **old) == "reverted"
    assert classify_followup("The city of light, of course", "Rome", **old) == "reverted"
    assert classify_followup("I am not sure.", "Rome", **old) == "confused"
    # naming both counts as kept, as the reference's retention score does
    assert classify_followup("Rome, not Paris", "Rome", **old) == "kept"
    # substring matching as the reference; whole words on request
    assert classify_followup("Romeo", "Rome", **old) == "kept"
    assert classify_followup("Romeo", "Rome", whole_word=True, **old) == "confused"
    assert classify_followup("Roma", "Rome", new_aliases=["Roma"], **old) == "kept"


def test_classify_followup_ignores_mentions_nested_in_the_other_answer():
    # "York" inside "New York" is a mention of the old answer, not of the new one
    assert classify_followup("New York City", "York", "New York") == "reverted"
    assert classify_followup("It is York.", "York", "New York") == "kept"
    assert classify_followup("York, not New York", "York", "New York") == "kept"


def test_followup_rates_and_binned_reversion():
    outcomes = ["reverted", "kept", "reverted", "confused", "reverted"]
    rates = followup_rates(outcomes)
    assert rates == pytest.approx({"kept": 0.2, "reverted": 0.6, "confused": 0.2})
    confidences = [0.1, 0.2, 0.6, 0.7, 1.0]
    # [0, .5): reverted, kept -> 1/2; [.5, .8): reverted, confused -> 1/2;
    # [.8, 1.0] (the last bin is closed, so 1.0 is in it): reverted -> 1
    bins = reversion_rate_by_confidence(outcomes, confidences, edges=(0.0, 0.5, 0.8, 1.0))
    assert bins == [
        ConfidenceBin(0.0, 0.5, 2, 0.5),
        ConfidenceBin(0.5, 0.8, 2, 0.5),
        ConfidenceBin(0.8, 1.0, 1, 1.0),
    ]
    # no confidence below .05: an empty bin has no rate
    fine = reversion_rate_by_confidence(outcomes, confidences, edges=(0.0, 0.05, 1.0))
    assert fine[0] == ConfidenceBin(0.0, 0.05, 0, None)
    assert fine[1].count == 5
    assert fine[1].reversion_rate == pytest.approx(0.6)


def test_dialogue_validation():
    with pytest.raises(ValueError, match="new_target is empty"):
        classify_followup("x", " ", "Paris")
    with pytest.raises(ValueError, match="old_answer is empty"):
        classify_followup("x", "Rome", "")
    with pytest.raises(ValueError, match="expected one of"):
        followup_rates(["kept", "forgot"])
    with pytest.raises(ValueError, match="empty"):
        followup_rates([])
    with pytest.raises(ValueError, match="differ in length"):
        reversion_rate_by_confidence(["kept"], [0.1, 0.2])
    with pytest.raises(ValueError, match="strictly increasing"):
        reversion_rate_by_confidence(["kept"], [0.1], edges=(0.0, 0.5, 0.5, 1.0))
    with pytest.raises(ValueError, match="outside the edges"):
        reversion_rate_by_confidence(["kept"], [0.9], edges=(0.0, 0.5))
