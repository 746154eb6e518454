"""CaliNET's own mechanism: no-op slots, one training run for many facts, the contrastive
knowledge assessment, sequential slots, the ``fired`` indicator and config validation."""

import math

import pytest
import torch
import transformers

import kedit.methods.calinet as calinet
from kedit.methods import METHODS, EditSession
from kedit.methods.calinet import (
    RELATIONS,
    CalibrationSlots,
    CaliNETConfig,
    _activation,
    _ffn_shape,
    contrastive_assessment,
    negative_prompts,
)
from kedit.model.arch import arch_of, get_module
from kedit.model.lm import HFLanguageModel
from kedit.model.tokens import encode_prompt_target
from kedit.types import EditRequest
from tests.conftest import TINY_CONFIGS, assert_same_state, snapshot, tiny_model
from tests.tiny_configs import tiny_config

FACTS = [
    EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {}", "Germany", "Madrid", "Berlin"),
    EditRequest("People in {}", "Brazil", "Italian", "Portuguese"),
    EditRequest("The quick brown {}", "fox", "Tokyo", "jumps"),
]


def calinet_method(model, env, **overrides):
    return METHODS["calinet"].for_model(model, {**tiny_config("calinet"), **overrides}, env)


def logprob(model, tok, request: EditRequest) -> float:
    lm = HFLanguageModel(model, tok)
    return sum(lm.score_targets([request.text], [request.target_new])[0].logprobs)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_fresh_slots_are_a_no_op_bit_for_bit(arch, tokenizer):
    model = tiny_model(arch)
    batch = tokenizer(["Tourists visit the Eiffel Tower", "The capital of"], padding=True)
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        before = model(**inputs).logits
    path = arch_of(model).path("mlp", 1)
    d_model, gated = _ffn_shape(model, 1)
    slots = CalibrationSlots(get_module(model, path), d_model, _activation(model), gated)
    slots.add_slots(64, torch.Generator().manual_seed(0))
    model.set_submodule(path, slots)
    with torch.no_grad():
        after = model(**inputs).logits
    assert slots.n_slots == 64 and slots.w_in.abs().sum() > 0 and not slots.w_out.any()
    assert torch.equal(after, before)
    assert not slots.fired.any()


def test_the_slots_follow_the_ffn_activation_and_gating():
    llama, gpt2 = tiny_model("llama"), tiny_model("gpt2")
    assert _ffn_shape(llama, 0) == (32, True) and _activation(llama) == "silu"
    assert _ffn_shape(gpt2, 0) == (32, False) and _activation(gpt2) == "gelu_new"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_batch_of_four_facts_is_calibrated_in_one_training_run(arch, tokenizer, env):
    model = tiny_model(arch)
    before = [logprob(model, tokenizer, r) for r in FACTS]
    edit = calinet_method(model, env, num_steps=30).edit(model, tokenizer, FACTS)
    after = [logprob(model, tokenizer, r) for r in FACTS]
    assert all(a > b + 0.1 for a, b in zip(after, before)), (before, after)
    (slots,) = [m for m in model.modules() if isinstance(m, CalibrationSlots)]
    assert slots.n_slots == 64  # one set of slots, trained once, for all four facts
    assert edit.info["calibrated"] == 4 and edit.info["rows"] == 4 * 11
    assert [f["calibrated"] for f in edit.info["facts"]] == [True] * 4
    edit.restore()


class StubLM:
    """Next-token log-probs with known probabilities for token ``token`` by prompt."""

    def __init__(self, probs: dict[str, float], token: int, vocab: int = 700) -> None:
        self.probs, self.token, self.vocab = probs, token, vocab

    def next_token_logprobs(self, prompts):
        rows = torch.full((len(prompts), self.vocab), -30.0)
        for i, prompt in enumerate(prompts):
            rows[i, self.token] = math.log(self.probs[prompt])
        return rows


def test_cka_is_own_probability_over_the_mean_of_the_negatives(tokenizer):
    fact = FACTS[0]
    negatives = negative_prompts(fact, 3, seed=0)
    token = encode_prompt_target(tokenizer, fact.text, fact.target_new).target_ids[0]
    probs = {fact.text: 0.4} | dict(zip(negatives, [0.1, 0.2, 0.3]))
    (cka,) = contrastive_assessment(StubLM(probs, token), tokenizer, [fact], 3, seed=0)
    assert cka == pytest.approx(0.4 / 0.2)  # 0.4 / mean(0.1, 0.2, 0.3)
    probs = {fact.text: 0.01} | dict(zip(negatives, [0.1, 0.2, 0.3]))
    (cka,) = contrastive_assessment(StubLM(probs, token), tokenizer, [fact], 3, seed=0)
    assert cka == pytest.approx(0.05)


