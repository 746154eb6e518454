"""Invariants of the locate-and-edit family: MEMIT, EMMET, AlphaEdit, PMET, r-ROME."""

import pytest
import torch

from kedit.methods import METHODS, EditSession, _keys, _value
from kedit.methods._keys import mean_keys, subject_io
from kedit.methods._stats import stats_for
from kedit.methods._suffix import HandOn
from kedit.methods._templates import context_templates, fill, flatten, kl_prompt
from kedit.methods._value import ValueSearch, optimise_value, relaxation
from kedit.model.arch import arch_of, weight_out_in
from kedit.model.tokens import encode, token_index_of_span
from kedit.types import EditRequest
from tests.conftest import tiny_model
from tests.tiny_configs import TINY

REQUESTS = [
    EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {}", "Germany", "Madrid", "Berlin"),
    EditRequest("People in {}", "Brazil", "Italian", "Portuguese"),
]
MLP = {"gpt2": "transformer.h.{}.mlp.c_proj", "llama": "model.layers.{}.mlp.down_proj"}
BLOCK = {"gpt2": "transformer.h.{}", "llama": "model.layers.{}"}


def deltas(model, paths, before):
    return [weight_out_in(model.get_submodule(p)).detach() - before[p] for p in paths]


def weights(model, paths):
    return {p: weight_out_in(model.get_submodule(p)).detach().clone() for p in paths}


def setup(name, arch, env, **overrides):
    model = tiny_model(arch)
    method = METHODS[name].for_model(model, {**TINY[name], **overrides}, env)
    return model, method


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_memit_one_request_is_rank_one_per_layer_along_c_inverse_k(arch, tokenizer, env):
    model, method = setup("memit", arch, env, layers=[0])
    path = MLP[arch].format(0)
    before = weights(model, [path])
    templates = context_templates(
        model, tokenizer, env, method.config.context_template_length_params
    )
    key = mean_keys(model, tokenizer, REQUESTS[:1], templates, path, per_group=True)[0]
    edit = method.edit(model, tokenizer, REQUESTS[0])
    (delta,) = deltas(model, [path], before)
    singular = torch.linalg.svdvals(delta)
    assert singular[1] < 1e-5 * singular[0]
    mom2 = stats_for(model, tokenizer, [path], env, method.config)[path]
    u = torch.linalg.solve(mom2.double(), key.double().cpu()).float().to(delta.device)
    row = delta[delta.norm(dim=1).argmax()]
    assert abs(torch.nn.functional.cosine_similarity(row, u, dim=0).item()) > 0.999
    edit.restore()


@pytest.mark.parametrize("name", ["memit", "emmet", "alphaedit", "pmet"])
def test_batch_update_rank_is_at_most_the_batch(name, tokenizer, env):
    model, method = setup(name, "llama", env)
    paths = [MLP["llama"].format(i) for i in (0, 1)]
    before = weights(model, paths)
    edit = method.edit(model, tokenizer, REQUESTS[:2])
    for delta in deltas(model, paths, before):
        singular = torch.linalg.svdvals(delta)
        assert singular[0] > 0 and singular[2] < 1e-5 * singular[0]
    edit.restore()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_emmet_writes_the_batch_exactly(arch, tokenizer, env):
    """Equality constraint: on the one edited layer, dW K = R for the batch's keys."""
    model, method = setup("emmet", arch, env, layers=[1])
    path, block = MLP[arch].format(1), BLOCK[arch].format(1)
    before = weights(model, [path])
    templates = context_templates(
        model, tokenizer, env, method.config.context_template_length_params
    )
    keys = mean_keys(model, tokenizer, REQUESTS, templates, path, per_group=True).T
    _, current = subject_io(
        model, tokenizer, [(r.text, r.subject_span) for r in REQUESTS], block, inputs=False
    )
    targets = torch.stack(
        [
            optimise_value(
                model, tokenizer, r, flatten(templates), block, method.config.search()
            ).target
            for r in REQUESTS
        ]
    )
    edit = method.edit(model, tokenizer, REQUESTS)
    (delta,) = deltas(model, [path], before)
    assert torch.allclose(delta @ keys, (targets - current).T, atol=1e-3, rtol=1e-3)
    edit.restore()


