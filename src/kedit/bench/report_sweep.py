"""The report's sweep section: per sweep job, a table by value and, for a layer sweep, edit
success against the causal trace (:mod:`kedit.bench.sweep`) in words and as a plot."""

from __future__ import annotations

import base64
from html import escape

from kedit.bench.plots import sweep_alt_text, sweep_png
from kedit.bench.summary import BenchSummary
from kedit.bench.sweep import SWEEP_MEASURES, SweepAnalysis, correlation_sentence, sweep_analyses
from kedit.eval.formulas.uncertainty import Estimate
from kedit.formatting import format_value

NOTE = (
    "Each case edited on the unedited model once per value, scored and undone (the single "
    "protocol, once per value). Below each mean, its 95% interval (bootstrap over the cases). "
    "For a layer sweep, the MLP indirect effect is the answer's probability that restoring the "
    "MLP outputs around the layer at the subject's last token recovers in the corrupted run "
    "(Meng et al. 2022's causal trace, on the unedited model). Hase et al. (2023, \"Does "
    'Localization Inform Editing?") found that where the trace peaks says little about where '
    "an edit succeeds: the correlations below test that on this bench, over the (case, layer) "
    "pairs, each interval from resampling the cases."
)


def sweep_section(summary: BenchSummary) -> str:
    """The section's HTML, or ``""`` when the bench has no sweep with results."""
    analyses = sweep_analyses(summary)
    if not analyses:
        return ""
    parts = ["<h2>Sweeps</h2>", f'<p class="note">{escape(NOTE)}</p>']
    parts += [_analysis_html(a) for a in analyses]
    return "\n".join(parts)


def _analysis_html(analysis: SweepAnalysis) -> str:
    out = [f"<h3>{escape(analysis.job_id)}</h3>", _table_html(analysis)]
    if analysis.correlation is not None:
        out.append(f"<p>{escape(correlation_sentence(analysis.correlation))}</p>")
    if analysis.measure is not None:
        data = base64.b64encode(sweep_png(analysis)).decode("ascii")
        alt = escape(sweep_alt_text(analysis))
        out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"></figure>')
    return "\n".join(out)


def _table_html(analysis: SweepAnalysis) -> str:
    extra = analysis.measure not in (None, *SWEEP_MEASURES)
    heads = [analysis.key, "cases", *(f"{m} ↑" for m in SWEEP_MEASURES)]
    heads += [f"{analysis.measure} ↑"] if extra else []
    traced = any(p.trace_effect is not None for p in analysis.points)
    heads += ["MLP indirect effect"] if traced else []
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in heads)
    rows = []
    for p in analysis.points:
        cells = [_cell(p.measures.get(m)) for m in SWEEP_MEASURES]
        cells += [_cell(p.success)] if extra else []
        cells += [_cell(p.trace_effect)] if traced else []
        tds = "".join(f'<td class="num">{c}</td>' for c in cells)
        rows.append(f'<tr><th scope="row">{p.value}</th><td class="num">{p.cases}</td>{tds}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(est: Estimate | None) -> str:
    """A mean with its 95% interval below it, in small text."""
    if est is None:
        return format_value(None)
    bounds = f"[{format_value(est.low)}, {format_value(est.high)}]"
    return f"{format_value(est.value)}<br><small>{bounds}</small>"
