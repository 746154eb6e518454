"""Knowledge Neurons: the attribution is integrated gradients, the edit is the same vector in the
selected value slots, and nothing is left behind when it is undone or fails."""

from __future__ import annotations

import pytest
import torch

from kedit.methods.kn import KN, KNConfig, answer_steps, integrated_gradients, last_inputs
from kedit.model.arch import get_module, is_conv1d, layer_path, weight_out_in
from kedit.model.hooks import hook_count
from kedit.model.lm import as_language_model, model_device
from kedit.model.tokens import encode, encode_prompt_target
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model

ARCHS = ["gpt2", "llama"]
REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
# Quick settings for the tiny models (the contract's TINY entry). Random weights give
# embedding-sized edits little leverage, so the last layer's top neurons get a large new_scale;
# old_scale stays the reference's 2.
QUICK = {
    "layers": [-1],
    "new_scale": 1000.0,
    "adaptive_threshold": 0.8,
    "steps": 4,
    "batch_size": 2,
}


def _prob(model: torch.nn.Module, ids: list[int], path: str, value: torch.Tensor, answer: int):
    """P(answer) with ``path``'s input at the last token replaced by ``value`` (plain hook)."""

    def replace(module, args):
        x = args[0].clone()
        x[:, -1] = value.to(x.dtype)
        return (x, *args[1:])

    handle = get_module(model, path).register_forward_pre_hook(replace)
    try:
        logits = model(torch.tensor([ids], device=model_device(model))).logits[0, -1]
    finally:
        handle.remove()
    return torch.softmax(logits.to(value.dtype), -1)[answer]


def _setup(arch: str, tokenizer):
    model = tiny_model(arch)
    ids = encode(tokenizer, REQUEST.text).ids
    answer = encode_prompt_target(tokenizer, REQUEST.text, REQUEST.target_true).target_ids[0]
    return model, ids, answer


@pytest.mark.parametrize("arch", ARCHS)
def test_integrated_gradients_equal_a_plain_loop(arch, tokenizer):
    model, ids, answer = _setup(arch, tokenizer)
    steps = 7  # batch_size 3: chunks of 3, 3, 1
    for layer in (0, 1):
        path = layer_path(model, "mlp_out", layer)
        (activation,) = last_inputs(model, ids, [path])
        batched = integrated_gradients(model, ids, path, activation, answer, steps, 3)
        grad_sum = torch.zeros_like(activation)
        for k in range(1, steps + 1):
            point = (k / steps * activation).requires_grad_(True)
            (grad,) = torch.autograd.grad(_prob(model, ids, path, point, answer), point)
            grad_sum += grad
        plain = activation * grad_sum / steps
        scale = plain.abs().max()
        assert scale > 0
        assert (batched - plain).abs().max() <= 1e-5 * scale, (arch, layer)


@pytest.mark.parametrize("arch", ARCHS)
def test_attributions_sum_to_the_probability_change(arch, tokenizer):
    # Completeness of integrated gradients: sum_i Attr_i = P(y | a) - P(y | 0) in the limit of
    # many steps. A right Riemann sum with m steps is off by O(1/m) of the path's curvature
    # (measured ~1e-4 relative at m=200 here) and fp32 rounds P (~1e-3) to ~1e-10, against
    # differences of 1e-6..1e-4: a 2% tolerance is loose yet would catch a missing factor.
    model, ids, answer = _setup(arch, tokenizer)
    for layer in (0, 1):
        path = layer_path(model, "mlp_out", layer)
        (activation,) = last_inputs(model, ids, [path])
        total = integrated_gradients(model, ids, path, activation, answer, 200, 100).sum()
        with torch.no_grad():
            change = _prob(model, ids, path, activation, answer) - _prob(
                model, ids, path, torch.zeros_like(activation), answer
            )
        assert abs(change) > 1e-7
        assert total == pytest.approx(float(change), rel=2e-2), (arch, layer)


def test_answer_steps_follow_the_greedy_continuation(tokenizer):
    model = tiny_model("gpt2")
    prompt = encode(tokenizer, REQUEST.text).ids
    truth = encode_prompt_target(tokenizer, REQUEST.text, "the Eiffel Tower").target_ids
    assert len(truth) > 1
    request = EditRequest(REQUEST.prompt, REQUEST.subject, "Rome", "the Eiffel Tower")
    contexts, answers, original = answer_steps(model, tokenizer, request)
    assert answers == truth and contexts[0] == prompt
    greedy = [int(as_language_model(model, tokenizer).next_token_logprobs([REQUEST.text]).argmax())]
    assert original == greedy[0]
    for j in range(1, len(truth)):  # each context is the previous one plus its argmax token
        with torch.no_grad():
            logits = model(torch.tensor([contexts[j - 1]], device=model_device(model))).logits
        assert contexts[j] == [*contexts[j - 1], int(logits[0, -1].argmax())]
    bare = EditRequest(REQUEST.prompt, REQUEST.subject, "Rome")  # no target_true: the argmax
    contexts, answers, original = answer_steps(model, tokenizer, bare)
    assert contexts == [prompt] and answers == [original] == greedy


