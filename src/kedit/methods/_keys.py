"""Keys and values at the subject's last token: what a module reads and writes there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._templates import fill, flatten
from kedit.model.hooks import Trace, run_until_stopped
from kedit.model.lm import model_device
from kedit.model.tokens import encode, pad, pad_id, token_index_of_span
from kedit.types import EditRequest


@torch.no_grad()
def subject_io(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    texts: Sequence[tuple[str, tuple[int, int]]],
    module_path: str,
    inputs: bool = True,
    rows_per_pass: int = 64,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Input and output of ``module_path`` at the subject's last token of each text.

    ``texts`` are (text, subject character span) pairs. Returns ``(n, d_in)`` (None when
    ``inputs`` is False, e.g. for a whole block) and ``(n, d_out)`` float32 tensors, from
    batched passes that stop right after the module. Each text runs up to its subject's last
    token only (what follows cannot change it), in passes of texts of similar length.
    """
    lookup = [token_index_of_span(tok, text, span) for text, span in texts]
    ids = [encode(tok, text).ids[: at + 1] for (text, _), at in zip(texts, lookup)]
    order = sorted(range(len(ids)), key=lambda r: len(ids[r]))
    keys = torch.zeros(0)
    values = torch.zeros(0)
    for start in range(0, len(order), rows_per_pass):
        chunk = order[start : start + rows_per_pass]
        batch = pad([ids[r] for r in chunk], pad_id(tok), left=False).to(model_device(model))
        with Trace(model, module_path, retain_input=inputs, retain_output=True, stop=True) as tr:
            run_until_stopped(model, **batch.model_inputs(), use_cache=False)
        rows = torch.arange(len(chunk), device=batch.input_ids.device)
        cols = torch.tensor([len(ids[r]) - 1 for r in chunk], device=rows.device)
        if start == 0:  # (n, d) each, filled in the texts' order
            keys = tr.input.new_zeros(len(ids), tr.input.shape[-1]) if inputs else keys
            values = tr.output.new_zeros(len(ids), tr.output.shape[-1])
        where = torch.tensor(chunk, device=rows.device)
        if inputs:
            keys[where] = tr.input[rows, cols]
        values[where] = tr.output[rows, cols]
    return (keys.float() if inputs else None), values.float()


def mean_keys(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    template_groups: Sequence[Sequence[str]],
    module_path: str,
    per_group: bool = False,
) -> torch.Tensor:
    """The module input at each request's subject's last token, averaged over context
    templates: ``(n_requests, d_in)``, from one batched computation.

    ``per_group=False`` averages all templates uniformly (ROME); ``per_group=True`` averages
    within each group, then across groups (MEMIT), so the bare prompt weighs as much as all
    sampled prefixes of one length together.
    """
    flat = flatten(template_groups)
    texts = [fill(t, r) for r in requests for t in flat]
    keys, _ = subject_io(model, tok, texts, module_path)
    keys = keys.view(len(requests), len(flat), -1)  # (requests, templates, d_in)
    if not per_group:
        return keys.mean(1)
    means, start = [], 0
    for group in template_groups:
        means.append(keys[:, start : start + len(group)].mean(1))
        start += len(group)
    return torch.stack(means).mean(0)
