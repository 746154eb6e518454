"""MELO's own mechanism on the tiny models: routing to a rank block or to none, the VecDB's
rules, one block per edit batch, exact rollback and restore, and its errors."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft.tuners.tuners_utils import BaseTunerLayer

from kedit.methods import METHODS
from kedit.methods.melo import NO_BLOCK, MELOConfig, MeloKey, RankGate, VecDB
from kedit.methods.session import EditSession
from kedit.model.tokens import encode
from kedit.types import EditRequest
from tests.conftest import DEVICE, TINY_CONFIGS, assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {}", "Germany", "Madrid", "Berlin")
UNRELATED = ["Water is made of", "The quick brown fox"]


def melo(model, env, **overrides):
    return METHODS["melo"].for_model(model, {**TINY["melo"], **overrides}, env)


def key_module(model) -> MeloKey:
    return next(m for m in model.modules() if isinstance(m, MeloKey))


@torch.no_grad()
def logits(model, tok, text: str) -> torch.Tensor:
    ids = torch.tensor([encode(tok, text).ids], device=DEVICE)
    return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_melo_routes_the_edit_prompt_to_its_block_and_other_inputs_to_none(arch, tokenizer, env):
    model = tiny_model(arch)
    before = {text: logits(model, tokenizer, text) for text in [REQUEST.text, *UNRELATED]}
    edit = melo(model, env).edit(model, tokenizer, REQUEST)
    key = key_module(model)
    for text in UNRELATED:  # no block: the unedited model's output, bit for bit
        assert torch.equal(logits(model, tokenizer, text), before[text])
        assert key.route["blocks"].tolist() == [NO_BLOCK] and not key.fired.any()
    after = logits(model, tokenizer, REQUEST.text)
    assert key.route["blocks"].tolist() == [0] and key.fired.tolist() == [True]
    assert not torch.allclose(after, before[REQUEST.text])
    assert edit.lm.routed([REQUEST.text, *UNRELATED]) == [True, False, False]
    edit.restore()


def test_vecdb_joins_same_label_keys_and_splits_a_cluster_on_a_label_conflict():
    db = VecDB(init_radius=1.0)
    db.add(torch.tensor([0.0, 0.0]), "Rome", 0)
    db.add(torch.tensor([5.0, 0.0]), "Paris", 1)  # 5 > radius + init_radius: a new cluster
    db.add(torch.tensor([0.0, 1.5]), "Rome", 2)  # 1.5 <= 2 and the same label: joins cluster 0
    assert len(db.clusters) == 2 and db.clusters[0].blocks == [0, 2]
    assert torch.allclose(db.clusters[0].centre, torch.tensor([0.0, 0.75]))
    assert db.clusters[0].radius == 1.0  # the largest distance (0.75), at least init_radius
    queries = torch.tensor([[0.0, 0.2], [0.0, 1.4], [3.0, 0.0], [5.0, 0.5]])
    assert db.search(queries).tolist() == [0, 2, NO_BLOCK, 1]  # nearest point's block

    # another label 0.85 from cluster 0's centre: split, half the distance each side
    db.add(torch.tensor([0.0, 1.6]), "Berlin", 3)
    old, new = db.clusters[0], db.clusters[2]
    assert old.radius == pytest.approx(0.425 - 1e-5) and new.radius == pytest.approx(0.425 + 1e-5)
    assert (db.conflicts, db.forgotten) == (1, 2)  # both points lay 0.75 from the old centre
    assert old.blocks == [NO_BLOCK]  # the reference keeps the centre, pointing at no block
    assert db.search(torch.tensor([[0.0, 1.6], [0.0, 0.75], [0.0, 0.0]])).tolist() == [
        3,
        NO_BLOCK,
        NO_BLOCK,
    ]


def test_melo_sequential_edits_take_new_blocks_and_rollback_restores_them(tokenizer, env):
    model = tiny_model("llama")
    original = snapshot(model)
    session = EditSession(model, tokenizer, env)
    session.edit(REQUEST, "melo", TINY["melo"])
    key = key_module(model)
    after_first = snapshot(model)
    clusters = [(c.centre.clone(), c.radius, c.label, list(c.blocks)) for c in key.db.clusters]
    gate = next(m for m in model.modules() if isinstance(m, RankGate))
    lora_b = next(m.lora_B["melo"].weight for m in model.modules() if hasattr(m, "lora_B"))
    assert lora_b[:, :2].abs().sum() > 0 and not lora_b[:, 2:].any()  # only block 0 trained
    a_first = gate.weight.detach().clone()

    second = session.edit(OTHER, "melo", TINY["melo"])
    assert key.next_block == 2 and second.info["clusters"] == 2
    logits(model, tokenizer, OTHER.text)
    assert key.route["blocks"].tolist() == [1]
    logits(model, tokenizer, REQUEST.text)
    assert key.route["blocks"].tolist() == [0]
    changed = (gate.weight != a_first).any(1)  # (r,): the rows of A that moved
    assert changed[2:4].all() and not changed[:2].any() and not changed[4:].any()

    session.rollback(1)
    assert_same_state(model, after_first)
    assert key.next_block == 1 and len(key.db.clusters) == len(clusters)
    for c, (centre, radius, label, blocks) in zip(key.db.clusters, clusters):
        assert torch.equal(c.centre, centre)
        assert (c.radius, c.label, c.blocks) == (radius, label, blocks)
    assert session.lm.routed([REQUEST.text, OTHER.text]) == [True, False]
    session.restore()
    assert_same_state(model, original)


def test_melo_a_conflicting_edit_of_the_same_prompt_splits_and_takes_over(tokenizer, env):
    model = tiny_model("gpt2")
    session = EditSession(model, tokenizer, env)
    session.edit(REQUEST, "melo", TINY["melo"])
    newer = EditRequest(REQUEST.prompt, REQUEST.subject, "London", "Paris")
    edit = session.edit(newer, "melo", TINY["melo"])
    assert edit.info["conflicts"] == 1 and edit.info["clusters"] == 2
    logits(model, tokenizer, REQUEST.text)
    assert key_module(model).route["blocks"].tolist() == [1]  # the newer block answers
    session.rollback(1)
    logits(model, tokenizer, REQUEST.text)
    assert key_module(model).route["blocks"].tolist() == [0] and key_module(model).db.conflicts == 0
    session.restore()


def test_melo_restore_leaves_no_peft_module_and_the_models_flags_as_they_were(tokenizer, env):
    model = tiny_model("gpt2")
    before = snapshot(model)
    model.transformer.h[1].mlp.c_fc.weight.requires_grad_(False)  # mixed flags; peft freezes all
    flags = [(n, p.requires_grad) for n, p in model.named_parameters()]
    edit = melo(model, env).edit(model, tokenizer, REQUEST)
    assert any(isinstance(m, BaseTunerLayer) for m in model.modules())
    own = {
        n.replace(".base_layer", "").replace(".layer.", "."): p for n, p in model.named_parameters()
    }
    assert [(n, own[n].requires_grad) for n, _ in flags] == flags
    edit.restore()
    assert not any(isinstance(m, (BaseTunerLayer, MeloKey, RankGate)) for m in model.modules())
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == flags
    assert_same_state(model, before)


def test_melo_edits_a_batch_in_blocks_of_num_edit_per_block(tokenizer, env):
    model = tiny_model("gpt2")
    edit = melo(model, env, num_edit_per_block=1).edit(model, tokenizer, [REQUEST, OTHER])
    assert edit.info["blocks_used"] == 2
    edit.restore()
    edit = melo(model, env).edit(model, tokenizer, [REQUEST, OTHER])
    assert edit.info["blocks_used"] == 1
    assert edit.lm.routed([REQUEST.text, OTHER.text, UNRELATED[0]]) == [True, True, False]
    edit.restore()


GPT2_PLACE = ("transformer.h.35.mlp.c_fc", [f"transformer.h.{i}.mlp.c_fc" for i in (36, 37)])
LLAMA_LORA = [f"model.layers.{i}.mlp.{p}_proj" for i in (23, 24) for p in ("gate", "up")]


@pytest.mark.parametrize(
    ("model_type", "depth", "place"),
    [("gpt2", 48, GPT2_PLACE), ("llama", 30, ("model.layers.22.mlp.gate_proj", LLAMA_LORA))],
)
def test_melo_sits_where_the_reference_puts_it_scaled_by_depth(model_type, depth, place):
    """GPT-2 XL: key h.35.mlp.c_fc, LoRA h.36/37.mlp.c_fc (BruthYU/MELO gpt2xl.yaml)."""
    config = TINY_CONFIGS[model_type]()
    for name in ("n_layer", "num_hidden_layers"):
        if hasattr(config, name):
            setattr(config, name, depth)
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert METHODS["melo"].for_model(model)._paths(model)[:2] == place


def test_melo_validation_errors(tokenizer, env):
    for bad, match in [
        ({"depth": 0.0}, "depth"),
        ({"lora_offsets": [0, 1]}, "lora_offsets"),
        ({"num_block": 0}, "num_block"),
        ({"init_radius": 0.0}, "init_radius"),
        ({"num_iter": 0}, "num_iter"),
    ]:
        with pytest.raises(ValueError, match=match):
            MELOConfig(**bad)
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="out of range"):  # LoRA past the last block
        melo(model, env, layer=1).edit(model, tokenizer, REQUEST)
    session = EditSession(model, tokenizer, env)
    session.edit(REQUEST, "melo", {**TINY["melo"], "num_block": 1})
    state = snapshot(model)
    with pytest.raises(ValueError, match="used all 1 blocks"):
        session.edit(OTHER, "melo", {**TINY["melo"], "num_block": 1})
    with pytest.raises(ValueError, match="keep num_block"):
        session.edit(OTHER, "melo", {**TINY["melo"], "num_block": 4})
    assert_same_state(model, state)
    assert key_module(model).next_block == 1
    session.restore()