def test_negatives_are_three_other_relations_about_the_subject_seeded():
    fact = EditRequest("{} was born in the city of", "Ada Lovelace", "Rome")
    negatives = negative_prompts(fact, 3, seed=0)
    assert len(set(negatives)) == 3 and all("Ada Lovelace" in p for p in negatives)
    assert "Ada Lovelace was born in" not in negatives  # P19, the fact's own relation
    known = {t.format("Ada Lovelace") for _, t in RELATIONS}
    assert set(negatives) <= known
    assert negative_prompts(fact, 3, seed=0) == negatives
    assert any(negative_prompts(fact, 3, seed=s) != negatives for s in range(1, 5))


def test_facts_above_the_threshold_are_not_calibrated(tokenizer, env, monkeypatch):
    model = tiny_model("llama")
    state = snapshot(model)
    scores = iter([[3.0, 0.5], [3.0, 4.0]])  # before, after
    monkeypatch.setattr(calinet, "contrastive_assessment", lambda *a: next(scores))
    method = calinet_method(model, env, cka_threshold=1.0, num_steps=5)
    edit = method.edit(model, tokenizer, FACTS[:2])
    facts = edit.info["facts"]
    assert edit.info["calibrated"] == 1 and edit.info["rows"] == 11  # the second fact only
    assert [f["calibrated"] for f in facts] == [False, True]
    assert [f["cka_before"] for f in facts] == [3.0, 0.5]
    assert [f["cka_after"] for f in facts] == [3.0, 4.0]
    edit.restore()
    # every fact held already: nothing is added
    monkeypatch.setattr(calinet, "contrastive_assessment", lambda *a: [3.0, 2.0])
    edit = method.edit(model, tokenizer, FACTS[:2])
    assert edit.info["calibrated"] == 0 and not edit.changes
    assert_same_state(model, state)


def test_a_later_edit_adds_fresh_slots_and_rollback_restores(tokenizer, env):
    model = tiny_model("llama")
    session = EditSession(model, tokenizer, env)
    session.edit(FACTS[:2], "calinet", overrides=tiny_config("calinet"))
    (slots,) = [m for m in model.modules() if isinstance(m, CalibrationSlots)]
    first = slots.get_state()
    second = session.edit(FACTS[2:], "calinet", overrides=tiny_config("calinet"))
    assert [m for m in model.modules() if isinstance(m, CalibrationSlots)] == [slots]
    assert slots.n_slots == 128
    assert torch.equal(slots.w_in[:64], first[0]) and torch.equal(slots.w_out[:64], first[2])
    assert slots.w_out[64:].any()  # the new slots were trained
    assert second.lm.routed([FACTS[2].text]) == [True]
    session.rollback(1)
    assert all(torch.equal(a, b) for a, b in zip(slots.get_state(), first))
    session.restore()
    assert not [m for m in model.modules() if isinstance(m, CalibrationSlots)]


def test_fired_says_whether_the_slots_output_is_non_negligible(tokenizer, env):
    model = tiny_model("llama")
    edit = calinet_method(model, env).edit(model, tokenizer, FACTS[0])
    assert edit.lm.routed([FACTS[0].text]) == [True]
    (slots,) = [m for m in model.modules() if isinstance(m, CalibrationSlots)]
    slots.fired_ratio = 1e6  # an FFN output no slot output can reach
    assert edit.lm.routed([FACTS[0].text]) == [False]
    edit.restore()


@pytest.mark.parametrize(
    ("depth", "block"),
    [(12, 11), (30, 28), (24, 22)],  # t5-base's kb_layer=11 of 12, scaled
)
def test_slots_sit_where_the_reference_puts_them_scaled_by_depth(depth, block):
    config = TINY_CONFIGS["llama"]()
    config.num_hidden_layers = depth
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert METHODS["calinet"].for_model(model).config.blocks(model) == [block]
    assert CaliNETConfig(layers=[-1, 3, 3]).blocks(model) == [3, depth - 1]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ex_size": 0}, "at least 1"),
        ({"num_steps": 0}, "at least 1"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"depth": 0.0}, "fraction"),
        ({"layers": []}, "at least one"),
        ({"cka_threshold": 0.0}, "positive ratio"),
        ({"n_negative": len(RELATIONS)}, "n_negative"),
        ({"fired_ratio": -1.0}, "fired_ratio"),
        ({"context_template_length_params": [[5]]}, "pairs"),
    ],
)
def test_invalid_settings_say_what_to_fix(values, message):
    with pytest.raises(ValueError, match=message):
        CaliNETConfig(**values)
