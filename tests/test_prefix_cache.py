"""A fixed prefix's keys and values computed once (``kedit.model.prefix``): every score, next-token
distribution and generated text equals the uncached path's on the full strings, on tiny GPT-2,
Llama (BOS), Gemma 2 (also with a sliding window shorter than the inputs) and Phi-3; rows whose
tokens do not start with the cached ones take the full path; the prefix is encoded once, and
again after a weight changes in place."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from kedit.methods import EditSession
from kedit.model.lm import HFLanguageModel, TargetScore
from kedit.model.prefix import PrefixCachedLM, cached_rows_scale, shared_prefix_ids
from kedit.model.tokens import encode
from kedit.types import EditRequest
from tests.conftest import DEVICE, TINY_CONFIGS, tiny_model, train_tokenizer
from tests.tiny_configs import TINY

FACTS = [
    ("The Eiffel Tower is located in the city of", "Rome"),
    ("The capital of Germany is", "Berlin"),
    ("People in Brazil speak", "Portuguese"),
    ("Danielle Darrieux speaks", "English"),
]
# ends with "\n\n", which the tokenizers below merge into one token unless a word follows
CONTEXT = "".join(f"New Fact: {p} {t}\nPrompt: {p} {t}\n\n" for p, t in FACTS)
# queries as IKE asks them, with targets of one and several tokens
PROMPTS = [
    "New Fact: The capital of Germany is Madrid\nPrompt: The capital of Germany is",
    "New Fact: People in Brazil speak Italian\nPrompt: Tourists visit",
    "New Fact: The Eiffel Tower is located in the city of Rome\nPrompt: The quick brown fox",
    "New Fact: x\nPrompt: Rome",
]
TARGETS = ["Madrid", "the Eiffel Tower", "jumps over the lazy dog", "Paris London Berlin"]
ARCHS = ["gpt2", "llama", "gemma2", "gemma2-window", "phi3"]


@pytest.fixture(scope="module")
def tokenizers():
    """Byte-level BPEs that learnt "\\n\\n" (so the prefix's last token is not what follows
    it), without and with a BOS token."""
    extra = ["\n\n"] * 100 + [CONTEXT] * 5
    return {bos: train_tokenizer(bos, extra) for bos in (False, True)}


def model_and_tokenizer(arch: str, tokenizers) -> tuple[torch.nn.Module, object]:
    if arch == "gemma2-window":  # a sliding window shorter than every input
        torch.manual_seed(0)
        config = TINY_CONFIGS["gemma2"]()
        config.sliding_window = 8
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config).to(DEVICE).eval()
    else:
        model = tiny_model(arch)
    return model, tokenizers[arch != "gpt2"]


class PassLengths:
    """Records the input length of every forward pass of ``model`` (and in ``shapes``, its
    rows and length)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.embeddings = model.get_input_embeddings()
        self.lengths: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    def record(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.shapes.append(tuple(args[0].shape))
        self.lengths.append(args[0].shape[-1])

    def __enter__(self) -> list[int]:
        self.handle = self.embeddings.register_forward_hook(self.record)
        return self.lengths

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def assert_same_scores(cached: list[TargetScore], full: list[TargetScore]) -> None:
    assert len(cached) == len(full)
    for a, b in zip(cached, full):
        assert a.target_ids == b.target_ids
        assert a.argmax_ids == b.argmax_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def assert_same_next_tokens(cached: torch.Tensor, full: torch.Tensor) -> None:
    assert torch.allclose(cached, full, atol=1e-4)
    assert torch.equal(cached.argmax(-1), full.argmax(-1))


def test_cached_tokens_are_those_every_continuation_shares(tokenizers):
    for bos, tok in tokenizers.items():
        alone = encode(tok, CONTEXT).ids
        continued = encode(tok, CONTEXT + PROMPTS[0]).ids
        assert continued[: len(alone)] != alone  # the boundary the cache must respect
        shared = shared_prefix_ids(tok, CONTEXT)
        assert alone[: len(shared)] == shared == continued[: len(shared)]
        assert len(shared) >= len(alone) - 2
        assert (shared[0] == tok.bos_token_id) == bos


@pytest.mark.parametrize("budget", [4096, 12])
@pytest.mark.parametrize("arch", ARCHS)
def test_scores_equal_the_full_strings(arch, budget, tokenizers):
    model, tok = model_and_tokenizer(arch, tokenizers)
    base = HFLanguageModel(model, tok, max_batch_tokens=budget)  # 12: one row a pass
    lm = PrefixCachedLM(base, CONTEXT)
    full = [CONTEXT + p for p in PROMPTS]
    n = len(lm.prefix_ids)
    with PassLengths(model) as lengths:
        scores = lm.score_targets(full, TARGETS)
        logprobs = lm.next_token_logprobs(full)
    assert lengths[0] == n and lengths.count(n) == 1  # the prefix once, then only queries
    assert max(lengths[1:]) < n
    assert len(lengths) - 1 == (2 if budget > 100 else 2 * len(PROMPTS))
    assert_same_scores(scores, base.score_targets(full, TARGETS))
    assert_same_next_tokens(logprobs, base.next_token_logprobs(full))


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_that_do_not_start_with_the_cached_tokens_take_the_full_path(arch, tokenizers):
    """Without probes the cached tokens end with the merged "\\n\\n": a query starting with a
    word splits it (and takes the full path), one starting with a space keeps it (and takes
    the cache), an empty query's scored positions lie in the prefix (the full path), and a
    prompt without the prefix runs whole."""
    model, tok = model_and_tokenizer(arch, tokenizers)
    base = HFLanguageModel(model, tok)
    lm = PrefixCachedLM(base, CONTEXT, probes=())
    assert lm.prefix_ids.tolist() == encode(tok, CONTEXT).ids
    prompts = [PROMPTS[0], " The quick brown fox", "", PROMPTS[2], " Tourists visit"]
    targets = ["Madrid", "jumps over the lazy dog", " Paris", "jumps over", "the Eiffel Tower"]
    full = [CONTEXT + p for p in prompts] + ["The capital of France is"]
    targets.append("Paris")
    with PassLengths(model) as lengths:
        scores = lm.score_targets(full, targets)  # one batch, cached and full rows
        logprobs = lm.next_token_logprobs(full)
    n = len(lm.prefix_ids)
    assert sum(length < n for length in lengths) == 2  # one cached pass per call
    assert sum(length > n for length in lengths) == 2  # one pass of full rows per call
    assert_same_scores(scores, base.score_targets(full, targets))
    assert_same_next_tokens(logprobs, base.next_token_logprobs(full))
    # a budget of one full row: cached rows share passes, the others run one by one
    narrow = PrefixCachedLM(HFLanguageModel(model, tok, max_batch_tokens=40), CONTEXT, probes=())
    passes = PassLengths(model)
    with passes:
        assert_same_scores(narrow.score_targets(full, targets), scores)
    assert all(rows == 1 for rows, length in passes.shapes if length > n)


@pytest.mark.parametrize("arch", ARCHS)
def test_generated_texts_equal_the_full_strings(arch, tokenizers):
    """Greedy and seeded top-k samples; the windowed Gemma 2 generates without the cache."""
    model, tok = model_and_tokenizer(arch, tokenizers)
    base = HFLanguageModel(model, tok, max_batch_tokens=400)
    lm = PrefixCachedLM(base, CONTEXT)
    full = [CONTEXT + p for p in PROMPTS]
    limits = [8, 6, 8, 7]
    assert lm.generate(full, limits) == base.generate(full, limits)
    sampled = lm.generate(full, 8, top_k=5, seed=7, stop_at_eos=False)
    assert sampled == base.generate(full, 8, top_k=5, seed=7, stop_at_eos=False)


def test_the_prefix_is_encoded_once_across_calls(tokenizers):
    model, tok = model_and_tokenizer("llama", tokenizers)
    base = HFLanguageModel(model, tok, max_batch_tokens=12)
    lm = PrefixCachedLM(base, CONTEXT)
    full = [CONTEXT + p for p in PROMPTS]
    n = len(lm.prefix_ids)
    with PassLengths(model) as lengths:
        first = lm.score_targets(full, TARGETS)
        for _ in range(3):
            assert lm.score_targets(full, TARGETS) == first  # the cache is left as it was
        lm.next_token_logprobs(full[:2])
        lm.generate(full, 3)
        lm.generate(full, 3, top_k=4, seed=1)
    assert lengths.count(n) == 1 and max(lengths[1:]) < n
    assert len(lengths) > 20


def test_cached_passes_hold_their_rows_within_the_scaled_budget(tokenizers):
    smollm2 = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
    )
    # activations and attention scores of a full pass, against keys and values of all layers
    assert cached_rows_scale(smollm2, 2080) == pytest.approx((2304 + 4608 + 9 * 2080) / 11520)
    model, tok = model_and_tokenizer("llama", tokenizers)
    base = HFLanguageModel(model, tok, max_batch_tokens=40)
    lm = PrefixCachedLM(base, CONTEXT)
    full = [CONTEXT + p for p in PROMPTS] * 3
    longest = max(len(encode(tok, f).ids) for f in full)
    budget = 40 * cached_rows_scale(model.config, longest)
    n = len(lm.prefix_ids)
    passes = PassLengths(model)
    with passes:
        lm.next_token_logprobs(full)
    cached = [(rows, length) for rows, length in passes.shapes if length < n]
    assert len(cached) == len(passes.shapes) - 1 > 1
    assert all(rows * (n + length) <= budget for rows, length in cached)
    assert 2 * longest > 40 and max(rows for rows, _ in cached) > 1  # the plain budget: 1 row