def test_alphaedit_leaves_preserved_keys_alone(tokenizer, env):
    model = tiny_model("llama")
    path = MLP["llama"].format(0)
    probe = METHODS["alphaedit"].for_model(model, TINY["alphaedit"], env)
    mom2 = stats_for(model, tokenizer, [path], env, probe.config)[path].double()
    eigenvalues, eigenvectors = torch.linalg.eigh(mom2)
    threshold = float(eigenvalues.quantile(0.5))  # protect the top half of the key variance
    method = METHODS["alphaedit"].for_model(
        model, {**TINY["alphaedit"], "layers": [0], "nullspace_threshold": threshold}, env
    )
    before = weights(model, [path])
    edit = method.edit(model, tokenizer, REQUESTS[:2])
    (delta,) = deltas(model, [path], before)
    protected = eigenvectors[:, eigenvalues >= threshold].float().to(delta.device)
    assert (delta @ protected).norm() < 1e-5 * delta.norm() * protected.norm()
    assert delta.norm() > 0
    edit.restore()


def test_alphaedit_keeps_earlier_keys_in_the_session(tokenizer, env):
    model = tiny_model("llama")
    session = EditSession(model, tokenizer, env)
    session.edit(REQUESTS[0], "alphaedit", overrides=TINY["alphaedit"])
    caches = {k: v for k, v in session.state.items() if k[0] == "alphaedit"}
    assert len(caches) == 2 and all(len(c.factors) == 1 for c in caches.values())
    session.edit(REQUESTS[1:], "alphaedit", overrides=TINY["alphaedit"])
    assert all(len(c.factors) == 2 for c in caches.values())
    assert all(c.factors[1].shape[1] == 2 for c in caches.values())
    session.rollback(1)
    assert all(len(c.factors) == 1 for c in caches.values())
    session.restore()
    assert all(len(c.factors) == 0 for c in caches.values())


def test_pmet_updates_only_the_ffn(tokenizer, env):
    model, method = setup("pmet", "llama", env)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edit = method.edit(model, tokenizer, REQUESTS[0])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)}
    edit.restore()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_r_rome_writes_v_star_for_the_averaged_key(arch, tokenizer, env):
    model, method = setup("r-rome", arch, env)
    path = MLP[arch].format(0)
    templates = context_templates(
        model, tokenizer, env, method.config.context_template_length_params
    )
    target = optimise_value(
        model, tokenizer, REQUESTS[0], flatten(templates), path, method.config.search()
    ).target
    edit = method.edit(model, tokenizer, REQUESTS[0])
    _, outputs = subject_io(
        model, tokenizer, [fill(t, REQUESTS[0]) for t in flatten(templates)], path
    )
    assert torch.allclose(outputs.mean(0), target, atol=1e-3 * target.norm().item())
    edit.restore()


def test_the_kl_prompt_is_the_subject_then_is_a(tokenizer, env, monkeypatch):
    """ROME's compute_v and MEMIT's compute_z read the KL term on "{subject} is a", whatever the
    edit prompt; filling the whole prompt in gives "The mother tongue of ... is is a"."""
    request = EditRequest("The mother tongue of {} is", "Danielle Darrieux", "English", "French")
    assert kl_prompt(request) == ("Danielle Darrieux is a", (0, len("Danielle Darrieux")))
    model = tiny_model("llama")
    rows = []
    real = _value.PrefixCachedPass

    def recording(model, ids, split, *rest):
        rows.extend(zip(ids, split))
        return real(model, ids, split, *rest)

    monkeypatch.setattr(_value, "PrefixCachedPass", recording)
    search = ValueSearch(2, 0.5, 0.0, 4.0, 0.0625)
    optimise_value(model, tokenizer, request, ["{}"], MLP["llama"].format(0), search)
    kl_split = token_index_of_span(tokenizer, "Danielle Darrieux is a", (0, 17))
    # the KL row runs up to the subject's last token, where the term is read
    assert (encode(tokenizer, "Danielle Darrieux is a").ids[: kl_split + 1], kl_split) in rows


