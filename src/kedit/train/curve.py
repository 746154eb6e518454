"""The validation curve of a training run, drawn beside its editor (``curve.png``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kedit.figures import new_figure, png_bytes
from kedit.methods._trained import CurvePanel

log = logging.getLogger(__name__)


def write_curve(
    folder: Path,
    title: str,
    curve: list[dict[str, Any]],
    best_step: int,
    panels: Sequence[CurvePanel],
) -> None:
    """``folder/curve.png``; without matplotlib (``kedit[report]``) a note in the log."""
    try:
        fig = new_figure(9.0, 2.8)
    except ImportError as err:
        log.warning("no training curve drawn: %s", err)
        return
    steps = [point["step"] for point in curve]
    axes = fig.subplots(1, len(panels))
    for ax, (label, keys) in zip(axes, panels):
        for key, legend in keys:
            values = [point["val"].get(key) for point in curve]
            shown = [(s, v) for s, v in zip(steps, values) if v is not None]
            if shown:
                xs, ys = [s for s, _ in shown], [v for _, v in shown]
                ax.plot(xs, ys, marker="o", markersize=3, label=legend)
        if any(legend for _, legend in keys):
            ax.legend(fontsize=7)
        ax.axvline(best_step, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training step")
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{title}: validation on held-out training examples (dotted: saved editor)")
    (folder / "curve.png").write_bytes(png_bytes(fig))
