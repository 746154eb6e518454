"""Training inside block ``k`` without running the blocks below it at every step.

A method that trains something in block ``k`` (WISE's side memory, MELO's LoRA blocks, CaliNET's
slots, GRACE's value) with the model's weights fixed passes the same batch through the model at
every step, and blocks ``0 .. k-1`` give block ``k`` the same input each time. :class:`SuffixPass`
records that input once and runs the steps with those blocks replaced by stand-ins that hand it
on (the model's own loop, embeddings, masks and positions run as usual), so each step costs the
blocks from ``k`` on. Whether the model's loop allows that (blocks called in order on the hidden
state alone, nothing between them) is checked, not assumed: :meth:`SuffixPass.matches` compares
the first step with a full pass, and the caller keeps full passes where it does not match.
Passes run without a key-value cache (the stand-ins add none).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kedit.model.arch import arch_of, get_module, num_layers
from kedit.model.hooks import Trace
from kedit.model.lm import position_logits

log = logging.getLogger(__name__)


class _HandOn(nn.Module):
    """Stands in for a block below ``k``: returns ``value`` (block ``k``'s recorded input) or,
    with none, the hidden state it is given."""

    def __init__(self, block: nn.Module, value: torch.Tensor | None) -> None:
        super().__init__()
        self.value = value
        if hasattr(block, "attention_type"):  # read by some models' loops (sliding windows)
            self.attention_type = block.attention_type

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value if self.value is not None else hidden


@contextmanager
def blocks_handed_on(model: nn.Module, first: int, hidden: torch.Tensor) -> Iterator[None]:
    """Blocks ``0 .. first-1`` replaced by stand-ins that hand ``hidden`` (block ``first``'s
    recorded input) on; the blocks are put back afterwards."""
    layers = get_module(model, arch_of(model).layers)
    saved = [layers[i] for i in range(first)]
    try:
        for i, block in enumerate(saved):
            layers[i] = _HandOn(block, hidden if i == first - 1 else None)
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block


def block_index(model: nn.Module, path: str) -> int:
    """The index of the block that the module at ``path`` is (or lies in)."""
    prefix = f"{arch_of(model).layers}."
    index = path[len(prefix) :].split(".")[0] if path.startswith(prefix) else ""
    if not index.isdigit():
        raise ValueError(f"{path!r} is not inside a block ({prefix}<index>)")
    return int(index)


Forward = Callable[[dict[str, Any]], torch.Tensor]


class SuffixPass:
    """Logits of one batch (``inputs``, without a cache) from the blocks from ``first`` on;
    ``forward`` computes logits from the inputs (default: the model's, at every position)."""

    @torch.no_grad()
    def __init__(
        self, model: nn.Module, inputs: dict[str, Any], first: int, forward: Forward | None = None
    ) -> None:
        self.model, self.first = model, first
        self.inputs = {**inputs, "use_cache": False}
        self.forward = forward or (lambda x: model(**x).logits)
        with Trace(model, arch_of(model).path("block", first), retain_input=True) as trace:
            #: a full pass's logits, recorded on the way (what :meth:`matches` compares with)
            self.full = self.forward(self.inputs)
        self.hidden = trace.input  # (batch, seq, d_model)

    def logits(self) -> torch.Tensor:
        """``(batch, seq, vocab)``, with gradients for what trains in the blocks from ``first``."""
        if self.first == 0:
            return self.forward(self.inputs)
        with blocks_handed_on(self.model, self.first, self.hidden):
            return self.forward(self.inputs)

    def matches(self, full_logits: torch.Tensor) -> bool:
        """Whether :meth:`logits` equals ``full_logits`` (a full pass of the same weights) up to
        float noise; False, too, where the model's loop does not take the stand-ins."""
        return _same_output(self.logits, full_logits, self.first)


#: the blocks from which a model's loop took the stand-ins (checked once per model and block)
_STAND_INS_TAKEN: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


class HandOn:
    """Passes of fixed batches, run again at every step of an optimisation that changes nothing
    below block ``first`` (the target-value search: its deltas are added in block ``first`` or
    above, or, with ``adds``, added by ``adds`` to block ``first - 1``'s output). A batch's
    first run records block ``first``'s input; its later runs hand that on past the blocks
    below (:func:`blocks_handed_on`), through ``adds`` where given, so each costs the blocks
    from ``first`` on. The first handed-on run on a model is checked against the full run it
    repeats (as :meth:`SuffixPass.matches`); where the model's loop does not take the
    stand-ins, every run is a full one."""

    def __init__(
        self,
        model: nn.Module,
        first: int,
        adds: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.first, self.adds = model, first, adds
        self.enabled = first > 0
        self.checked = first in _STAND_INS_TAKEN.get(model, set())

    def run(
        self, forward: Callable[[], torch.Tensor], recorded: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``forward()``'s result, and what to pass as ``recorded`` on this batch's next run."""
        if not self.enabled:
            return forward(), None
        if recorded is not None:
            with self._handed_on(recorded):
                return forward(), recorded
        block = arch_of(self.model).path("block", self.first)
        with Trace(self.model, block, retain_input=True) as trace:
            out = forward()
        if not self.checked:
            self.checked = True

            def handed_on() -> torch.Tensor:
                with self._handed_on(trace.input):
                    return forward()

            self.enabled = _same_output(handed_on, out, self.first)
            if self.enabled:
                _STAND_INS_TAKEN.setdefault(self.model, set()).add(self.first)
        return out, trace.input if self.enabled else None

    def _handed_on(self, recorded: torch.Tensor) -> AbstractContextManager[None]:
        hidden = recorded if self.adds is None else self.adds(recorded)
        return blocks_handed_on(self.model, self.first, hidden)


def delta_hand_on(
    model: nn.Module, paths: Sequence[str], adds: Callable[[torch.Tensor], torch.Tensor]
) -> HandOn:
    """The :class:`HandOn` of a search whose deltas ``adds`` adds to the outputs of ``paths``:
    blocks below the lowest one run once per batch; a delta on a whole block's output
    (MEMIT's) leaves that block's output as it was but for the delta, so it too runs once."""
    first = min(block_index(model, p) for p in paths)
    if list(paths) == [arch_of(model).path("block", first)] and first + 1 < num_layers(model):
        return HandOn(model, first + 1, adds)
    return HandOn(model, first)


def _same_output(fast: Callable[[], torch.Tensor], full: torch.Tensor, first: int) -> bool:
    """Whether ``fast()`` (a pass with blocks below ``first`` handed on: logits, or a module's
    output) equals ``full`` up to float noise; False where the model's loop does not take the
    stand-ins."""
    try:
        with torch.no_grad():
            logits = fast().float()
    except (AttributeError, TypeError, IndexError, ValueError) as err:
        # a loop that needs more of its blocks: full passes (which raise a real error again)
        log.debug("suffix pass from block %d not taken: %s", first, err)
        return False
    full = full.detach().float()
    if logits.shape != full.shape:
        return False
    scale = full.abs().max().clamp_min(1.0)
    return bool((logits - full).abs().max() <= 1e-4 * scale)


@dataclass(frozen=True)
class TargetPositions:
    """The positions of right-padded rows that predict a target token (column ``t`` of row
    ``r`` predicts ``labels[r, t + 1]``), and those tokens."""

    rows: torch.Tensor  # (positions,)
    cols: torch.Tensor  # (positions,)
    tokens: torch.Tensor  # (positions,)
    n_rows: int

    @classmethod
    def of(cls, labels: torch.Tensor) -> TargetPositions:
        rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
        return cls(rows, cols, labels[rows, cols + 1], labels.shape[0])

    @property
    def where(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows, self.cols

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean per row of its target tokens' cross-entropy, averaged over rows, from the
        logits at these positions ``(positions, vocab)``."""
        ce = F.cross_entropy(logits.float(), self.tokens, reduction="none")  # (positions,)
        total = torch.zeros(self.n_rows, device=ce.device).index_add_(0, self.rows, ce)
        return (total / torch.bincount(self.rows, minlength=self.n_rows)).mean()


def picked_forward(model: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Forward:
    """A :data:`Forward` whose logits are those at the positions ``(rows[i], cols[i])`` only,
    ``(positions, vocab)``: the output head unembeds just them (a training loss on target
    tokens needs no logits elsewhere, and unembedding every position of every row can cost as
    much as the blocks the step runs)."""

    return lambda inputs: position_logits(model, inputs, rows, cols)


def step_logits(
    model: nn.Module, inputs: dict[str, Any], first: int, forward: Forward | None = None
) -> tuple[Callable[[], torch.Tensor], bool]:
    """What each training step of a batch calls for its logits, and whether it is the suffix
    pass: :class:`SuffixPass` from block ``first`` where it matches a full pass of the weights
    as they are now, else full passes."""
    suffix = SuffixPass(model, inputs, first, forward)
    fast, suffix.full = suffix.matches(suffix.full), None  # the logits are not kept for the steps
    if fast:
        return suffix.logits, True
    return (lambda: suffix.forward(suffix.inputs)), False
