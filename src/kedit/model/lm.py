"""The ``LanguageModel`` protocol and its batched implementation for Hugging Face models.

Evaluation only ever talks to this protocol. A weight-editing method hands back the edited HF
model (wrapped here by :class:`HFLanguageModel`); a memory or in-context method hands back its
own object with the same three calls, so evaluation never asks which method ran.

All scoring is batched: many (prompt, target) pairs go through one left-padded forward pass, with
explicit position ids, and only the logits that predict target tokens are computed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from kedit.model.arch import text_config
from kedit.model.tokens import Batch, PromptTarget, encode, encode_prompt_target, pad, pad_id


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced scores of one target after one prompt.

    ``logprobs[i]`` is log P(target token i | prompt, target tokens < i); ``argmax_ids[i]`` is
    the model's top-1 token at that position.
    """

    target_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    argmax_ids: tuple[int, ...]

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs)

    @property
    def prob(self) -> float:
        """Length-normalised probability exp(mean log p), the convention of ROME/CounterFact."""
        return math.exp(self.mean_logprob)

    @property
    def token_accuracy(self) -> float:
        """Share of target tokens that are the top-1 prediction under teacher forcing."""
        hits = sum(a == t for a, t in zip(self.argmax_ids, self.target_ids))
        return hits / len(self.target_ids)


@runtime_checkable
class LanguageModel(Protocol):
    """What evaluation needs from a (possibly edited) model."""

    tokenizer: PreTrainedTokenizerBase

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        """Teacher-forced log-probabilities of each target after its prompt."""
        ...

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int],
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
    ) -> list[str]:
        """Greedy continuations (text only, without the prompt), or seeded top-k samples;
        ``stop_at_eos=False`` goes on past the end-of-sequence token (ROME's fluency texts)."""
        ...

    def next_token_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        """Log-probabilities of the next token after each prompt, ``(n_prompts, vocab)``."""
        ...


@runtime_checkable
class RoutingModel(Protocol):
    """A model whose edits live in an added part that fires on some inputs only (GRACE's
    codebook, MELO's rank blocks, WISE's side memory, T-Patcher's neurons). The audit asks it,
    for each probe, whether the added part fired, so that a locality failure says why."""

    def routed(self, prompts: Sequence[str]) -> list[bool]:
        """Whether an added part fired at each prompt's last token (where the answer starts)."""
        ...


@runtime_checkable
class TracingModel(Protocol):
    """A model that answers through steps of its own (MeLLo's subquestions and retrieved facts,
    DeepEdit's search, SERAC's scope classifier): for each prompt it was asked, a record of
    why the answer came out as it did, which the evaluation keeps in the case's details. Where
    they apply, the keys ``answered_by``, ``answer_from`` and ``stopped`` sum it up (what the
    report counts: ``kedit.formatting.TRACE_OUTCOME_KEYS``)."""

    def trace(self, prompt: str) -> dict[str, Any] | None:
        """The JSON-safe record of how ``prompt`` was answered; None if it was not asked."""
        ...


def hf_module(model: Any) -> nn.Module:
    """The Hugging Face model inside ``model`` (itself, or the model a wrapper wraps)."""
    while not isinstance(model, nn.Module):
        inner = getattr(model, "hf_model", None)
        if inner is None:
            raise TypeError(
                f"{type(model).__name__} is neither a torch model nor a wrapper exposing .hf_model"
            )
        model = inner
    return model


def model_device(model: Any) -> torch.device:
    """The device of ``model``'s weights (of the model inside a wrapper)."""
    return next(hf_module(model).parameters()).device


def cache_argument(model: nn.Module) -> str:
    """Name of the forward argument that takes a KV cache (``cache`` from transformers 5.24,
    ``past_key_values`` before)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def select_logits(
    model: nn.Module, inputs: dict[str, Any], positions: int | Sequence[int]
) -> torch.Tensor:
    """Logits at some positions only: the last ``positions`` ones (an int), or the given
    columns (shared by all rows). Returns ``(batch, n_positions, vocab)``.

    The unembedding then costs only the positions kept, where the model supports
    ``logits_to_keep``; its input is made contiguous first, since a strided slice sends
    ``F.linear`` down a batched-matmul path that is several times slower on CPU.
    """
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    keep: int | torch.Tensor = (
        positions
        if isinstance(positions, int)
        else torch.tensor(list(positions), device=inputs["input_ids"].device)
    )
    try:
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            return model(**inputs, logits_to_keep=keep).logits
        logits = model(**inputs).logits
    finally:
        handle.remove()
    return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep]


def position_logits(
    model: nn.Module, inputs: dict[str, Any], rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Logits at the positions ``(rows[i], cols[i])`` only, ``(positions, vocab)``: the hidden
    states are picked before the output head, so only those positions are unembedded (rows may
    want different columns)."""

    def pick(_: nn.Module, args: tuple) -> tuple:
        return (args[0][rows, cols][None].contiguous(), *args[1:])  # (1, positions, d_model)

    handle = model.get_output_embeddings().register_forward_pre_hook(pick)
    try:
        return model(**inputs).logits[0]
    finally:
        handle.remove()


