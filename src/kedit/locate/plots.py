"""Causal-trace figures: one fact's heatmap (the paper's figure 1) and the average indirect
effect over facts by token category and layer (figure 2), as PNG bytes."""

from __future__ import annotations

from kedit.figures import new_figure, png_bytes
from kedit.locate.effects import CATEGORIES, AverageEffect
from kedit.model.causal_trace import FactTrace

#: colour map per kind, as the paper's figures
COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
WHAT = {"hidden": "single restored layer", "mlp": "restored MLP", "attn": "restored attention"}


def _colours(kind: str) -> str:
    return COLOURS.get(kind.split(" ")[0], "Greys")


def heatmap_png(trace: FactTrace, dpi: int = 100) -> bytes:
    """The restored answer probability at every (token, layer); subject tokens starred."""
    fig = new_figure(5.2, 0.45 * len(trace.tokens) + 1.3, dpi)
    ax = fig.add_subplot()
    image = ax.pcolormesh(trace.scores, cmap=_colours(trace.kind), vmin=trace.corrupted)
    first, end = trace.subject_range
    labels = [repr(t)[1:-1] + ("*" if first <= i < end else "") for i, t in enumerate(trace.tokens)]
    ax.set_yticks([i + 0.5 for i in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{WHAT[trace.kind]} within layer" + _window(trace))
    severed = f", {trace.severed} severed" if trace.severed else ""
    ax.set_title(f"{trace.kind} trace{severed}: p({trace.answer.strip()!r})", fontsize=9)
    colourbar = fig.colorbar(image, ax=ax)
    colourbar.ax.set_ylabel(f"clean {trace.clean:.3f}, corrupted {trace.corrupted:.3f}", fontsize=7)
    return png_bytes(fig)


def _window(trace: FactTrace) -> str:
    return f" (window {trace.window})" if trace.window > 1 else ""


def average_effect_png(effects: list[AverageEffect], dpi: int = 100) -> bytes:
    """One panel per kind: the average indirect effect by category and layer, with the last
    subject token's curve and its 95% band beneath."""
    fig = new_figure(4.2 * len(effects), 5.2, dpi)
    grid = fig.add_gridspec(2, len(effects), height_ratios=[3, 2])
    last = CATEGORIES.index("last subject token")
    for column, effect in enumerate(effects):
        ax = fig.add_subplot(grid[0, column])
        image = ax.pcolormesh(effect.mean, cmap=_colours(effect.kind), vmin=0)
        ax.set_yticks([i + 0.5 for i in range(len(CATEGORIES))], CATEGORIES, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"average indirect effect: {effect.kind}", fontsize=9)
        fig.colorbar(image, ax=ax)
        curve = fig.add_subplot(grid[1, column])
        layers = range(effect.mean.shape[1])
        curve.plot(layers, effect.mean[last], color="black", label="last subject token")
        curve.fill_between(layers, effect.low[last], effect.high[last], alpha=0.3, color="grey")
        curve.set_xlabel(f"layer (n = {int(effect.n[last])} facts, 95% bootstrap band)")
        curve.set_ylabel("indirect effect")
        curve.grid(alpha=0.3)
    return png_bytes(fig)
