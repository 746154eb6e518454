"""UltraEdit: the lifelong normaliser, the ridge step's geometry, and state across turns."""

import pytest
import torch

from kedit.methods import METHODS, EditSession
from kedit.methods.ultraedit import RunningNormaliser
from kedit.model.arch import weight_out_in
from kedit.model.hooks import Trace
from kedit.model.tokens import encode_prompt_target
from kedit.types import EditRequest
from tests.conftest import snapshot, tiny_model
from tests.tiny_configs import TINY

REQUESTS = [
    EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {} is", "Germany", "Madrid and its river", "Berlin"),
    EditRequest("People in {} speak", "Brazil", "Italian", "Portuguese"),
]
GATE = "model.layers.1.mlp.gate_proj"


def test_the_running_normaliser_equals_the_statistics_of_all_rows_seen():
    torch.manual_seed(0)
    batches = [torch.randn(n, 5) * 3 + 1 for n in (1, 7, 30)]
    normaliser = RunningNormaliser(5)
    for batch in batches:
        normaliser.update(batch)
    rows = torch.cat(batches).double()
    x = torch.randn(4, 5).double()
    assert normaliser.count == 38
    assert torch.allclose(normaliser.mean, rows.mean(0))
    assert torch.allclose(normaliser(x), (x - rows.mean(0)) / rows.std(0), atol=1e-9)


def test_the_update_only_moves_keys_in_the_span_of_the_edited_facts(tokenizer, env):
    """``dW = V^T K (K^T K + ridge I)^{-1}`` maps any input orthogonal to this turn's keys to
    zero, and its rank is at most their number."""
    model = tiny_model("llama")
    config = {**TINY["ultraedit"], "modules": {"mlp.gate_proj": [1]}, "tokens": "target"}
    before = weight_out_in(model.get_submodule(GATE)).detach().clone()
    keys = []
    for r in REQUESTS:  # the gate's inputs where the target tokens are predicted
        pair = encode_prompt_target(tokenizer, r.text, r.target_new)
        with Trace(model, GATE, retain_input=True) as trace, torch.no_grad():
            model(torch.tensor([pair.ids[:-1]]))
        keys.append(trace.input[0, -len(pair.target_ids) :])
    keys = torch.cat(keys)  # (tokens, d_in)
    edit = METHODS["ultraedit"].for_model(model, config, env).edit(model, tokenizer, REQUESTS)
    delta = weight_out_in(model.get_submodule(GATE)).detach() - before  # (d_out, d_in)
    assert delta.norm() > 0
    assert torch.linalg.matrix_rank(delta) <= keys.shape[0] < delta.shape[1]
    basis = torch.linalg.svd(keys, full_matrices=True).Vh[keys.shape[0] :]  # ⟂ every key
    assert (delta @ basis.T).norm() < 1e-5 * delta.norm()
    edit.restore()


def test_later_turns_standardise_against_earlier_ones_and_roll_back_with_them(tokenizer, env):
    model = tiny_model("llama")
    session = EditSession(model, tokenizer, env)
    session.edit(REQUESTS[:2], "ultraedit", overrides=TINY["ultraedit"])
    (normaliser,) = [v for k, v in session.state.items() if k[0] == "ultraedit"]
    first = normaliser.count
    mean = normaliser.mean.clone()
    session.edit(REQUESTS[2:], "ultraedit", overrides=TINY["ultraedit"])
    assert normaliser.count > first  # one normaliser for gate and up, as in the reference
    session.rollback(1)
    assert normaliser.count == first and torch.equal(normaliser.mean, mean)
    session.restore()
    assert normaliser.count == 0


def test_a_first_edit_of_one_target_token_is_refused_and_changes_nothing(tokenizer, env):
    model = tiny_model("llama")
    before = snapshot(model)
    # one module: its normaliser sees one row (modules of one shape share theirs, as gate and
    # up do, and would pool their rows)
    config = {**TINY["ultraedit"], "modules": {"mlp.gate_proj": [1]}, "tokens": "target"}
    method = METHODS["ultraedit"].for_model(model, config, env)
    with pytest.raises(ValueError, match="at least two"):
        method.edit(model, tokenizer, REQUESTS[0])  # " Rome" is one token here
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_modules_name_parts_or_paths_and_check_them(env):
    model = tiny_model("llama")
    make = METHODS["ultraedit"].for_model
    method = make(model, {"modules": {"mlp_in": [-1], "mlp.down_proj": [0]}}, env)
    assert method.module_paths(model) == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    ]
    with pytest.raises(ValueError, match="out of range"):
        make(model, {"modules": {"mlp_out": [5]}}, env).module_paths(model)
    with pytest.raises(ValueError, match="2-D weight"):
        make(model, {"modules": {"mlp": [0]}}, env).module_paths(model)
