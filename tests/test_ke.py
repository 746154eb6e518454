"""KE's mechanism: the rank-one masks, the shift formula on hand-set network outputs, an untrained
KE as a gradient step (the true weight gradient, in every layer layout), the Lagrange multiplier's
ascent and clipping, the margin schedule, the warm-up that resumes from the editor's step count,
and one request per edit."""

from __future__ import annotations

import pytest
import torch

from kedit.methods import METHODS
from kedit.methods._editors import load_tensors, save_tensors
from kedit.methods._grads import target_batch, target_logits, target_nll
from kedit.methods._hypernet import TrainingExample
from kedit.methods.ke import ACCURATE, MaskedGradient, rank_one
from kedit.model.arch import get_module, is_conv1d
from kedit.model.hooks import frozen
from kedit.types import EditRequest
from tests.conftest import tiny_model
from tests.tiny_configs import tiny_config

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")
OTHER = EditRequest("The capital of {} is", "Germany", "Madrid", "Berlin")
EXAMPLE = TrainingExample(
    REQUEST,
    paraphrases=("People travel to see the Eiffel Tower",),
    locality=(("The capital of Germany is", "Berlin"), ("Tourists visit the Colosseum", "Rome")),
)


def ke(arch: str, env, **overrides):
    model = tiny_model(arch)
    method = METHODS["ke"].for_model(model, {**tiny_config("ke"), **overrides}, env)
    return model, method, method.build_editor(model)


def true_gradients(model, tok, request, paths) -> dict[str, torch.Tensor]:
    """dL/dW of the target NLL, by autograd on the weights, as ``(d_out, d_in)``."""
    batch = target_batch(tok, [(request.text, request.target_new)], torch.device("cpu"))
    weights = [get_module(model, p).weight for p in paths]
    grads = torch.autograd.grad(target_nll(target_logits(model, batch), batch), weights)
    return {p: g.T if is_conv1d(get_module(model, p)) else g for p, g in zip(paths, grads)}


def test_the_masks_are_rank_one_and_spread_each_column_by_the_softmax():
    torch.manual_seed(0)
    masks = MaskedGradient(d_out=6, d_in=4, condition=8, hidden=5, max_scale=1.0)
    with torch.no_grad():  # outputs that depend on the condition (the start ignores it)
        masks.net[2].parametrizations.weight.original0.fill_(1.0)
    a_col, a_row, _, _, _ = masks.outputs(torch.randn(1, 8))
    a = rank_one(a_row, a_col)  # (6, 4)
    assert a.shape == (6, 4) and torch.linalg.matrix_rank(a) == 1
    torch.testing.assert_close(a.sum(0), a_col)  # the softmax over rows sums to one
    torch.testing.assert_close(a / a_col, torch.softmax(a_row, 0)[:, None].expand(6, 4))