def test_a_weight_changed_in_place_recomputes_the_cache(tokenizers):
    model, tok = model_and_tokenizer("llama", tokenizers)
    base = HFLanguageModel(model, tok)
    lm = PrefixCachedLM(base, CONTEXT)
    full = [CONTEXT + p for p in PROMPTS]
    weight = model.get_submodule("model.layers.0.mlp.down_proj").weight
    original = weight.detach().clone()
    with PassLengths(model) as lengths:
        before = lm.score_targets(full, TARGETS)
        with torch.no_grad():
            weight.mul_(3.0)  # another method editing in place, in the same session
        after = lm.score_targets(full, TARGETS)
        after_full = base.score_targets(full, TARGETS)
        with torch.no_grad():
            weight.copy_(original)  # a rollback
        restored = lm.score_targets(full, TARGETS)
    assert lengths.count(len(lm.prefix_ids)) == 3  # encoded again after each change
    assert after != before
    assert_same_scores(after, after_full)
    assert_same_scores(restored, before)


def test_ike_answers_after_its_context_as_after_the_full_strings(tokenizer, env):
    model = tiny_model("llama")
    requests = [
        EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris"),
        EditRequest("The capital of {}", "Germany", "Madrid", "Berlin"),
    ]
    session = EditSession(model, tokenizer, env)
    session.edit(requests[0], "ike", overrides=TINY["ike"])
    first = session.model
    first.score_targets(["Where is it?"], ["Paris"])
    assert first.lm._cache is not None
    session.edit(requests[1], "ike", overrides=TINY["ike"])
    assert first.lm._cache is None  # the earlier context's cache is released
    wrapper = session.model
    base = HFLanguageModel(model, tokenizer)
    prompts = ["The capital of Germany is", "Tourists visit the Eiffel Tower in"]
    full = wrapper.contextualise(prompts)
    assert all(f.startswith(wrapper.context) for f in full)
    with PassLengths(model) as lengths:
        scores = wrapper.score_targets(prompts, ["Madrid", "the city of Rome"])
        logprobs = wrapper.next_token_logprobs(prompts)
        texts = wrapper.generate(prompts, 3)
    assert lengths.count(len(wrapper.lm.prefix_ids)) == 1
    assert max(lengths[1:]) < len(wrapper.lm.prefix_ids)
    assert_same_scores(scores, base.score_targets(full, ["Madrid", "the city of Rome"]))
    assert_same_next_tokens(logprobs, base.next_token_logprobs(full))
    assert texts == base.generate(full, 3)
