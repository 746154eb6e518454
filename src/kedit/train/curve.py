"""The validation curve of a training run, drawn beside its editor (``curve.png``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedit.figures import new_figure, png_bytes

log = logging.getLogger(__name__)

#: validation statistics drawn, with their axis labels
PANELS = (
    ("loss", "validation loss (cedit*NLL + cloc*KL)"),
    ("edit_acc", "edit token accuracy"),
    ("loc_agree", "unrelated top-1 kept"),
)


def write_curve(folder: Path, title: str, curve: list[dict[str, Any]], best_step: int) -> None:
    """``folder/curve.png``; without matplotlib (``kedit[report]``) a note in the log."""
    try:
        fig = new_figure(9.0, 2.8)
    except ImportError as err:
        log.warning("no training curve drawn: %s", err)
        return
    steps = [point["step"] for point in curve]
    axes = fig.subplots(1, len(PANELS))
    for ax, (key, label) in zip(axes, PANELS):
        values = [point["val"].get(key) for point in curve]
        shown = [(s, v) for s, v in zip(steps, values) if v is not None]
        if shown:
            ax.plot([s for s, _ in shown], [v for _, v in shown], marker="o", markersize=3)
        ax.axvline(best_step, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("training step")
        ax.set_title(label, fontsize=9)
    fig.suptitle(f"{title}: validation on held-out training examples (dotted: saved editor)")
    (folder / "curve.png").write_bytes(png_bytes(fig))
