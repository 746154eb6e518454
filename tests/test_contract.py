"""The contract every registered method keeps, on tiny GPT-2 (Conv1D) and Llama (Linear, GQA).

1. the edit works: the target's log-probability rises (an in-context method, which a random
   model cannot follow, changes the predictions); 2. what it changes follows its family: a
   parameter-modifying method changes the model's own weights, any other leaves every one of
   them bit for bit; 3. ``restore()`` is bit-exact; 4. no hook or module is left behind; 5. the
   config round-trips through YAML; 6. an ``apply`` that fails, at any recorded change or any
   forward pass, changes nothing; 7. batches work, or fail with a clear error when the method
   edits one request at a time.

Nothing here names a method: a new one is covered by registering it (and, if its defaults do
not fit a tiny model, an entry in ``tests/tiny_configs.py``).
"""

from __future__ import annotations

import pytest
import torch

from kedit.methods import METHODS
from kedit.methods.base import FAMILIES
from kedit.methods.edit import Edit
from kedit.model.hooks import hook_count
from kedit.model.lm import as_language_model
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model, trained_editor
from tests.tiny_configs import tiny_config

ARCHS = ["gpt2", "llama"]
# The subject ends the prompt: in a random 2-layer model, attention cannot carry what a method
# writes at the subject's last token to a later position, as it does in trained models.
REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {}", "Germany", "Madrid", "Berlin")


def make(name: str, model: torch.nn.Module, env) -> object:
    overrides = tiny_config(name)
    if METHODS[name].needs_training:  # its editor, trained once per session
        overrides["editor"] = str(trained_editor(name, model.config.model_type))
    return METHODS[name].for_model(model, overrides, env)


def target_logprob(model_or_lm, tok, request: EditRequest) -> float:
    lm = as_language_model(model_or_lm, tok)
    return sum(lm.score_targets([request.text], [request.target_new])[0].logprobs)


def in_context(name: str) -> bool:
    """In-context learning does not exist in random weights: on tiny models a method that works
    by the model reading a context (``reads_context``: IKE, MeLLo, DeepEdit) is held to
    changing the predictions; what it does on a trained model is checked on SmolLM2."""
    return METHODS[name].reads_context


def originals(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    return [(p, p.detach().clone()) for p in model.parameters()]


def test_every_method_is_complete():
    for name in METHODS.names():
        cls = METHODS[name]
        assert cls.name == name and cls.family in FAMILIES
        assert cls.display_name.strip() and cls.paper.strip() and METHODS.help(name).strip()
    for alias, name in METHODS.aliases().items():
        assert METHODS[alias] is METHODS[name]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_edit_works_changes_what_its_family_says_and_restores_exactly(name, arch, tokenizer, env):
    model = tiny_model(arch)
    before = snapshot(model)
    weights = originals(model)
    modules_before = [n for n, _ in model.named_modules()]
    flags_before = [p.requires_grad for p in model.parameters()]
    lp_before = target_logprob(model, tokenizer, REQUEST)

    edit = make(name, model, env).edit(model, tokenizer, REQUEST)
    if in_context(name):
        assert abs(target_logprob(edit.model, tokenizer, REQUEST) - lp_before) > 1e-5
    else:
        assert target_logprob(edit.model, tokenizer, REQUEST) > lp_before + 0.2
    changed = [not torch.equal(p, original) for p, original in weights]
    if METHODS[name].modifies_parameters():
        assert any(changed), f"{name} ({METHODS[name].family}) changed none of the weights"
    else:
        assert not any(changed), f"{name} ({METHODS[name].family}) changed the model's weights"
    assert hook_count(model) == 0

    edit.restore()
    assert_same_state(model, before)
    assert [n for n, _ in model.named_modules()] == modules_before
    assert [p.requires_grad for p in model.parameters()] == flags_before
    assert hook_count(model) == 0
    assert target_logprob(edit.model, tokenizer, REQUEST) == pytest.approx(lp_before, abs=1e-5)


@pytest.mark.parametrize("name", METHODS.names())
def test_config_round_trips_through_yaml(name):
    method = METHODS[name]
    config = method.config_cls.from_dict(tiny_config(name))
    assert method.config_cls.from_yaml(config.to_yaml()) == config
    with pytest.raises(ValueError, match="unknown"):
        method.config_cls.from_dict({**tiny_config(name), "no_such_field": 1})


class Boom(RuntimeError):
    pass


def dry_run(name: str, arch: str, tok, env) -> tuple[int, int]:
    """(forward passes through the unembedding, changes recorded) of one clean edit, once the
    environment's caches (context templates, statistics) are warm, as they are for the edits
    that follow."""
    model = tiny_model(arch)
    make(name, model, env).edit(model, tok, REQUEST).restore()
    counts = {"forward": 0, "record": 0}
    real = Edit._record

    def count_record(self, change):
        counts["record"] += 1
        real(self, change)

    handle = model.get_output_embeddings().register_forward_hook(
        lambda *_: counts.__setitem__("forward", counts["forward"] + 1)
    )
    Edit._record = count_record
    try:
        make(name, model, env).edit(model, tok, REQUEST).restore()
    finally:
        Edit._record = real
        handle.remove()
    return counts["forward"], counts["record"]


def assert_unchanged(model, before, modules_before) -> None:
    assert_same_state(model, before)
    assert [n for n, _ in model.named_modules()] == modules_before
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_a_failure_at_any_recorded_change_undoes_all_of_them(
    name, arch, tokenizer, env, monkeypatch
):
    """Every kind of change (weight delta, tracked training, module swap, saved state, wrapper)
    goes through ``Edit._record`` once made; a failure right after each one must undo them
    all."""
    _, records = dry_run(name, arch, tokenizer, env)
    assert records >= 1, f"{name} recorded no change"
    real = Edit._record
    for fail_at in range(1, records + 1):
        model = tiny_model(arch)
        before, modules_before = snapshot(model), [n for n, _ in model.named_modules()]
        seen = {"n": 0}

        def record_then_fail(self, change, fail_at=fail_at, seen=seen):
            real(self, change)
            seen["n"] += 1
            if seen["n"] == fail_at:
                raise Boom(f"injected failure after recorded change {fail_at}")

        monkeypatch.setattr(Edit, "_record", record_then_fail)
        with pytest.raises(Boom):
            make(name, model, env).edit(model, tokenizer, REQUEST)
        monkeypatch.setattr(Edit, "_record", real)
        assert_unchanged(model, before, modules_before)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_a_failure_in_any_forward_pass_changes_nothing(name, arch, tokenizer, env):
    forwards, _ = dry_run(name, arch, tokenizer, env)
    if forwards == 0:  # only a method that edits by context may edit without the model
        assert in_context(name), f"{name} edited without a forward pass"
    for fail_at in sorted({1, max(1, forwards // 2), forwards}) if forwards else []:
        model = tiny_model(arch)
        before, modules_before = snapshot(model), [n for n, _ in model.named_modules()]
        calls = {"n": 0}

        def explode(module, args, output, calls=calls, fail_at=fail_at):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise Boom(f"injected failure at forward call {fail_at}")

        handle = model.get_output_embeddings().register_forward_hook(explode)
        try:
            with pytest.raises(Boom):
                make(name, model, env).edit(model, tokenizer, REQUEST)
        finally:
            handle.remove()
        assert_unchanged(model, before, modules_before)


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
    if in_context(name):
        assert all(abs(a - b) > 1e-5 for a, b in zip(after, lps))
    else:
        assert all(a > b for a, b in zip(after, lps))
    edit.restore()
    assert_same_state(model, before)
