"""Method-specific invariants of FT, GRACE and IKE."""

import pytest
import torch
import transformers

from kedit.methods import METHODS
from kedit.methods._embed import LexicalEmbedder
from kedit.methods.grace import GraceCodebook
from kedit.methods.ike import InContextLM, _demo_kinds
from kedit.model.lm import HFLanguageModel
from kedit.model.tokens import encode_prompt_target
from kedit.types import EditRequest
from tests.conftest import DEVICE, TINY_CONFIGS, tiny_model
from tests.tiny_configs import TINY

REQUEST = EditRequest("Tourists visit {}", "the Eiffel Tower", "Rome", "Paris")


# -- FT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ft_l_stays_inside_the_linf_ball_and_touches_one_module(arch, tokenizer, env):
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eps = 0.01
    method = METHODS["ft-l"].for_model(model, {**TINY["ft-l"], "norm_constraint": eps}, env)
    edit = method.edit(model, tokenizer, REQUEST)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    prefix = "transformer.h.1.mlp.c_proj" if arch == "gpt2" else "model.layers.1.mlp.down_proj"
    assert changed and all(k.startswith(prefix) for k in changed)
    for k in changed:
        assert (model.state_dict()[k] - before[k]).abs().max() <= eps + 1e-6
    edit.restore()


def test_ft_m_loss_ignores_the_prompt(tokenizer, env):
    """FT-M's loss is the mean NLL of the target tokens only (prompt masked)."""
    model = tiny_model("llama")
    method = METHODS["ft-m"].for_model(model, TINY["ft-m"], env)
    loss = method._loss(model, tokenizer, [REQUEST]).item()
    ids = tokenizer(REQUEST.text + " Rome")["input_ids"]
    n_prompt = len(tokenizer(REQUEST.text)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=DEVICE)).logits[0].log_softmax(-1)
    target = torch.tensor(ids[n_prompt:], device=DEVICE)
    expected = -logits[n_prompt - 1 : len(ids) - 1].gather(1, target[:, None]).mean().item()
    assert loss == pytest.approx(expected, abs=1e-5)


def test_ft_batches_several_requests(tokenizer, env):
    """Two requests trained in batches of one: each one's target rises. (A random model's small
    unembedding caps a target's log-probability near -5.9 here, from about -6.7.)"""
    model = tiny_model("llama")
    requests = [REQUEST, EditRequest("A {}", "dog", "cat")]
    config = {**TINY["ft-m"], "batch_size": 1, "num_steps": 30}
    method = METHODS["ft-m"].for_model(model, config, env)
    lm = HFLanguageModel(model, tokenizer)
    losses = [method._loss(model, tokenizer, [r]).item() for r in requests]
    before = [s.mean_logprob for s in lm.score_targets([r.text for r in requests], ["Rome", "cat"])]
    edit = method.edit(model, tokenizer, requests)
    after = [s.mean_logprob for s in lm.score_targets([r.text for r in requests], ["Rome", "cat"])]
    assert all(a > b + 0.4 for a, b in zip(after, before)), (before, after)
    assert edit.info["final_loss"] < sum(losses) / len(losses) - 0.4
    edit.restore()


# -- GRACE -------------------------------------------------------------------------------------


def codebook() -> GraceCodebook:
    return GraceCodebook(torch.nn.Linear(3, 2), 3, 2)


def grace(eps=1.0):
    from kedit.env import Environment

    return METHODS["grace"](METHODS["grace"].config_cls(eps_init=eps), Environment())


def test_grace_adds_expands_and_splits_keys():
    book, method = codebook(), grace(eps=1.0)
    out = torch.zeros(2)
    assert method._update_codebook(book, torch.tensor([0.0, 0, 0]), out, "Rome") == 0
    # far away (3 > eps_init + eps_nearest = 2): a new key
    assert method._update_codebook(book, torch.tensor([3.0, 0, 0]), out, "Paris") == 1
    # within reach of key 0, same label: expand key 0's radius to cover the query
    assert method._update_codebook(book, torch.tensor([0.0, 1.5, 0]), out, "Rome") == 0
    assert book.eps[0].item() == pytest.approx(1.5)
    # near key 1 (distance 1.2) with another label: split, both radii half the distance
    index = method._update_codebook(book, torch.tensor([3.0, 0, 1.2]), out, "Berlin")
    assert index == 2
    assert book.eps[1].item() == pytest.approx(0.6 - 1e-5, abs=1e-6)
    assert book.eps[2].item() == pytest.approx(0.6)
    assert book.labels == ["Rome", "Paris", "Berlin"]


def test_grace_moves_a_key_only_when_the_query_lies_outside_its_radius():
    book = codebook()
    method = METHODS["grace"](METHODS["grace"].config_cls(eps_expand="moving_average"), env=None)
    method._update_codebook(book, torch.tensor([0.0, 0, 0]), torch.zeros(2), "Rome")
    method._update_codebook(book, torch.tensor([0.5, 0, 0]), torch.zeros(2), "Rome")  # inside
    assert torch.equal(book.keys[0], torch.zeros(3)) and book.eps[0].item() == 1.0
    method._update_codebook(book, torch.tensor([1.5, 0, 0]), torch.zeros(2), "Rome")  # outside
    assert torch.allclose(book.keys[0], torch.tensor([0.75, 0, 0]))
    assert book.eps[0].item() == pytest.approx(1.5)


