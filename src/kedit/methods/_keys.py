"""Keys and values at the subject's last token: what a module reads and writes there."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._templates import fill
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of ``module_path`` at the subject's last token of each text.

    ``texts`` are (text, subject character span) pairs. Returns ``(n, d_in)`` and
    ``(n, d_out)`` float32 tensors. One batched pass, stopped right after the module.
    """
    ids = [encode(tok, text).ids for text, _ in texts]
    lookup = [token_index_of_span(tok, text, span) for text, span in texts]
    batch = pad(ids, pad_id(tok), left=False).to(model_device(model))
    with Trace(model, module_path, retain_input=True, retain_output=True, stop=True) as tr:
        run_until_stopped(model, **batch.model_inputs(), use_cache=False)
    rows = torch.arange(len(ids), device=batch.input_ids.device)
    cols = torch.tensor([batch.column(r, i) for r, i in enumerate(lookup)], device=rows.device)
    return tr.input[rows, cols].float(), tr.output[rows, cols].float()


def template_texts(
    request: EditRequest, templates: Sequence[str]
) -> list[tuple[str, tuple[int, int]]]:
    return [fill(t, request) for t in templates]


def mean_key(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    request: EditRequest,
    template_groups: Sequence[Sequence[str]],
    module_path: str,
    per_group: bool = False,
) -> torch.Tensor:
    """The module input at the subject's last token averaged over context templates.

    ``per_group=False`` averages all templates uniformly (ROME); ``per_group=True`` averages
    within each group, then across groups (MEMIT), so the bare prompt weighs as much as all
    sampled prefixes of one length together.
    """
    flat = [t for group in template_groups for t in group]
    keys, _ = subject_io(model, tok, template_texts(request, flat), module_path)  # (n, d_in)
    if not per_group:
        return keys.mean(0)
    means, start = [], 0
    for group in template_groups:
        means.append(keys[start : start + len(group)].mean(0))
        start += len(group)
    return torch.stack(means).mean(0)
