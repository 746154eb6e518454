"""Keys and values at the subject's last token: what a module reads and writes there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._suffix import HandOn, block_index
from kedit.methods._templates import fill, flatten, template_head
from kedit.model.cached_pass import SharedHeads
from kedit.model.hooks import Trace, run_until_stopped
from kedit.model.lm import model_device
from kedit.model.tokens import encode, pad, pad_id, token_index_of_span
from kedit.types import EditRequest


class SubjectPasses:
    """Passes over fixed texts that read one module at each text's subject's last token.

    Each text runs up to that token only (what follows cannot change it), in passes of
    ``rows_per_pass`` texts of similar length. ``heads`` (optional) gives the tokens each text
    may start with (its context template's): where it does, the head's keys and values are
    computed once per read for all texts that share it (:class:`SharedHeads`), and only the
    rest runs per text. With ``first`` > 0 the caller promises that the blocks below ``first``
    do not change between reads (MEMIT writes its layers lowest first, re-reading keys after
    each): the first read records block ``first``'s input, later reads run from that block on
    (:class:`~kedit.methods._suffix.HandOn`).
    """

    def __init__(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        texts: Sequence[tuple[str, tuple[int, int]]],
        first: int = 0,
        heads: Sequence[Sequence[int]] | None = None,
        rows_per_pass: int = 256,
    ) -> None:
        self.model, self.n, self.pad = model, len(texts), pad_id(tok)
        self.device = model_device(model)
        lookup = [token_index_of_span(tok, text, span) for text, span in texts]
        ids = [encode(tok, text).ids[: at + 1] for (text, _), at in zip(texts, lookup)]
        self.heads = [  # a head is kept where the text starts with it and goes on after it
            list(h) if 0 < len(h) < len(i) and i[: len(h)] == list(h) else []
            for h, i in zip(heads or [[]] * len(ids), ids)
        ]
        probe = next((h for h in self.heads if h), None)
        if probe and not SharedHeads(model, [probe], self.pad, self.device).plain:
            self.heads = [[] for _ in ids]  # sliding windows: every text from its start
        rests = [i[len(h) :] for h, i in zip(self.heads, ids)]
        order = sorted(range(len(ids)), key=lambda r: len(rests[r]))
        self.chunks = []  # (text indices, the rests' batch, last column of each row)
        for start in range(0, len(order), rows_per_pass):
            chunk = order[start : start + rows_per_pass]
            batch = pad([rests[r] for r in chunk], self.pad, left=False).to(self.device)
            cols = torch.tensor([len(rests[r]) - 1 for r in chunk], device=self.device)
            self.chunks.append((torch.tensor(chunk, device=self.device), batch, cols))
        self.hand_on = HandOn(model, first)
        self.recorded: list[torch.Tensor | None] = [None] * len(self.chunks)

    @torch.no_grad()
    def read(
        self, module_path: str, inputs: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The module's input ``(n, d_in)`` (None without ``inputs``) and output ``(n, d_out)``
        at each text's subject's last token, float32, in the texts' order."""
        if self.hand_on.enabled and block_index(self.model, module_path) < self.hand_on.first:
            raise ValueError(f"{module_path} lies below block {self.hand_on.first}")
        keys: torch.Tensor | None = None
        values: torch.Tensor | None = None
        # the heads' keys and values with the weights as they are now
        shared = SharedHeads(self.model, self.heads, self.pad, self.device)
        for k, (where, _, _) in enumerate(self.chunks):
            keys_k, values_k = self._read_chunk(k, module_path, inputs, shared)
            if values is None:
                values = values_k.new_zeros(self.n, values_k.shape[-1])
            values[where] = values_k
            if keys_k is not None:
                keys = keys_k.new_zeros(self.n, keys_k.shape[-1]) if keys is None else keys
                keys[where] = keys_k
        return (None if keys is None else keys.float()), values.float()

    def _read_chunk(
        self, k: int, module_path: str, inputs: bool, shared: SharedHeads
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        where, batch, cols = self.chunks[k]
        rows = torch.arange(len(where), device=where.device)
        trace = Trace(self.model, module_path, retain_input=inputs, retain_output=True, stop=True)

        def run() -> torch.Tensor:  # the module's output at the read tokens
            forward = shared.continuing(where, batch)  # a fresh cache each run
            with trace:
                run_until_stopped(self.model, **forward, use_cache=shared.cache is not None)
            return trace.output[rows, cols]

        values, self.recorded[k] = self.hand_on.run(run, self.recorded[k])
        return (trace.input[rows, cols] if inputs else None), values


def subject_io(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[tuple[str, tuple[int, int]]],
    module_path: str,
    inputs: bool = True,
    rows_per_pass: int = 256,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Input and output of ``module_path`` at the subject's last token of each text.

    ``texts`` are (text, subject character span) pairs. Returns ``(n, d_in)`` (None when
    ``inputs`` is False, e.g. for a whole block) and ``(n, d_out)`` float32 tensors, from
    batched passes that stop right after the module (:class:`SubjectPasses`).
    """
    return SubjectPasses(model, tok, texts, rows_per_pass=rows_per_pass).read(module_path, inputs)


def template_passes(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    template_groups: Sequence[Sequence[str]],
    first: int = 0,
) -> SubjectPasses:
    """Passes over every request's prompt in every context template, request by request,
    each template's own tokens computed once (see :class:`SubjectPasses` for ``first``)."""
    flat = flatten(template_groups)
    heads = [template_head(tok, t) for t in flat]
    texts = [fill(t, r) for r in requests for t in flat]
    return SubjectPasses(model, tok, texts, first, heads * len(requests))


def mean_keys(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    template_groups: Sequence[Sequence[str]],
    module_path: str,
    per_group: bool = False,
    passes: SubjectPasses | None = None,
) -> torch.Tensor:
    """The module input at each request's subject's last token, averaged over context
    templates: ``(n_requests, d_in)``, from one batched computation (``passes``: the
    :func:`template_passes` of the same requests and templates, kept across reads).

    ``per_group=False`` averages all templates uniformly (ROME); ``per_group=True`` averages
    within each group, then across groups (MEMIT), so the bare prompt weighs as much as all
    sampled prefixes of one length together.
    """
    passes = passes or template_passes(model, tok, requests, template_groups)
    keys, _ = passes.read(module_path)
    keys = keys.view(len(requests), -1, keys.shape[-1])  # (requests, templates, d_in)
    if not per_group:
        return keys.mean(1)
    means, start = [], 0
    for group in template_groups:
        means.append(keys[:, start : start + len(group)].mean(1))
        start += len(group)
    return torch.stack(means).mean(0)
