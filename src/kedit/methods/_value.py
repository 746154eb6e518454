"""The target value v*: the vector that, written at the subject's last token, makes the model
say the new target (ROME's compute_v, MEMIT's compute_z).

A delta is added to the output of one module (ROME: the MLP output projection at the edited
layer; MEMIT: the whole block at the last edited layer) at the subject's last token of every
rewriting prompt ``<context template> + prompt + target[:-1]`` and of the KL prompt
``"{subject} is a"`` (:func:`kl_prompt`). Only the delta is optimised (Adam), for

    loss = NLL(target | rewriting prompts) + kl_factor * KL(P_now || P_start on the KL prompt)
           + weight_decay * ||delta|| / ||v_start||^2

with the delta kept in an L2 ball of radius ``clamp_norm_factor * ||v_start||``. Model weights
are frozen (no weight gradients are computed) and only the logits that predict target tokens
are produced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._templates import fill
from kedit.model.arch import get_module, text_config, weight_out_in
from kedit.model.hooks import Trace, frozen
from kedit.model.lm import model_device, select_logits
from kedit.model.prefix import cache_kwargs, continuation_inputs, prefix_cache
from kedit.model.tokens import encode, encode_prompt_target, pad, pad_id, token_index_of_span
from kedit.types import EditRequest

log = logging.getLogger(__name__)

KL_PROMPT = "{} is a"
EARLY_STOP_LOSS = 5e-2


@dataclass(kw_only=True)
class ValueConfig(MethodConfig):
    """Fields of the target-value search and its context templates (defaults: ROME's).

    Args:
        v_num_grad_steps: maximum Adam steps for v*.
        v_lr: learning rate for v*.
        v_weight_decay: weight of ||delta|| / ||v||^2 in the v* loss.
        clamp_norm_factor: v* delta is kept within this multiple of ||v||.
        kl_factor: weight of the KL term that keeps "{subject} is a" predictions.
        context_template_length_params: [n_tokens, count] of sampled context prefixes.
    """

    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    context_template_length_params: list[list[int]] = field(
        default_factory=lambda: [[5, 10], [10, 10]]
    )

    def validate(self) -> None:
        super().validate()
        if self.v_num_grad_steps < 1:
            raise ValueError("v_num_grad_steps must be at least 1")
        if self.v_lr <= 0 or self.clamp_norm_factor <= 0:
            raise ValueError("v_lr and clamp_norm_factor must be positive")
        if any(len(p) != 2 or min(p) < 1 for p in self.context_template_length_params):
            raise ValueError("context_template_length_params holds [n_tokens, count] pairs >= 1")

    def search(self) -> ValueSearch:
        return ValueSearch(
            self.v_num_grad_steps,
            self.v_lr,
            self.v_weight_decay,
            self.clamp_norm_factor,
            self.kl_factor,
        )


@dataclass(frozen=True)
class ValueSearch:
    """Hyperparameters of the v* optimisation (the fields of the same names in ROME/MEMIT).

    ``nll_factor`` and ``relax_when_top1`` are PMET's (see :func:`relaxation`).
    """

    steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    nll_factor: float = 1.0
    relax_when_top1: bool = False


@dataclass
class ValueResult:
    targets: list[torch.Tensor]  # v* = v_start + delta, one (d_out,) per module
    starts: list[torch.Tensor]  # each module's output before optimisation, (d_out,)
    steps: int
    loss: float
    nll: float

    @property
    def target(self) -> torch.Tensor:
        return self.targets[0]


def optimise_value(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    request: EditRequest,
    templates: Sequence[str],
    module_paths: str | Sequence[str],
    search: ValueSearch,
) -> ValueResult:
    """Find v* for ``request`` at the output of each of ``module_paths`` (one delta each; see
    the module docstring)."""
    paths = [module_paths] if isinstance(module_paths, str) else list(module_paths)
    prompts = _rewriting_prompts(tok, request, templates)
    kl_text, kl_span = kl_prompt(request)
    n_target = len(prompts.target_ids)
    passes = PrefixCachedPass(
        model,
        [*prompts.ids, encode(tok, kl_text).ids],
        [*prompts.lookup, token_index_of_span(tok, kl_text, kl_span)],
        pad_id(tok),
    )
    device = passes.device
    target = torch.tensor(prompts.target_ids, device=device)
    rewrite_end = len(prompts.ids[0]) - prompts.lookup[0]  # every rewriting suffix is this long
    columns = [0, *range(rewrite_end - n_target, rewrite_end)]

    deltas = [torch.zeros(_width(model, p), device=device, requires_grad=True) for p in paths]
    optimiser = torch.optim.Adam(deltas, lr=search.lr)
    starts: list[torch.Tensor | None] = [None] * len(paths)

    def adder(k: int):
        def add_delta(out: torch.Tensor) -> torch.Tensor:  # out: (batch, suffix, d_out)
            if starts[k] is None:
                starts[k] = out[0, 0].detach().float().clone()
            out = out.clone()
            out[:, 0] = out[:, 0] + deltas[k].to(out.dtype)  # column 0: the subject's last token
            return out

        return add_delta

    kl_start = None
    nll_factor = search.nll_factor
    traces = [Trace(model, p, edit_output=adder(k)) for k, p in enumerate(paths)]
    with frozen(model), ExitStack() as stack:
        for trace in traces:
            stack.enter_context(trace)
        for step in range(search.steps):
            # column 0 (the subject's last token) for the KL row; the rewriting rows end with
            # target[:-1], so their last n_target columns predict the target
            logprobs = torch.log_softmax(passes.logits(columns).float(), -1)  # (batch, 1+n, V)
            tgt = logprobs[:-1, 1:]  # (prompts, n, vocab)
            nll = -tgt.gather(2, target.expand(tgt.shape[0], -1)[..., None])[..., 0]
            nll = nll.sum(1).mean() / n_target
            kl_now = logprobs[-1, 0]  # next-token distribution after "{subject}" (vocab,)
            if kl_start is None:
                kl_start = kl_now.detach()
            kl = search.kl_factor * F.kl_div(kl_start, kl_now, log_target=True, reduction="sum")
            decay = sum(
                search.weight_decay * d.norm() / s.norm() ** 2 for d, s in zip(deltas, starts)
            )
            loss = nll_factor * nll + kl + decay
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "step %d: nll %.4f kl %.4f decay %.4f",
                    step,
                    nll.item(),
                    kl.item(),
                    float(decay.detach()),
                )
            if loss.item() < EARLY_STOP_LOSS:
                break
            top1 = bool((tgt.argmax(-1) == target).all())
            nll_factor, stop = relaxation(search, top1, kl.item())
            if stop or step == search.steps - 1:
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                for d, s in zip(deltas, starts):
                    radius = search.clamp_norm_factor * s.norm()
                    if d.norm() > radius:
                        d.mul_(radius / d.norm())
    log.debug("v* after %d steps: loss %.3f (nll %.3f)", step, loss.item(), nll.item())
    return ValueResult(
        [s + d.detach() for s, d in zip(starts, deltas)],
        list(starts),
        step,
        loss.item(),
        nll.item(),
    )


def kl_prompt(request: EditRequest) -> tuple[str, tuple[int, int]]:
    """The KL ("essence") prompt, ``"{subject} is a"`` as ROME's ``compute_v`` and MEMIT's
    ``compute_z`` fill it, and the subject's span in it: the KL term is read at the subject's
    last token, so the prompt must start with the subject, whatever the edit prompt is."""
    return KL_PROMPT.format(request.subject), (0, len(request.subject))


def relaxation(search: ValueSearch, top1: bool, kl: float) -> tuple[float, bool]:
    """PMET's relaxation (``compute_zs.py``): the NLL weight of the next step, and whether to
    stop. While the new target is the top-1 prediction at every target position the weight is a
    tenth and the search stops once the KL term is at most 0.01; as soon as it is not, the
    weight goes back to ``nll_factor``. Without ``relax_when_top1``, the weight never moves."""
    if not search.relax_when_top1:
        return search.nll_factor, False
    if top1:
        return 0.1 * search.nll_factor, kl <= 0.01
    return search.nll_factor, False


class PrefixCachedPass:
    """Forward passes of many prompts that only change from one token on.

    Each row is split at ``split[row]``: the tokens before it do not depend on what is being
    optimised (causal attention), so their keys and values are computed once; every call of
    :meth:`logits` runs only the suffixes, which start at the same column in every row. This
    is exact and, for ROME's 21 context templates, about three times cheaper per step.
    """

    def __init__(
        self,
        model: nn.Module,
        rows: Sequence[Sequence[int]],
        split: Sequence[int],
        pad_token: int,
    ) -> None:
        self.model = model
        self.device = model_device(model)
        prefixes = [list(r[:i]) for r, i in zip(rows, split)]
        suffixes = [list(r[i:]) for r, i in zip(rows, split)]
        width = max(len(p) for p in prefixes)
        self.cache = None
        prefix_mask = torch.zeros(len(rows), width, dtype=torch.long)
        if width:
            prefix = pad([p or [pad_token] for p in prefixes], pad_token, left=True)
            for row, p in enumerate(prefixes):  # an empty prefix was padded: mask all of it
                if not p:
                    prefix.attention_mask[row] = 0
            prefix_mask = prefix.attention_mask
            self.cache = prefix_cache(model, prefix.to(self.device).model_inputs())
        inputs = continuation_inputs(prefix_mask, suffixes, pad_token)
        self.inputs = {k: v.to(self.device) for k, v in inputs.items()}

    def logits(self, columns: Sequence[int]) -> torch.Tensor:
        """Logits at the given suffix columns, ``(batch, len(columns), vocab)``."""
        kwargs: dict = {"use_cache": False}
        if self.cache is not None:  # every pass starts from a copy of the prefix's cache
            kwargs = cache_kwargs(self.model, self.cache, len(self.inputs["input_ids"]))
        return select_logits(self.model, {**self.inputs, **kwargs}, columns)


@dataclass(frozen=True)
class _Prompts:
    ids: list[list[int]]
    lookup: list[int]
    target_ids: list[int]


def _rewriting_prompts(
    tok: PreTrainedTokenizerBase, request: EditRequest, templates: Sequence[str]
) -> _Prompts:
    """``template + prompt + target[:-1]`` token ids and the subject's last token in each."""
    target_ids = encode_prompt_target(tok, request.text, request.target_new).target_ids
    ids, lookup = [], []
    for template in templates:
        text, span = fill(template, request)
        prompt_ids = encode_prompt_target(tok, text, request.target_new).prompt_ids
        ids.append(prompt_ids + target_ids[:-1])
        lookup.append(token_index_of_span(tok, text, span))
    return _Prompts(ids, lookup, target_ids)


def _width(model: nn.Module, module_path: str) -> int:
    """Output width of the module the delta is added to."""
    module = get_module(model, module_path)
    if getattr(module, "weight", None) is not None:
        return weight_out_in(module).shape[0]
    return text_config(model).hidden_size
