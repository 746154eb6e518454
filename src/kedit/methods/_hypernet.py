"""Pieces of the meta-learning editors' networks and objectives (KE, MEND, MALMEN).

* :class:`TrainingExample`: an edit with its paraphrases and unrelated (locality) prompts, from a
  benchmark case.
* :class:`Shift`: a weight change ``(d_out, d_in)`` in the ``v = W k`` orientation, low-rank or
  dense; :func:`shifted` adds shifts to modules' outputs inside a block, keeping the graph to the
  editor (training) without touching the weights.
* :class:`RunningStandardiser`: per-dimension running mean and deviation of the rows an editor
  sees in training (MEND's and MALMEN's input normalisation), buffers that checkpoint;
  :class:`PairNetwork` (``[k; d]`` standardised, through residual layers, split back) and
  :class:`ShapeSharedEditor` (one network per matrix shape, a step per matrix): MEND's and
  MALMEN's editors, which differ only in their residual layer.
* :class:`Objective` and :func:`locality_kl`: a training objective's value and parts;
  :func:`target_tokens` counts a batch's target tokens (objectives summed over chunks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from kedit.methods._grads import TargetBatch
from kedit.methods._weights import low_rank_delta
from kedit.methods.changes import Delta
from kedit.model.arch import get_module, is_conv1d
from kedit.types import EditCase, EditRequest, ProbeKind


@dataclass(frozen=True)
class TrainingExample:
    """One training edit: the request, other wordings of it, and unrelated ``(prompt, answer)``
    pairs whose predictions the edit must keep."""

    request: EditRequest
    paraphrases: tuple[str, ...] = ()
    locality: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_case(cls, case: EditCase) -> TrainingExample:
        kinds = {ProbeKind.NEIGHBORHOOD, ProbeKind.LOCALITY}
        return cls(
            case.request,
            tuple(p.prompt for p in case.probes if p.kind == ProbeKind.PARAPHRASE),
            tuple((p.prompt, p.expected) for p in case.probes if p.kind in kinds),
        )


@dataclass
class Shift:
    """A change of a linear map ``v = W k``: ``left @ right.T`` (``(d_out, r)``, ``(d_in, r)``)
    or ``dense`` ``(d_out, d_in)``."""

    left: torch.Tensor | None = None
    right: torch.Tensor | None = None
    dense: torch.Tensor | None = None

    def output(self, keys: torch.Tensor) -> torch.Tensor:
        """The change of the module's output for inputs ``keys`` ``(..., d_in)``."""
        if self.dense is not None:
            return keys @ self.dense.to(keys.dtype).T
        return (keys @ self.right.to(keys.dtype)) @ self.left.to(keys.dtype).T

    def delta(self, module: nn.Module) -> Delta:
        """The weight change in ``module``'s own layout, detached."""
        if self.dense is not None:
            dense = self.dense.detach().float()
            return Delta(dense=dense.T if is_conv1d(module) else dense)
        return low_rank_delta(module, self.left.detach(), self.right.detach())