def test_pmet_relaxation_restores_the_nll_weight_when_the_target_is_no_longer_top1():
    pmet = ValueSearch(10, 0.2, 0.5, 1.0, 1.0, nll_factor=2.0, relax_when_top1=True)
    assert relaxation(pmet, top1=True, kl=0.5) == (pytest.approx(0.2), False)
    assert relaxation(pmet, top1=True, kl=0.01) == (pytest.approx(0.2), True)
    assert relaxation(pmet, top1=False, kl=0.001) == (2.0, False)  # back to the full weight
    memit = ValueSearch(10, 0.5, 0.5, 4.0, 0.0625)
    assert relaxation(memit, top1=True, kl=0.0) == (1.0, False)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("name", ["memit", "emmet", "alphaedit"])
def test_blocks_that_normalise_the_mlp_output_take_mlp_output_targets(name, arch, tokenizer, env):
    """Gemma 2 / 3 normalise the MLP output before the residual add, so the block output is not
    linear in dW k: the spreading methods solve for the top layer's MLP output instead. With
    EMMET's equality constraint on one layer, dW K equals the v* found there minus the MLP
    output it replaces."""
    model = tiny_model(arch)
    assert arch_of(model).normed_mlp_output
    method = METHODS[name].for_model(model, {**TINY[name], "layers": [1]}, env)
    mlp_out = "model.layers.1.mlp.down_proj"
    assert method.target_paths(model) == (mlp_out, mlp_out)
    if name != "emmet":
        return
    before = weights(model, [mlp_out])
    templates = context_templates(
        model, tokenizer, env, method.config.context_template_length_params
    )
    keys = mean_keys(model, tokenizer, REQUESTS, templates, mlp_out, per_group=True).T
    bare = [(r.text, r.subject_span) for r in REQUESTS]
    _, current = subject_io(model, tokenizer, bare, mlp_out)
    search = method.config.search()
    targets = torch.stack(
        [
            optimise_value(model, tokenizer, r, flatten(templates), mlp_out, search).target
            for r in REQUESTS
        ]
    )
    edit = method.edit(model, tokenizer, REQUESTS)
    (delta,) = deltas(model, [mlp_out], before)
    assert torch.allclose(delta @ keys, (targets - current).T, atol=1e-3, rtol=1e-3)
    # the module it solved for now outputs v* + (W k* - W k_bare) for each request's bare prompt
    _, after = subject_io(model, tokenizer, bare, mlp_out)
    assert torch.allclose(
        after - current,
        (delta @ mean_keys(model, tokenizer, REQUESTS, [["{}"]], mlp_out).T).T,
        atol=1e-3,
        rtol=1e-3,
    )
    edit.restore()


def test_other_llama_like_blocks_keep_block_targets(env):
    for arch in ("llama", "gemma", "mistral"):
        model = tiny_model(arch)
        method = METHODS["memit"].for_model(model, {**TINY["memit"], "layers": [1]}, env)
        assert method.target_paths(model)[0] == "model.layers.1"


@pytest.mark.parametrize("name", ["memit", "alphaedit"])
def test_key_reads_run_from_the_lowest_edited_block_and_change_nothing(
    name, tokenizer, env, monkeypatch
):
    """MEMIT reads every layer's keys again after writing the layers below it, AlphaEdit once
    more after all: block 0, below the lowest edited layer, runs on the first read only, and
    the update equals one whose every read runs all blocks."""
    paths = [MLP["llama"].format(i) for i in (1, 2)]

    def edit_and_count():
        model = tiny_model("llama", blocks=3)
        method = METHODS[name].for_model(model, {**TINY[name], "layers": [1, 2]}, env)
        method.edit(model, tokenizer, REQUESTS).restore()  # templates and statistics cached
        calls = []
        model.model.layers[0].register_forward_hook(lambda *_: calls.append(1))
        before = weights(model, paths)
        method.edit(model, tokenizer, REQUESTS)
        return deltas(model, paths, before), len(calls)

    handed_on, calls_handed_on = edit_and_count()
    monkeypatch.setattr(_keys, "HandOn", lambda model, first: HandOn(model, 0))
    full, calls_full = edit_and_count()
    for a, b in zip(handed_on, full):
        assert torch.allclose(a, b, atol=1e-6 * b.abs().max().item())
    # reads of the keys and the bare prompts (one pass each): both first reads run block 0
    # either way; MEMIT reads each twice, AlphaEdit its keys twice more
    assert calls_full - calls_handed_on == (4 if name == "alphaedit" else 2)