def last_logits(model: nn.Module, batch: Batch, keep: int) -> torch.Tensor:
    """Logits at the last ``keep`` positions of a left-padded batch, ``(batch, keep, vocab)``."""
    return select_logits(model, {**batch.model_inputs(), "use_cache": False}, keep)


class HFLanguageModel:
    """:class:`LanguageModel` over a Hugging Face causal LM, batched by token budget.

    Args:
        model: the causal LM (edited in place by weight-editing methods).
        tok: its tokenizer; its ``padding_side`` is ignored.
        max_batch_tokens: padded tokens per forward pass (default: 4096 on CPU, 32768 on GPU).
    """

    def __init__(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tok
        device = model_device(model)
        self.max_batch_tokens = max_batch_tokens or (32768 if device.type == "cuda" else 4096)
        self._pad = pad_id(tok)
        config = text_config(model)
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )

    # -- batching ---------------------------------------------------------------------------

    def _batches(self, lengths: Sequence[int], budget: int | None = None) -> Iterator[list[int]]:
        """Indices grouped into batches of similar length within ``budget`` padded tokens
        (default ``max_batch_tokens``); a longer row is a batch of its own."""
        budget = budget or self.max_batch_tokens
        longest = max(lengths, default=0)
        if self.max_length is not None and longest > self.max_length:
            raise ValueError(
                f"an input of {longest} tokens exceeds the model's context of {self.max_length} "
                "tokens; shorten the prompts (or, for in-context methods, use fewer "
                "demonstrations)"
            )
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batch: list[int] = []
        for i in order:
            width = lengths[batch[0]] if batch else lengths[i]
            if batch and (len(batch) + 1) * width > budget:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    def _scoring_budget(self, lengths: Sequence[int]) -> int:
        """Padded tokens per scoring pass over rows of these ``lengths``; a view whose passes
        hold less per token (:class:`~kedit.model.prefix.PrefixCachedLM`) overrides it."""
        return self.max_batch_tokens

    def _last_logits(self, batch: Batch, keep: int) -> torch.Tensor:
        """Log-softmax of the logits at the last ``keep`` positions, ``(batch, keep, vocab)``."""
        logits = last_logits(self.model, batch.to(model_device(self.model)), keep)
        return torch.log_softmax(logits.float(), dim=-1)

    def _target_logits(self, batch: Batch, keep: int, rows: Sequence[PromptTarget]) -> torch.Tensor:
        """:meth:`_last_logits` of a batch of prompt-target ``rows``; a view that must know
        where each row's prompt ends (GRACE's) overrides it."""
        return self._last_logits(batch, keep)

    def _generation_inputs(self, batch: Batch, n_new: int) -> dict[str, Any]:
        """``generate``'s inputs for a left-padded batch that will grow by ``n_new`` tokens; a
        view that continues a cached prefix (:class:`~kedit.model.prefix.PrefixCachedLM`)
        overrides it."""
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}

    # -- protocol ---------------------------------------------------------------------------

    @torch.no_grad()
    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list[TargetScore]:
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        pairs = [encode_prompt_target(self.tokenizer, p, t) for p, t in zip(prompts, targets)]
        results: list[TargetScore | None] = [None] * len(pairs)
        lengths = [len(p.ids) for p in pairs]
        for idx in self._batches(lengths, self._scoring_budget(lengths)):
            rows = [pairs[i] for i in idx]
            batch = pad([r.ids for r in rows], self._pad, left=True)
            keep = max(len(r.target_ids) for r in rows) + 1
            logprobs = self._target_logits(batch, keep, rows).cpu()  # (batch, keep, vocab)
            for row, (i, pair) in enumerate(zip(idx, rows)):
                n = len(pair.target_ids)
                # position -1 is the last target token (predicts nothing we score); the n
                # positions before it predict the n target tokens
                steps = logprobs[row, keep - 1 - n : keep - 1]  # (n, vocab)
                target = torch.tensor(pair.target_ids)
                results[i] = TargetScore(
                    target_ids=tuple(pair.target_ids),
                    logprobs=tuple(steps.gather(1, target[:, None])[:, 0].tolist()),
                    argmax_ids=tuple(steps.argmax(-1).tolist()),
                )
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[str]) -> torch.Tensor:
        encoded = [encode(self.tokenizer, p).ids for p in prompts]
        rows: dict[int, torch.Tensor] = {}
        lengths = [len(e) for e in encoded]
        for idx in self._batches(lengths, self._scoring_budget(lengths)):
            batch = pad([encoded[i] for i in idx], self._pad, left=True)
            last = self._last_logits(batch, 1)[:, 0].cpu()  # (batch, vocab)
            rows.update({i: last[r] for r, i in enumerate(idx)})
        if not rows:
            return torch.empty(0, 0)
        return torch.stack([rows[i] for i in range(len(prompts))])

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int | Sequence[int],
        top_k: int | None = None,
        seed: int | None = None,
        stop_at_eos: bool = True,
        until: Callable[[str], int | None] | None = None,
    ) -> list[str]:
        """Greedy continuations, or top-k samples when ``top_k`` is set (seeded, and isolated
        from the global random state); special tokens are left out of the text.

        ``until``, given a row's text so far, returns where it ends (a position) or None: a row
        stops at the first token after which it gives a position, and its text is that of its
        tokens up to there (the caller cuts it at the position). One generation with a stop
        test replaces generating in chunks and looking between them, which re-encodes the whole
        prompt for every chunk."""
        limits = (
            [max_new_tokens] * len(prompts)
            if isinstance(max_new_tokens, int)
            else list(max_new_tokens)
        )
        encoded = [encode(self.tokenizer, p).ids for p in prompts]
        texts: list[str] = [""] * len(prompts)
        device = model_device(self.model)
        for idx in self._batches([len(e) + limits[i] for i, e in enumerate(encoded)]):
            batch = pad([encoded[i] for i in idx], self._pad, left=True).to(device)
            n_new = max(limits[i] for i in idx)
            config = GenerationConfig(
                max_new_tokens=n_new,
                do_sample=top_k is not None,
                top_k=top_k,
                pad_token_id=self._pad,
                # an empty list: no token ends generation (None would fall back to the model's)
                eos_token_id=self.tokenizer.eos_token_id if stop_at_eos else [],
            )
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if seed is not None:
                    torch.manual_seed(seed)
                inputs = self._generation_inputs(batch, n_new)
                start = inputs["input_ids"].shape[1]
                ends = TextEnds(self.tokenizer, start, until) if until is not None else None
                out = self.model.generate(
                    **inputs,
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([ends] if ends else []),
                )
            new_tokens = out[:, start:].cpu()
            ended = ends.lengths if ends else {}
            for row, i in enumerate(idx):
                tokens = new_tokens[row, : min(limits[i], ended.get(row, n_new))].tolist()
                texts[i] = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return texts


