"""The target value v*: the vector that, written at the subject's last token, makes the model
say the new target (ROME's compute_v, MEMIT's compute_z).

A delta is added to the output of one module (ROME: the MLP output projection at the edited
layer; MEMIT: the whole block at the last edited layer) at the subject's last token of every
rewriting prompt ``<context template> + prompt + target[:-1]`` and of the KL prompt
``"{subject} is a"`` (:func:`kl_prompt`). Only the delta is optimised (Adam), for

    loss = NLL(target | rewriting prompts) + kl_factor * KL(P_now || P_start on the KL prompt)
           + weight_decay * ||delta|| / ||v_start||^2

with the delta kept in an L2 ball of radius ``clamp_norm_factor * ||v_start||``. Weights are
frozen, only the logits that predict target tokens are produced, and the blocks the delta cannot
change run once per batch (:func:`~kedit.methods._suffix.delta_hand_on`). A batch's searches
run together (:func:`optimise_values`): one padded forward and backward pass per step over every
request still searching, each with its own delta, loss, clamp and stopping step; MEMIT's
``compute_z`` runs them one after another, for the same result up to float noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._suffix import delta_hand_on
from kedit.methods._templates import SearchRows, search_rows
from kedit.model.arch import get_module, text_config, weight_out_in
from kedit.model.cached_pass import PrefixCachedPass
from kedit.model.hooks import Trace, frozen
from kedit.model.lm import model_device
from kedit.model.tokens import pad_id
from kedit.types import EditRequest

log = logging.getLogger(__name__)

EARLY_STOP_LOSS = 5e-2
#: padded suffix tokens below which a pass of the batched search is not split to save padding
SMALL_PASS = 256


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

    ``nll_factor`` and ``relax_when_top1`` are PMET's (see :func:`relaxation`)."""

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
    the module docstring): :func:`optimise_values` for one request."""
    return optimise_values(model, tok, [request], templates, module_paths, search)[0]


def optimise_values(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    module_paths: str | Sequence[str],
    search: ValueSearch,
    batch_tokens: int | None = None,
) -> list[ValueResult]:
    """v* for every request, searched together: each step runs forward and backward passes over
    the prompts of every request still searching, grouped by suffix length so that little is
    padded (at most ``batch_tokens`` suffix tokens a pass; default 2,048 on CPU, 8,192 on GPU).
    Each request keeps its own delta, loss, KL reference, norm clamp, PMET relaxation and
    stopping step, and Adam works element by element, so each gets the v* it would get alone,
    up to float noise (``tests/test_value_search.py`` states the tolerance). Requests that stop
    leave the passes."""
    paths = [module_paths] if isinstance(module_paths, str) else list(module_paths)
    rows = [search_rows(tok, r, templates) for r in requests]
    device = model_device(model)
    budget = batch_tokens or (8192 if device.type == "cuda" else 2048)
    return _JointSearch(model, rows, paths, search, pad_id(tok), budget).run()


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


@dataclass(frozen=True)
class _Row:
    """One row of a request's search: a rewriting prompt (``target_ids``) or the KL prompt."""

    request: int
    ids: list[int]
    split: int  # the subject's last token
    target_ids: list[int] | None  # None: the KL row
    first: bool  # the request's first rewriting row, where v_start is read
    head: int = 0  # leading tokens shared with other requests' rows (the context template's)

    @property
    def width(self) -> int:
        return len(self.ids) - self.split


