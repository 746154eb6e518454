"""GRACE: General Retrieval Adaptors for Continual Editing.

Hartvigsen, Sankaranarayanan, Palangi, Kim, Ghassemi. "Aging with GRACE: Lifelong Model Editing
with Discrete Key-Value Adaptors", NeurIPS 2023. https://arxiv.org/abs/2211.11031

One layer is wrapped by a codebook of (key, value, deferral radius epsilon, label) entries. A key
is the layer's input at one token, the edit's last prompt token; its value is a trained
replacement for the layer's output. A forward pass reads one query token per sequence (the
official ``GRACEAdapter``): the last prompt token, or, in a pass that does not say where the
prompt ends, the last token (generation; EasyEdit's ``key_id=-1``). When the query lies within
epsilon of its nearest key, that key's value replaces the layer's output at the query token
(``replacement="last"``, EasyEdit's ``replace_last``) or at every token before it (``"prompt"``,
the official ``replace_prompt``); elsewhere the layer runs unchanged. The model's weights are
never touched.

Per edit (first step of the reference's training loop):

* add a key when the query is farther than ``eps_init + eps_nearest`` from every key;
* split when it is closer but the nearest key has a different label: both radii become half
  the distance;
* when the labels agree and the query lies outside the nearest radius, grow the radius to it
  (``coverage``) or move the key halfway to the query and grow the radius (``moving_average``);

then train the chosen value for ``n_iter`` Adam steps on the target's teacher-forced loss.

Where the adaptor sits, as the references choose it: GPT-2 XL ``h[35].mlp.c_fc`` (the official
repository), GPT-J ``h[25].mlp.fc_out`` and Llama-2-7B ``layers[27].mlp.down_proj`` (EasyEdit),
scaled to other depths by ``depth``. Teacher-forced scores (``edit.lm``) query the codebook at
each row's last prompt token, where generation would. Deliberately: training stops early once
the loss is below ``early_stop_loss`` (the references always run ``n_iter`` steps).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.config import MethodConfig
from kedit.methods._routing import RoutedLM
from kedit.methods._suffix import step_logits
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, num_layers
from kedit.model.hooks import Trace, frozen, run_until_stopped
from kedit.model.lm import hf_module, model_device
from kedit.model.tokens import Batch, PromptTarget, encode_prompt_target, pad
from kedit.types import EditRequest


@dataclass(kw_only=True)
class GRACEConfig(MethodConfig):
    """GRACE hyperparameters (defaults: the official ``grace.yaml`` on GPT-2 XL, with
    EasyEdit's replacement).

    Args:
        layer: block holding the wrapped module; None: the block at ``depth``.
        depth: the wrapped block as a fraction of the model's depth, ``round(depth * layers)``
            (GPT-2 XL's 35 of 48 by default), used when ``layer`` is None.
        module: canonical part wrapped (its input is the key, its output replaced).
        eps_init: deferral radius of a new key.
        edit_lr: Adam learning rate for the value.
        n_iter: maximum training steps per edit.
        val_init: ``cold`` (uniform random value) or ``warm`` (the layer's current output).
        eps_expand: ``coverage`` (grow the radius to the query) or ``moving_average`` (move the
            key halfway to the query and grow the radius), when the query lies outside it.
        replacement: ``last`` (the query token's output, EasyEdit's ``replace_last``) or
            ``prompt`` (the outputs of every token before it, the official ``replace_prompt``).
        early_stop_loss: stop training once the target loss is below this (0 disables).
    """

    layer: int | None = None
    depth: float = 35 / 48
    module: str = "mlp_in"
    eps_init: float = 1.0
    edit_lr: float = 1.0
    n_iter: int = 100
    val_init: Literal["cold", "warm"] = "cold"
    eps_expand: Literal["coverage", "moving_average"] = "coverage"
    replacement: Literal["last", "prompt"] = "last"
    early_stop_loss: float = 1e-2

    def validate(self) -> None:
        if self.eps_init <= 0 or self.edit_lr <= 0 or self.n_iter < 1:
            raise ValueError("eps_init and edit_lr must be positive, n_iter at least 1")
        if not 0 < self.depth <= 1:
            raise ValueError(
                f"depth is a fraction of the model's depth in (0, 1], got {self.depth}"
            )

    def block(self, model: nn.Module) -> int:
        """The wrapped block of ``model``: ``layer``, or the block at ``depth``."""
        if self.layer is not None:
            return self.layer
        depth = num_layers(model)
        return min(depth - 1, round(self.depth * depth))


class GraceCodebook(nn.Module):
    """The adaptor that wraps a layer. Keys and radii are buffers; values are trainable."""

    def __init__(self, layer: nn.Module, d_in: int, d_out: int, replacement: str = "last") -> None:
        super().__init__()
        self.layer = layer
        self.replacement = replacement
        param = next(layer.parameters())
        self.register_buffer("keys", param.new_zeros(0, d_in, dtype=torch.float32))
        self.register_buffer("eps", param.new_zeros(0, dtype=torch.float32))
        self.values = nn.Parameter(
            param.new_zeros(0, d_out, dtype=torch.float32), requires_grad=False
        )
        self.labels: list[str] = []
        #: the query token of each row of the next passes (None: each row's last token)
        self.query_columns: torch.Tensor | None = None
        #: whether the codebook answered each row of the latest pass (see ``methods._routing``)
        self.fired: torch.Tensor | None = None

    @contextmanager
    def querying(self, columns: torch.Tensor) -> Iterator[None]:
        """Query the codebook at these columns, one per row, in the passes inside the block."""
        previous, self.query_columns = self.query_columns, columns
        try:
            yield
        finally:
            self.query_columns = previous

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.layer(x, *args, **kwargs)  # (batch, seq, d_out)
        if not self.labels:
            self.fired = torch.zeros(x.shape[0], dtype=torch.bool)
            return out
        rows = torch.arange(x.shape[0], device=x.device)
        if self.query_columns is None:
            columns = torch.full_like(rows, x.shape[1] - 1)
        else:
            columns = self.query_columns.to(x.device)
        query = x[rows, columns].float()  # (batch, d_in)
        nearest_dist, nearest = torch.cdist(query, self.keys).min(-1)  # (batch,)
        hit = nearest_dist <= self.eps[nearest]  # (batch,)
        self.fired = hit.detach().cpu()
        value = self.values[nearest].to(out.dtype)[:, None]  # (batch, 1, d_out)
        positions = torch.arange(x.shape[1], device=x.device)[None]  # (1, seq)
        if self.replacement == "last":
            where = positions == columns[:, None]  # (batch, seq)
        else:
            where = positions < columns[:, None]
        return torch.where((where & hit[:, None])[..., None], value, out)

    # codebook state, for exact undo --------------------------------------------------------

    def get_state(self) -> tuple:
        return (
            self.keys.clone(),
            self.eps.clone(),
            self.values.detach().clone(),
            list(self.labels),
        )

    def set_state(self, state: tuple) -> None:
        keys, eps, values, labels = state
        self.keys, self.eps = keys.clone(), eps.clone()
        self.values = nn.Parameter(values.clone(), requires_grad=False)
        self.labels = list(labels)

    def nearest(self, query: torch.Tensor) -> tuple[int, float]:
        dist = torch.cdist(query.float()[None], self.keys)[0]  # (n,)
        index = int(dist.argmin())
        return index, float(dist[index])

    def add(self, key: torch.Tensor, value: torch.Tensor, eps: float, label: str) -> int:
        self.keys = torch.cat([self.keys, key.float()[None]])
        self.eps = torch.cat([self.eps, self.eps.new_tensor([eps])])
        self.values = nn.Parameter(
            torch.cat([self.values.detach(), value.float()[None]]), requires_grad=False
        )
        self.labels.append(label)
        return len(self.labels) - 1


class GraceLM(RoutedLM):
    """The GRACE-edited model behind the ``LanguageModel`` interface: teacher-forced scores
    query the codebook at each row's last prompt token, where generation would (a pass over
    prompt and target together would otherwise query at the target's last token); ``routed``
    says whether a prompt fell within a key's radius."""

    def __init__(self, model: nn.Module, tok: PreTrainedTokenizerBase, codebook: GraceCodebook):
        super().__init__(model, tok, [codebook])
        self.codebook = codebook

    def _target_logits(self, batch: Batch, keep: int, rows: Sequence[PromptTarget]) -> torch.Tensor:
        columns = torch.tensor([batch.column(r, pair.n_prompt - 1) for r, pair in enumerate(rows)])
        with self.codebook.querying(columns):
            return super()._target_logits(batch, keep, rows)


class GRACE(EditMethod):
    """Discrete key-value adaptor at one layer."""

    name = "grace"
    display_name = "GRACE"
    paper = "Hartvigsen et al. 2023"
    family = "added-parameters"
    config_cls = GRACEConfig
    supports_batch = False

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        (request,) = requests
        cfg = self.config
        layer = arch_of(model).check_layer(model, cfg.block(model))
        path = arch_of(model).path(cfg.module, layer)
        pair = encode_prompt_target(tok, request.text, request.target_new)
        codebook = get_module(model, path)
        wrapped = path + ".layer" if isinstance(codebook, GraceCodebook) else path
        query, layer_out = self._query(model, wrapped, pair.ids, pair.n_prompt - 1)

        if not isinstance(codebook, GraceCodebook):
            codebook = GraceCodebook(codebook, query.shape[-1], layer_out.shape[-1])
            edit.swap_module(model, path, codebook)
        edit.save_state(codebook)
        index = self._update_codebook(codebook, query, layer_out, request.target_new)
        codebook.replacement = cfg.replacement
        edit.info["loss"], edit.info["suffix_pass"] = self._train_value(
            model, codebook, index, pair, layer
        )
        edit.info.update(layer=path, codebook_size=len(codebook.labels))
        edit.wrap(GraceLM(model, tok, codebook))

    @torch.no_grad()
    def _query(
        self, model: nn.Module, path: str, ids: list[int], position: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The wrapped layer's input and output at token ``position``: ``(d_in,)``, ``(d_out,)``."""
        batch = pad([ids], 0, left=False).to(model_device(model))
        with Trace(model, path, retain_input=True, retain_output=True, stop=True) as trace:
            run_until_stopped(model, **batch.model_inputs(), use_cache=False)
        return trace.input[0, position].float(), trace.output[0, position].float()

    def _update_codebook(
        self, codebook: GraceCodebook, query: torch.Tensor, layer_out: torch.Tensor, label: str
    ) -> int:
        cfg = self.config
        generator = torch.Generator().manual_seed(self.env.seed)
        cold = torch.rand(layer_out.shape[-1], generator=generator).to(layer_out.device)
        new_value = cold if cfg.val_init == "cold" else layer_out
        if not codebook.labels:
            return codebook.add(query, new_value, cfg.eps_init, label)
        index, dist = codebook.nearest(query)
        if dist > cfg.eps_init + float(codebook.eps[index]):
            return codebook.add(query, new_value, cfg.eps_init, label)
        if codebook.labels[index] != label:  # conflict: split the two radii
            codebook.eps[index] = dist / 2 - 1e-5
            return codebook.add(query, new_value, dist / 2, label)
        if dist > float(codebook.eps[index]):  # the query lies outside: expand
            if cfg.eps_expand == "moving_average":
                codebook.keys[index] = 0.5 * codebook.keys[index] + 0.5 * query.float()
            codebook.eps[index] = dist
        return index

    def _train_value(
        self, model: nn.Module, codebook: GraceCodebook, index: int, pair: PromptTarget, first: int
    ) -> tuple[float, bool]:
        """Adam on row ``index`` of the codebook values, for the target's teacher-forced loss,
        the codebook queried at the last prompt token: the loss, and whether the steps ran the
        blocks from the codebook's (``first``) on only (``_suffix``)."""
        cfg = self.config
        batch = pad([pair.ids], 0, left=False).to(model_device(model))
        target = torch.tensor(pair.target_ids, device=batch.input_ids.device)
        predicting = slice(pair.n_prompt - 1, len(pair.ids) - 1)  # positions that predict it
        others = torch.ones(len(codebook.labels), dtype=torch.bool)
        others[index] = False
        optimiser = torch.optim.Adam([codebook.values], lr=cfg.edit_lr)
        loss = float("inf")
        key_column = torch.tensor([pair.n_prompt - 1])
        try:
            with frozen(model), codebook.querying(key_column):
                codebook.values.requires_grad_(True)
                forward, fast = step_logits(model, batch.model_inputs(), first)  # blocks >= it
                for _ in range(cfg.n_iter):
                    logits = forward()[0]
                    step_loss = F.cross_entropy(logits[predicting].float(), target)
                    loss = step_loss.item()
                    if loss < cfg.early_stop_loss:
                        break
                    optimiser.zero_grad()
                    step_loss.backward()
                    codebook.values.grad[others] = 0  # only this edit's value moves
                    optimiser.step()
        finally:
            codebook.values.grad = None
        return loss, fast
