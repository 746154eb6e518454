"""Decay curves as PNG images (matplotlib, an optional dependency: ``kedit[report]``).

Figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``, so nothing global
(the backend, open figures) changes in the calling process.
"""

from __future__ import annotations

import io
from typing import Any

from kedit.bench.tables import DecayPlot

INSTALL_HINT = "pip install 'kedit[report]'"


def require_matplotlib() -> Any:
    """The ``matplotlib.figure`` module, or an ImportError saying how to install it."""
    try:
        from matplotlib import figure
    except ImportError as err:
        raise ImportError(
            f"the bench report draws its decay curves with matplotlib: {INSTALL_HINT}"
        ) from err
    return figure


#: a plot whose values span more than this factor gets a logarithmic y axis
LOG_SCALE_RATIO = 100.0


def plot_png(plot: DecayPlot, dpi: int = 100) -> bytes:
    """``plot`` as a PNG: one line per method, the number of sequential edits on the x axis
    (0 is the unedited model)."""
    figure = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure.Figure(figsize=(5.6, 3.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


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