class _RowPass:
    """Rows of about one suffix length (from any requests) in one pass, and where their loss
    terms are read: column 0 of every row is the subject's last token (the KL term, and where
    the delta goes); a rewriting row's target is predicted by its last ``len(target)`` suffix
    columns."""

    def __init__(self, rows: Sequence[_Row], passes: PrefixCachedPass) -> None:
        self.rows, self.passes = list(rows), passes
        device = passes.device
        width = max(len(r.target_ids or [0]) for r in rows)
        index, targets = [], []
        for r in rows:
            n = len(r.target_ids or [])
            index.append([*range(r.width - n, r.width), *[0] * (width - n)])
            targets.append([*(r.target_ids or []), *[-1] * (width - n)])
        self.index = torch.tensor(index)  # (rows, width); a KL row reads column 0
        self.targets = torch.tensor(targets, device=device)  # (rows, width), -1: none
        self.owner = torch.tensor([r.request for r in rows], device=device)  # (rows,)
        self.kl = torch.tensor([r.target_ids is None for r in rows], device=device)
        self.first = [k for k, r in enumerate(self.rows) if r.first]
        self.lower: torch.Tensor | None = None  # HandOn's recorded block input, once recorded

    def without(self, finished: Sequence[bool]) -> _RowPass | None:
        """This pass for the rows of requests that still search (``None`` if none does)."""
        keep = [k for k, r in enumerate(self.rows) if not finished[r.request]]
        if len(keep) == len(self.rows):
            return self
        if not keep:
            return None
        out = _RowPass([self.rows[k] for k in keep], self.passes.subset(keep))
        out.lower = None if self.lower is None else self.lower[keep]
        return out

    def read(self, logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row, from ``logprobs`` ``(rows, width, vocab)``: the target's NLL summed over its
        tokens over its length (0 on KL rows), whether the target is the top-1 prediction at
        every position (True on KL rows), and the next-token distribution at column 0."""
        real = self.targets >= 0
        picked = logprobs.gather(2, self.targets.clamp(min=0)[..., None])[..., 0]
        nll = -(picked * real).sum(1) / real.sum(1).clamp(min=1)  # (rows,)
        top1 = ((logprobs.argmax(-1) == self.targets) | ~real).all(1)  # (rows,)
        return nll, top1, logprobs[:, 0]


class _JointSearch:
    """The v* searches of several requests run as one (see :func:`optimise_values`).

    Every request's loss is a sum of per-row terms (``nll_factor * NLL / rows`` on each
    rewriting row, the KL term on its KL row) plus its decay, so each pass's rows are
    back-propagated on their own; a request that stops at this step was recorded before the
    optimiser moves it, so its gradient does no harm."""

    def __init__(
        self,
        model: nn.Module,
        requests: Sequence[SearchRows],
        paths: Sequence[str],
        search: ValueSearch,
        pad_token: int,
        budget: int,
    ) -> None:
        self.model, self.requests, self.paths = model, list(requests), list(paths)
        self.search, self.pad_token, self.budget = search, pad_token, budget
        device = model_device(model)
        n = len(requests)
        widths = [_width(model, p) for p in paths]
        self.deltas = [torch.zeros(n, w, device=device, requires_grad=True) for w in widths]
        self.starts = [torch.zeros(n, w, device=device) for w in widths]  # set on the 1st pass
        self.kl_start: list[torch.Tensor | None] = [None] * n
        self.nll_factor = torch.full((n,), search.nll_factor, device=device)
        self.n_rewrite = torch.tensor([len(r.ids) - 1 for r in requests], device=device)
        self.results: list[ValueResult | None] = [None] * n
        self.running: _RowPass | None = None  # the pass whose rows get their deltas
        self.capture = False  # read v_start on this pass
        self.hand_on = delta_hand_on(model, paths, self._adder(0))

    def run(self) -> list[ValueResult]:
        steps = self.search.steps
        passes: list[_RowPass | None] = list(self._passes())
        optimiser = torch.optim.Adam(self.deltas, lr=self.search.lr)
        traces = [
            Trace(self.model, p, edit_output=self._adder(k)) for k, p in enumerate(self.paths)
        ]
        with frozen(self.model), ExitStack() as stack:
            for trace in traces:
                stack.enter_context(trace)
            for step in range(steps):
                optimiser.zero_grad()
                finished = [r is not None for r in self.results]
                passes = [p and p.without(finished) for p in passes]
                # the last step's loss is only read (as the reference's), so no gradient
                with torch.set_grad_enabled(step < steps - 1):
                    terms = [self._backward(p, step) for p in passes if p is not None]
                    self._decide(step, terms)
                if all(r is not None for r in self.results):
                    break
                optimiser.step()  # moves finished requests too (momentum): they are recorded
                self._clamp()
        return self.results  # type: ignore[return-value]

    def _passes(self) -> Iterator[_RowPass]:
        """All rows, shortest suffix first, at most ``budget`` padded tokens a pass. Rows of one
        suffix length share a pass; longer rows join it only while it is too small for their
        padding to matter (a single request's KL row joins its rewriting rows: a pass of its
        own costs more than the padding; measured in ``benchmarks/bench_scale.py``)."""
        rows = [  # the KL row is read at its subject's last token, so it ends there
            _Row(i, ids[: at + 1], at, None, False)
            if k == len(r.ids) - 1
            else _Row(i, ids, at, r.target_ids, k == 0, head)
            for i, r in enumerate(self.requests)
            for k, (ids, at, head) in enumerate(zip(r.ids, r.split, r.heads))
        ]
        part: list[_Row] = []
        for row in sorted(rows, key=lambda r: r.width):
            padded = (len(part) + 1) * row.width
            longer = bool(part) and row.width > part[-1].width
            if part and (padded > self.budget or (longer and padded > SMALL_PASS)):
                yield self._pass(part)
                part = []
            part.append(row)
        yield self._pass(part)

    def _pass(self, rows: list[_Row]) -> _RowPass:
        ids, split, heads = [r.ids for r in rows], [r.split for r in rows], [r.head for r in rows]
        return _RowPass(rows, PrefixCachedPass(self.model, ids, split, self.pad_token, heads))

    def _adder(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def add_delta(out: torch.Tensor) -> torch.Tensor:  # out: (rows, suffix, d_out)
            rows = self.running
            if rows is None:  # a prefix being computed, not a search pass
                return out
            if self.capture and rows.first:
                self.starts[k][rows.owner[rows.first]] = out[rows.first, 0].detach().float()
            out = out.clone()
            # column 0: the subject's last token; each row gets its request's delta
            out[:, 0] = out[:, 0] + self.deltas[k][rows.owner].to(out.dtype)
            return out

        return add_delta

    def _backward(self, rows: _RowPass, step: int) -> tuple[_RowPass, torch.Tensor, ...]:
        """One pass: back-propagate its rows' loss terms (where gradients are on); return them
        per row, detached."""
        self.running, self.capture = rows, step == 0
        try:
            logits, rows.lower = self.hand_on.run(  # (rows, width, vocab)
                lambda: rows.passes.row_logits(rows.index), rows.lower
            )
        finally:
            self.running, self.capture = None, False
        nll, top1, next_token = rows.read(torch.log_softmax(logits.float(), -1))
        kl_rows = rows.kl.nonzero()[:, 0]  # (KL rows,)
        for k in kl_rows.tolist():
            i = rows.rows[k].request
            if self.kl_start[i] is None:
                self.kl_start[i] = next_token[k].detach()
        kl = torch.zeros(len(rows.rows), device=nll.device)
        if len(kl_rows):
            now = next_token[kl_rows]  # (KL rows, vocab)
            start = torch.stack([self.kl_start[rows.rows[k].request] for k in kl_rows.tolist()])
            # KL(P_now || P_start) on the KL prompt, as F.kl_div(start, now, log_target=True)
            kl = kl.index_put((kl_rows,), (now.exp() * (now - start)).sum(-1))
        kl = self.search.kl_factor * kl  # (rows,): 0 on rewriting rows
        weight = self.nll_factor[rows.owner] / self.n_rewrite[rows.owner]
        loss = (weight * nll + kl).sum()
        if loss.requires_grad:
            loss.backward()
        return rows, nll.detach(), top1, kl.detach()

    def _decide(self, step: int, terms: list) -> None:
        """Each running request's loss at this step (its rows' terms and its decay); those that
        stop are recorded (with the deltas this step's loss was read at)."""
        search, n = self.search, len(self.requests)
        device = self.nll_factor.device
        nll, kl = torch.zeros(n, device=device), torch.zeros(n, device=device)
        misses = torch.zeros(n, device=device)
        for rows, row_nll, top1, row_kl in terms:
            nll.index_add_(0, rows.owner, row_nll / self.n_rewrite[rows.owner])
            kl.index_add_(0, rows.owner, row_kl)
            misses.index_add_(0, rows.owner, (~top1).float())
        running = [i for i, r in enumerate(self.results) if r is None]
        decay = sum(
            search.weight_decay * d[running].norm(dim=1) / s[running].norm(dim=1) ** 2
            for d, s in zip(self.deltas, self.starts)
        )
        if isinstance(decay, torch.Tensor) and decay.requires_grad:
            decay.sum().backward()
        loss = self.nll_factor[running] * nll[running] + kl[running] + decay
        values = zip(running, loss.tolist(), nll[running].tolist(), kl[running].tolist())
        for i, loss_i, nll_i, kl_i in values:
            if loss_i < EARLY_STOP_LOSS:
                self._finish(i, step, loss_i, nll_i)
                continue
            factor, stop = relaxation(search, bool(misses[i] == 0), kl_i)
            self.nll_factor[i] = factor
            if stop or step == search.steps - 1:
                self._finish(i, step, loss_i, nll_i)

    def _finish(self, i: int, step: int, loss: float, nll: float) -> None:
        starts = [s[i].clone() for s in self.starts]
        targets = [s + d[i].detach().clone() for s, d in zip(starts, self.deltas)]
        self.results[i] = ValueResult(targets, starts, step, loss, nll)
        log.debug("v* %d after %d steps: loss %.3f (nll %.3f)", i, step, loss, nll)

    @torch.no_grad()
    def _clamp(self) -> None:
        """Keep every delta within ``clamp_norm_factor * ||v_start||``."""
        for delta, start in zip(self.deltas, self.starts):
            radius = self.search.clamp_norm_factor * start.norm(dim=1, keepdim=True)  # (n, 1)
            norm = delta.norm(dim=1, keepdim=True)
            delta.copy_(torch.where(norm > radius, delta * (radius / norm), delta))


def _width(model: nn.Module, module_path: str) -> int:
    """Output width of the module the delta is added to."""
    module = get_module(model, module_path)
    if getattr(module, "weight", None) is not None:
        return weight_out_in(module).shape[0]
    return text_config(model).hidden_size
