"""Validation shared by the formulas: every input is checked and a bad one named."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DISTRIBUTION_ATOL = 1e-6

FloatsLike = Sequence[float] | torch.Tensor


def _floats(values: FloatsLike, name: str) -> list[float]:
    """A non-empty list of floats without NaN (infinities pass; callers bound them)."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
        out = [float(v) for v in values.tolist()]
    else:
        if isinstance(values, (str, bytes)):
            raise ValueError(f"{name} must be a sequence of numbers, got a string")
        out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{name} is empty")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{name} contains NaN")
    return out


def _probabilities(values: FloatsLike, name: str) -> list[float]:
    """A non-empty list of probabilities, each in [0, 1]."""
    out = _floats(values, name)
    bad = [v for v in out if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"{name} must hold probabilities in [0, 1], got {bad[0]!r}")
    return out


def _probability(value: float, name: str) -> float:
    return _probabilities([value], name)[0]


def _same_length(a: Sequence[object], b: Sequence[object], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} and {name_b} differ in length: {len(a)} vs {len(b)}")


def _distribution(values: FloatsLike, name: str) -> torch.Tensor:
    """A 1-D float64 tensor that is already a probability distribution."""
    t = torch.as_tensor(_probabilities(values, name), dtype=torch.float64)
    total = float(t.sum())
    if abs(total - 1.0) > DISTRIBUTION_ATOL:
        raise ValueError(
            f"{name} is not normalised: it sums to {total:.6g}, not 1 "
            "(use l1_normalise or candidate_distribution first)"
        )
    return t


def _flags(values: Sequence[bool], name: str) -> list[bool]:
    """Booleans (0/1 ints accepted); anything else, e.g. a probability, is an error."""
    out = []
    for v in values:
        if isinstance(v, bool) or v in (0, 1):
            out.append(bool(v))
        else:
            raise ValueError(f"{name} must hold booleans, got {v!r}")
    if not out:
        raise ValueError(f"{name} is empty")
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
