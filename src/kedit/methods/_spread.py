"""Spreading a batch of edits over several layers: MEMIT's scheme, shared by EMMET, AlphaEdit
and PMET, which differ only in the target they optimise, how the residual is shared between
layers, and the least-squares problem each layer solves.

1. Targets: one v* per request at the output of a module of the last edited layer L (the whole
   block for MEMIT, the MLP output projection for PMET and for every method on blocks that
   normalise the MLP's output, Gemma 2 and 3), from :mod:`kedit.methods._value`.
2. For each edited layer l, lowest first, with the layers below already updated:
   ``K`` = keys at l's MLP output projection, averaged within then across template groups;
   ``R`` = (targets - the module's current output at L) times ``share(layers left)``;
   ``dW = out_factor @ in_factor.T`` from the method's solver, applied at once so the next
   layer sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._keys import SubjectPasses, mean_keys, template_passes
from kedit.methods._stats import StatsConfig, stats_for
from kedit.methods._suffix import block_index
from kedit.methods._templates import context_templates, flatten
from kedit.methods._value import ValueConfig, ValueResult, ValueSearch, optimise_values
from kedit.methods._weights import low_rank_delta
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import arch_of, get_module, layer_path
from kedit.model.lm import hf_module
from kedit.types import EditRequest

#: (layer index among the edited ones, module path, K (d_in, n), R (d_out, n)) ->
#: (out_factor (d_out, n), in_factor (d_in, n)), in float64
Solver = Callable[[int, str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LayerUpdate:
    """What a spreading method's :meth:`SpreadMethod.solve` gets for one layer."""

    model: nn.Module
    path: str  # the layer's MLP output projection
    keys: torch.Tensor  # K, (d_in, n) float64: the facts' template-averaged keys
    residual: torch.Tensor  # R, (d_out, n) float64: this layer's share of what is left
    mom2: torch.Tensor  # C = E[k k^T], (d_in, d_in): the preserved keys' second moment
    edit: Edit  # the edit being recorded (its ``state`` is the session's)


def edited_layers(model: nn.Module, layers: Sequence[int]) -> list[str]:
    """The MLP output projections of ``layers``, lowest first, duplicates removed."""
    spec = arch_of(model)
    resolved = sorted({spec.check_layer(model, layer) for layer in layers})
    return [spec.path("mlp_out", layer) for layer in resolved]


def last_layer(model: nn.Module, layers: Sequence[int]) -> int:
    spec = arch_of(model)
    return max(spec.check_layer(model, layer) for layer in layers)


def optimise_targets(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    template_groups: Sequence[Sequence[str]],
    module_paths: str | Sequence[str],
    search: ValueSearch,
) -> list[ValueResult]:
    """v* for every request: each its own optimisation, as in MEMIT's compute_z, all run in
    the same passes (:func:`~kedit.methods._value.optimise_values`)."""
    return optimise_values(model, tok, requests, flatten(template_groups), module_paths, search)


def spread(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    requests: Sequence[EditRequest],
    edit: Edit,
    layer_paths: Sequence[str],
    template_groups: Sequence[Sequence[str]],
    target_path: str,
    targets: torch.Tensor,
    share: Callable[[int], float],
    solve: Solver,
    key_passes: SubjectPasses,
) -> list[torch.Tensor]:
    """Write ``targets`` (``(n, d)``, for ``target_path``'s output) over ``layer_paths`` (the
    MLP output projections, lowest first). Returns each layer's keys ``(d_in, n)``."""
    bare = [(r.text, r.subject_span) for r in requests]
    bare_passes = SubjectPasses(model, tok, bare, key_passes.hand_on.first)
    all_keys = []
    for i, path in enumerate(layer_paths):
        keys = mean_keys(model, tok, requests, template_groups, path, True, key_passes).T
        _, current = bare_passes.read(target_path, inputs=False)  # (n, d)
        residual = (targets - current).T * share(len(layer_paths) - i)  # (d, n)
        out_factor, in_factor = solve(i, path, keys.double(), residual.double())
        module = get_module(model, path)
        edit.add_delta(module.weight, low_rank_delta(module, out_factor, in_factor))
        all_keys.append(keys)
    return all_keys


