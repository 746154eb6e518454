"""The batched v* search: each request gets the v* it gets when searched alone."""

import pytest
import torch

from kedit.methods import _value
from kedit.methods._value import ValueSearch, optimise_value, optimise_values
from kedit.model.cached_pass import PrefixCachedPass
from kedit.model.tokens import encode
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