def test_grace_reads_one_query_token_per_sequence():
    """The query is one token per row (the last, unless the pass says where the prompt ends);
    a hit replaces the output there (``last``) or at every token before it (``prompt``)."""
    book = codebook()
    book.add(torch.tensor([1.0, 0, 0]), torch.tensor([7.0, 7.0]), 0.5, "x")
    near, far = [1.0, 0.2, 0.0], [0.0, 5.0, 0.0]
    x = torch.tensor([[far, near], [near, far]])  # (2, 2, 3)
    plain = book.layer(x)
    out = book(x)  # queries each row's last token: row 0 hits, row 1 does not
    assert torch.equal(out[0, 1], torch.tensor([7.0, 7.0])) and torch.equal(out[0, 0], plain[0, 0])
    assert torch.equal(out[1], plain[1])  # a near token that is not the query changes nothing
    with book.querying(torch.tensor([1, 0])):
        assert torch.equal(book(x)[1, 0], torch.tensor([7.0, 7.0]))
    book.replacement = "prompt"
    out = book(x)  # the tokens before the query
    assert torch.equal(out[0, 0], torch.tensor([7.0, 7.0])) and torch.equal(out[0, 1], plain[0, 1])


def test_grace_teacher_forced_scores_query_the_last_prompt_token(tokenizer, env):
    model = tiny_model("llama")
    request = REQUEST
    edit = METHODS["grace"].for_model(model, TINY["grace"], env).edit(model, tokenizer, request)
    book = next(m for m in model.modules() if isinstance(m, GraceCodebook))
    pair = encode_prompt_target(tokenizer, request.text, request.target_new)
    ids = torch.tensor([pair.ids], device=DEVICE)
    with torch.no_grad(), book.querying(torch.tensor([pair.n_prompt - 1])):
        logits = model(input_ids=ids).logits[0].log_softmax(-1)
    target = torch.tensor(pair.target_ids, device=DEVICE)
    expected = logits[pair.n_prompt - 1 : len(pair.ids) - 1].gather(1, target[:, None])[:, 0]
    (score,) = edit.lm.score_targets([request.text], [request.target_new])
    assert torch.allclose(torch.tensor(score.logprobs), expected.cpu(), atol=1e-5)
    # a plain view of the same weights queries the target's last token: the edit is not seen
    (plain,) = HFLanguageModel(model, tokenizer).score_targets([request.text], ["Rome"])
    assert sum(score.logprobs) > sum(plain.logprobs) + 0.2
    edit.restore()


@pytest.mark.parametrize(
    ("model_type", "depth", "block"),
    [("gpt2", 48, 35), ("gptj", 28, 25), ("llama", 32, 27), ("llama", 30, 25), ("llama", 16, 14)],
)
def test_grace_sits_where_the_references_put_it_scaled_by_depth(model_type, depth, block):
    """GPT-2 XL h[35].mlp.c_fc (official), GPT-J h[25].mlp.fc_out and Llama-2-7B layer 27
    down_proj (EasyEdit), scaled to other depths (EasyEdit's Llama-3.2-1B config keeps 27 of
    16 blocks)."""
    config = TINY_CONFIGS[model_type]()
    for key in ("n_layer", "num_hidden_layers"):
        if hasattr(config, key):
            setattr(config, key, depth)
    model = transformers.AutoModelForCausalLM.from_config(config)
    cfg = METHODS["grace"].for_model(model).config
    assert cfg.block(model) == block
    assert cfg.module == ("mlp_in" if model_type == "gpt2" else "mlp_out")


def test_grace_leaves_unrelated_prompts_alone(tokenizer, env):
    model = tiny_model("llama")
    from kedit.model.lm import HFLanguageModel

    lm = HFLanguageModel(model, tokenizer)
    unrelated = ["The capital of Japan is", "Water is made of"]
    before = lm.next_token_logprobs(unrelated)
    edit = METHODS["grace"].for_model(model, TINY["grace"], env).edit(model, tokenizer, REQUEST)
    assert torch.allclose(lm.next_token_logprobs(unrelated), before, atol=1e-5)
    edit.restore()


# -- IKE ---------------------------------------------------------------------------------------


def test_demo_kinds_follow_the_papers_mix():
    kinds = _demo_kinds([4, 12, 16], 32, seed=0)
    assert (kinds.count("copy"), kinds.count("update"), kinds.count("retain")) == (4, 12, 16)
    small = _demo_kinds([4, 12, 16], 8, seed=0)
    assert len(small) == 8 and small.count("retain") == 4


def test_ike_context_has_neighbour_demos_and_the_fact(tokenizer, env):
    model = tiny_model("llama")
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    config = {**TINY["ike"], "k": 6}
    edit = METHODS["ike"].for_model(model, config, env).edit(model, tokenizer, request)
    wrapper = edit.model
    assert isinstance(wrapper, InContextLM)
    demos = wrapper.demos.split("\n\n")[:-1]
    assert len(demos) == 6
    assert all(d.startswith("New Fact: ") and "\nPrompt: " in d for d in demos)
    assert "The Eiffel Tower is located in the city of Rome" not in wrapper.demos
    query = wrapper.contextualise(["Where is it?"])[0]
    assert query.endswith(
        "New Fact: The Eiffel Tower is located in the city of Rome\nPrompt: Where is it?"
    )
    # the nearest pool facts (same relation) come last
    assert "located in the city of" in demos[-1]


def test_lexical_embedder_is_deterministic_and_normalised():
    a = LexicalEmbedder().encode(["The Louvre is in Paris", "Paris hosts the Louvre", "zebra"])
    assert torch.allclose(a.norm(dim=-1), torch.ones(3))
    assert (a[0] @ a[1]) > (a[0] @ a[2])
