"""ROME: Rank-One Model Editing.

Meng, Bau, Andonian, Belinkov. "Locating and Editing Factual Associations in GPT", NeurIPS 2022.
https://arxiv.org/abs/2202.05262

The MLP output projection ``W`` of one middle layer is treated as a linear associative memory
that maps a key ``k`` (the projection's input at the subject's last token) to a value ``v``.
ROME writes the new fact with the rank-one update that minimises the change on other keys
(weighted by their second moment ``C = E[k k^T]``) subject to ``W' k* = v*``:

    W' = W + (v* - W k) (C^{-1} k*)^T / ((C^{-1} k*)^T k)

1. ``k*``: the key averaged over the prompt preceded by sampled context templates.
2. ``v*``: the value that makes the model output the new target (``methods/_value.py``).
3. ``u = C^{-1} k* / ||C^{-1} k*||`` and ``right = (v* - W k) / (k . u)``, with ``k`` and
   ``W k`` from the bare prompt, as the reference code does; ``W += right u^T``.

Modifies one weight matrix. Edits one fact per call; for many facts use sequential editing or
MEMIT. The key averaging mismatch between steps 1 and 3 is the original code's and is kept here
for fidelity (r-ROME fixes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods._keys import subject_io
from kedit.methods._stats import StatsConfig, stats_for
from kedit.methods._templates import context_templates, fill, flatten
from kedit.methods._trace import subject_mlp_trace
from kedit.methods._value import ValueConfig, optimise_value
from kedit.methods._weights import low_rank_delta
from kedit.methods.base import EditMethod
from kedit.methods.edit import Edit
from kedit.model.arch import get_module, layer_path
from kedit.model.lm import hf_module
from kedit.types import EditRequest


@dataclass(kw_only=True)
class ROMEConfig(ValueConfig, StatsConfig):
    """ROME hyperparameters (defaults: the paper's GPT-2 XL configuration); the v* and
    statistics fields are documented on :class:`ValueConfig` and :class:`StatsConfig`.

    Args:
        layer: block whose MLP output projection is rewritten (negative counts from the end),
            or ``"auto"``: for each fact, the peak of its causal trace (the MLP outputs'
            indirect effect at the subject's last token, in the model as it is before this
            edit; see :mod:`kedit.methods._trace`). Hase et al. (2023) found that this peak
            predicts where an edit succeeds poorly; ``kedit bench --scenarios
            sweep:layer=...`` measures it on your model.
        mom2_adjustment: weigh the update by the inverse key second moment C^-1 (the paper);
            False uses C = I.
    """

    layer: int | Literal["auto"] = 17
    mom2_adjustment: bool = True

    def stats_layers(self) -> list[int]:
        return [] if self.layer == "auto" else [self.layer]


class ROME(EditMethod):
    """Rank-one update of one MLP output projection."""

    name = "rome"
    display_name = "ROME"
    paper = "Meng et al. 2022"
    family = "locate-and-edit"
    config_cls = ROMEConfig
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
        layer = cfg.layer
        if layer == "auto":  # where the fact's recall runs in the model as it is now
            trace = subject_mlp_trace(model, tok, request, self.env)
            layer = trace.peak
            edit.info["layer_trace"] = trace.to_dict()
        path = layer_path(model, "mlp_out", layer)
        with edit.unedited():  # what is cached under the unedited model's fingerprint
            templates = context_templates(model, tok, self.env, cfg.context_template_length_params)
            mom2 = None
            if cfg.mom2_adjustment:
                mom2 = stats_for(model, tok, [path], self.env, cfg)[path]

        module = get_module(model, path)
        texts = [fill(t, request) for t in flatten(templates)]
        keys, outputs = subject_io(model, tok, texts, path)  # (templates, d_in), (templates, d_out)
        u = self._inverse_cov_times(mom2, keys.mean(0))  # C^-1 k*, (d_in,)
        value = optimise_value(model, tok, request, flatten(templates), path, cfg.search())
        k, v = self._update_key_value(model, tok, request, path, keys, outputs)
        right = (value.target - v) / (k @ u)  # (d_out,)

        edit.add_delta(module.weight, low_rank_delta(module, right, u))
        edit.info.update(
            layer=path,
            v_steps=value.steps,
            v_loss=value.loss,
            delta_norm=float(right.norm() * u.norm()),
        )

    def _update_key_value(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        request: EditRequest,
        path: str,
        template_keys: torch.Tensor,
        template_outputs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and module output (``W k + b``) that size the update: the bare prompt's, as
        the reference computes them (r-ROME uses the templates' averages instead)."""
        keys, outputs = subject_io(model, tok, [(request.text, request.subject_span)], path)
        return keys[0], outputs[0]

    @staticmethod
    def _inverse_cov_times(mom2: torch.Tensor | None, key: torch.Tensor) -> torch.Tensor:
        """``C^{-1} k / ||C^{-1} k||`` (or ``k / ||k||`` without mom2 adjustment)."""
        if mom2 is not None:
            u = torch.linalg.solve(mom2.double(), key.double().cpu()).to(key)
        else:
            u = key
        return u / u.norm()