@contextmanager
def shifted(model: nn.Module, shifts: Mapping[str, Shift]) -> Iterator[None]:
    """Inside this block each module's output gains its shift's ``dW k``, exactly what the
    weight ``W + dW`` would give, with the graph kept to the shift."""
    handles = []
    try:
        for path, shift in shifts.items():
            handles.append(
                get_module(model, path).register_forward_hook(
                    lambda _m, args, out, s=shift: out + s.output(args[0]).to(out.dtype)
                )
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


class RunningStandardiser(nn.Module):
    """Per-dimension running mean and standard deviation of every row seen while training
    (batch statistics merged exactly), and ``(rows - mean) / (std + eps)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("squares", torch.zeros(width, dtype=torch.float64))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:  # (n, width)
        if self.training:
            self.update(rows)
        if self.count < 2:
            raise RuntimeError(
                "the editor's standardiser has seen fewer than two rows; train the editor "
                "(kedit train) before editing with it"
            )
        std = (self.squares / (self.count - 1)).sqrt().to(rows.dtype)
        return (rows - self.mean.to(rows.dtype)) / (std + 1e-7)

    def update(self, rows: torch.Tensor) -> None:
        """Merge ``rows`` ``(n, width)`` into the statistics."""
        rows = rows.detach().double()
        n, batch_mean = rows.shape[0], rows.mean(0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.squares += ((rows - batch_mean) ** 2).sum(0) + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.count += n


@dataclass
class Objective:
    """A training objective's value and what it is made of (floats, for the progress bar and
    the validation curve)."""

    loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    #: the loss's terms as tensors (``nll``, ``kl``), for objectives built on top of them
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


def locality_kl(
    pre: torch.Tensor, post: torch.Tensor, batch: TargetBatch
) -> tuple[torch.Tensor, float]:
    """``KL(pre || post)`` at the positions predicting each unrelated answer's tokens, summed
    over positions, and how many of those positions keep their top-1 token."""
    rows_pre, rows_post = [], []
    for i, pair in enumerate(batch.pairs):
        n = len(pair.target_ids)
        rows_pre.append(pre[i, batch.keep - n :])
        rows_post.append(post[i, batch.keep - n :])
    p_log = torch.log_softmax(torch.cat(rows_pre), -1)  # (positions, vocab)
    q_log = torch.log_softmax(torch.cat(rows_post), -1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1).sum()
    kept = (p_log.argmax(-1) == q_log.argmax(-1)).sum().item()
    return kl, float(kept)


def target_tokens(batch: TargetBatch) -> int:
    """How many target tokens the batch's rows hold."""
    return sum(len(pair.target_ids) for pair in batch.pairs)


def shape_key(shape: tuple[int, int]) -> str:
    """A matrix shape ``(d_out, d_in)`` as a ``ModuleDict`` key (networks shared per shape)."""
    return f"{shape[0]}x{shape[1]}"


class PairNetwork(nn.Module):
    """The network of the matrices of one shape: ``[k; d]`` (key, output gradient) standardised
    with running statistics, through residual ``layers`` called as ``layer(h, mode)`` (``mode``:
    which matrix of the shape), split back into ``(k~, d~)``."""

    def __init__(self, d_in: int, d_out: int, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.d_in = d_in
        self.standardise = RunningStandardiser(d_in + d_out)
        self.layers = nn.ModuleList(layers)

    def forward(
        self, keys: torch.Tensor, grads: torch.Tensor, mode: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.standardise(torch.cat([keys, grads], 1))  # (rows, d_in + d_out)
        for layer in self.layers:
            h = layer(h, mode)
        return h[:, : self.d_in], h[:, self.d_in :]


class ShapeSharedEditor(nn.Module):
    """One :class:`PairNetwork` per distinct matrix shape ``(d_out, d_in)``, shared by the
    matrices of that shape (each its own ``mode``), and a learned step per matrix.
    ``make_layer(width, n_modes)`` builds one residual layer."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        make_layer: Callable[[int, int], nn.Module],
        n_layers: int,
        edit_lr: float,
    ) -> None:
        super().__init__()
        self.shapes = list(shapes)
        self.modes = [self.shapes[:i].count(s) for i, s in enumerate(self.shapes)]
        self.nets = nn.ModuleDict(
            {
                shape_key(s): PairNetwork(
                    s[1],
                    s[0],
                    [make_layer(s[0] + s[1], self.shapes.count(s)) for _ in range(n_layers)],
                )
                for s in dict.fromkeys(self.shapes)
            }
        )
        self.edit_lrs = nn.Parameter(torch.full((len(self.shapes),), float(edit_lr)))

    def net(self, index: int) -> PairNetwork:
        """The network of matrix ``index``."""
        return self.nets[shape_key(self.shapes[index])]

    def transform(
        self, index: int, keys: torch.Tensor, grads: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k~, d~)`` of matrix ``index``'s rows."""
        return self.net(index)(keys, grads, self.modes[index])
