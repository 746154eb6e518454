"""MALMEN: MAssive Language Model Editing Network.

Tan, Zhang, Fu. "Massive Editing for Large Language Models via Meta Learning", ICLR 2024.
https://arxiv.org/abs/2311.04661 (reference: ``ChenmienTan/malmen``: ``editor/malmen.py``
(predict_param_shifts, update_hypernet), ``editor/base.py`` (cache, train), ``nets.py``
(MALMENNet, MALMENBlock: here ``_hypernet.PairNetwork`` of blocks), ``util.py`` (Tracer,
``token: ans``), ``config/``)

MEND's rank-one shifts, summed over many edits, cancel one another. MALMEN instead asks for the
output change each edit wants at its own keys and finds one shift per matrix by least squares.
An edit of ``N`` requests:

1. Keys ``u_i`` (module inputs) and value gradients ``d_i`` (the target NLL's gradient at the
   module output) at the positions that predict target tokens, in passes of ``pass_size``
   requests, at every edited matrix ``m``.
2. Per matrix shape, a network standardises ``[u_i; d_i]`` with running statistics and maps it
   through ``n_blocks`` identity-initialised blocks ``y + scale_m * ReLU(y A B + b) + shift_m``
   (``B = 0`` at the start), giving ``[u~_i; d~_i]``.
3. Desired value shifts ``v_i = -eta_m (u_i . u~_i) d~_i``, with a learned step ``eta_m``.
4. ``S*_m = (U^T U + e^lambda_m I)^{-1} U^T V`` (``U (N, d_in)``, ``V (N, d_out)``, a learned
   log ridge ``lambda_m``), solved in float64: ``W_m[in, out] += S*_m``, i.e. ``dW = S*^T`` in the
   ``v = W k`` orientation, kept as factors ``V^T`` and ``(U^T U + e^lambda I)^{-1} U^T``.

Training (``kedit train --method malmen``) keeps the language model and the network out of one
graph, so that hundreds of edits fit in memory (the paper's decoupled backward pass):

1. Without a graph: the keys and gradients of every matrix, which the running statistics
   count (all of them, before any row is standardised, as the reference's ``cache``); ``V``
   and ``S*``.
2. ``S*`` as leaf tensors added to the modules' outputs; ``L = cedit * NLL(edit prompts and
   paraphrases) + cloc * KL(pre || post on unrelated prompts)``; backward: ``G = dL/dS*``.
3. ``M = (U^T U + e^lambda I)^{-1} G``; ``dL/dV = U M``; ``dL/dlambda = -e^lambda <M, S*>``.
4. ``V`` again, with a graph through the network, ``chunk_size`` rows at a time, each chunk
   backpropagated with its rows of ``dL/dV``. Adam (``lr``) on everything, gradients clipped.

Deliberate differences from the reference code:

* ``batch_size`` (the reference's ``n_edits``) need not be a multiple of ``pass_size`` (its
  ``data.batch_size``): the reference loads keys for ``ceil(n / bs)`` passes but gradients for
  ``ceil(n // bs)``, which breaks otherwise; here the last pass is simply shorter.
* The standardiser learns from training batches only. The reference updates it in ``cache``,
  which validation calls too, so validating (and editing) changed the editor.
* The edit loss covers the edit prompts and their paraphrases (kedit's shared objective, weight
  ``cedit = 1``); the reference's covers the paraphrases (``equiv_tuples``) only. Each loss is one
  mean over the batch's target tokens; the reference sums the means of its passes of 32.
* ``S*`` is added to the module outputs by hooks (``_hypernet.shifted``) with the weights
  untouched; the reference adds it to ``weight.data`` and subtracts it again, which is not
  bit-exact in floating point. Solves run in float64 (the reference: float32).
* The running deviation is the exact merge of batch statistics (the reference adds ``n`` times
  the unbiased batch variance); the rank is capped at the network's width; the per-module step
  and ridge are vectors on the editor (the reference's per-shape ``nn.Embedding``).
* Defaults train on CounterFact's training split, kedit's largest (the reference: zsRE, whose
  kedit copy is a 1,000-record subset); the number of steps follows EasyEdit (the reference
  trains one epoch and validates at its end).
* The value gradients are those of the summed target NLL, not of each pass's mean. The
  reference's depend on the pass a request falls in (a single edit's are about ``pass_size``
  times larger than in training), so its editor, trained on 512 edits in passes of 32,
  overshoots on one edit. Here a token's gradient is its own, whatever the number of edits, and
  ``pass_size`` and ``chunk_size`` only trade memory for speed (they do not key the editor).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._grads import keys_and_gradients
from kedit.methods._hypernet import (
    PairNetwork,
    RunningStandardiser,
    ShapeSharedEditor,
    Shift,
    TrainingExample,
)
from kedit.methods._meta import MetaConfig, MetaMethod
from kedit.model.hooks import frozen
from kedit.model.lm import hf_module
from kedit.types import EditRequest


@dataclass(kw_only=True)
class MALMENConfig(MetaConfig):
    """MALMEN hyperparameters (defaults: the reference's ``config/editor/malmen.yaml``,
    ``config/data/zsre.yaml`` and ``config/model/gpt-2.yaml``; steps, validation and patience:
    EasyEdit's ``hparams/TRAINING/MALMEN/gpt2-xl.yaml``).

    Args:
        rank: rank of each block's ``A B`` (``editor.rank`` 1920; capped at the width).
        n_blocks: blocks of the network (``editor.n_blocks``).
        edit_lr: initial step ``eta_m`` of every edited matrix (``editor.lr``).
        log_ridge: initial log ridge ``lambda_m`` of every edited matrix (``nets.py``: 0; on
            SmolLM2-135M, kedit measured |u|^2 at the target tokens of 32 CounterFact edits at
            medians of 350 to 12,500 in blocks 24-29, so e^0 = 1 is a small ridge there too).
        pass_size: requests per forward and backward pass for keys and gradients
            (``data.batch_size``).
        chunk_size: rows of the network's backward pass at a time (``editor.batch_size``).
    """

    #: memory knobs: the same editor whatever their values
    NOT_KEY: ClassVar[frozenset[str]] = MetaConfig.NOT_KEY | {"pass_size", "chunk_size"}

    modules: dict[str, list[int]] = field(
        # config/model/gpt-2.yaml h.6-11 c_proj, gpt-j.yaml h.22-27 fc_out: the last six blocks
        default_factory=lambda: {"mlp_out": [-6, -5, -4, -3, -2, -1]}
    )
    rank: int = 1920
    n_blocks: int = 2
    edit_lr: float = 1e-6
    log_ridge: float = 0.0
    pass_size: int = 32
    chunk_size: int = 1024
    batch_size: int = 512  # data/zsre.yaml n_edits
    val_size: int = 512  # kedit: one validation batch of the trained size
    lr: float = 1e-5  # editor.meta_lr
    cedit: float = 1.0  # editor/base.py: the paraphrase loss unweighted
    cloc: float = 1.0  # editor.loc_coef
    grad_clip: float = 1.0  # editor.max_grad_norm
    max_steps: int = 10_000  # EasyEdit max_iters
    val_every: int = 100  # EasyEdit val_interval
    patience: int = 1_000  # EasyEdit early_stop_patience

    def validate(self) -> None:
        super().validate()
        if self.rank < 1 or self.n_blocks < 0:
            raise ValueError("rank must be at least 1 and n_blocks at least 0")
        if self.edit_lr <= 0:
            raise ValueError("edit_lr (the initial step of every edited matrix) must be positive")
        if self.pass_size < 1 or self.chunk_size < 1:
            raise ValueError("pass_size and chunk_size must be at least 1")


class MALMENBlock(nn.Module):
    """``y + scale_m * ReLU(y A B + b) + shift_m``: the identity at the start (``B = 0``)."""

    def __init__(self, width: int, rank: int, n_modes: int) -> None:
        super().__init__()
        rank = min(rank, width)
        self.a = nn.Parameter(torch.randn(width, rank))
        self.b = nn.Parameter(torch.zeros(rank, width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, width))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, width))

    def forward(self, y: torch.Tensor, mode: int) -> torch.Tensor:  # (rows, width)
        hidden = torch.relu(y @ self.a @ self.b + self.bias)
        return y + self.mode_scale[mode] * hidden + self.mode_shift[mode]


class MALMENEditor(ShapeSharedEditor):
    """MALMEN's network per matrix shape (``n_blocks`` :class:`MALMENBlock` s on standardised
    ``[u; d]``), and a step and a log ridge per matrix."""

    def __init__(self, shapes: Sequence[tuple[int, int]], config: MALMENConfig) -> None:
        super().__init__(
            shapes,
            lambda width, n_modes: MALMENBlock(width, config.rank, n_modes),
            config.n_blocks,
            config.edit_lr,
        )
        self.log_ridges = nn.Parameter(torch.full((len(shapes),), float(config.log_ridge)))

    def observe(self, index: int, keys: torch.Tensor, grads: torch.Tensor) -> None:
        """In training, matrix ``index``'s rows join its network's running statistics."""
        if self.training:
            self.net(index).standardise.update(torch.cat([keys, grads], 1))

    def value_shifts(self, index: int, keys: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """``v_i = -eta_m (u_i . u~_i) d~_i`` of matrix ``index``, ``(rows, d_out)``."""
        return value_shifts(self.net(index), keys, grads, self.modes[index], self.edit_lrs[index])


class MALMEN(MetaMethod):
    """Least-squares aggregation of hypernetwork value shifts over many edits."""

    name = "malmen"
    display_name = "MALMEN"
    paper = "Tan et al. 2024"
    config_cls = MALMENConfig
    supports_batch = True

    def build_editor(self, model: nn.Module) -> MALMENEditor:
        return MALMENEditor(self.module_shapes(model), self.config)

    def shifts(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        editor: nn.Module,
    ) -> dict[str, Shift]:
        assert isinstance(editor, MALMENEditor)
        paths = self.module_paths(model)
        keys, grads = self._keys_and_gradients(model, tok, requests, paths)
        for index, path in enumerate(paths):  # every row counted before any is standardised
            editor.observe(index, keys[path], grads[path])
        shifts = {}
        with statistics_frozen(editor):
            for index, path in enumerate(paths):
                values = editor.value_shifts(index, keys[path], grads[path])  # (N, d_out)
                right = ridge_factor(keys[path], editor.log_ridges[index])  # (d_in, N) float64
                rows, (d_out, d_in) = values.shape[0], editor.shapes[index]
                if rows < min(d_in, d_out):  # dW = V^T right^T, of rank <= N
                    shifts[path] = Shift(left=values.T, right=right.float())
                else:
                    shifts[path] = Shift(dense=(right @ values.double()).T.float())
        return shifts

    def train_step(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[TrainingExample],
        editor: nn.Module,
    ) -> dict[str, float]:
        """The decoupled backward pass: the LM's gradient at ``S*``, then the network's."""
        assert isinstance(editor, MALMENEditor)
        model = hf_module(model)
        paths = self.module_paths(model)
        requests = [e.request for e in examples]
        with frozen(model):  # the language model's weights never get a gradient
            keys, grads = self._keys_and_gradients(model, tok, requests, paths)
            for index, path in enumerate(paths):  # the standardisers count the rows once
                editor.observe(index, keys[path], grads[path])
            with torch.no_grad(), statistics_frozen(editor):  # 1. S* without a graph
                solved = [
                    ridge_factor(keys[p], editor.log_ridges[i])
                    @ editor.value_shifts(i, keys[p], grads[p]).double()
                    for i, p in enumerate(paths)
                ]  # (d_in, d_out) each
            leaves = [s.float().requires_grad_() for s in solved]
            del solved  # float64 copies of every S*: the float32 leaves are kept
            shifts = {p: Shift(dense=leaf.T) for p, leaf in zip(paths, leaves)}
            # 2. G = dL/dS*, one pass of edits' graph at a time
            objective = self.post_edit_objective(
                model, tok, examples, shifts, chunk=self.objective_chunk(), backward=True
            )
        with statistics_frozen(editor):
            for index, (path, leaf) in enumerate(zip(paths, leaves)):
                grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                self._backward_through_editor(
                    editor, index, keys[path], grads[path], grad, leaf.detach()
                )
        return objective.stats

    def objective_chunk(self) -> int:
        """The post-edit loss runs ``pass_size`` edits at a time, as the keys pass does."""
        return self.config.pass_size

    def _keys_and_gradients(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: Sequence[EditRequest],
        paths: Sequence[str],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each matrix's keys and value gradients where target tokens are predicted (the
        reference's ``token: ans``), ``(N, d_in)`` and ``(N, d_out)``: gradients of the summed
        target NLL, so that a token's gradient does not depend on the rest of its pass."""
        pairs = [(r.text, r.target_new) for r in requests]
        size = self.config.pass_size
        return keys_and_gradients(model, tok, pairs, paths, size, "target", reduction="sum")

    def _backward_through_editor(
        self,
        editor: MALMENEditor,
        index: int,
        keys: torch.Tensor,
        grads: torch.Tensor,
        shift_grad: torch.Tensor,
        solved: torch.Tensor,
    ) -> None:
        """Steps 3 and 4: ``dL/dS*`` through the normal equation to ``lambda`` and ``V``, and
        ``dL/dV`` through the network, ``chunk_size`` rows at a time."""
        log_ridge = editor.log_ridges[index]
        with torch.no_grad():
            m = torch.linalg.solve(normal_matrix(keys, log_ridge), shift_grad.double())
            ridge_grad = -log_ridge.double().exp() * (m * solved.double()).sum()
            value_grads = (keys.double() @ m).float()  # (N, d_out)
        (log_ridge * ridge_grad.float()).backward()
        size = self.config.chunk_size
        for start in range(0, keys.shape[0], size):
            rows = slice(start, start + size)
            values = editor.value_shifts(index, keys[rows], grads[rows])  # (chunk, d_out)
            values.backward(value_grads[rows])


