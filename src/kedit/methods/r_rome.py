"""r-ROME: ROME with its key mismatch fixed.

Gupta, Baskaran, Anumanchipalli. "Rebuilding ROME: Resolving Model Collapse during Sequential
Model Editing", 2024. https://arxiv.org/abs/2403.07175

ROME's code derives the update direction from the key averaged over context templates, k*, but
computes the update size from the key and output of the bare prompt. That mismatch produces
"disabling edits" (a single huge update that breaks the model) and collapse under sequential
editing. r-ROME uses the averaged key consistently:

    right = (v* - mean_j (W k_j + b)) / (k* . u),   k* = mean_j k_j

so the update writes exactly ``W' k* = v*``. Everything else is ROME.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from kedit.methods.rome import ROME
from kedit.types import EditRequest


class RROME(ROME):
    """ROME with the averaged key on both sides of the update."""

    name = "r-rome"
    display_name = "r-ROME"
    paper = "Gupta et al. 2024"
    family = "locate-and-edit"
    presets = "rome"  # ROME's hyperparameters, config and presets

    def _update_key_value(
        self,
        model: nn.Module,
        tok: PreTrainedTokenizerBase,
        request: EditRequest,
        path: str,
        template_keys: torch.Tensor,
        template_outputs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and the module output averaged over the context templates."""
        return template_keys.mean(0), template_outputs.mean(0)
