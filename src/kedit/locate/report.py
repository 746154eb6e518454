"""What ``kedit trace`` writes: the traces as JSON and NPZ, a heatmap per fact and kind, the
average indirect effect over the facts (JSON and a figure), and one HTML page with all of it.

Files in ``out``::

    traces.json     settings, noise, per-fact traces (scores, tokens, clean / corrupted), timings
    traces.npz      the score arrays, ``fact{i}_{name}`` -> (tokens, layers)
    average.json    the average indirect effect per kind, with intervals (two facts or more)
    average.png     its figure
    fact{i}_{name}.png   heatmaps (the first ``max_heatmaps`` facts)
    trace.html      everything above on one page, images inline
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from kedit.formatting import format_interval, format_value
from kedit.locate.effects import CATEGORIES, AverageEffect, average_effect
from kedit.locate.facts import TracedFacts
from kedit.locate.plots import average_effect_png, heatmap_png

#: heatmaps drawn for a dataset (every fact's arrays are in the NPZ file regardless)
MAX_HEATMAPS = 12


def write_traces(
    traced: TracedFacts, out: Path, meta: dict, max_heatmaps: int = MAX_HEATMAPS
) -> dict[str, Path]:
    """Write every output of ``traced`` into ``out``; returns the files by name."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "traces.json", "npz": out / "traces.npz", "html": out / "trace.html"}
    record = {
        **meta,
        "noise": traced.noise,
        "options": asdict(traced.options),
        "seconds_per_fact": traced.seconds,
        "skipped": traced.skipped,
        "facts": [{n: t.to_dict() for n, t in fact.items()} for fact in traced.traces],
    }
    files["json"].write_text(json.dumps(record, indent=1))
    arrays = {f"fact{i}_{n}": t.scores for i, f in enumerate(traced.traces) for n, t in f.items()}
    np.savez_compressed(files["npz"], **arrays)
    images: dict[str, bytes] = {}
    for i, fact in enumerate(traced.traces[:max_heatmaps]):
        for name, trace in fact.items():
            images[f"fact{i}_{name}.png"] = heatmap_png(trace)
    averages = averages_of(traced)
    if averages:
        files["average"] = out / "average.json"
        files["average"].write_text(json.dumps({n: a.to_dict() for n, a in averages.items()}))
        images["average.png"] = average_effect_png(list(averages.values()))
    for name, png in images.items():
        (out / name).write_bytes(png)
    files["html"].write_text(render_page(traced, averages, images, meta))
    return files


def averages_of(traced: TracedFacts) -> dict[str, AverageEffect]:
    """The average indirect effect of each trace name, when there are two facts or more."""
    if len(traced.traces) < 2:
        return {}
    return {name: average_effect(traced.of(name)) for name in traced.names}


def render_page(
    traced: TracedFacts, averages: dict[str, AverageEffect], images: dict[str, bytes], meta: dict
) -> str:
    """One self-contained HTML page of the traces."""
    seconds = traced.seconds
    parts = [
        "<!doctype html><meta charset='utf-8'><title>kedit causal trace</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
        "td,th{padding:2px 8px;text-align:right}img{max-width:100%}</style>",
        "<h1>Causal trace</h1>",
        f"<p>{html.escape(_protocol(traced, meta))}</p>",
        f"<p>{len(traced.traces)} facts traced, {len(traced.skipped)} left out (clean answer "
        f"probability below {traced.options.min_clean}); median "
        f"{format_value(_median(seconds), 1)} s per fact.</p>",
    ]
    if averages:
        parts += ["<h2>Average indirect effect</h2>", _img(images["average.png"], "average")]
        parts.append(_peaks_table(averages))
    for i, fact in enumerate(traced.traces):
        names = [n for n in fact if f"fact{i}_{n}.png" in images]
        if not names:
            break
        first = next(iter(fact.values()))
        parts.append(f"<h3>{html.escape(first.prompt)} → {html.escape(first.answer)}</h3>")
        parts += [_img(images[f"fact{i}_{n}.png"], f"{n} trace of fact {i}") for n in names]
    return "\n".join(parts)


def _protocol(traced: TracedFacts, meta: dict) -> str:
    o = traced.options
    return (
        f"Model {meta.get('model', '?')}. Protocol: Meng et al. 2022 causal tracing; Gaussian "
        f"noise of standard deviation {traced.noise:.4g} (three standard deviations of the "
        f"embeddings on a text sample, unless set) on the subject's tokens, {o.samples} noise "
        f"samples per restoration (seed {o.seed}), MLP and attention restored over a window of "
        f"{o.window} layers; scores are the answer's probability at the last token; intervals "
        "are 95% bootstrap intervals over facts."
    )


def _peaks_table(averages: dict[str, AverageEffect]) -> str:
    rows = [
        "<table><tr><th>trace</th><th>peak layer at the last subject token</th>"
        "<th>effect there [95% CI]</th><th>average total effect [95% CI]</th></tr>"
    ]
    last = CATEGORIES.index("last subject token")
    for name, a in averages.items():
        peak = a.peak()
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{peak}</td><td>"
            f"{format_interval(a.mean[last, peak], [a.low[last, peak], a.high[last, peak]])}"
            f"</td><td>{format_interval(a.total_effect, [a.total_low, a.total_high])}</td></tr>"
        )
    return "".join(rows) + "</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
