"""The batched v* search: each request gets the v* it gets when searched alone."""

import pytest
import torch

from kedit.methods import _value
from kedit.methods._suffix import HandOn
from kedit.methods._templates import search_rows
from kedit.methods._value import ValueSearch, optimise_value, optimise_values
from kedit.model import cached_pass
from kedit.model.arch import get_module, layer_path
from kedit.model.cached_pass import PrefixCachedPass
from kedit.model.hooks import first_tensor, frozen, replace_first_tensor
from kedit.model.tokens import encode, pad
from kedit.types import EditRequest
from tests.conftest import tiny_model

#: prompts, subjects and targets of different token lengths, so rows pad differently
REQUESTS = [
    EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris"),
    EditRequest("The capital of {} is", "Germany", "Madrid and its river", "Berlin"),
    EditRequest("People in {} speak", "Brazil", "Italian", "Portuguese"),
    EditRequest("{} plays", "Lionel Messi", "basketball for the Lakers", "football"),
]
TEMPLATES = ["{}", "Because it rained. {}", "I said that. {}"]
MLP = {"gpt2": "transformer.h.{}.mlp.c_proj", "llama": "model.layers.{}.mlp.down_proj"}
ATTN = {"gpt2": "transformer.h.{}.attn.c_proj", "llama": "model.layers.{}.self_attn.o_proj"}
#: v* found in a batch against v* found alone: relative L2 difference (float32 noise of
#: differently shaped matrix products; measured 0 on the tiny models, see the benchmark for
#: SmolLM2-135M). The deltas go in at layer 0: at the last layer of a random 2-layer model the
#: target's gradient is about 1e-9, float noise that Adam's normalisation turns into full steps.
TOLERANCE = 1e-4


def assert_same(alone, joint):
    assert [a.steps for a in alone] == [j.steps for j in joint]
    for a, j in zip(alone, joint):
        for ta, tj, sa, sj in zip(a.targets, j.targets, a.starts, j.starts):
            assert (ta - tj).norm() <= TOLERANCE * ta.norm()
            assert (sa - sj).norm() <= TOLERANCE * sa.norm()
        assert j.loss == pytest.approx(a.loss, rel=TOLERANCE)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("batch_tokens", [40, 10_000])
def test_a_batch_finds_each_requests_v_star_alone(arch, batch_tokens, tokenizer, monkeypatch):
    """Requests stop at different steps (the early-stopping loss is raised so that on a random
    model some stop at once, one after a step and one never), in one pass or in several."""
    monkeypatch.setattr(_value, "EARLY_STOP_LOSS", 6.6)
    model = tiny_model(arch)
    path = MLP[arch].format(0)
    search = ValueSearch(6, 0.5, 0.5, 1e4, 0.0625)
    alone = [optimise_value(model, tokenizer, r, TEMPLATES, path, search) for r in REQUESTS]
    assert len({a.steps for a in alone}) > 1  # the case this test is about
    joint = optimise_values(model, tokenizer, REQUESTS, TEMPLATES, path, search, batch_tokens)
    assert_same(alone, joint)


def test_pmets_two_deltas_and_relaxation_match_alone(tokenizer):
    model = tiny_model("llama")
    paths = [ATTN["llama"].format(0), MLP["llama"].format(0)]
    search = ValueSearch(4, 0.5, 0.5, 1.0, 1.0, nll_factor=2.0, relax_when_top1=True)
    alone = [optimise_value(model, tokenizer, r, TEMPLATES, paths, search) for r in REQUESTS]
    joint = optimise_values(model, tokenizer, REQUESTS, TEMPLATES, paths, search, 60)
    assert_same(alone, joint)
    assert all(len(j.targets) == 2 for j in joint)


