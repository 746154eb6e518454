"""Tokenisation that is right for every tokenizer convention.

Scoring ``P(target | prompt)`` tokenises ``prompt + " " + target`` as one string, the way the
text would appear, and splits it by character offsets: tokens that start at or after the end of
the prompt belong to the target. This handles BOS tokens, GPT-2's leading-space tokens and
SentencePiece's ``▁`` alike. Batches are padded here, on the side kedit chooses, with explicit
position ids; the tokenizer's ``padding_side`` never matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    """Token ids with character offsets (``None`` offsets for slow tokenizers)."""

    ids: list[int]
    offsets: list[tuple[int, int]] | None


def encode(tok: PreTrainedTokenizerBase, text: str) -> Encoded:
    """Tokenise ``text`` with the tokenizer's own special-token convention (a leading BOS is
    kept, a trailing EOS some tokenizers append is dropped)."""
    if tok.is_fast:
        enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
        while ids and special[-1]:
            ids, offsets, special = ids[:-1], offsets[:-1], special[:-1]
        return Encoded(list(ids), [tuple(o) for o in offsets])
    enc = tok(text, return_special_tokens_mask=True)
    ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    while ids and special[-1]:
        ids, special = ids[:-1], special[:-1]
    return Encoded(ids, None)


def join_target(prompt: str, target: str) -> str:
    """The text ``prompt`` followed by ``target``, with one space between unless either side
    already has whitespace at the join."""
    if not prompt or prompt[-1].isspace() or target[:1].isspace():
        return prompt + target
    return prompt + " " + target


@dataclass(frozen=True)
class PromptTarget:
    """``ids = prompt tokens + target tokens``; the target starts at ``n_prompt``."""

    ids: list[int]
    n_prompt: int

    @property
    def target_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]

    @property
    def prompt_ids(self) -> list[int]:
        return self.ids[: self.n_prompt]


def encode_prompt_target(tok: PreTrainedTokenizerBase, prompt: str, target: str) -> PromptTarget:
    """Tokenise prompt and target together and find where the target starts."""
    if not target.strip():
        raise ValueError(f"target for prompt {prompt!r} is empty")
    full = join_target(prompt, target)
    enc = encode(tok, full)
    if enc.offsets is not None:
        # a leading special token has offsets (0, 0); a token straddling the join belongs to
        # the target
        n_prompt = next(
            (i for i, (_, end) in enumerate(enc.offsets) if end > len(prompt)), len(enc.offsets)
        )
    else:
        prompt_ids = encode(tok, prompt).ids
        n_prompt = len(prompt_ids) if enc.ids[: len(prompt_ids)] == prompt_ids else 0
        if n_prompt == 0:
            tail = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
            enc = Encoded(prompt_ids + list(tail), None)
            n_prompt = len(prompt_ids)
    if n_prompt == 0:
        raise ValueError(f"prompt {prompt!r} produced no tokens of its own")
    if n_prompt >= len(enc.ids):
        raise ValueError(f"target {target!r} produced no tokens after prompt {prompt!r}")
    return PromptTarget(enc.ids, n_prompt)


def token_index_of_span(tok: PreTrainedTokenizerBase, text: str, span: tuple[int, int]) -> int:
    """Index of the last token of ``text`` overlapping the character ``span`` (e.g. the
    subject's last token, ROME's ``subject_last`` lookup)."""
    start, end = span
    enc = encode(tok, text)
    if enc.offsets is None:
        # slow tokenizer: cumulative tokenisation of the text up to the span's end
        return len(encode(tok, text[:end]).ids) - 1
    last = None
    for i, (s, e) in enumerate(enc.offsets):
        if s < end and e > start and e > s:
            last = i
    if last is None:
        raise ValueError(
            f"no token of {text!r} covers characters {start}:{end} ({text[start:end]!r})"
        )
    return last


def pad_id(tok: PreTrainedTokenizerBase) -> int:
    for candidate in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@dataclass
class Batch:
    """A padded batch with explicit positions. ``lengths`` are the unpadded lengths."""

    input_ids: torch.Tensor  # (batch, seq)
    attention_mask: torch.Tensor  # (batch, seq)
    position_ids: torch.Tensor  # (batch, seq)
    lengths: list[int]
    left: bool

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.lengths,
            self.left,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }

    def column(self, row: int, index: int) -> int:
        """Padded column of token ``index`` (0-based, negative from the end) of ``row``."""
        n = self.lengths[row]
        index = index + n if index < 0 else index
        if not 0 <= index < n:
            raise IndexError(f"token {index} out of range for a row of {n} tokens")
        return index + (self.input_ids.shape[1] - n if self.left else 0)


def pad(seqs: Sequence[Sequence[int]], pad_token: int, left: bool) -> Batch:
    """Pad token id lists into one batch, on the left or the right."""
    if not seqs:
        raise ValueError("cannot pad an empty list of sequences")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, [len(s) for s in seqs], left)
