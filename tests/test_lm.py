"""The batched scorer against straightforward one-by-one computations."""

import pytest
import torch

from kedit.model.lm import HFLanguageModel
from kedit.model.tokens import encode_prompt_target, join_target, token_index_of_span
from tests.conftest import DEVICE, tiny_model

PROMPTS = [
    "The Eiffel Tower is located in the city of",
    "Tourists visit",
    "The capital of France is",
    "Rome",
]
TARGETS = ["Rome", "the Eiffel Tower in Paris", " Paris", "is in Italy"]


def reference_scores(model, tok, prompt, target):
    """Unbatched, unpadded: log p of each target token and the top-1 token."""
    pair = encode_prompt_target(tok, prompt, target)
    with torch.no_grad():
        logits = model(torch.tensor([pair.ids], device=DEVICE)).logits[0].log_softmax(-1)
    n = pair.n_prompt
    rows = logits[n - 1 : len(pair.ids) - 1]
    target_ids = torch.tensor(pair.target_ids)
    return rows.gather(1, target_ids[:, None])[:, 0].tolist(), rows.argmax(-1).tolist()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("bos", [False, True])
def test_batched_scores_equal_unbatched(arch, padding_side, bos, tokenizer, bos_tokenizer):
    tok = bos_tokenizer if bos else tokenizer
    tok.padding_side = padding_side
    model = tiny_model(arch)
    lm = HFLanguageModel(model, tok, max_batch_tokens=64)  # forces several batches
    scores = lm.score_targets(PROMPTS, TARGETS)
    for prompt, target, score in zip(PROMPTS, TARGETS, scores):
        logprobs, argmax = reference_scores(model, tok, prompt, target)
        assert score.logprobs == pytest.approx(logprobs, abs=1e-4)
        assert list(score.argmax_ids) == argmax
    tok.padding_side = "right"


def test_target_split_handles_leading_spaces_and_bos(tokenizer, bos_tokenizer):
    plain = encode_prompt_target(tokenizer, "The city of", "Rome")
    spaced = encode_prompt_target(tokenizer, "The city of", " Rome")
    assert plain == spaced
    assert tokenizer.decode(plain.target_ids) == " Rome"
    with_bos = encode_prompt_target(bos_tokenizer, "The city of", "Rome")
    assert with_bos.ids[0] == bos_tokenizer.bos_token_id
    assert with_bos.target_ids == plain.target_ids
    assert join_target("Q: where?\n", "A") == "Q: where?\nA"
    with pytest.raises(ValueError, match="empty"):
        encode_prompt_target(tokenizer, "The city of", " ")


def test_subject_last_token_by_offsets(tokenizer, bos_tokenizer):
    text = "The Eiffel Tower is located in"
    for tok in (tokenizer, bos_tokenizer):
        index = token_index_of_span(tok, text, (0, len("The Eiffel Tower")))
        ids = tok(text)["input_ids"]
        assert tok.decode(ids[: index + 1]).endswith("Tower")
        assert not tok.decode(ids[:index]).endswith("Tower")


def test_derived_measures(tokenizer):
    lm = HFLanguageModel(tiny_model("llama"), tokenizer)
    score = lm.score_targets(["Tourists visit"], ["the Eiffel Tower"])[0]
    assert score.prob == pytest.approx(torch.tensor(score.logprobs).mean().exp().item())
    hits = [a == t for a, t in zip(score.argmax_ids, score.target_ids)]
    assert score.token_accuracy == sum(hits) / len(hits)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_next_token_and_greedy_generation(arch, tokenizer):
    model = tiny_model(arch)
    lm = HFLanguageModel(model, tokenizer, max_batch_tokens=32)
    dists = lm.next_token_logprobs(PROMPTS)
    assert dists.shape == (len(PROMPTS), model.config.vocab_size)
    texts = lm.generate(PROMPTS, [3, 1, 2, 4])
    for prompt, n, dist, text in zip(PROMPTS, [3, 1, 2, 4], dists, texts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(DEVICE)
        with torch.no_grad():
            last = model(ids).logits[0, -1].log_softmax(-1)
        assert torch.allclose(dist, last.cpu(), atol=1e-4)
        generated = []
        for _ in range(n):  # greedy by hand
            with torch.no_grad():
                nxt = model(ids).logits[0, -1].argmax()
            generated.append(int(nxt))
            ids = torch.cat([ids, nxt.view(1, 1)], -1)
        assert text == tokenizer.decode(generated, skip_special_tokens=True)


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_generation_ends_each_row_where_its_text_test_says(stop_at_eos, tokenizer):
    """``until`` ends a row at the first token after which its text has an end (MeLLo's and
    DeepEdit's stop strings, in one generation): each text is the shortest prefix of the row's
    greedy tokens that passes, and the forward passes stop once every row has ended."""
    model = tiny_model("llama")
    lm = HFLanguageModel(model, tokenizer)
    n_new, end = 12, 9

    def until(text: str) -> int | None:
        return len(text) if len(text) >= end else None

    shortest = []
    for prompt in PROMPTS:  # greedy by hand, one row at a time
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(DEVICE)
        generated: list[int] = []
        text = ""
        while len(generated) < n_new and until(text) is None:
            with torch.no_grad():
                nxt = model(ids).logits[0, -1].argmax()
            generated.append(int(nxt))
            ids = torch.cat([ids, nxt.view(1, 1)], -1)
            text = tokenizer.decode(generated, skip_special_tokens=True)
        shortest.append((text, len(generated)))
    assert len({n for _, n in shortest}) > 1, "rows should end at different tokens"
    assert max(n for _, n in shortest) < n_new

    passes = []
    handle = model.register_forward_hook(lambda *_: passes.append(1))
    try:
        texts = lm.generate(PROMPTS, n_new, stop_at_eos=stop_at_eos, until=until)
    finally:
        handle.remove()
    assert texts == [text for text, _ in shortest]
    assert len(passes) == max(n for _, n in shortest), "generation goes on only while a row is open"


def test_sampled_generation_is_seeded_and_isolated(tokenizer):
    lm = HFLanguageModel(tiny_model("llama"), tokenizer)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = lm.generate(["The", "Because"], 5, top_k=5, seed=7)
    assert torch.equal(torch.get_rng_state(), state), "sampling must not touch the global RNG"
    b = lm.generate(["The", "Because"], 5, top_k=5, seed=7)
    assert a == b


def test_too_long_input_is_a_clear_error(tokenizer):
    model = tiny_model("llama")
    lm = HFLanguageModel(model, tokenizer)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        lm.score_targets(["word " * 1100], ["Rome"])
