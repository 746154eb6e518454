"""Teacher-forced target passes, and the keys and output gradients they give linear modules.

Shared by the methods that edit from one forward and backward pass over the edit (UltraEdit,
MEND, KE, MALMEN) and by the meta-learning objectives:

* :func:`target_batch`: ``prompt + target[:-1]`` rows, left-padded, so that a target of ``n``
  tokens is predicted by the last ``n`` positions of its row;
* :func:`target_logits` / :func:`target_nll`: the logits at those positions and the mean
  cross-entropy over every target token of the batch;
* :func:`keys_and_gradients`: at each edited linear module, its input (the key) and the
  gradient of that loss at its output, at the target positions or at every token;
* :func:`weight_gradients`: the same pass's gradient of every edited weight, ``sum_t d_t k_t^T``;
* :func:`linear_paths`: the edited linear modules named as ``{part or path: [layers]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.model.arch import BLOCK_PARTS, arch_of, get_module
from kedit.model.hooks import TraceDict, frozen
from kedit.model.lm import model_device, select_logits
from kedit.model.tokens import Batch, PromptTarget, encode_prompt_target, pad, pad_id

Tokens = Literal["target", "all"]


@dataclass
class TargetBatch:
    """Rows ``prompt + target[:-1]``, left-padded; the last ``keep`` positions predict the
    targets (a target of ``n`` tokens: the last ``n``)."""

    inputs: Batch
    pairs: list[PromptTarget]
    keep: int

    @property
    def width(self) -> int:
        return int(self.inputs.input_ids.shape[1])

    def run_inputs(self) -> dict[str, torch.Tensor]:
        return {**self.inputs.model_inputs(), "use_cache": False}

    def positions(self, tokens: Tokens) -> torch.Tensor:
        """``(rows, width)`` bool: the positions predicting a target token, or every token."""
        if tokens == "all":
            return self.inputs.attention_mask.bool()
        mask = torch.zeros(len(self.pairs), self.width, dtype=torch.bool)
        for i, pair in enumerate(self.pairs):
            mask[i, self.width - len(pair.target_ids) :] = True
        return mask.to(self.inputs.attention_mask.device)


def target_batch(
    tok: PreTrainedTokenizerBase, prompts_targets: Sequence[tuple[str, str]], device: torch.device
) -> TargetBatch:
    """The rows of ``(prompt, target)`` pairs, on ``device``."""
    pairs = [encode_prompt_target(tok, p, t) for p, t in prompts_targets]
    inputs = pad([p.ids[:-1] for p in pairs], pad_id(tok), left=True).to(device)
    return TargetBatch(inputs, pairs, max(len(p.target_ids) for p in pairs))


def target_logits(model: nn.Module, batch: TargetBatch) -> torch.Tensor:
    """``(rows, keep, vocab)`` float32 logits at the positions that predict targets."""
    return select_logits(model, batch.run_inputs(), batch.keep).float()


def target_token_logprobs(logits: torch.Tensor, batch: TargetBatch) -> list[torch.Tensor]:
    """Per row, the log-probabilities of its target tokens, ``(n_i,)``."""
    logprobs = torch.log_softmax(logits, -1)  # (rows, keep, vocab)
    rows = []
    for i, pair in enumerate(batch.pairs):
        n = len(pair.target_ids)
        target = torch.tensor(pair.target_ids, device=logits.device)
        rows.append(logprobs[i, batch.keep - n :].gather(1, target[:, None])[:, 0])
    return rows


def target_nll(
    logits: torch.Tensor, batch: TargetBatch, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Cross-entropy of the target tokens: a mean over all of the batch's target tokens, or
    their sum."""
    logprobs = torch.cat(target_token_logprobs(logits, batch))
    return -(logprobs.sum() if reduction == "sum" else logprobs.mean())


def target_accuracy(logits: torch.Tensor, batch: TargetBatch) -> float:
    """Share of target tokens that are the argmax under teacher forcing."""
    hits, total = 0, 0
    for i, pair in enumerate(batch.pairs):
        n = len(pair.target_ids)
        predicted = logits[i, batch.keep - n :].argmax(-1).tolist()
        hits += sum(int(a == b) for a, b in zip(predicted, pair.target_ids))
        total += n
    return hits / total


def keys_and_gradients(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    prompts_targets: Sequence[tuple[str, str]],
    paths: Sequence[str],
    pass_size: int,
    tokens: Tokens = "target",
    reduction: Literal["mean", "sum"] = "mean",
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each module's inputs and output gradients at the kept positions of every pair,
    ``(tokens, d_in)`` and ``(tokens, d_out)`` in float32, detached. The loss is the
    cross-entropy of a pass's target tokens (``pass_size`` pairs per pass), their mean or (so
    that a token's gradient does not depend on the others in its pass) their sum. Runs with
    gradients enabled whatever the caller's mode, and takes no weight gradient."""
    device = model_device(model)
    keys: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    grads: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    with frozen(model), torch.enable_grad():
        for p in paths:  # module outputs then carry a graph; no weight gradient is taken
            get_module(model, p).weight.requires_grad_(True)
        for start in range(0, len(prompts_targets), pass_size):
            batch = target_batch(tok, prompts_targets[start : start + pass_size], device)
            with TraceDict(
                model, list(paths), retain_input=True, retain_output=True, detach=False
            ) as tr:
                loss = target_nll(target_logits(model, batch), batch, reduction)
                out_grads = torch.autograd.grad(loss, [tr[p].output for p in paths])
            mask = batch.positions(tokens)
            for p, out_grad in zip(paths, out_grads):
                keys[p].append(tr[p].input.detach()[mask].float())
                grads[p].append(out_grad[mask].float())
    return {p: torch.cat(v) for p, v in keys.items()}, {p: torch.cat(v) for p, v in grads.items()}


def weight_gradients(
    keys: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``dL/dW = sum_t d_t k_t^T`` per module, ``(d_out, d_in)``: the weight gradient of the
    pass that gave the keys and gradients (taken at every token)."""
    return {p: grads[p].T @ keys[p] for p in keys}


def linear_paths(model: nn.Module, modules: Mapping[str, Sequence[int]], owner: str) -> list[str]:
    """The paths of ``modules``: a canonical part (``mlp_out``, ``mlp_in`` for both of a gated
    MLP's input projections) or a module path inside a block (``mlp.gate_proj``), mapped to its
    layers (negative counts from the end); each layer checked, each module a 2-D weight."""
    spec = arch_of(model)
    paths = []
    for part, layers in modules.items():
        for layer in layers:
            index = spec.check_layer(model, layer)
            if part in BLOCK_PARTS:
                paths += spec.paths(part, index)
            else:
                paths.append(f"{spec.path('block', index)}.{part}")
    for path in paths:
        weight = getattr(get_module(model, path), "weight", None)
        if weight is None or weight.dim() != 2:
            raise ValueError(f"{owner} edits linear modules; {path} has no 2-D weight")
    return list(dict.fromkeys(paths))
