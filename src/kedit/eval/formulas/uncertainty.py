"""How sure a number is: seeded percentile-bootstrap confidence intervals, and the sample a
comparison with a threshold would need.

Every headline number kedit prints is an :class:`Estimate`: the value on the sample, and the
95% interval of the percentile bootstrap over the sample's units (cases for the editing
measures, examples or texts for the general-ability tasks). The resamples are drawn from a fixed
seed, so the same rows always give the same interval; a statistic is any function of a resample
(the index rows ``(R, n)``) to ``R`` values, which lets weighted means, corpus perplexities, F1
and MCC, and paired differences between two models on the same units share one procedure.

Paired comparisons (an edited model against the unedited one on the same examples, one method
against another on the same cases) resample the shared units once and take the difference in
each resample, which is what makes small differences measurable at all.

Known limit: when every unit agrees (20 cases that all succeed), every resample agrees too and
the interval is the single value; the sample size still bounds what can be claimed (up to
1 - 0.05^(1/n) of further cases could fail at 95%, about 3/n for large n: the "rule of three";
:func:`unseen_rate_bound`), which the findings say where it matters.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0

#: a statistic of a resample: index rows ``(R, n)`` -> ``(R,)`` values
Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """A value and its bootstrap confidence interval over ``n`` units."""

    value: float
    low: float
    high: float
    n: int
    #: what was resampled: ``cases``, ``examples``, ``texts``
    unit: str = "cases"
    level: float = LEVEL

    def side(self, threshold: float) -> int:
        """+1 if the whole interval lies above ``threshold``, -1 if below, 0 if it holds it."""
        if self.low > threshold:
            return 1
        if self.high < threshold:
            return -1
        return 0

    def needed(self, threshold: float) -> int | None:
        """The sample size at which the interval would clear ``threshold`` if the value stayed
        where it is (the half-width shrinks as 1/sqrt(n)); None when the value sits on the
        threshold, where no sample settles it."""
        gap = abs(self.value - threshold)
        half = self.value - self.low if self.value > threshold else self.high - self.value
        if gap < 1e-12:
            return None
        if half < gap:  # already clear
            return self.n
        # the half-width must shrink strictly below the gap
        return max(self.n + 1, math.floor(self.n * (half / gap) ** 2) + 1)

    @property
    def degenerate(self) -> bool:
        """Every resample gave the same value (every unit agreed): the interval says nothing
        beyond the sample size."""
        return self.low == self.high

    def as_list(self) -> list[float]:
        """``[low, high]``, as results files store it."""
        return [self.low, self.high]


def unseen_rate_bound(n: int, level: float = LEVEL) -> float:
    """When all ``n`` units agree, the one-sided upper ``level`` bound on the rate at which
    further units would not: ``1 - (1 - level)^(1/n)`` (exact binomial; about 3/n for large n,
    the rule of three; 0.95 for one unit, 0.139 for 20)."""
    return 1.0 - (1.0 - level) ** (1.0 / n)


@lru_cache(maxsize=8)
def resample_rows(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Index rows of ``resamples`` bootstrap resamples of ``n`` units, ``(R, n)``; the same for
    the same arguments (read-only)."""
    rows = np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=np.int32)
    rows.setflags(write=False)
    return rows


def seed_for(name: str) -> int:
    """A fixed seed per name (a task's), so that separate samples are resampled independently
    while the same sample always gets the same rows."""
    return SEED + zlib.crc32(name.encode("utf-8"))


def draws(statistic: Statistic, n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The statistic on each resample, ``(R,)``."""
    return np.asarray(statistic(resample_rows(n, resamples, seed)), dtype=np.float64)


def value_of(statistic: Statistic, n: int) -> float:
    """The statistic on the sample itself."""
    return float(statistic(np.arange(n)[None])[0])


def from_draws(
    value: float, samples: np.ndarray, n: int, unit: str = "cases", level: float = LEVEL
) -> Estimate | None:
    """An :class:`Estimate` from bootstrap ``samples`` of a statistic (None without any finite
    one)."""
    finite = samples[np.isfinite(samples)]
    if not finite.size or not math.isfinite(value):
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Estimate(float(value), float(min(low, value)), float(max(high, value)), n, unit, level)


def estimate(
    statistic: Statistic,
    n: int,
    unit: str = "cases",
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Estimate | None:
    """The statistic with its 95% percentile-bootstrap interval over ``n`` units (None for an
    empty sample)."""
    if n < 1:
        return None
    return from_draws(value_of(statistic, n), draws(statistic, n, resamples, seed), n, unit)


def weighted_mean(values: Sequence[float], weights: Sequence[float] | None = None) -> Statistic:
    """``sum(v * w) / sum(w)`` over a resample (a unit's weight pools several probes)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    return lambda rows: (v[rows] * w[rows]).sum(-1) / w[rows].sum(-1)


def mean_estimate(
    values: Sequence[float], weights: Sequence[float] | None = None, unit: str = "cases"
) -> Estimate | None:
    """The (weighted) mean with its interval over the units."""
    return estimate(weighted_mean(values, weights), len(values), unit)


def mean_of_draws(parts: Sequence[tuple[float, np.ndarray]], n: int, unit: str) -> Estimate | None:
    """The mean of several independent statistics (value, draws): the mean of their values,
    and of their draws resample by resample (tasks measured on separate examples)."""
    if not parts:
        return None
    value = sum(v for v, _ in parts) / len(parts)
    return from_draws(value, np.mean([d for _, d in parts], axis=0), n, unit)


#: one term of a paired comparison: (coefficient, unit -> (value, weight))
Term = tuple[float, dict[str, tuple[float, float]]]


def paired_combination(terms: Sequence[Term], unit: str = "cases") -> Estimate | None:
    """``sum(coefficient * weighted mean)`` over the terms, each mean taken over the same units
    (those every term has), resampled together: the difference between two methods on the same
    cases, or between one method's scores in two scenarios. None without a shared unit."""
    shared = sorted(set.intersection(*(set(values) for _, values in terms))) if terms else []
    if not shared:
        return None
    arrays = [
        (
            coefficient,
            np.asarray([values[u][0] for u in shared], dtype=np.float64),
            np.asarray([values[u][1] for u in shared], dtype=np.float64),
        )
        for coefficient, values in terms
    ]

    def statistic(rows: np.ndarray) -> np.ndarray:
        return sum(c * (v[rows] * w[rows]).sum(-1) / w[rows].sum(-1) for c, v, w in arrays)

    return estimate(statistic, len(shared), unit)
