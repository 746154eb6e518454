"""The contract every registered method keeps, on tiny GPT-2 (Conv1D) and Llama (Linear, GQA).

1. the target's log-probability rises; 2. ``restore()`` is bit-exact; 3. no hook or module is
left behind; 4. the config round-trips through YAML; 5. an ``apply`` that fails changes nothing;
6. batches work, or fail with a clear error when the method edits one request at a time.
"""

from __future__ import annotations

import pytest
import torch

from kedit.methods import METHODS, get_method
from kedit.methods.base import FAMILIES
from kedit.model.hooks import hook_count
from kedit.model.lm import as_language_model
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import IN_CONTEXT, TINY

ARCHS = ["gpt2", "llama"]
# The subject ends the prompt: in a random 2-layer model, attention cannot carry what a method
# writes at the subject's last token to a later position, as it does in trained models.
REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {}", "Germany", "Madrid", "Berlin")


def make(name: str, model: torch.nn.Module, env) -> object:
    return get_method(name).for_model(model, TINY[name], env)


def target_logprob(model_or_lm, tok, request: EditRequest) -> float:
    lm = as_language_model(model_or_lm, tok)
    return sum(lm.score_targets([request.text], [request.target_new])[0].logprobs)


def test_every_registered_method_has_a_tiny_config_and_a_family():
    assert sorted(TINY) == METHODS.names()
    for name in METHODS.names():
        assert METHODS[name].name == name
        assert METHODS[name].family in FAMILIES
    # the survey's split, which the bench's findings rely on
    assert {n for n in METHODS.names() if not METHODS[n].modifies_parameters()} == {"grace", "ike"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_edit_raises_target_and_restores_exactly(name, arch, tokenizer, env):
    model = tiny_model(arch)
    before = snapshot(model)
    modules_before = [n for n, _ in model.named_modules()]
    flags_before = [p.requires_grad for p in model.parameters()]
    lp_before = target_logprob(model, tokenizer, REQUEST)

    edit = make(name, model, env).edit(model, tokenizer, REQUEST)
    if name in IN_CONTEXT:
        assert abs(target_logprob(edit.model, tokenizer, REQUEST) - lp_before) > 1e-5
    else:
        assert target_logprob(edit.model, tokenizer, REQUEST) > lp_before + 0.2
    assert hook_count(model) == 0

    edit.restore()
    assert_same_state(model, before)
    assert [n for n, _ in model.named_modules()] == modules_before
    assert [p.requires_grad for p in model.parameters()] == flags_before
    assert hook_count(model) == 0
    assert target_logprob(edit.model, tokenizer, REQUEST) == pytest.approx(lp_before, abs=1e-5)


@pytest.mark.parametrize("name", METHODS.names())
def test_config_round_trips_through_yaml(name):
    method = get_method(name)
    config = method.config_cls.from_dict(TINY[name])
    assert method.config_cls.from_yaml(config.to_yaml()) == config
    with pytest.raises(ValueError, match="unknown"):
        method.config_cls.from_dict({**TINY[name], "no_such_field": 1})


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
@pytest.mark.parametrize("fail_at", [1, 4, 12])
def test_failing_apply_changes_nothing(name, arch, fail_at, tokenizer, env):
    model = tiny_model(arch)
    before = snapshot(model)
    modules_before = [n for n, _ in model.named_modules()]
    calls = {"n": 0}

    def explode(module, args, output):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise Boom(f"injected failure at forward call {fail_at}")

    handle = model.get_output_embeddings().register_forward_hook(explode)
    try:
        edit = make(name, model, env).edit(model, tokenizer, REQUEST)
    except Boom:
        edit = None
    finally:
        handle.remove()
    if edit is None:
        assert_same_state(model, before)
        assert [n for n, _ in model.named_modules()] == modules_before
    else:  # the method finished in fewer forward passes; undoing it must still be exact
        edit.restore()
        assert_same_state(model, before)
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", METHODS.names())
def test_batch_or_clear_error(name, tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    method = make(name, model, env)
    if not method.supports_batch:
        with pytest.raises(ValueError, match="one request at a time"):
            method.edit(model, tokenizer, [REQUEST, OTHER])
        assert_same_state(model, before)
        return
    lps = [target_logprob(model, tokenizer, r) for r in (REQUEST, OTHER)]
    edit = method.edit(model, tokenizer, [REQUEST, OTHER])
    after = [target_logprob(edit.model, tokenizer, r) for r in (REQUEST, OTHER)]
    if name in IN_CONTEXT:
        assert all(abs(a - b) > 1e-5 for a, b in zip(after, lps))
    else:
        assert all(a > b for a, b in zip(after, lps))
    edit.restore()
    assert_same_state(model, before)
