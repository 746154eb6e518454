"""Decay curves and layer sweeps as PNG images (matplotlib, an optional dependency:
``kedit[report]``).

Figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``, so nothing global
(the backend, open figures) changes in the calling process.
"""

from __future__ import annotations

from typing import Any

from kedit.bench.sweep import SweepAnalysis
from kedit.bench.tables import DecayPlot
from kedit.eval.formulas.uncertainty import Estimate
from kedit.figures import new_figure, png_bytes

#: a plot whose values span more than this factor gets a logarithmic y axis
LOG_SCALE_RATIO = 100.0


def plot_png(plot: DecayPlot, dpi: int = 100) -> bytes:
    """``plot`` as a PNG: one line per method, the number of sequential edits on the x axis
    (0 is the unedited model)."""
    fig = new_figure(5.6, 3.2, dpi)
    ax = fig.add_subplot()
    markers = "osD^vP*Xh<>"
    for i, curve in enumerate(plot.curves):
        xs = [k for k, _ in curve.points]
        ys = [v for _, v in curve.points]
        ax.plot(xs, ys, marker=markers[i % len(markers)], markersize=4, label=curve.label)
    checkpoints = sorted({k for c in plot.curves for k, _ in c.points})
    ax.set_xticks(checkpoints)
    values = [v for c in plot.curves for _, v in c.points]
    if values and min(values) > 0 and max(values) / min(values) > LOG_SCALE_RATIO:
        ax.set_yscale("log")  # one method's perplexity exploded: keep the others readable
    ax.set_xlabel("sequential edits (0 = unedited)")
    ax.set_ylabel(f"{plot.quantity} ({'higher' if plot.higher_is_better else 'lower'} is better)")
    ax.set_title(plot.title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside right upper")
    return png_bytes(fig)


def alt_text(plot: DecayPlot) -> str:
    """A description of ``plot`` for readers who cannot see it: each method's first and last
    point."""
    ends = []
    for curve in plot.curves:
        (k0, v0), (k1, v1) = curve.points[0], curve.points[-1]
        ends.append(f"{curve.label} {v0:.3g} at {k0} edits to {v1:.3g} at {k1}")
    return f"{plot.title} against the number of sequential edits ({plot.scenario}): " + "; ".join(
        ends
    )


def sweep_png(analysis: SweepAnalysis, dpi: int = 100) -> bytes:
    """A sweep as a PNG: mean edit success by value with its 95% interval (left axis) and, for
    a layer sweep, the traces' mean MLP indirect effect at each layer (right axis)."""
    fig = new_figure(5.6, 3.2, dpi)
    ax = fig.add_subplot()
    _error_line(ax, analysis, "success", "C0", "o", f"edit success ({analysis.measure})")
    ax.set_xlabel(analysis.key)
    ax.set_ylabel(f"{analysis.measure} (higher is better)")
    ax.set_xticks([p.value for p in analysis.points])
    if any(p.trace_effect is not None for p in analysis.points):
        right = ax.twinx()
        _error_line(right, analysis, "trace_effect", "C1", "s", "MLP indirect effect")
        right.set_ylabel("trace's MLP indirect effect")
    ax.set_title(analysis.job_id, fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=7, loc="outside lower center", ncols=2)
    return png_bytes(fig)


def _error_line(
    ax: Any, analysis: SweepAnalysis, attr: str, colour: str, marker: str, label: str
) -> None:
    """One quantity of the sweep's points with its 95% intervals as error bars."""
    found: list[tuple[int, Estimate]] = [
        (p.value, est) for p in analysis.points if (est := getattr(p, attr)) is not None
    ]
    if not found:
        return
    xs = [x for x, _ in found]
    ys = [e.value for _, e in found]
    errors = [[e.value - e.low for _, e in found], [e.high - e.value for _, e in found]]
    ax.errorbar(
        xs, ys, yerr=errors, color=colour, marker=marker, markersize=4, capsize=2, label=label
    )


def sweep_alt_text(analysis: SweepAnalysis) -> str:
    """A description of :func:`sweep_png` for readers who cannot see it: each value's edit
    success and trace effect."""
    parts = []
    for p in analysis.points:
        text = (
            f"{analysis.key} {p.value}: success {p.success.value:.3g}"
            if p.success
            else f"{analysis.key} {p.value}"
        )
        if p.trace_effect is not None:
            text += f", trace effect {p.trace_effect.value:.3g}"
        parts.append(text)
    return f"edit success by {analysis.key} ({analysis.job_id}): " + "; ".join(parts)
