"""The suffix pass: training steps inside block k run the blocks from k on, the blocks below
handing on the input they gave block k once; the same logits as a full pass, checked by the
pass itself (and full passes kept where they differ)."""

import pytest
import torch

from kedit.methods import METHODS
from kedit.methods._suffix import SuffixPass, step_logits
from kedit.model.arch import arch_of
from kedit.model.hooks import Trace
from kedit.model.tokens import pad
from kedit.types import EditRequest
from tests.conftest import tiny_model
from tests.tiny_configs import tiny_config

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")


def batch_of(tokenizer):
    rows = [tokenizer("Tourists visit the Eiffel Tower").input_ids, [5, 6, 7]]
    return pad(rows, 0, left=False).model_inputs()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_suffix_pass_gives_the_full_pass_logits_and_gradients(arch, tokenizer):
    model = tiny_model(arch)
    inputs = batch_of(tokenizer)
    suffix = SuffixPass(model, inputs, 1)
    path = arch_of(model).path("mlp_out", 1)
    shift = torch.zeros(model.config.hidden_size, requires_grad=True)
    grads = []
    for run in (suffix.logits, lambda: model(**inputs, use_cache=False).logits):
        with Trace(model, path, edit_output=lambda out: out + shift):
            logits = run()
        (grad,) = torch.autograd.grad(logits[:, :, 3].sum(), shift)
        grads.append((logits.detach(), grad))
    (fast, fast_grad), (full, full_grad) = grads
    assert torch.allclose(fast, full, atol=1e-5) and torch.allclose(fast_grad, full_grad, atol=1e-5)
    assert suffix.matches(full)
    # the blocks below came back: a full pass is what it was
    assert torch.equal(model(**inputs, use_cache=False).logits, full)


def test_a_loop_that_does_not_take_the_stand_ins_keeps_full_passes(tokenizer, monkeypatch):
    model = tiny_model("llama")
    inputs = batch_of(tokenizer)
    forward, fast = step_logits(model, inputs, 1)
    assert fast
    monkeypatch.setattr(
        SuffixPass,
        "logits",
        lambda self: (_ for _ in ()).throw(TypeError("a loop the stand-ins do not fit")),
    )
    forward, fast = step_logits(model, inputs, 1)
    assert not fast and torch.equal(forward(), model(**inputs, use_cache=False).logits)


def tensors(state) -> list[torch.Tensor]:
    """The tensors of an added part's state, however nested."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for item in state for t in tensors(item)]
    return []


@pytest.mark.parametrize("name", ["wise", "calinet", "grace"])
def test_training_through_the_suffix_pass_equals_training_through_full_passes(
    name, tokenizer, env, monkeypatch
):
    """Each method that trains inside a block takes the suffix pass on the tiny model (its part
    sits in block 1) and ends where full passes would have taken it."""
    model = tiny_model("llama")
    trained = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(SuffixPass, "matches", lambda self, full: False)
        edit = METHODS[name].for_model(model, tiny_config(name), env)
        edit = edit.edit(model, tokenizer, REQUEST)
        assert edit.info["suffix_pass"] is fast
        trained.append([t.clone() for part in edit.model.parts for t in tensors(part.get_state())])
        edit.restore()
    assert len(trained[0]) == len(trained[1]) > 0
    for a, b in zip(*trained):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_picked_logits_and_target_loss_equal_the_full_pass(arch, tokenizer):
    """Unembedding only the positions that predict targets gives those positions' logits of a
    full pass, and the loss from them (mean per row of its targets' cross-entropy, averaged
    over rows) equals the one computed from every position's logits, gradients included."""
    from kedit.methods._suffix import TargetPositions, picked_forward

    model = tiny_model(arch)
    inputs = batch_of(tokenizer)
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    labels[0, 3:5] = ids[0, 3:5]  # row 0: two target tokens; row 1: one
    labels[1, 2] = ids[1, 2]
    targets = TargetPositions.of(labels)
    assert targets.rows.tolist() == [0, 0, 1] and targets.cols.tolist() == [2, 3, 1]
    shift = torch.zeros(model.config.hidden_size, requires_grad=True)
    path = arch_of(model).path("mlp_out", 1)
    with Trace(model, path, edit_output=lambda out: out + shift):
        picked = picked_forward(model, *targets.where)(inputs)
        loss = targets.loss(picked)
    (grad,) = torch.autograd.grad(loss, shift)
    with Trace(model, path, edit_output=lambda out: out + shift):
        full = model(**inputs, use_cache=False).logits  # (rows, seq, vocab)
    shifted = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        full[:, :-1].float().transpose(1, 2), shifted, reduction="none"
    )
    counted = (shifted != -100).float()
    expected = ((ce * counted).sum(1) / counted.sum(1)).mean()  # the per-position formula
    (expected_grad,) = torch.autograd.grad(expected, shift)
    assert picked.shape == (3, full.shape[-1])
    assert torch.allclose(picked, full[targets.rows, targets.cols], atol=1e-5)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(grad, expected_grad, atol=1e-6)
