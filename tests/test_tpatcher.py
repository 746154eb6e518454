"""T-Patcher's own mechanism on the tiny models: one neuron per mistaken target token, in a
patch around the last FFN, firing on the edit and silent on the memory of unrelated text;
sequential edits extend the same patch and roll back exactly."""

import random

import pytest
import torch

from kedit.corpus import load_corpus
from kedit.methods import METHODS
from kedit.methods._head import HeadPass
from kedit.methods.session import EditSession
from kedit.methods.tpatcher import EditedInputs, NeuronPatch, TPatcherConfig, memory_states
from kedit.model.arch import arch_of
from kedit.model.hooks import Trace
from kedit.model.lm import HFLanguageModel
from kedit.model.tokens import encode_prompt_target, pad
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {}", "Germany", "Madrid", "Berlin")
LAST_FFN = {"gpt2": "transformer.h.1.mlp", "llama": "model.layers.1.mlp"}


def t_patcher(model, env, **overrides):
    return METHODS["t-patcher"].for_model(model, {**TINY["t-patcher"], **overrides}, env)


def patches(model) -> list[NeuronPatch]:
    return [m for m in model.modules() if isinstance(m, NeuronPatch)]


def mistaken_positions(model, tok, request: EditRequest) -> int:
    """Positions predicting a target token whose argmax is another token, unedited."""
    pair = encode_prompt_target(tok, request.text, request.target_new)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([pair.ids])).logits[0]
    predicted = logits[pair.n_prompt - 1 : len(pair.ids) - 1].argmax(-1)
    return int((predicted != torch.tensor(pair.target_ids)).sum())


def test_the_patch_adds_relu_neurons_to_the_ffn_output_and_fires_above_zero():
    ffn = torch.nn.Linear(3, 3)
    patch = NeuronPatch(ffn, 3)
    x = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])  # (1, 2, 3)
    assert torch.equal(patch(x), ffn(x)) and patch.fired.tolist() == [False]
    patch.keys = torch.tensor([[0.0, 2.0, 0.0]])  # fires on the second token only: pre = 2
    patch.bias = torch.tensor([-1.0])
    patch.values = torch.tensor([[1.0, 2.0, 3.0]])
    out = patch(x)
    assert torch.equal(out[0, 0], ffn(x)[0, 0])  # pre-activation -1: exactly silent
    assert torch.allclose(out[0, 1], ffn(x)[0, 1] + torch.tensor([1.0, 2.0, 3.0]))
    assert patch.fired.tolist() == [True]  # decided at the last position
    patch(x[:, :1])
    assert patch.fired.tolist() == [False]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_neuron_fires_on_the_edit_and_stays_silent_on_the_memory(arch, tokenizer, env):
    model = tiny_model(arch)
    edit = t_patcher(model, env).edit(model, tokenizer, REQUEST)
    (patch,) = patches(model)
    assert edit.info["layer"] == LAST_FFN[arch]  # the last block's FFN
    assert edit.info["neurons"] == edit.info["neurons_added"] == 1  # "Rome": one token
    corpus = load_corpus(env.stats_corpus)
    memory = memory_states(model, tokenizer, LAST_FFN[arch], corpus, 300, env.seed)
    assert (memory @ patch.keys.T + patch.bias).max() < 0  # every memory pre-activation
    docs = list(corpus.documents)
    random.Random(env.seed).shuffle(docs)  # the documents the memory was read from
    assert edit.lm.routed([REQUEST.text, *docs[:4]]) == [True, False, False, False, False]
    edit.restore()
    assert not patches(model)


def test_one_neuron_per_mistaken_target_token_capped_and_batched(tokenizer, env):
    model = tiny_model("llama")
    long = EditRequest("Tourists visit {}", "the Eiffel Tower", "Madrid Rome Paris", "Paris")
    wrong = mistaken_positions(model, tokenizer, long)
    assert wrong >= 3
    edit = t_patcher(model, env).edit(model, tokenizer, long)
    assert edit.info["neurons_added"] == patches(model)[0].keys.shape[0] == min(wrong, 5)
    edit.restore()
    edit = t_patcher(model, env, max_add_neuron_num=2).edit(model, tokenizer, long)
    assert edit.info["neurons_added"] == 2
    edit.restore()
    # a batch: each request its own neurons, trained together
    edit = t_patcher(model, env).edit(model, tokenizer, [REQUEST, long])
    expected = mistaken_positions(model, tokenizer, REQUEST) + min(wrong, 5)
    assert edit.info["neurons_added"] == expected
    edit.restore()


