"""Prompts that all start with one fixed text, whose keys and values are computed once.

In-context editing (IKE) answers every query after the same context of about 2,000 tokens. A
forward pass over ``context + query`` computes the context's keys and values again for every
row, although causal attention makes them independent of what follows: scoring a few hundred
general-ability examples behind the context then costs hundreds of full-context passes.
:class:`PrefixCachedLM` computes them once (lazily, on first use) and runs only what follows
against a per-pass view of that cache. ROME's v* search (``methods/_value.py``) uses the same
pieces for its context templates.

Exactness: results equal what the same :class:`HFLanguageModel` gives for the full strings, up
to float noise.

* Tokens. Each full string is tokenised as the uncached path does. A tokenizer does not split
  ``"...\\n\\n"`` at the end of a text as it splits ``"...\\n\\nNew Fact"`` (byte-level BPE
  groups whitespace runs by what follows), so the cached tokens are those of the prefix that
  its continuations share (:func:`shared_prefix_ids`), and a row whose tokens do not start with
  them, or whose scored positions reach into them, takes the uncached path.
* Padding. Continuations are padded on the right, so each row's tokens stay contiguous after
  the prefix, with positions going on from it: sliding-window attention measures distance in
  cache slots, and a pad between prefix and continuation would shift its window.
* Weights. The cache belongs to the weights it was computed with. A fingerprint of every
  parameter and buffer (identity, storage, and the version torch bumps on each in-place change)
  is compared before each use, and any change recomputes the cache.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from kedit.model.arch import text_config
from kedit.model.lm import HFLanguageModel, cache_argument, model_device, select_logits
from kedit.model.tokens import Batch, PromptTarget, encode, pad

#: texts appended to the prefix to find the tokens it shares with any continuation: a letter,
#: a word after a space, a line break, a digit and punctuation end whitespace runs differently
PROBES = ("x", " x", "\nx", "0", ".")

#: cache layers whose ``update`` concatenates into new tensors and never writes in place, so a
#: pass may run against views of the prefix's own tensors
APPENDING_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


def prefix_cache(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    """The KV cache of one forward pass over ``inputs`` (no gradients): what later passes of
    continuations attend to instead of recomputing it. Its logits are not wanted, so only the
    last position's are computed where the model allows (all of a 2,000-token prefix's would
    take 400 MB on SmolLM2)."""
    kwargs: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    with torch.no_grad():
        out = model(**inputs, **kwargs)
    return out["cache"] if "cache" in out else out["past_key_values"]


def cache_copy(cache: Any, rows: int) -> Any:
    """A cache for one forward pass of ``rows`` rows, leaving ``cache`` as it is.

    A forward pass appends its own keys and values to the cache it gets, so every pass needs a
    copy. For caches whose layers only append (``DynamicCache``'s), the copy shares the
    prefix's tensors as views expanded to ``rows`` (no memory until the pass concatenates);
    any other cache is deep-copied and repeated along the batch.
    """
    layers = getattr(cache, "layers", None)
    if type(cache) is not DynamicCache or any(type(x) not in APPENDING_LAYERS for x in layers):
        out = copy.deepcopy(cache)
        width = next((x.keys.shape[0] for x in out.layers if x.get_seq_length() > 0), rows)
        if width != rows:
            out.batch_repeat_interleave(rows // width)
        return out
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in layers]
    for layer in out.layers:
        if layer.is_initialized and layer.keys.numel():
            layer.keys = layer.keys.expand(rows, -1, -1, -1)  # (rows, heads, prefix, head_dim)
            layer.values = layer.values.expand(rows, -1, -1, -1)
    return out


def continuation_inputs(
    prefix_mask: torch.Tensor, suffixes: Sequence[Sequence[int]], pad_token: int
) -> dict[str, torch.Tensor]:
    """Inputs of a forward pass continuing a cached prefix (without the cache itself).

    ``prefix_mask`` is the prefix's attention mask, ``(rows, prefix)``. The suffixes are padded
    on the right, so each row's tokens follow its prefix without a gap; their positions go on
    from the row's real prefix length.
    """
    suffix = pad(suffixes, pad_token, left=False)
    offsets = prefix_mask.sum(-1, keepdim=True)  # (rows, 1): real prefix lengths
    return {
        "input_ids": suffix.input_ids,
        "attention_mask": torch.cat([prefix_mask, suffix.attention_mask], -1),
        "position_ids": offsets + torch.arange(suffix.input_ids.shape[1]),  # (rows, suffix)
    }


def cache_kwargs(model: nn.Module, cache: Any, rows: int) -> dict[str, Any]:
    """Forward (or ``generate``) keyword arguments passing a fresh copy of ``cache``."""
    return {cache_argument(model): cache_copy(cache, rows), "use_cache": True}


def shared_prefix_ids(
    tok: PreTrainedTokenizerBase, prefix: str, probes: Sequence[str] = PROBES
) -> list[int]:
    """The tokens that start both ``prefix`` alone and ``prefix`` followed by each of ``probes``:
    those its continuations will (almost always) share. A BOS token is kept; with no probes,
    all of the prefix's own tokens."""
    ids = encode(tok, prefix).ids
    for probe in probes:
        probed = encode(tok, prefix + probe).ids
        ids = [a for a, _ in itertools.takewhile(lambda pair: pair[0] == pair[1], zip(ids, probed))]
    return ids


def cached_rows_scale(config: Any, length: int) -> float:
    """How many tokens of cached rows fit in the memory of one token of a full pass, for rows of
    ``length`` tokens: the rule that scales a token budget for passes against a cache.

    A full pass holds, one layer at a time, about ``4 x hidden + 3 x intermediate`` activations
    and (eager or math attention) ``heads x length`` attention scores per token. A pass against
    a cache holds every row's keys and values, prefix included, for all layers at once:
    ``2 x layers x kv_heads x head_dim`` numbers per token. SmolLM2-135M, rows of 2,080 tokens:
    (2,304 + 4,608 + 18,720) / 11,520 = 2.2, so 4 cached rows where the budget of 4,096 tokens
    allows one full row (measured on CPU: about 260 MB against 570 MB at its peak).
    """
    hidden, heads = config.hidden_size, config.num_attention_heads
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    activations = 4 * hidden + 3 * (inner or 4 * hidden) + heads * length
    return activations / (2 * config.num_hidden_layers * kv_heads * head_dim)


def weights_fingerprint(model: nn.Module) -> tuple[tuple[int, int, int], ...]:
    """Identity, storage address and in-place version of every parameter and buffer: it
    changes when a weight is edited in place, replaced, or moved."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


class PrefixCachedLM(HFLanguageModel):
    """The :class:`HFLanguageModel` ``base``, for prompts that start with ``prefix``: the
    prefix's keys and values are computed once and every pass runs only what follows it.

    Any prompt may be given, and every result (``score_targets``, ``next_token_logprobs``,
    ``generate``) equals ``base``'s for the same strings up to float noise; prompts that do not
    start with the cached tokens simply run whole.

    Memory: a pass against the cache holds every row's keys and values, prefix included, for
    all layers, so its rows are bounded by their full length: rows x (prefix + longest
    continuation) <= ``max_batch_tokens`` x :func:`cached_rows_scale` (the memory of a cached
    token against that of a token of a full pass; about 2 on SmolLM2), and at least one row.
    Rows that run whole are batched within ``max_batch_tokens`` itself.

    ``generate`` runs a batch against the cache when every row in it starts with the cached
    tokens and no sliding attention window is shorter than the batch's sequences (generation
    pads continuations on the left, which would shift such a window); any other batch runs
    whole. The batches and seeds are ``base``'s either way, so sampled texts match too.

    Args:
        base: the model and tokenizer, and its token budget. A view that overrides
            :meth:`HFLanguageModel._target_logits` (GRACE's) is not honoured: use a plain one.
        prefix: the text the prompts start with (IKE's context).
        probes: texts that decide which of the prefix's tokens are cached
            (:func:`shared_prefix_ids`); ``()`` caches all of its own tokens.
    """

    def __init__(self, base: HFLanguageModel, prefix: str, probes: Sequence[str] = PROBES) -> None:
        super().__init__(base.model, base.tokenizer, base.max_batch_tokens)
        self.prefix = prefix
        self.probes = tuple(probes)
        self._prefix_ids: torch.Tensor | None = None  # (prefix_tokens,)
        self._cache: Any = None
        self._fingerprint: tuple | None = None

    # -- the cache ---------------------------------------------------------------------------

    @property
    def prefix_ids(self) -> torch.Tensor:
        """The cached tokens, ``(prefix_tokens,)`` (see :func:`shared_prefix_ids`)."""
        if self._prefix_ids is None:
            ids = shared_prefix_ids(self.tokenizer, self.prefix, self.probes)
            self._prefix_ids = torch.tensor(ids, dtype=torch.long)
        return self._prefix_ids

    def release(self) -> None:
        """Drop the cache (computed again if used again): an object that is kept but no longer
        queried, like an earlier edit's in a session, need not hold its memory."""
        self._cache = self._fingerprint = None

    def prefix_kv(self) -> Any:
        """The prefix's cache for the model's current weights (computed if missing or stale)."""
        fingerprint = weights_fingerprint(self.model)
        if self._cache is None or fingerprint != self._fingerprint:
            self._cache = None  # free the stale one before computing the new one
            ids = self.prefix_ids[None].to(model_device(self.model))  # (1, prefix)
            inputs = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "position_ids": torch.arange(ids.shape[1], device=ids.device)[None],
            }
            self._cache = prefix_cache(self.model, inputs)
            self._fingerprint = fingerprint
        return self._cache

    def _starts_with_prefix(self, batch: Batch, needed: Sequence[int]) -> list[bool]:
        """Per row of a left-padded batch: its tokens start with the cached ones and go on for
        at least ``needed[row]`` more."""
        n = len(self.prefix_ids)
        if n == 0:
            return [False] * len(batch.lengths)
        width = batch.input_ids.shape[1]
        prefix = self.prefix_ids.to(batch.input_ids.device)
        return [
            length - n >= need
            and torch.equal(batch.input_ids[row, width - length : width - length + n], prefix)
            for row, (length, need) in enumerate(zip(batch.lengths, needed))
        ]

    @staticmethod
    def _tokens(batch: Batch, rows: Sequence[int], skip: int = 0) -> list[list[int]]:
        """The tokens of the given rows of a left-padded batch, without their first ``skip``."""
        width = batch.input_ids.shape[1]
        return [batch.input_ids[r, width - batch.lengths[r] + skip :].tolist() for r in rows]

    # -- HFLanguageModel hooks ---------------------------------------------------------------

    def _scoring_budget(self, lengths: Sequence[int]) -> int:
        scale = cached_rows_scale(text_config(self.model), max(lengths, default=1))
        return max(1, int(self.max_batch_tokens * scale))

    def _last_logits(self, batch: Batch, keep: int) -> torch.Tensor:
        return self._logprobs(batch, keep, [keep] * len(batch.lengths))

    def _target_logits(self, batch: Batch, keep: int, rows: Sequence[PromptTarget]) -> torch.Tensor:
        # a row needs its target's positions and the last prompt token's, not all ``keep``
        return self._logprobs(batch, keep, [len(r.target_ids) + 1 for r in rows])

    def _logprobs(self, batch: Batch, keep: int, needed: Sequence[int]) -> torch.Tensor:
        """Log-softmax at the last ``keep`` positions of each row, ``(batch, keep, vocab)``.

        Rows that start with the cached tokens and go on for at least the ``needed`` positions
        they are read at run against the cache (their positions further left, inside the
        prefix, are NaN); the others run whole, as in :class:`HFLanguageModel`.
        """
        hits = self._starts_with_prefix(batch, needed)
        cached = [r for r, hit in enumerate(hits) if hit]
        rest = [r for r, hit in enumerate(hits) if not hit]
        parts: list[tuple[list[int], torch.Tensor]] = []  # rows, their (rows, keep, vocab)
        if cached:
            suffixes = self._tokens(batch, cached, len(self.prefix_ids))
            parts.append((cached, self._continuation_logprobs(suffixes, keep)))
        whole = self._tokens(batch, rest)
        for idx in self._batches([len(w) for w in whole]):  # within ``max_batch_tokens``
            rows = pad([whole[i] for i in idx], self._pad, left=True)
            parts.append(([rest[i] for i in idx], super()._last_logits(rows, keep)))
        if len(parts) == 1 and parts[0][0] == list(range(len(hits))):
            return parts[0][1]
        order = torch.tensor([r for rows, _ in parts for r in rows]).argsort()
        return torch.cat([logprobs for _, logprobs in parts])[order.to(parts[0][1].device)]

    def _continuation_logprobs(self, suffixes: list[list[int]], keep: int) -> torch.Tensor:
        """Log-softmax at the last ``keep`` positions of each continuation run after the cached
        prefix, ``(rows, keep, vocab)``; NaN where a continuation is shorter than ``keep``."""
        device = model_device(self.model)
        rows, n = len(suffixes), len(self.prefix_ids)
        inputs = continuation_inputs(torch.ones(rows, n, dtype=torch.long), suffixes, self._pad)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        # right-padded rows end at different columns: the logits of the union of those wanted
        wanted = torch.tensor([[len(s) - keep + k for k in range(keep)] for s in suffixes])
        columns = sorted(set(wanted.clamp(min=0).flatten().tolist()))
        where = torch.zeros(max(columns) + 1, dtype=torch.long)
        where[columns] = torch.arange(len(columns))
        kwargs = cache_kwargs(self.model, self.prefix_kv(), rows)
        logits = select_logits(self.model, {**inputs, **kwargs}, columns)  # (rows, cols, vocab)
        index = where[wanted.clamp(min=0)].to(device)  # (rows, keep)
        logprobs = torch.log_softmax(logits[torch.arange(rows)[:, None], index].float(), -1)
        logprobs[(wanted < 0).to(device)] = float("nan")  # positions inside the prefix
        return logprobs  # (rows, keep, vocab)

    def _generation_inputs(self, batch: Batch, n_new: int) -> dict[str, Any]:
        """``[prefix, pads, continuation]`` and a copy of the cache when every row starts with
        the cached prefix and no sliding window binds; else the batch as it is."""
        rows = len(batch.lengths)
        if not all(self._starts_with_prefix(batch, [1] * rows)) or self._window_binds(batch, n_new):
            return super()._generation_inputs(batch, n_new)
        n = len(self.prefix_ids)
        suffix = pad(self._tokens(batch, range(rows), n), self._pad, left=True)
        prefix = self.prefix_ids.expand(rows, -1)  # (rows, prefix)
        device = model_device(self.model)
        return {
            "input_ids": torch.cat([prefix, suffix.input_ids], -1).to(device),
            "attention_mask": torch.cat(
                [torch.ones(rows, n, dtype=torch.long), suffix.attention_mask], -1
            ).to(device),
            cache_argument(self.model): cache_copy(self.prefix_kv(), rows),
        }

    def _window_binds(self, batch: Batch, n_new: int) -> bool:
        """Whether a sliding attention window is shorter than the longest generated sequence."""
        config = text_config(self.model)
        window = getattr(config, "sliding_window", None)
        kinds = getattr(config, "layer_types", None)
        if not window or (kinds is not None and "sliding_attention" not in kinds):
            return False
        return batch.input_ids.shape[1] + n_new >= window