def test_a_search_that_moves_finds_the_same_delta(tokenizer):
    """Without early stops every step updates every delta: the Adam state of one request must
    not leak into another's."""
    model = tiny_model("llama")
    path = MLP["llama"].format(0)
    search = ValueSearch(5, 0.5, 0.0, 1e4, 0.0625)
    alone = [optimise_value(model, tokenizer, r, TEMPLATES, path, search) for r in REQUESTS]
    joint = optimise_values(model, tokenizer, REQUESTS[::-1], TEMPLATES, path, search)[::-1]
    assert_same(alone, joint)
    assert all((a.target - a.starts[0]).norm() > 0 for a in alone)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_a_subset_of_a_cached_pass_equals_a_pass_of_those_rows(arch, tokenizer):
    model = tiny_model(arch)
    texts = ["Because it rained. Tourists visit the Eiffel Tower", "Tourists visit Paris", "Tower"]
    rows = [encode(tokenizer, t).ids for t in texts]
    split = [len(rows[0]) - 2, len(rows[1]) - 1, 0]
    index = torch.tensor([[0, 1], [0, 0], [0, 0]])
    with torch.no_grad():
        subset = PrefixCachedPass(model, rows, split, 0).subset([0, 2])
        fresh = PrefixCachedPass(model, [rows[0], rows[2]], [split[0], split[2]], 0)
        assert len(subset) == 2
        got, want = subset.row_logits(index[[0, 2]]), fresh.row_logits(index[[0, 2]])
        assert torch.allclose(got, want, atol=1e-5)
        # row_logits reads each row's own columns: row 0's column 1 is its next suffix token
        assert torch.allclose(got[0], fresh.logits([0, 1])[0], atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_blocks_below_the_delta_run_once_per_pass_and_change_nothing(arch, tokenizer, monkeypatch):
    """The blocks below the lowest delta run on the first step only (their output is handed on
    after it), and every v* equals the one found with full passes at every step."""
    model = tiny_model(arch, blocks=3)
    paths = [layer_path(model, "mlp_out", 1), layer_path(model, "attn_out", 2)]
    search = ValueSearch(5, 0.5, 0.0, 1e4, 0.0625)
    calls = []
    model.get_submodule(layer_path(model, "block", 0)).register_forward_hook(
        lambda *_: calls.append(1)
    )
    fast = optimise_values(model, tokenizer, REQUESTS, TEMPLATES, paths, search, 60)
    fast_calls = len(calls)
    monkeypatch.setattr(HandOn, "run", lambda self, forward, recorded: (forward(), None))
    calls.clear()
    passes = []
    row_logits = PrefixCachedPass.row_logits
    monkeypatch.setattr(
        PrefixCachedPass, "row_logits", lambda *a: passes.append(1) or row_logits(*a)
    )
    full = optimise_values(model, tokenizer, REQUESTS, TEMPLATES, paths, search, 60)
    assert_same(full, fast)
    assert all(j.steps == 4 for j in fast)  # every step ran: five passes of each batch
    # the prefixes' passes run block 0 either way; with blocks handed on, of the search's
    # passes only the first step's do
    assert len(passes) % 5 == 0 and len(passes) > 5
    assert len(calls) - fast_calls == 4 * len(passes) // 5


def plain_v_star(model, tok, request, templates, path, search):
    """ROME's ``compute_v`` written plainly: every row whole, right-padded, in one full pass
    per step (no prefix cache, no handed-on blocks, the KL prompt's every token)."""
    rows = search_rows(tok, request, templates)
    batch = pad(rows.ids, 0, left=False)
    n_rewrite, n_target = len(rows.ids) - 1, len(rows.target_ids)
    delta = torch.zeros(model.config.hidden_size, requires_grad=True)
    at = torch.tensor(rows.split)
    start, kl_start = None, None

    def add(module, args, output):
        nonlocal start
        out = first_tensor(output)
        if start is None:
            start = out[0, at[0]].detach().clone()
        out = out.clone()
        out[torch.arange(len(at)), at] += delta
        return replace_first_tensor(output, out)

    handle = get_module(model, path).register_forward_hook(add)
    optimiser = torch.optim.Adam([delta], lr=search.lr)
    with frozen(model):
        for step in range(search.steps):
            optimiser.zero_grad()
            logp = torch.log_softmax(model(**batch.model_inputs()).logits, -1)
            nll = 0.0
            for r, ids in enumerate(rows.ids[:-1]):
                first = len(ids) - n_target  # predicts the target's first token
                picked = logp[r, first : first + n_target].gather(
                    1, torch.tensor(rows.target_ids)[:, None]
                )
                nll = nll - picked.mean() / n_rewrite
            now = logp[-1, at[-1]]
            kl_start = now.detach() if kl_start is None else kl_start
            kl = search.kl_factor * (now.exp() * (now - kl_start)).sum()
            loss = nll + kl + search.weight_decay * delta.norm() / start.norm() ** 2
            if loss < _value.EARLY_STOP_LOSS or step == search.steps - 1:
                break
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                radius = search.clamp_norm_factor * start.norm()
                delta.mul_(min(1.0, float(radius / delta.norm())))
    handle.remove()
    return start + delta.detach(), step


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("part", ["mlp_out", "block"])
def test_the_search_finds_what_a_plain_compute_v_finds(arch, part, tokenizer, monkeypatch):
    """The batched, prefix-cached search with handed-on blocks and a KL row cut at its subject
    gives the v* of a plain full-pass loop (the delta in block 1 of 3: on its MLP's output, as
    ROME's, or on the whole block's, as MEMIT's, where block 1 too runs on the first step
    only)."""
    model = tiny_model(arch, blocks=3)
    path = layer_path(model, part, 1)
    search = ValueSearch(6, 0.5, 0.5, 4.0, 0.0625)
    calls = []
    model.get_submodule(layer_path(model, "block", 1)).register_forward_hook(
        lambda *_: calls.append(1)
    )
    passes = []
    row_logits = PrefixCachedPass.row_logits
    monkeypatch.setattr(
        PrefixCachedPass, "row_logits", lambda *a: passes.append(1) or row_logits(*a)
    )
    for request in REQUESTS[:2]:
        want, steps = plain_v_star(model, tokenizer, request, TEMPLATES, path, search)
        calls.clear()
        passes.clear()
        got = optimise_values(model, tokenizer, [request, REQUESTS[3]], TEMPLATES, path, search)
        assert got[0].steps == steps
        assert (got[0].target - want).norm() <= TOLERANCE * want.norm()
        assert (got[0].target - got[0].starts[0]).norm() > 1e-3 * want.norm()  # it moved
        # the search's passes past the first step run block 1 only with the delta inside it
        assert (len(calls) < len(passes)) == (part == "block")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_prefixes_computed_in_groups_of_similar_length_give_the_same_pass(
    arch, tokenizer, monkeypatch
):
    """Prefixes of 0 to 21 tokens in groups of at most 16 padded tokens (gemma2's sliding
    windows: in one pass), then padded to one width: the logits of one whole pass."""
    model = tiny_model(arch)
    texts = ["Because it rained. Tourists visit the Eiffel Tower", "Tourists visit Paris"]
    texts += ["Tower of", "I said that. People in Brazil speak"]
    rows = [encode(tokenizer, t).ids for t in texts]
    split = [len(rows[0]) - 2, len(rows[1]) - 1, 0, len(rows[3]) - 3]
    index = torch.tensor([[0, 1], [0, 0], [0, 1], [1, 2]])
    with torch.no_grad():
        whole = PrefixCachedPass(model, rows, split, 0).row_logits(index)
        monkeypatch.setattr(cached_pass, "PREFIX_PASS_TOKENS", {"cpu": 16, "cuda": 16})
        calls = []
        real = cached_pass.prefix_cache
        monkeypatch.setattr(cached_pass, "prefix_cache", lambda *a: calls.append(1) or real(*a))
        grouped = PrefixCachedPass(model, rows, split, 0)
        assert torch.allclose(grouped.row_logits(index), whole, atol=1e-5)
        part = grouped.subset([3, 0]).row_logits(index[[3, 0]])
        assert torch.allclose(part, whole[[3, 0]], atol=1e-5)
    # prefixes of 0, 7, 12 and 21 tokens: groups of 2, 1 and 1 rows; gemma2's first group
    # shows sliding windows, then all are computed in one pass
    assert len(calls) == (2 if arch == "gemma2" else 3)


def test_a_search_with_grouped_prefixes_finds_the_plain_v_star(tokenizer, monkeypatch):
    monkeypatch.setattr(cached_pass, "PREFIX_PASS_TOKENS", {"cpu": 12, "cuda": 12})
    model = tiny_model("llama", blocks=3)
    path = layer_path(model, "mlp_out", 1)
    search = ValueSearch(6, 0.5, 0.5, 4.0, 0.0625)
    want, steps = plain_v_star(model, tokenizer, REQUESTS[1], TEMPLATES, path, search)
    got = optimise_values(model, tokenizer, REQUESTS, TEMPLATES, path, search)[1]
    assert got.steps == steps
    assert (got.target - want).norm() <= TOLERANCE * want.norm()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
def test_shared_heads_computed_once_give_the_same_pass(arch, tokenizer, monkeypatch):
    """Rows that start with one of two shared heads (one row's prefix is its head alone), rows
    without one, an empty prefix: each head's keys and values computed once, then the rest of
    each prefix after it (gemma2's sliding windows: one pass), the logits of one whole pass."""
    model = tiny_model(arch)
    texts = [
        "Because it rained. Tourists visit the Eiffel Tower",
        "Because it rained. People in Brazil speak",
        "Because it rained. Paris is big",
        "I said that. People in Brazil speak",
        "Tourists visit Paris",
        "Tower of",
    ]
    heads_of = {t: encode(tokenizer, t.split(".")[0] + ".").ids for t in texts if "." in t}
    rows = [encode(tokenizer, t).ids for t in texts]
    heads = [len(heads_of.get(t, [])) for t in texts]
    assert all(r[:h] == heads_of[t] for r, h, t in zip(rows, heads, texts) if h)
    split = [len(rows[0]) - 2, len(rows[1]) - 2, heads[2], len(rows[3]) - 3, 2, 0]
    index = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 2], [0, 1], [0, 1]])
    calls = []
    real = cached_pass.prefix_cache
    with torch.no_grad():
        whole = PrefixCachedPass(model, rows, split, 0).row_logits(index)
        monkeypatch.setattr(cached_pass, "prefix_cache", lambda *a: calls.append(a) or real(*a))
        shared = PrefixCachedPass(model, rows, split, 0, heads)
        assert torch.allclose(shared.row_logits(index), whole, atol=1e-5)
        part = shared.subset([5, 1, 2]).row_logits(index[[5, 1, 2]])
        assert torch.allclose(part, whole[[5, 1, 2]], atol=1e-5)
    if arch != "gemma2":  # the two heads in one pass, then the rests (one group)
        assert len(calls) == 2 and calls[0][1]["input_ids"].shape[0] == 2
