"""MALMEN: the decoupled backward pass, the normal equation, the identity network's first edit,
and a hundred edits in one call."""

import copy
import math

import pytest
import torch

from kedit.methods import METHODS
from kedit.methods._grads import keys_and_gradients
from kedit.methods._hypernet import PairNetwork, TrainingExample
from kedit.methods.malmen import (
    MALMENBlock,
    MALMENConfig,
    normal_matrix,
    ridge_factor,
    value_shifts,
)
from kedit.model.arch import get_module
from kedit.model.hooks import frozen
from kedit.model.lm import as_language_model
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
EXAMPLES = [
    TrainingExample(
        REQUEST, ("People travel to the Eiffel Tower in",), (("The quick brown", "fox"),)
    ),
    TrainingExample(
        EditRequest("The capital of {} is", "Germany", "Madrid and its river", "Berlin"),
        ("Germany has its capital in",),
        (("Because it rained, I stayed", "home"),),
    ),
    TrainingExample(EditRequest("People in {} speak", "Brazil", "Italian", "Portuguese")),
]
CITIES = ["Rome", "Paris", "London", "Berlin", "Madrid", "Tokyo", "Moscow", "Cairo", "Lisbon"]


def method_for(model, env, **overrides):
    return METHODS["malmen"].for_model(model, {**TINY["malmen"], **overrides}, env)


def randomised(editor: torch.nn.Module) -> torch.nn.Module:
    """The editor away from its identity start, so that every parameter carries a gradient."""
    torch.manual_seed(1)
    for net in editor.nets.values():
        for block in net.layers:
            block.b.data.normal_(0, 0.1)
            block.bias.data.normal_(0, 0.1)
            block.mode_scale.data.uniform_(0.5, 1.5)
    editor.edit_lrs.data.fill_(0.02)
    editor.log_ridges.data = torch.tensor([-3.0, -2.0])
    return editor


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_decoupled_gradient_equals_autograd_through_the_solve_and_the_network(
    arch, tokenizer, env
):
    """Three edits in passes of 2 and network chunks of 2 rows: the decoupled step's editor
    gradients equal those of one graph through the LM, the solve and the network; the LM's
    weights get none; the standardisers count the batch's rows once, as in one graph."""
    model = tiny_model(arch)
    method = method_for(model, env, pass_size=2, chunk_size=2)
    decoupled = randomised(method.build_editor(model)).train()
    coupled = copy.deepcopy(decoupled)

    stats = method.train_step(model, tokenizer, EXAMPLES, decoupled)
    with frozen(model):
        objective = method.objective(model, tokenizer, EXAMPLES, coupled)
        objective.loss.backward()

    assert stats["loss"] == pytest.approx(objective.stats["loss"], rel=1e-5)
    assert all(p.grad is None for p in model.parameters())
    for (name, a), b in zip(decoupled.named_parameters(), coupled.parameters()):
        assert b.grad is not None and b.grad.norm() > 0, name
        assert (a.grad - b.grad).norm() <= 1e-5 * b.grad.norm() + 1e-12, name
    for (name, a), b in zip(decoupled.named_buffers(), coupled.buffers()):
        assert torch.equal(a, b), name


def test_a_tokens_value_gradient_does_not_depend_on_the_other_edits_of_its_pass(tokenizer, env):
    """Gradients of the summed NLL: the same keys and gradients in passes of 1 or of 3 (each
    pass's mean NLL would divide every gradient by its pass's number of target tokens)."""
    model = tiny_model("gpt2")
    requests = [e.request for e in EXAMPLES]
    alone = method_for(model, env, pass_size=1)
    together = method_for(model, env, pass_size=3)
    paths = alone.module_paths(model)
    keys_1, grads_1 = alone._keys_and_gradients(model, tokenizer, requests, paths)
    keys_3, grads_3 = together._keys_and_gradients(model, tokenizer, requests, paths)
    for path in paths:
        assert keys_1[path].shape[0] > len(requests)  # a target of several tokens among them
        assert torch.allclose(keys_1[path], keys_3[path], atol=1e-6)
        assert torch.allclose(grads_1[path], grads_3[path], rtol=1e-4, atol=1e-7)


def test_s_star_solves_the_ridge_normal_equation():
    torch.manual_seed(0)
    for rows in (3, 40):  # fewer and more keys than input dimensions
        keys, values = torch.randn(rows, 10), torch.randn(rows, 6)
        log_ridge = torch.tensor(0.7)
        solved = ridge_factor(keys, log_ridge) @ values.double()  # (d_in, d_out)
        k, v = keys.double(), values.double()
        lhs = (k.T @ k + math.exp(0.7) * torch.eye(10, dtype=torch.float64)) @ solved
        assert torch.allclose(lhs, k.T @ v, atol=1e-10)
        assert torch.allclose(normal_matrix(keys, log_ridge) @ solved, k.T @ v, atol=1e-10)