class TextEnds(StoppingCriteria):
    """Ends each row of a generation once ``until`` finds an end in the text it has generated
    (tokens from ``start`` on): stop tests on text, which no token-level rule can express (a
    line that starts with ``Final answer:`` and has ended). ``lengths[row]`` is how many tokens
    the row had when it ended; what follows is padding or, without an end-of-sequence rule,
    text generated while other rows went on."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, start: int, until: Callable[[str], int | None]
    ) -> None:
        self.tokenizer = tokenizer
        self.start = start
        self.until = until
        self.lengths: dict[int, int] = {}

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        new = input_ids[:, self.start :]  # (rows, generated)
        open_rows = [row for row in range(new.shape[0]) if row not in self.lengths]
        texts = self.tokenizer.batch_decode(new[open_rows], skip_special_tokens=True)
        for row, text in zip(open_rows, texts):
            if self.until(text) is not None:
                self.lengths[row] = new.shape[1]
        ended = [row in self.lengths for row in range(new.shape[0])]
        return torch.tensor(ended, dtype=torch.bool, device=input_ids.device)  # (rows,)


def as_language_model(model: object, tok: PreTrainedTokenizerBase) -> LanguageModel:
    """``model`` itself if it already speaks the protocol, else an :class:`HFLanguageModel`."""
    if isinstance(model, nn.Module):
        return HFLanguageModel(model, tok)
    if isinstance(model, LanguageModel):
        return model
    raise TypeError(f"cannot evaluate a {type(model).__name__}: not a model or LanguageModel")