@pytest.mark.parametrize("arch", ARCHS)
def test_selected_columns_get_the_same_vector(arch, tokenizer, env):
    model, ids, answer = _setup(arch, tokenizer)
    before = snapshot(model)
    method = KN(KNConfig(steps=4, batch_size=4), env)
    # expected edit, computed independently: neurons above 0.2 x the highest score, vector
    # 1 x emb(" Rome") - 2 x emb(original argmax)
    paths = [layer_path(model, "mlp_out", layer) for layer in (0, 1)]
    scores = torch.stack(
        [
            integrated_gradients(model, ids, p, a, answer, 4, 4)
            for p, a in zip(paths, last_inputs(model, ids, paths))
        ]
    )
    expected_neurons = (scores > 0.2 * scores.max()).nonzero().tolist()
    with torch.no_grad():
        original = int(
            model(torch.tensor([ids], device=model_device(model))).logits[0, -1].argmax()
        )
    embed = model.get_input_embeddings().weight.detach().float()
    rome = encode_prompt_target(tokenizer, REQUEST.text, "Rome").target_ids
    vector = embed[rome].sum(0) - 2 * embed[original]

    edit = method.edit(model, tokenizer, REQUEST)
    assert edit.info["neurons"] == expected_neurons and expected_neurons
    edited = {f"{p}.weight" for p in paths if any(n[0] == paths.index(p) for n in expected_neurons)}
    after = model.state_dict()
    for name, tensor in before.items():
        if name not in edited:
            assert torch.equal(after[name], tensor), f"{name} changed"
    for layer, path in enumerate(paths):
        module = get_module(model, path)
        old = before[f"{path}.weight"]
        delta = weight_out_in(module).detach() - (old.T if is_conv1d(module) else old)  # (d, n)
        chosen = [i for n_layer, i in expected_neurons if n_layer == layer]
        others = [i for i in range(delta.shape[1]) if i not in chosen]
        assert torch.equal(delta[:, others], torch.zeros_like(delta[:, others]))  # bit-exact
        for i in chosen:
            assert torch.allclose(delta[:, i], vector, atol=1e-6)
        if chosen:
            singular = torch.linalg.svdvals(delta)
            assert singular[1] < 1e-5 * singular[0]  # rank one
        raw = module.weight.detach() - old  # the parameter's own layout
        changed = (raw != 0).any(dim=1 if is_conv1d(module) else 0).nonzero().flatten().tolist()
        assert changed == chosen  # GPT-2's Conv1D: rows; Linear: columns
    edit.restore()
    assert_same_state(model, before)


def _target_logprob(model, tokenizer) -> float:
    lm = as_language_model(model, tokenizer)
    return sum(lm.score_targets([REQUEST.text], [REQUEST.target_new])[0].logprobs)


@pytest.mark.parametrize("arch", ARCHS)
def test_target_rises_and_restore_is_exact(arch, tokenizer, env):
    # On random weights the edit's effect on the target is (sum of the selected activations) x
    # (new_scale x emb(target)) read through the unembedding: reliable for GPT-2 (tied, GELU
    # activations of the top neurons are positive on every seed tried), seed-dependent for the
    # untied SiLU-gated Llama (the sign of act(gate) * up is random). Seed 0, the contract's.
    model = tiny_model(arch)
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    lp_before = _target_logprob(model, tokenizer)

    edit = KN.for_model(model, QUICK, env).edit(model, tokenizer, REQUEST)
    assert _target_logprob(model, tokenizer) > lp_before + 0.2
    assert hook_count(model) == 0
    assert [p.requires_grad for p in model.parameters()] == flags

    edit.restore()
    assert_same_state(model, before)
    assert hook_count(model) == 0
    assert _target_logprob(model, tokenizer) == pytest.approx(lp_before, abs=1e-6)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fail_at", [2, 3, 5])
def test_failure_mid_attribution_changes_nothing(arch, fail_at, tokenizer, env):
    # head calls: 1 greedy answer, 2 activations, then one per chunk of each layer's IG
    model = tiny_model(arch)
    before = snapshot(model)
    flags = [p.requires_grad for p in model.parameters()]
    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Boom(f"injected failure at head call {fail_at}")

    handle = model.get_output_embeddings().register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            KN(KNConfig(steps=4, batch_size=2), env).edit(model, tokenizer, REQUEST)
    finally:
        handle.remove()
    assert_same_state(model, before)
    assert hook_count(model) == 0
    assert [p.requires_grad for p in model.parameters()] == flags


def test_config_validates_and_round_trips():
    config = KNConfig.from_dict(QUICK)
    assert KNConfig.from_yaml(config.to_yaml()) == config
    for bad in (
        {"steps": 0},
        {"batch_size": 0},
        {"adaptive_threshold": 1.0},
        {"old_scale": -1.0},
        {"layers": []},
    ):
        with pytest.raises(ValueError):
            KNConfig(**bad)


def test_gptj_preset_uses_the_reference_threshold(env):
    assert KN.for_model(tiny_model("gptj"), None, env).config.adaptive_threshold == 0.1
    assert KN.for_model(tiny_model("gpt2"), None, env).config == KNConfig()