def test_no_neuron_when_the_model_already_gives_the_target(tokenizer, env):
    model = tiny_model("gpt2")
    before = snapshot(model)
    (greedy,) = HFLanguageModel(model, tokenizer).generate([REQUEST.text], 2)
    right = EditRequest(REQUEST.prompt, REQUEST.subject, greedy.strip(), "Paris")
    assert mistaken_positions(model, tokenizer, right) == 0
    edit = t_patcher(model, env).edit(model, tokenizer, right)
    assert edit.info["neurons_added"] == 0 and "already" in edit.info["skipped"]
    assert not patches(model) and edit.lm.routed([REQUEST.text]) == [False]
    assert_same_state(model, before)


def test_sequential_edits_extend_one_patch_and_roll_back_exactly(tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    with EditSession(model, tokenizer, env) as session:
        session.edit(REQUEST, "t-patcher", TINY["t-patcher"])
        (patch,) = patches(model)
        first = [t.clone() for t in patch.get_state()]
        remembered = session.state[("t-patcher", LAST_FFN["llama"])]
        assert isinstance(remembered, EditedInputs) and len(remembered.rows) == 1
        edit = session.edit(OTHER, "tpatcher", TINY["t-patcher"])
        assert patches(model) == [patch]  # extended, not wrapped twice
        n_first = first[0].shape[0]
        assert patch.keys.shape[0] == n_first + edit.info["neurons_added"] > n_first
        assert all(torch.equal(t[:n_first], f) for t, f in zip(patch.get_state(), first))
        # the first edit's FFN inputs were in the second edit's memory: its neurons stay silent
        new_pre = remembered.rows[0] @ patch.keys[n_first:].T + patch.bias[n_first:]
        assert new_pre.max() < 0 and len(remembered.rows) == 2
        session.rollback(1)
        assert all(torch.equal(t, f) for t, f in zip(patch.get_state(), first))
        assert patches(model) == [patch] and len(remembered.rows) == 1
    assert not patches(model)
    assert_same_state(model, before)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_head_pass_equals_a_full_pass_only_after_the_last_block(arch, tokenizer):
    """What T-Patcher's steps rely on: an addition after the last FFN reaches the logits
    through the final norm and unembedding alone; after the first FFN it does not (and the
    check says so, so the full pass is kept)."""
    model = tiny_model(arch)
    batch = pad([tokenizer("Tourists visit the Eiffel Tower").input_ids, [5, 6, 7]], 0, left=True)
    head = HeadPass(model, batch)
    d_model = head.resid.shape[-1]
    added = torch.randn(*batch.input_ids.shape, d_model, generator=torch.Generator().manual_seed(0))
    for layer, exact in ((1, True), (0, False)):
        path = arch_of(model).path("mlp", layer)
        with torch.no_grad(), Trace(model, path, edit_output=lambda out: out + added):
            full = model(**batch.model_inputs(), use_cache=False).logits
        assert head.matches(added, full) is exact
    assert torch.allclose(head.logits(added * 0), model(**batch.model_inputs()).logits, atol=1e-5)


def test_training_through_the_head_pass_finds_the_full_pass_neurons(tokenizer, env, monkeypatch):
    model = tiny_model("llama")
    patches = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(HeadPass, "matches", lambda *args: False)
        edit = (
            METHODS["t-patcher"]
            .for_model(model, TINY["t-patcher"], env)
            .edit(model, tokenizer, REQUEST)
        )
        assert edit.info["head_pass"] is fast
        patches.append(edit.model.parts[0].get_state())
        edit.restore()
    for fast_state, full_state in zip(*patches):
        assert torch.allclose(fast_state, full_state, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_add_neuron_num": 0}, "at least 1"),
        ({"memory_size": 0}, "at least 1"),
        ({"lr": 0.0}, "positive"),
        ({"mlc": -1.0}, "non-negative"),
        ({"margin1": -1.0}, "margin1"),
        ({"margin2": 3.0}, "margin2"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"depth": 1.5}, "depth"),
    ],
)
def test_invalid_settings_say_what_to_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        TPatcherConfig(**overrides)