def memit_solve(mom2: torch.Tensor, keys: torch.Tensor, weight: float) -> torch.Tensor:
    """MEMIT's ``(weight * C + K K^T)^{-1} K``, ``(d_in, n)`` in float64 (C = E[k k^T])."""
    keys = keys.to(torch.float64)
    system = weight * mom2.to(keys.device, torch.float64) + keys @ keys.T  # (d_in, d_in)
    return torch.linalg.solve(system, keys)


@dataclass(kw_only=True)
class SpreadConfig(ValueConfig, StatsConfig):
    """Fields shared by the spreading methods (v* and statistics fields come from
    :class:`ValueConfig` and :class:`StatsConfig`; defaults: MEMIT's GPT-2 XL values).

    Args:
        layers: blocks whose MLP output projections are updated (negative counts from the end).
    """

    layers: list[int] = field(default_factory=lambda: [13, 14, 15, 16, 17])
    clamp_norm_factor: float = 0.75
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])

    def stats_layers(self) -> list[int]:
        return list(self.layers)

    def validate(self) -> None:
        super().validate()
        if not self.layers:
            raise ValueError("layers must name at least one layer")


class SpreadMethod(EditMethod):
    """The MEMIT scheme above as one ``apply``; a method supplies :meth:`solve` and may change
    where its targets live (:meth:`target_paths`) and how the residual is shared
    (:meth:`share`)."""

    config_cls = SpreadConfig
    supports_batch = True

    def apply(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        edit: Edit,
    ) -> None:
        model = hf_module(model)
        cfg = self.config
        paths = edited_layers(model, cfg.layers)
        with edit.unedited():  # what is cached under the unedited model's fingerprint
            templates = context_templates(model, tok, self.env, cfg.context_template_length_params)
            stats = stats_for(model, tok, paths, self.env, cfg)
        target_path, search_paths = self.target_paths(model)
        values = optimise_targets(model, tok, requests, templates, search_paths, cfg.search())

        def solve(i: int, path: str, keys: torch.Tensor, residual: torch.Tensor):
            return self.solve(LayerUpdate(model, path, keys, residual, stats[path], edit))

        targets = torch.stack([v.target for v in values])  # (n, d_model)
        # the keys' texts, read again after each layer's update; no block below the lowest
        # edited one changes in this batch, so reads run from that block on
        first = block_index(model, paths[0])
        key_reads = template_passes(model, tok, requests, templates, first)
        spread(
            model,
            tok,
            requests,
            edit,
            paths,
            templates,
            target_path,
            targets,
            self.share,
            solve,
            key_reads,
        )
        self.after_update(model, tok, requests, templates, paths, edit, key_reads)
        edit.info.update(
            layers=len(paths),
            v_steps=max(v.steps for v in values),
            v_loss=max(v.loss for v in values),
        )

    def target_paths(self, model: nn.Module) -> tuple[str, str | list[str]]:
        """(the module whose output the targets are for, the module(s) v* is searched at):
        MEMIT's whole block at the last edited layer; on blocks that normalise the MLP's output
        (Gemma 2 and 3) the block's output is not linear in ``dW k``, so the targets are the
        last edited layer's MLP output instead, its residual shared between the layers as PMET
        shares its FFN target's (never the block's, whose algebra would be wrong there)."""
        part = "mlp_out" if arch_of(model).normed_mlp_output else "block"
        path = layer_path(model, part, last_layer(model, self.config.layers))
        return path, path

    def share(self, layers_left: int) -> float:
        """The part of the residual the current layer takes: MEMIT's ``1 / layers left``."""
        return 1.0 / layers_left

    def solve(self, layer: LayerUpdate) -> tuple[torch.Tensor, torch.Tensor]:
        """``(out_factor, in_factor)``, ``(d_out, n)`` and ``(d_in, n)`` in float64: one
        layer's update ``dW = out_factor @ in_factor.T``."""
        raise NotImplementedError

    def after_update(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        requests: list[EditRequest],
        templates: list[list[str]],
        paths: list[str],
        edit: Edit,
        key_passes: SubjectPasses,
    ) -> None:
        """Called once every layer is updated (AlphaEdit records the new keys; ``key_passes``
        reads them as :func:`spread` did)."""
