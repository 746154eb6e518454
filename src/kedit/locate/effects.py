"""What many facts' traces say together: the average indirect effect by token and layer.

Meng et al. (2022, figure 2) average each state's indirect effect over facts after grouping a
prompt's tokens into six categories: the subject's first token, its middle tokens, its last
token, the first token after it, the further tokens, and the prompt's last token. A category a
prompt lacks (a one-token subject has no first or middle token apart from the last; a subject
at the end of the prompt has no token after it) leaves that prompt out of the category's mean,
as the reference does. Every mean carries its 95% bootstrap interval over facts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kedit.eval.formulas.uncertainty import RESAMPLES, from_draws, resample_rows
from kedit.model.causal_trace import FactTrace

CATEGORIES = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)


def token_categories(n_tokens: int, subject_range: tuple[int, int]) -> list[list[int]]:
    """The token indices of each of :data:`CATEGORIES` (the reference's grouping: a token
    belongs to the first category that claims it; the last token is always its own)."""
    first, end = subject_range
    last = n_tokens - 1
    taken: set[int] = {last, end - 1}
    groups = [[first] if first < end - 1 else [], list(range(first + 1, end - 1)), [end - 1]]
    taken |= set(groups[0]) | set(groups[1])
    after = [t for t in range(end, last) if t not in taken]
    groups += [after[:1], after[1:], [last]]
    return groups


def category_effects(trace: FactTrace) -> np.ndarray:
    """Indirect effect averaged within each token category, ``(6, layers)``; NaN rows for the
    categories the prompt lacks."""
    effects = trace.effects  # (tokens, layers)
    out = np.full((len(CATEGORIES), effects.shape[1]), np.nan)
    for i, tokens in enumerate(token_categories(effects.shape[0], trace.subject_range)):
        if tokens:
            out[i] = effects[tokens].mean(0)
    return out


@dataclass(frozen=True)
class AverageEffect:
    """The average indirect effect of one kind of trace over facts, by category and layer,
    with the per-cell 95% interval and the number of facts each cell averages."""

    kind: str
    mean: np.ndarray  # (6, layers)
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray  # (6,) facts with a token in the category
    total_effect: float  # mean of clean minus corrupted probability
    total_low: float
    total_high: float

    def peak(self, category: str = "last subject token") -> int:
        """The layer of the largest average effect at a category's tokens."""
        return int(np.nanargmax(self.mean[CATEGORIES.index(category)]))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "categories": list(CATEGORIES),
            "mean": _listed(self.mean),
            "low": _listed(self.low),
            "high": _listed(self.high),
            "n": self.n.tolist(),
            "total_effect": [self.total_effect, self.total_low, self.total_high],
            "peak_layer_last_subject_token": self.peak(),
        }


def average_effect(traces: Sequence[FactTrace], resamples: int = RESAMPLES) -> AverageEffect:
    """The average indirect effect of ``traces`` (one kind) over facts, with intervals."""
    if not traces:
        raise ValueError("no traces to average")
    kinds = {(t.kind, t.severed) for t in traces}
    if len(kinds) != 1:
        raise ValueError(f"average traces of one kind at a time, got {sorted(map(str, kinds))}")
    cells = np.stack([category_effects(t) for t in traces])  # (facts, 6, layers)
    n = len(traces)
    rows = resample_rows(n, resamples)  # (R, n)
    with np.errstate(invalid="ignore"):
        mean = _nanmean(cells, np.arange(n)[None])[0]
        draws = _nanmean(cells, rows)  # (R, 6, layers)
    tail = 2.5
    low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    total = np.array([t.clean - t.corrupted for t in traces])
    total_est = from_draws(float(total.mean()), total[rows].mean(1), n, "facts")
    return AverageEffect(
        kind=traces[0].kind + (f" (severed {traces[0].severed})" if traces[0].severed else ""),
        mean=mean,
        low=np.minimum(low, mean),
        high=np.maximum(high, mean),
        n=(~np.isnan(cells[:, :, 0])).sum(0),
        total_effect=total_est.value,
        total_low=total_est.low,
        total_high=total_est.high,
    )


def _nanmean(cells: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean over the facts of each resample, ignoring facts without the category."""
    picked = cells[rows]  # (R, n, 6, layers)
    present = ~np.isnan(picked)
    total = np.where(present, picked, 0.0).sum(1)
    count = present.sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _listed(values: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in values]
