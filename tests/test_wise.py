"""WISE's own mechanism: routing between side and main memory, the gradient mask, knowledge
shards (save and TIES merge), and exact rollback of the shard bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from kedit.methods import METHODS
from kedit.methods.session import EditSession
from kedit.methods.wise import WISEConfig, WiseMemory, ties_merge
from kedit.model.lm import HFLanguageModel
from kedit.types import EditRequest
from tests.conftest import TINY_CONFIGS, tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {}", "Germany", "Madrid", "Berlin")
UNRELATED = ["The capital of Japan is", "Water is made of"]


def memory_of(model: torch.nn.Module) -> WiseMemory:
    return next(m for m in model.modules() if isinstance(m, WiseMemory))


def state_equal(a: tuple, b: tuple) -> bool:
    side_a, act_a, mask_a, memories_a, *counts_a = a
    side_b, act_b, mask_b, memories_b, *counts_b = b
    same_mask = (mask_a is None and mask_b is None) or (
        mask_a is not None and mask_b is not None and torch.equal(mask_a, mask_b)
    )
    same_memories = len(memories_a) == len(memories_b) and all(
        torch.equal(wa, wb) and xa == xb for (wa, xa), (wb, xb) in zip(memories_a, memories_b)
    )
    return (
        torch.equal(side_a, side_b) and act_a == act_b and same_mask and same_memories
    ) and counts_a == counts_b


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_wise_routes_the_edit_to_the_side_memory_and_the_rest_to_the_main(arch, tokenizer, env):
    model = tiny_model(arch)
    plain = HFLanguageModel(model, tokenizer)
    before = plain.next_token_logprobs([REQUEST.text, *UNRELATED])
    edit = METHODS["wise"].for_model(model, TINY["wise"], env).edit(model, tokenizer, REQUEST)
    assert edit.lm.routed([REQUEST.text, *UNRELATED]) == [True, False, False]
    after = edit.lm.next_token_logprobs([REQUEST.text, *UNRELATED])
    # the main memory's output is returned as it is: unrelated rows equal bit for bit
    assert torch.equal(after[1:], before[1:])
    assert not torch.allclose(after[0], before[0])
    edit.restore()


def test_wise_routing_reads_the_prompt_not_the_target(tokenizer, env):
    """Teacher-forced scores read D on the prompt's tokens only: whatever target is scored,
    the same memory answers, the one ``routed`` reports."""
    model = tiny_model("llama")
    edit = METHODS["wise"].for_model(model, TINY["wise"], env).edit(model, tokenizer, REQUEST)
    memory = memory_of(model)
    for target in ("Rome", "Paris", "the city of lights"):
        edit.lm.score_targets([REQUEST.text, UNRELATED[0]], [target, target])
        assert memory.fired.tolist() == [True, False]
    edit.restore()


def test_wise_gradient_mask_leaves_masked_entries_equal_to_the_main_memory(tokenizer, env):
    model = tiny_model("llama")
    config = {**TINY["wise"], "mask_ratio": 0.3}
    edit = METHODS["wise"].for_model(model, config, env).edit(model, tokenizer, REQUEST)
    memory = memory_of(model)
    main, side, mask = memory.main_weight(), memory.side, memory.mask
    assert mask.float().mean().item() == pytest.approx(0.3, abs=0.05)
    assert torch.equal(side[~mask], main[~mask])
    assert (side[mask] != main[mask]).float().mean() > 0.5
    assert (side - main).abs().max() <= 1.0 + 1e-6  # the norm constraint
    edit.restore()


@pytest.mark.filterwarnings("ignore:The density")
def test_ties_merge_trims_elects_signs_and_averages_agreeing_entries():
    base = torch.zeros(3)
    shards = [torch.tensor([1.0, -2.0, 0.1]), torch.tensor([3.0, 1.0, -0.2])]
    # all kept: signs elected by the sum (+, -, -); agreeing entries averaged
    assert torch.allclose(ties_merge(base, shards, 1.0), torch.tensor([2.0, -2.0, -0.2]))
    # the two largest of each kept: the third entries are trimmed away
    assert torch.allclose(ties_merge(base, shards, 0.67), torch.tensor([2.0, -2.0, 0.0]))
    assert torch.allclose(
        ties_merge(base + 1, [s + 1 for s in shards], 1.0) - 1, ties_merge(base, shards, 1.0)
    )


def test_wise_saves_a_shard_every_save_freq_edits_and_merges_every_merge_freq(tokenizer, env):
    model = tiny_model("llama")
    overrides = {**TINY["wise"], "save_freq": 2, "merge_freq": 4}
    requests = [REQUEST, OTHER, EditRequest("{} speaks", "Pierre", "English", "French")]
    requests.append(EditRequest("{} plays", "Messi", "tennis", "football"))
    with EditSession(model, tokenizer, env) as session:
        session.edit(requests[0], "wise", overrides)
        memory = memory_of(model)
        first_mask = memory.mask
        assert (memory.edits, len(memory.memories)) == (1, 0)
        assert math.isfinite(memory.side_min_act)
        session.edit(requests[1], "wise", overrides)
        assert (memory.edits, len(memory.memories), memory.merges) == (2, 1, 0)
        shard, shard_act = memory.memories[0]
        # a fresh shard begins: the side memory is the main one again, a new mask comes
        assert torch.equal(memory.side, memory.main_weight()) and memory.mask is None
        assert memory.side_min_act == math.inf
        assert session.lm.routed([requests[0].text, requests[1].text]) == [True, True]
        session.edit(requests[2], "wise", overrides)
        assert not torch.equal(memory.mask, first_mask)
        third_act = memory.side_min_act
        session.edit(requests[3], "wise", overrides)
        assert (memory.edits, len(memory.memories), memory.merges) == (4, 1, 1)
        # the merged shard's threshold is the smallest activation of the edits it holds
        assert memory.memories[0][1] <= min(shard_act, third_act)
        assert not torch.equal(memory.memories[0][0], shard)


def test_wise_rollback_restores_the_shard_bookkeeping_exactly(tokenizer, env):
    model = tiny_model("gpt2")
    overrides = {**TINY["wise"], "save_freq": 1, "merge_freq": 2}
    path = "transformer.h.1.mlp.c_proj"
    original = model.get_submodule(path)
    with EditSession(model, tokenizer, env) as session:
        session.edit(REQUEST, "wise", overrides)
        memory = memory_of(model)
        after_first = memory.get_state()
        session.edit(OTHER, "wise", overrides)  # saves a second shard and merges the two
        assert (memory.edits, memory.merges, len(memory.memories)) == (2, 1, 1)
        session.rollback(1)
        assert state_equal(memory.get_state(), after_first)
        assert memory_of(model) is memory and session.lm.routed([REQUEST.text]) == [True]
        session.rollback(1)
        assert model.get_submodule(path) is original


def test_wise_edits_a_batch_in_one_loss_and_routes_each_request(tokenizer, env):
    model = tiny_model("llama")
    edit = (
        METHODS["wise"].for_model(model, TINY["wise"], env).edit(model, tokenizer, [REQUEST, OTHER])
    )
    assert memory_of(model).edits == 1  # one update
    assert edit.lm.routed([REQUEST.text, OTHER.text, UNRELATED[1]]) == [True, True, False]
    edit.restore()


@pytest.mark.parametrize(
    ("model_type", "depth", "block", "module"),
    [("llama", 32, 27, "mlp_out"), ("gptj", 28, 21, "mlp_out"), ("gpt2", 12, 8, "mlp_in")],
)
def test_wise_sits_where_the_references_put_it(model_type, depth, block, module):
    config = TINY_CONFIGS[model_type]()
    for key in ("n_layer", "num_hidden_layers"):
        if hasattr(config, key):
            setattr(config, key, depth)
    model = transformers.AutoModelForCausalLM.from_config(config)
    cfg = METHODS["wise"].for_model(model).config
    assert (cfg.block(model), cfg.module) == (block, module)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"save_freq": 500, "merge_freq": 700}, "multiple of save_freq"),
        ({"act_margin": [5.0, 20.0]}, "alpha, beta, gamma"),
        ({"mask_ratio": 0.0}, "fractions"),
        ({"norm_constraint": -1.0}, "norm_constraint"),
        ({"depth": 1.5}, "depth"),
    ],
)
def test_wise_config_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        WISEConfig(**values)
