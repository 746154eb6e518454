"""A bench's sweeps per value, and for layer sweeps edit success against the causal trace.

A sweep (``sweep:layer=0-29``, :class:`~kedit.eval.protocols.Sweep`) edits every case once per
value of a method's config field; a layer sweep also keeps each case's MLP causal trace on the
unedited model (Meng et al. 2022): per layer, the answer's probability that restoring the MLP
outputs around that layer at the subject's last token recovers (the *indirect effect*).

Hase, Bansal, Kim, Ghandeharioun. "Does Localization Inform Editing? Surprising Differences in
Causality-Based Localization vs. Knowledge Editing in Language Models", NeurIPS 2023, asked
whether the trace tells where to edit: over the (case, layer) pairs, does the trace's effect at
a layer predict how well an edit there succeeds? They found that the layer explains much of edit
success and the trace next to nothing beyond it. Per sweep job:

* a :class:`SweepPoint` per value: the cases, the mean of each of :data:`SWEEP_MEASURES` with
  its 95% interval (from the bench's one summariser), the mean edit success (see
  :data:`SUCCESS_PREFERENCE`), and for a layer sweep the mean indirect effect at the layer;
* for a layer sweep, a :class:`TraceCorrelation` (:func:`trace_correlation`): the Pearson
  correlation between the trace's effect at the edited layer and edit success; the same within
  layers (each layer's mean of both removed); the share of edit success's variance that the
  layer alone explains and the share the trace adds to it (Hase et al.'s added R²); the share
  of cases whose trace peaks at a layer where their edit succeeds best; and the layer best on
  average by each.

Intervals are the seeded percentile bootstrap over cases (:mod:`kedit.eval.formulas.uncertainty`):
a case's layers are resampled together, since they share the case's difficulty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kedit.bench.summary import BenchSummary, JobInfo
from kedit.eval.formulas.uncertainty import Estimate, estimate, mean_estimate
from kedit.eval.protocol_text import parse_protocol
from kedit.eval.protocols import Sweep
from kedit.formatting import format_interval, format_value

#: the measures shown per value, with their 95% intervals
SWEEP_MEASURES = ("efficacy_score", "paraphrase_score", "neighborhood_score")
#: edit success in the trace analysis: the first present (P(new) - P(old) on the edit prompt,
#: graded like Hase et al.'s rewrite score, else the 0/1 comparison)
SUCCESS_PREFERENCE = ("efficacy_magnitude", "efficacy_score")
#: bootstrap resamples evaluated at once on the (resamples, cases, layers) grids (bounds memory)
CHUNK = 100

#: a statistic of paired grids, (resamples, cases, layers) each -> (resamples,)
GridStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SweepPoint:
    """One value of a sweep: its cases and means (each with its 95% interval)."""

    value: int
    #: cases scored at this value
    cases: int
    #: measure -> its mean over the cases (None where the bench has none)
    measures: dict[str, Estimate | None]
    #: the mean edit success (the analysis's measure)
    success: Estimate | None = None
    #: layer sweeps: the mean MLP indirect effect of the cases' traces at this layer
    trace_effect: Estimate | None = None


@dataclass(frozen=True)
class TraceCorrelation:
    """Edit success against the trace's effect at the edited layer (see module docstring)."""

    #: the edit-success measure
    measure: str
    #: the traced cases with at least one (layer, success) pair, and the pairs
    cases: int
    pairs: int
    #: Pearson r over the (case, layer) pairs
    pearson: Estimate | None
    #: the same with each layer's mean of both variables removed
    within_layer: Estimate | None
    #: R² of edit success on the layer alone (the share of its variance between layers)
    layer_r2: Estimate | None
    #: the R² the trace adds to the layer: within-layer r² times (1 - layer R²)
    added_r2: Estimate | None
    #: share of cases whose trace peaks (among the swept layers) at one of their best edit layers
    peak_is_best: Estimate | None
    #: what a layer drawn at random would score on the same cases
    chance: float | None
    #: the layer where the mean edit success is highest, and where the mean trace effect is
    best_success_layer: int | None
    best_trace_layer: int | None


@dataclass(frozen=True)
class SweepAnalysis:
    """One sweep job: its points, and for a layer sweep the trace analysis."""

    job_id: str
    method: str
    scenario: str
    key: str
    points: tuple[SweepPoint, ...]
    #: the edit-success measure (None without any of :data:`SUCCESS_PREFERENCE`)
    measure: str | None
    correlation: TraceCorrelation | None


def sweep_analyses(summary: BenchSummary) -> list[SweepAnalysis]:
    """Every sweep job with results, in the summary's scenario and method order."""
    jobs = [
        job
        for scenario in summary.scenarios()
        if scenario.startswith(f"{Sweep.kind}:")
        for job in summary.scenario_jobs(scenario)
    ]
    return [sweep_analysis(summary, job) for job in jobs]


