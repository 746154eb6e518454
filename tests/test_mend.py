"""MEND's mechanism: the pseudo-gradient of an identity network is the true weight gradient (in
every layer layout, for one request or a batch), the running standardiser merges batches exactly,
and an untrained MEND steps down the edit loss (the paper's sign, not the reference code's)."""

from __future__ import annotations

import pytest
import torch

from kedit.methods import METHODS
from kedit.methods._grads import target_batch, target_logits, target_nll
from kedit.methods._hypernet import RunningStandardiser, TrainingExample
from kedit.model.arch import get_module, is_conv1d
from kedit.types import EditRequest
from tests.conftest import tiny_model
from tests.tiny_configs import tiny_config

REQUESTS = [
    EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {} is", "Germany", "Madrid", "Berlin"),
]


def identity_mend(arch: str, env):
    """MEND with its untrained network (identity) and a standardiser fixed at mean 0, std 1."""
    model = tiny_model(arch)
    method = METHODS["mend"].for_model(model, tiny_config("mend"), env)
    editor = method.build_editor(model).eval()
    for net in editor.nets.values():
        net.standardise.count.fill_(1e6)
        net.standardise.squares.fill_(1e6 - 1)
    return model, method, editor


def true_gradients(model, tok, requests, paths) -> dict[str, torch.Tensor]:
    """dL/dW of the mean target NLL, by autograd on the weights, as ``(d_out, d_in)``."""
    batch = target_batch(tok, [(r.text, r.target_new) for r in requests], torch.device("cpu"))
    weights = [get_module(model, p).weight for p in paths]
    loss = target_nll(target_logits(model, batch), batch)
    grads = torch.autograd.grad(loss, weights)
    return {p: g.T if is_conv1d(get_module(model, p)) else g for p, g in zip(paths, grads)}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("n_requests", [1, 2])
def test_an_identity_network_gives_minus_the_step_times_the_true_gradient(
    arch, n_requests, tokenizer, env
):
    model, method, editor = identity_mend(arch, env)
    requests = REQUESTS[:n_requests]
    with torch.no_grad():
        shifts = method.shifts(model, tokenizer, requests, editor)
    paths = method.module_paths(model)
    assert list(shifts) == paths and len(paths) == {"gpt2": 2, "llama": 3}[arch]  # gate+up+down
    expected = true_gradients(model, tokenizer, requests, paths)
    lrs = editor.edit_lrs.detach()
    for index, path in enumerate(paths):
        dense = shifts[path].left @ shifts[path].right.T  # (d_out, d_in)
        torch.testing.assert_close(dense, -lrs[index] * expected[path], rtol=1e-4, atol=1e-9)


def test_an_untrained_mend_steps_down_the_edit_loss(tokenizer, env):
    model, method, editor = identity_mend("llama", env)
    method.use_editor(editor)
    batch = target_batch(tokenizer, [(REQUESTS[0].text, "Rome")], torch.device("cpu"))
    with torch.no_grad():
        before = target_nll(target_logits(model, batch), batch).item()
    editor.edit_lrs.data.fill_(1e-2)  # a step that moves 32-wide matrices
    done = method.edit(model, tokenizer, REQUESTS[0])
    with torch.no_grad():
        after = target_nll(target_logits(model, batch), batch).item()
    assert after < before - 1e-3
    done.restore()


def test_the_running_standardiser_merges_batches_exactly():
    torch.manual_seed(0)
    rows = [torch.randn(n, 5) * 3 + 1 for n in (2, 4, 7)]
    standardiser = RunningStandardiser(5).train()
    for batch in rows:
        standardiser(batch)
    everything = torch.cat(rows).double()
    torch.testing.assert_close(standardiser.mean, everything.mean(0))
    variance = standardiser.squares / (standardiser.count - 1)
    torch.testing.assert_close(variance, everything.var(0))
    frozen = standardiser.eval()
    count = frozen.count.clone()
    frozen(torch.randn(3, 5))
    assert torch.equal(frozen.count, count)  # evaluation never updates the statistics


def test_an_untrained_standardiser_refuses_to_edit():
    with pytest.raises(RuntimeError, match="train the editor"):
        RunningStandardiser(3).eval()(torch.randn(2, 3))


def test_the_objective_in_chunks_equals_it_at_once_in_value_and_gradient(tokenizer, env):
    model, method, editor = identity_mend("llama", env)
    editor.train()  # gradients flow to the network; the fixed statistics barely move
    examples = [
        TrainingExample(r, (f"In short, {r.text}",), (("The capital of France is", "Paris"),))
        for r in [*REQUESTS, EditRequest("{} plays the", "Miles Davis", "piano", "trumpet")]
    ]
    results = []
    for chunk, backward in ((None, False), (2, True)):
        editor.zero_grad()
        for net in editor.nets.values():  # the same statistics for both runs
            net.standardise.count.fill_(1e6)
            net.standardise.mean.zero_()
            net.standardise.squares.fill_(1e6 - 1)
        shifts = method.shifts(model, tokenizer, [e.request for e in examples], editor)
        objective = method.post_edit_objective(
            model, tokenizer, examples, shifts, chunk=chunk, backward=backward
        )
        if not backward:
            objective.loss.backward()
        grads = [p.grad.clone() for p in editor.parameters() if p.grad is not None]
        results.append((objective.stats, grads))
    (whole, whole_grads), (chunked, chunked_grads) = results
    assert whole.keys() == chunked.keys() and whole["loc_kl"] > 0
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    assert len(whole_grads) == len(chunked_grads) > 0
    for a, b in zip(whole_grads, chunked_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-8)
