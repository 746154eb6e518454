"""Figures as PNG bytes with matplotlib (an optional dependency: ``kedit[report]``).

Figures are drawn on matplotlib's Agg canvas directly, without ``pyplot``, so nothing global
(the backend, open figures) changes in the calling process.
"""

from __future__ import annotations

import io
from typing import Any

INSTALL_HINT = "pip install 'kedit[report]'"


def require_matplotlib() -> Any:
    """The ``matplotlib.figure`` module, or an ImportError saying how to install it."""
    try:
        from matplotlib import figure
    except ImportError as err:
        raise ImportError(f"kedit draws its figures with matplotlib: {INSTALL_HINT}") from err
    return figure


def new_figure(width: float, height: float, dpi: int = 100) -> Any:
    """An empty figure on an Agg canvas."""
    figure = require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figure.Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes, without a timestamp or software tag (the same figure gives the
    same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
