"""Sequential editing: stacking, exact rollback of the last k edits, flat memory."""

import pytest
import torch

from kedit.methods import METHODS, EditSession
from kedit.types import EditRequest
from tests.conftest import assert_same_state, snapshot, tiny_model
from tests.tiny_configs import TINY

REQUESTS = [
    EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {}", "Germany", "Madrid", "Berlin"),
    EditRequest("People in {}", "Brazil", "Italian", "Portuguese"),
]


@pytest.mark.parametrize("name", ["rome", "ft-m", "grace", "ike"])
def test_rollback_reproduces_earlier_states_exactly(name, tokenizer, env):
    model = tiny_model("llama")
    states = [snapshot(model)]
    session = EditSession(model, tokenizer, env)
    for request in REQUESTS:
        session.edit(request, name, overrides=TINY[name])
        states.append(snapshot(model))
    assert len(session) == 3
    session.rollback(2)
    assert_same_state(model, states[1])
    session.edit(REQUESTS[2], name, overrides=TINY[name])
    session.restore()
    assert_same_state(model, states[0])
    assert len(session) == 0


def test_grace_edits_share_one_codebook(tokenizer, env):
    model = tiny_model("llama")
    with EditSession(model, tokenizer, env) as session:
        for request in REQUESTS:
            session.edit(request, "grace", overrides=TINY["grace"])
        codebooks = [m for m in model.modules() if type(m).__name__ == "GraceCodebook"]
        assert len(codebooks) == 1 and len(codebooks[0].labels) == 3
        session.rollback(1)
        assert len(codebooks[0].labels) == 2
    assert not [m for m in model.modules() if type(m).__name__ == "GraceCodebook"]


def test_ike_session_accumulates_facts(tokenizer, env):
    model = tiny_model("llama")
    session = EditSession(model, tokenizer, env)
    for request in REQUESTS[:2]:
        session.edit(request, "ike", overrides=TINY["ike"])
    assert [f.subject for f in session.model.facts] == ["the Eiffel Tower", "Germany"]
    session.rollback(1)
    assert [f.subject for f in session.model.facts] == ["the Eiffel Tower"]


def test_restore_data_does_not_grow_with_copies(tokenizer, env):
    """ROME keeps one weight copy per touched parameter plus rank-one factors per edit."""
    model = tiny_model("llama")
    session = EditSession(model, tokenizer, env)
    for request in REQUESTS:
        session.edit(request, "rome", overrides=TINY["rome"])
    weight = model.get_submodule("model.layers.0.mlp.down_proj").weight
    one_copy = weight.numel() * weight.element_size()
    factors = (weight.shape[0] + weight.shape[1]) * 4
    assert session.restore_bytes == one_copy + 3 * factors
    session.restore()


def test_only_the_latest_edit_restores_alone(tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    session = EditSession(model, tokenizer, env)
    first = session.edit(REQUESTS[0], "ft-m", overrides=TINY["ft-m"])
    second = session.edit(REQUESTS[1], "ft-m", overrides=TINY["ft-m"])
    with pytest.raises(RuntimeError, match="rollback"):
        first.restore()
    second.restore()
    first.restore()
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="cannot roll back"):
        session.rollback(1)


def test_standalone_edit_as_context_manager(tokenizer, env):
    model = tiny_model("gpt2")
    before = snapshot(model)
    method = METHODS["rome"].for_model(model, TINY["rome"], env)
    with method.edit(model, tokenizer, REQUESTS[0]) as edit:
        assert edit.active
        assert not torch.equal(
            model.state_dict()["transformer.h.0.mlp.c_proj.weight"],
            before["transformer.h.0.mlp.c_proj.weight"],
        )
    assert not edit.active
    assert_same_state(model, before)
    edit.restore()  # idempotent
    assert_same_state(model, before)


@pytest.mark.parametrize("name", ["rome", "ft-m", "grace", "ike"])
@pytest.mark.parametrize("window", [0, 1])
def test_rollback_window_folds_old_edits_and_stays_exact(name, window, tokenizer, env):
    """Edits that leave the window cannot be rolled back alone, those inside it still roll back
    bit for bit onto the folded base, and restore() gives back the unedited model."""
    model = tiny_model("llama")
    states = [snapshot(model)]
    session = EditSession(model, tokenizer, env, rollback_window=window)
    handles = []
    for request in REQUESTS:
        handles.append(session.edit(request, name, overrides=TINY[name]))
        states.append(snapshot(model))
    assert session.n_edits == 3 and len(session) == window
    if name == "ike":  # the session's model is the last edit's wrapper, folded or not
        assert [f.subject for f in session.model.facts] == [r.subject for r in REQUESTS]
    with pytest.raises(RuntimeError, match="rollback window"):
        handles[0].restore()
    with pytest.raises(ValueError, match="rollback window of the last"):
        session.rollback(window + 1)
    if window:
        session.rollback(1)
        assert_same_state(model, states[2])
        session.edit(REQUESTS[2], name, overrides=TINY[name])
        assert_same_state(model, states[3])
    session.restore()
    assert_same_state(model, states[0])
    assert session.n_edits == 0 and session.model is model
    assert not [m for m in model.modules() if type(m).__name__ == "GraceCodebook"]
    assert not any(h.active for h in handles)


def test_rollback_window_bounds_restore_data(tokenizer, env):
    """Without a window ROME keeps one weight copy plus factors per edit; with window 0 one
    copy only, however many edits; with window 1 the base copy and one edit's factors. Folded
    handles are not kept alive by the session."""
    import gc
    import weakref

    model = tiny_model("llama")
    weight = model.get_submodule("model.layers.0.mlp.down_proj").weight
    one_copy = weight.numel() * weight.element_size()
    factors = (weight.shape[0] + weight.shape[1]) * 4
    for window, expected in [
        (None, one_copy + 3 * factors),
        (0, one_copy),
        (1, 2 * one_copy + factors),
    ]:
        session = EditSession(model, tokenizer, env, rollback_window=window)
        first = weakref.ref(session.edit(REQUESTS[0], "rome", overrides=TINY["rome"]))
        for request in REQUESTS[1:]:
            session.edit(request, "rome", overrides=TINY["rome"])
        assert session.restore_bytes == expected, window
        gc.collect()
        assert (first() is None) == (window is not None and window < 3), window
        session.restore()


def test_rollback_window_must_be_a_count(tokenizer, env):
    with pytest.raises(ValueError, match="rollback_window"):
        EditSession(tiny_model("llama"), tokenizer, env, rollback_window=-1)
