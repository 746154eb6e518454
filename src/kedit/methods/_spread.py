"""Spreading a batch of edits over several layers: MEMIT's scheme, shared by EMMET, AlphaEdit
and PMET, which differ only in the target they optimise, how the residual is shared between
layers, and the least-squares problem each layer solves.

1. Targets: one v* per request at the output of a module of the last edited layer L (the whole
   block for MEMIT, the MLP output projection for PMET), from :mod:`kedit.methods._value`.
2. For each edited layer l, lowest first, with the layers below already updated:
   ``K`` = keys at l's MLP output projection, averaged within then across template groups;
   ``R`` = (targets - the module's current output at L) times ``share(layers left)``;
   ``dW = out_factor @ in_factor.T`` from the method's solver, applied at once so the next
   layer sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._keys import mean_keys, subject_io
from kedit.methods._templates import flatten
from kedit.methods._value import ValueResult, ValueSearch, optimise_value
from kedit.methods._weights import low_rank_delta
from kedit.methods.base import Edit
from kedit.model.arch import arch_of, get_module
from kedit.types import EditRequest

#: (layer index among the edited ones, module path, K (d_in, n), R (d_out, n)) ->
#: (out_factor (d_out, n), in_factor (d_in, n)), in float64
Solver = Callable[[int, str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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
    """v* for every request (each its own optimisation, as in MEMIT's compute_z)."""
    templates = flatten(template_groups)
    return [optimise_value(model, tok, r, templates, module_paths, search) for r in requests]


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
) -> list[torch.Tensor]:
    """Write ``targets`` (``(n, d)``, for ``target_path``'s output) over ``layer_paths`` (the
    MLP output projections, lowest first). Returns each layer's keys ``(d_in, n)``."""
    bare = [(r.text, r.subject_span) for r in requests]
    all_keys = []
    for i, path in enumerate(layer_paths):
        keys = mean_keys(model, tok, requests, template_groups, path, per_group=True).T
        _, current = subject_io(model, tok, bare, target_path, inputs=False)  # (n, d)
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