def sweep_analysis(summary: BenchSummary, job: JobInfo) -> SweepAnalysis:
    """One sweep job's :class:`SweepAnalysis`."""
    protocol = parse_protocol(job.scenario)
    if not isinstance(protocol, Sweep):
        raise ValueError(f"{job.job_id} is not a sweep")
    values = summary.checkpoints(job.job_id)
    measure = success_measure(summary, job.job_id)
    traces = summary.traces.get(job.job_id, {}) if protocol.key == "layer" else {}
    points = tuple(_point(summary, job.job_id, v, measure, traces) for v in values)
    correlation = None
    if traces and measure is not None:
        success, effect = layer_grid(summary, job.job_id, values, measure, traces)
        correlation = trace_correlation(values, success, effect, measure)
    return SweepAnalysis(
        job.job_id, job.method, job.scenario, protocol.key, points, measure, correlation
    )


def success_measure(summary: BenchSummary, job_id: str) -> str | None:
    """The first of :data:`SUCCESS_PREFERENCE` the job has."""
    present = {m.measure for m in summary.job_means(job_id)}
    return next((m for m in SUCCESS_PREFERENCE if m in present), None)


def _point(
    summary: BenchSummary,
    job_id: str,
    value: int,
    measure: str | None,
    traces: dict[str, dict[str, Any]],
) -> SweepPoint:
    means = {m: summary.estimate(job_id, value, m) for m in SWEEP_MEASURES}
    found = [summary.means.get((job_id, value, m)) for m in (measure, *SWEEP_MEASURES)]
    effects = [e for t in traces.values() if np.isfinite(e := effect_at(t, value))]
    return SweepPoint(
        value,
        max((m.n for m in found if m is not None), default=0),
        means,
        summary.estimate(job_id, value, measure) if measure else None,
        mean_estimate(effects) if effects else None,
    )


def effect_at(trace: dict[str, Any], layer: int) -> float:
    """A stored trace's MLP indirect effect at ``layer`` (NaN where it has none)."""
    effects = trace.get("mlp_effect") or []
    value = effects[layer] if 0 <= layer < len(effects) else None
    return float("nan") if value is None else float(value)