def test_an_identity_network_with_unit_statistics_gives_the_hand_computed_shift():
    """Standardiser mean 0 and deviation 1, ``B = 0``: ``u~ = u``, ``d~ = d``, so
    ``v = -eta |u|^2 d`` and ``S*^T u = |u|^2 / (|u|^2 + e^lambda) v``."""
    net = PairNetwork(3, 2, [MALMENBlock(5, rank=4, n_modes=1) for _ in range(2)]).eval()
    net.standardise.count.fill_(3.0)
    net.standardise.squares.fill_(2.0)  # variance squares / (count - 1) = 1
    keys, grads = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    values = value_shifts(net, keys, grads, 0, torch.tensor(0.1))
    assert torch.allclose(values, torch.tensor([[0.0, -0.5]]), atol=1e-6)  # -0.1 * 5 * d
    shift = (ridge_factor(keys, torch.tensor(0.0)) @ values.double()).T  # (d_out, d_in)
    assert torch.allclose(shift.float() @ keys[0], 5 / 6 * values[0], atol=1e-6)
    assert torch.allclose(shift.float() @ torch.tensor([2.0, -1.0, 3.0]), torch.zeros(2))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_fresh_editor_moves_the_module_output_at_the_key_by_the_closed_form(arch, tokenizer, env):
    """One edit with a one-token target at one matrix, through ``apply``: the module's output at
    the edit's key moves by ``|u|^2 / (|u|^2 + e^lambda) * -eta (u . u~) d~``, with ``u~`` and
    ``d~`` the standardised key and gradient (the identity network), in either weight layout."""
    model = tiny_model(arch)
    method = method_for(model, env, modules={"mlp_out": [1]}, edit_lr=0.05, log_ridge=-5.0)
    editor = method.build_editor(model).train()
    with torch.no_grad():  # the standardiser learns the statistics of a few other edits
        method.shifts(model, tokenizer, [e.request for e in EXAMPLES[1:]], editor)
    editor.eval()
    path = method.module_paths(model)[0]
    keys, grads = keys_and_gradients(model, tokenizer, [(REQUEST.text, " Rome")], [path], 1)
    assert keys[path].shape[0] == 1  # " Rome" is one token
    u, d = keys[path][0], grads[path][0]
    stats = editor.nets[next(iter(editor.nets))].standardise
    std = (stats.squares / (stats.count - 1)).sqrt().float() + 1e-7
    standard = (torch.cat([u, d]) - stats.mean.float()) / std
    value = -0.05 * (u @ standard[: u.numel()]) * standard[u.numel() :]
    expected = (u @ u) / (u @ u + math.exp(-5.0)) * value  # (d_out,)

    module = get_module(model, path)
    with torch.no_grad():
        before = module(u[None])[0]
    method.use_editor(editor)
    edit = method.edit(model, tokenizer, REQUEST)
    with torch.no_grad():
        after = module(u[None])[0]
    assert expected.norm() > 1e-3
    assert torch.allclose(after - before, expected, rtol=1e-3, atol=1e-6)
    edit.restore()


def test_a_hundred_edits_in_one_call_in_passes_of_pass_size(tokenizer, env):
    """100 edits (more keys than the matrices' inputs) in one call: every target moves, most
    rise, and the LM runs ``ceil(100 / pass_size)`` passes for the keys, not one per edit."""
    model = tiny_model("llama")
    before = snapshot(model)
    requests = [
        EditRequest("The favourite city of {} is", f"person {i}", CITIES[i % 9], CITIES[i % 9 - 1])
        for i in range(100)
    ]
    method = method_for(model, env, pass_size=32)
    editor = method.build_editor(model).train()
    with torch.no_grad():
        method.shifts(model, tokenizer, requests, editor)  # the standardisers' statistics
    method.use_editor(editor.eval())
    lm = as_language_model(model, tokenizer)
    texts, targets = [r.text for r in requests], [r.target_new for r in requests]
    lp_before = [sum(s.logprobs) for s in lm.score_targets(texts, targets)]

    passes = {"n": 0}
    handle = model.get_output_embeddings().register_forward_hook(
        lambda *_: passes.__setitem__("n", passes["n"] + 1)
    )
    try:
        edit = method.edit(model, tokenizer, requests)
    finally:
        handle.remove()
    lp_after = [sum(s.logprobs) for s in lm.score_targets(texts, targets)]
    moved = [a - b for a, b in zip(lp_after, lp_before)]
    assert passes["n"] == math.ceil(100 / 32)
    assert all(abs(m) > 1e-4 for m in moved)
    assert sum(m > 0 for m in moved) >= 90 and sum(moved) / 100 > 0.1
    edit.restore()
    assert_same_state(model, before)


def test_the_config_says_what_to_fix():
    with pytest.raises(ValueError, match="pass_size"):
        MALMENConfig(pass_size=0)
    with pytest.raises(ValueError, match="edit_lr"):
        MALMENConfig(edit_lr=0.0)