def test_the_shift_is_the_formula_on_hand_set_outputs():
    torch.manual_seed(0)
    d_out, d_in, scale = 3, 2, 2.5
    masks = MaskedGradient(d_out, d_in, condition=4, hidden=5, max_scale=scale)
    a_col, a_row = torch.tensor([0.5, -2.0]), torch.tensor([1.0, 0.0, -1.0])
    b_col, b_row, eta = torch.tensor([0.3, 0.7]), torch.tensor([0.0, 2.0, 1.0]), 0.4
    with torch.no_grad():  # the last layer's gains are 0 at the start: its outputs are its biases
        masks.net[2].bias.copy_(torch.cat([a_col, a_row, b_col, b_row, torch.tensor([eta])]))
    grad = torch.randn(d_out, d_in)
    shift = masks(torch.randn(1, 4), grad)
    expected = torch.zeros(d_out, d_in)
    for i in range(d_out):
        for j in range(d_in):
            a = a_row[i].exp() / a_row.exp().sum() * a_col[j]
            b = b_row[i].exp() / b_row.exp().sum() * b_col[j]
            expected[i, j] = -scale / (1 + torch.exp(torch.tensor(-eta))) * (a * grad[i, j] + b)
    torch.testing.assert_close(shift, expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_untrained_ke_steps_down_the_true_weight_gradient(arch, tokenizer, env):
    model, method, editor = ke(arch, env)
    with torch.no_grad():
        shifts = method.shifts(model, tokenizer, [REQUEST], editor)
    paths = method.module_paths(model)
    assert list(shifts) == paths and len(paths) == {"gpt2": 2, "llama": 3}[arch]
    expected = true_gradients(model, tokenizer, REQUEST, paths)
    scale = tiny_config("ke")["max_scale"]
    for path in paths:
        d_out = expected[path].shape[0]  # a_row = 0: a uniform softmax; a_col = 1, sigmoid(0)
        torch.testing.assert_close(
            shifts[path].dense, -scale / (2 * d_out) * expected[path], rtol=1e-4, atol=1e-9
        )


def test_the_multiplier_rises_while_kl_exceeds_the_margin_and_is_clipped_at_zero(tokenizer, env):
    model, method, editor = ke("llama", env, warmup_steps=0, lr_multiplier=1.0, cloc=3.0)
    optimiser = method.optimiser(editor)
    editor.margin.fill_(1e-9)
    with frozen(model):
        optimiser.zero_grad()
        stats = method.train_step(model, tokenizer, [EXAMPLE], editor)
        cfg = method.config
        nll, kl = stats["edit_nll"], stats["loc_kl"]
        assert kl > 1e-5 and stats["multiplier"] == 1.0
        # the reported loss is the primal objective, the Lagrangian what is minimised
        assert stats["loss"] == pytest.approx(cfg.cedit * nll + 3.0 * kl, rel=0, abs=1e-6)
        assert stats["lagrangian"] == pytest.approx(cfg.cedit * nll + kl - 1e-9, rel=0, abs=1e-6)
        # the Lagrangian's gradient in the multiplier is kl - margin, reversed for ascent
        assert editor.multiplier.grad.item() == pytest.approx(-(stats["loc_kl"] - 1e-9), rel=1e-5)
        optimiser.step()
        method.after_step(editor, optimiser)
        assert editor.multiplier.item() > 1.0
        editor.margin.fill_(1e3)  # now kl is far below the margin: the multiplier falls
        for _ in range(3):
            optimiser.zero_grad()
            method.train_step(model, tokenizer, [EXAMPLE], editor)
            optimiser.step()
            method.after_step(editor, optimiser)
            assert editor.multiplier.item() >= 0.0
    assert editor.multiplier.item() == 0.0  # clipped, where the steps would have gone below


def test_the_margin_tightens_only_above_ninety_percent_edit_accuracy(env):
    _, method, editor = ke("llama", env, margin_kl_max=1e-3, margin_kl_min=5e-4)
    method.after_validation(editor, {"edit_acc": ACCURATE, "loss": 1.0})
    assert editor.margin.item() == pytest.approx(1e-3)
    method.after_validation(editor, {"edit_acc": 0.95, "loss": 1.0})
    assert editor.margin.item() == pytest.approx(8e-4)
    for _ in range(3):
        method.after_validation(editor, {"edit_acc": 1.0, "loss": 1.0})
    assert editor.margin.item() == pytest.approx(5e-4)  # 8e-4 * 0.8^3 is below the floor


def test_the_warm_up_is_linear_and_resumes_from_the_editors_step_count(env, tmp_path):
    _, method, editor = ke("gpt2", env, warmup_steps=4, lr=1e-3, lr_multiplier=0.1)
    optimiser = method.optimiser(editor)
    rates = []
    for _ in range(5):
        rates.append([g["lr"] for g in optimiser.param_groups])
        method.after_step(editor, optimiser)
    expected = [[1e-3 * f, 0.1 * f] for f in (0.25, 0.5, 0.75, 1.0, 1.0)]
    assert rates == [pytest.approx(r) for r in expected]
    # the step count and margin are buffers: a reloaded editor warms up where this one is
    editor.steps.fill_(1)
    save_tensors(tmp_path, "editor", editor.state_dict(), {})
    _, resumed, fresh = ke("gpt2", env, warmup_steps=4, lr=1e-3, lr_multiplier=0.1)
    fresh.load_state_dict(load_tensors(tmp_path, "editor")[0], strict=True)
    assert [g["lr"] for g in resumed.optimiser(fresh).param_groups] == pytest.approx([5e-4, 5e-2])


def test_the_condition_embeddings_start_as_the_models_or_are_its_own(env):
    model, _, copied = ke("llama", env)
    torch.testing.assert_close(copied.embedding.weight, model.get_input_embeddings().weight)
    _, _, own = ke("llama", env, embeddings="frozen")
    assert own.embedding is None and not any("embedding" in k for k in own.state_dict())
    ids = torch.tensor([[5, 9, 11]])
    own.encoder.load_state_dict(copied.encoder.state_dict())
    with torch.no_grad():  # before training, both encode the same vectors
        torch.testing.assert_close(own.condition(ids, model), copied.condition(ids, model))
        other = copied.condition(torch.tensor([[5, 9, 12]]), model)
        assert not torch.allclose(other, copied.condition(ids, model))


def test_one_request_at_a_time(tokenizer, env):
    model, method, editor = ke("llama", env)
    with pytest.raises(ValueError, match="one request at a time"):
        method.shifts(model, tokenizer, [REQUEST, OTHER], editor)
    method.use_editor(editor)
    with pytest.raises(ValueError, match="one request at a time"):
        method.edit(model, tokenizer, [REQUEST, OTHER])
    with pytest.raises(ValueError, match="batch_size=1"):
        METHODS["ke"].config_cls(batch_size=2)
