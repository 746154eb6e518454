import pytest
import torch

from kedit.model.hooks import (
    StopForward,
    Trace,
    TraceDict,
    frozen,
    hook_count,
    run_until_stopped,
)
from tests.conftest import DEVICE, tiny_model

PATH = "model.layers.0.mlp.down_proj"
IDS = torch.tensor([[5, 6, 7, 8]], device=DEVICE)


def test_trace_keeps_input_and_output():
    model = tiny_model("llama")
    with Trace(model, PATH, retain_input=True, retain_output=True) as tr:
        model(IDS)
    assert tr.input.shape == (1, 4, 64) and tr.output.shape == (1, 4, 32)
    assert hook_count(model) == 0


def test_edit_output_changes_the_forward_pass():
    model = tiny_model("llama")
    with torch.no_grad():
        plain = model(IDS).logits
        with Trace(model, PATH, edit_output=lambda out: out + 1.0):
            edited = model(IDS).logits
        again = model(IDS).logits
    assert not torch.allclose(plain, edited)
    assert torch.equal(plain, again)


def test_hooks_are_removed_when_the_body_raises():
    model = tiny_model("llama")
    with pytest.raises(RuntimeError), Trace(model, PATH, retain_input=True):
        raise RuntimeError("boom")
    assert hook_count(model) == 0


def test_trace_dict_stops_after_the_deepest_module():
    model = tiny_model("llama")
    paths = ["model.layers.1.mlp.down_proj", PATH]
    seen = []
    handle = model.get_submodule("model.norm").register_forward_hook(lambda *a: seen.append(1))
    with TraceDict(model, paths, retain_input=True, stop=True) as td:
        assert run_until_stopped(model, input_ids=IDS) is None
    handle.remove()
    assert not seen, "the pass should stop before the final norm"
    assert td[PATH].input is not None and td[paths[0]].input is not None
    assert hook_count(model) == 0
    with pytest.raises(StopForward), Trace(model, PATH, stop=True):
        model(IDS)
    assert hook_count(model) == 0


def test_unknown_path_is_a_clear_error():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="no module"):
        Trace(model, "model.layers.9.mlp")


def test_frozen_restores_each_flag():
    model = tiny_model("llama")
    params = list(model.parameters())
    params[0].requires_grad_(False)
    model.train()
    with frozen(model):
        assert not any(p.requires_grad for p in params)
        assert not model.training
    assert model.training
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)


def test_edit_input_changes_what_the_module_reads():
    model = tiny_model("llama")
    with Trace(model, PATH, retain_output=True) as plain:
        model(IDS)
    with Trace(
        model, PATH, edit_input=torch.zeros_like, retain_input=True, retain_output=True
    ) as zeroed:
        model(IDS)
    assert torch.count_nonzero(zeroed.input) == 0
    assert torch.count_nonzero(zeroed.output) == 0  # down_proj has no bias
    assert torch.count_nonzero(plain.output) > 0
    assert hook_count(model) == 0
