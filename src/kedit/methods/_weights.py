"""Weight updates in the right orientation, whatever the layer type.

Methods think of a linear map as ``v = W k`` with ``W`` of shape ``(out, in)``. PyTorch's
``nn.Linear`` stores exactly that; transformers' ``Conv1D`` (GPT-2) stores ``W^T``. The layer
type is checked with ``isinstance``, never guessed from the weight's shape (square matrices
would make that guess meaningless).
"""

from __future__ import annotations

import torch
from torch import nn

from kedit.methods.changes import Delta
from kedit.model.arch import is_conv1d


def low_rank_delta(module: nn.Module, out_factor: torch.Tensor, in_factor: torch.Tensor) -> Delta:
    """``ΔW = out_factor @ in_factor.T`` (``(out, r)`` and ``(in, r)``) in ``module``'s layout."""
    if out_factor.dim() == 1:
        out_factor, in_factor = out_factor[:, None], in_factor[:, None]
    out_factor, in_factor = out_factor.float(), in_factor.float()
    if is_conv1d(module):
        return Delta(left=in_factor, right=out_factor)  # weight is (in, out)
    return Delta(left=out_factor, right=in_factor)  # weight is (out, in)