def layer_grid(
    summary: BenchSummary,
    job_id: str,
    layers: Sequence[int],
    measure: str,
    traces: dict[str, dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per traced case (sorted by id) and layer, the edit success and the trace's effect at the
    layer, NaN where missing (a failed edit): two ``(cases, layers)`` arrays."""
    posts = {
        (r.case_id, r.checkpoint): r.post
        for r in summary.rows.get(job_id, [])
        if r.measure == measure and r.post is not None
    }
    cases = sorted(traces)
    success = np.array([[posts.get((c, k), np.nan) for k in layers] for c in cases], float)
    effect = np.array([[effect_at(traces[c], k) for k in layers] for c in cases], float)
    shape = (len(cases), len(layers))
    return success.reshape(shape), effect.reshape(shape)


# -- the numbers ---------------------------------------------------------------------------------


def trace_correlation(
    layers: Sequence[int], success: np.ndarray, effect: np.ndarray, measure: str
) -> TraceCorrelation:
    """Edit success against the trace's effect (see :class:`TraceCorrelation`) from
    ``(cases, layers)`` grids (NaN: missing), each statistic's interval from resampling cases."""
    both = np.isfinite(success) & np.isfinite(effect)
    used = both.any(1)
    success, effect = success[used], effect[used]
    n = len(success)
    hits, chance = peak_hits(success, effect)
    mean_success = _column_means(success, both[used])
    mean_effect = _column_means(effect, both[used])
    return TraceCorrelation(
        measure=measure,
        cases=n,
        pairs=int(both.sum()),
        pearson=_grid_estimate(pearson, effect, success),
        within_layer=_grid_estimate(within_layer_pearson, effect, success),
        layer_r2=_grid_estimate(layer_r2, effect, success),
        added_r2=_grid_estimate(added_r2, effect, success),
        peak_is_best=mean_estimate(hits) if len(hits) else None,
        chance=float(np.mean(chance)) if len(chance) else None,
        best_success_layer=_best(layers, mean_success),
        best_trace_layer=_best(layers, mean_effect),
    )


def _grid_estimate(f: GridStatistic, x: np.ndarray, y: np.ndarray) -> Estimate | None:
    """``f`` of the paired grids with its interval, resampling whole cases (rows)."""

    def statistic(rows: np.ndarray) -> np.ndarray:
        chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
        return np.concatenate([f(x[c], y[c]) for c in chunks])

    return estimate(statistic, len(x)) if len(x) else None


def _centred(v: np.ndarray, ok: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``v`` less its mean over ``axes`` taken where ``ok`` (NaN where not ``ok``)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, v, 0.0).sum(axes, keepdims=True) / ok.sum(axes, keepdims=True)
    return np.where(ok, v - mean, np.nan)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of the pairs of each resample, ``(R, cases, layers)`` twice -> ``(R,)``; pairs
    with a NaN are left out; NaN where either variable is constant."""
    ok = np.isfinite(x) & np.isfinite(y)
    dx, dy = (np.where(ok, _centred(v, ok, (1, 2)), 0.0) for v in (x, y))
    sxx, syy, sxy = (dx * dx).sum((1, 2)), (dy * dy).sum((1, 2)), (dx * dy).sum((1, 2))
    # a constant variable's deviations are rounding noise, not variation
    flat = (sxx <= _noise_floor(x, ok)) | (syy <= _noise_floor(y, ok))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flat, np.nan, sxy / np.sqrt(sxx * syy))


def _noise_floor(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return 1e-12 * (np.where(ok, v, 0.0) ** 2).sum((1, 2)) + 1e-300


def within_layer(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` less each layer's mean over the resample's cases that have both (NaN
    where either is missing)."""
    ok = np.isfinite(x) & np.isfinite(y)
    return _centred(x, ok, (1,)), _centred(y, ok, (1,))


def within_layer_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r within layers: each layer's mean of both removed first (the partial
    correlation given the layer)."""
    return pearson(*within_layer(x, y))


def layer_r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The share of ``y``'s variance (over the pairs with both) between the layers' means: the
    R² of ``y`` on the layer alone."""
    ok = np.isfinite(x) & np.isfinite(y)
    total = np.nansum(_centred(y, ok, (1, 2)) ** 2, (1, 2))
    within = np.nansum(_centred(y, ok, (1,)) ** 2, (1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1 - within / total, np.nan)


def added_r2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The R² that ``x`` adds to the layer in explaining ``y`` (regressing ``y`` on the layer
    and ``x``): the within-layer r² times the variance the layer leaves (Frisch-Waugh)."""
    return within_layer_pearson(x, y) ** 2 * (1 - layer_r2(x, y))


def peak_hits(success: np.ndarray, effect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per case with every layer's success and trace: 1 if the trace peaks (among the swept
    layers) at a layer where the edit succeeds best (ties count), else 0; and the share of
    layers that are best, a random layer's chance of being one."""
    complete = np.isfinite(success).all(1) & np.isfinite(effect).all(1)
    s, e = success[complete], effect[complete]
    if not len(s):
        return np.zeros(0), np.zeros(0)
    best = np.isclose(s, s.max(1, keepdims=True))
    hits = best[np.arange(len(s)), e.argmax(1)]
    return hits.astype(float), best.mean(1)


def _column_means(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Each layer's mean over the cases where ``ok`` (NaN for a layer with none)."""
    count = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(ok, values, 0).sum(0) / count, np.nan)


def _best(layers: Sequence[int], means: np.ndarray) -> int | None:
    if not len(means) or not np.isfinite(means).any():
        return None
    return int(layers[int(np.nanargmax(means))])


# -- text and rows -------------------------------------------------------------------------------


def _shown(est: Estimate | None) -> str:
    return format_interval(None, None) if est is None else format_interval(est.value, est.as_list())


def correlation_sentence(c: TraceCorrelation) -> str:
    """The trace analysis in words, each number with its 95% interval."""
    text = (
        f"Over {c.pairs} (case, layer) pairs of {c.cases} cases, edit success ({c.measure}) and "
        f"the causal trace's MLP indirect effect at the edited layer correlate with "
        f"r = {_shown(c.pearson)}; within layers (each layer's mean of both removed), "
        f"r = {_shown(c.within_layer)}. The layer alone explains R² = {_shown(c.layer_r2)} of "
        f"edit success, and the trace adds R² = {_shown(c.added_r2)} to it (Hase et al. 2023's "
        "measure)."
    )
    if c.peak_is_best is not None:
        text += (
            f" For {_shown(c.peak_is_best)} of the {c.peak_is_best.n} cases edited at every "
            "layer, the trace peaks at a layer where the edit succeeds best (a layer drawn at "
            f"random: {format_value(c.chance)})."
        )
    if c.best_success_layer is not None:
        text += (
            f" Mean edit success is highest at layer {c.best_success_layer}, the mean trace "
            f"effect at layer {c.best_trace_layer}."
        )
    return text


def sweep_rows(analyses: Sequence[SweepAnalysis]) -> list[dict[str, Any]]:
    """One row per job and value, flat (for CSV): cases, each mean with its interval, edit
    success and the mean trace effect."""
    rows = []
    for a in analyses:
        for p in a.points:
            row: dict[str, Any] = {
                "job_id": a.job_id,
                "method": a.method,
                "scenario": a.scenario,
                "key": a.key,
                "value": p.value,
                "cases": p.cases,
                "success_measure": a.measure,
            }
            shown = {**p.measures, "success": p.success, "trace_effect": p.trace_effect}
            for name, est in shown.items():
                row[name] = None if est is None else est.value
                row[f"{name}_low"] = None if est is None else est.low
                row[f"{name}_high"] = None if est is None else est.high
            rows.append(row)
    return rows