def value_shifts(
    net: PairNetwork, keys: torch.Tensor, grads: torch.Tensor, mode: int, edit_lr: torch.Tensor
) -> torch.Tensor:
    """``v_i = -eta (u_i . u~_i) d~_i``: keys ``(rows, d_in)``, gradients ``(rows, d_out)``."""
    keys_t, grads_t = net(keys, grads, mode)
    return -edit_lr * (keys * keys_t).sum(1, keepdim=True) * grads_t


def normal_matrix(keys: torch.Tensor, log_ridge: torch.Tensor) -> torch.Tensor:
    """``U^T U + e^lambda I``, ``(d_in, d_in)`` float64."""
    keys = keys.double()
    eye = torch.eye(keys.shape[1], dtype=keys.dtype, device=keys.device)
    return keys.T @ keys + log_ridge.double().exp() * eye


def ridge_factor(keys: torch.Tensor, log_ridge: torch.Tensor) -> torch.Tensor:
    """``(U^T U + e^lambda I)^{-1} U^T``, ``(d_in, N)`` float64: ``S* = ridge_factor @ V``."""
    return torch.linalg.solve(normal_matrix(keys, log_ridge), keys.double().T)


@contextmanager
def statistics_frozen(editor: nn.Module) -> Iterator[None]:
    """The standardisers in evaluation mode: every ``V`` of a batch is standardised with the
    statistics after all of its rows were counted (``MALMENEditor.observe``), and recomputing
    ``V`` for the backward pass counts none of them a second time."""
    standardisers = [m for m in editor.modules() if isinstance(m, RunningStandardiser)]
    modes = [m.training for m in standardisers]
    try:
        for m in standardisers:
            m.eval()
        yield
    finally:
        for m, mode in zip(standardisers, modes):
            m.train(mode)
