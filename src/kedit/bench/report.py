"""``kedit report DIR``: a bench as one self-contained HTML page.

The page (inline CSS, images as base64 PNG, no script, nothing fetched) holds: the run's facts
(model, fingerprint, dataset, versions, seed, device); a summary table (per method and scenario,
the headline measures, general ability and edit time per edit at the last checkpoint); per
scenario a table of methods by measures, grouped as the survey groups them, per checkpoint for
batch and sequential; the jobs that were not applicable and why; decay curves against the number
of sequential edits; for each layer sweep, edit success by layer against the causal trace
(:mod:`kedit.bench.report_sweep`); the cost per edit; the survey's claims checked
(:mod:`kedit.bench.findings`); and the measures skipped.
"""

from __future__ import annotations

import base64
import logging
from html import escape
from itertools import groupby
from pathlib import Path
from typing import Any

from kedit.bench.findings import Finding, evaluate_claims
from kedit.bench.plots import alt_text, plot_png
from kedit.bench.report_findings import findings_section
from kedit.bench.report_sweep import sweep_section
from kedit.bench.report_traces import traces_section
from kedit.bench.summary import BenchSummary
from kedit.bench.tables import (
    HeadlineRow,
    HeadlineTable,
    ScenarioTable,
    decay_plots,
    headline_groups,
    headline_table,
    scenario_table,
)
from kedit.eval.formulas.uncertainty import Estimate
from kedit.figures import require_matplotlib
from kedit.formatting import MISSING, format_relative, format_value

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MIB = 1024 * 1024

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222;
       line-height: 1.4; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; }
tr.unedited td { color: #555; font-style: italic; background: #fafafa; }
tbody + tbody { border-top: 2px solid #888; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.15rem 1rem; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; font-family: monospace; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; vertical-align: top; }
figure img { max-width: 100%; height: auto; }
.verdict { font-weight: bold; white-space: nowrap; }
.supported { color: #17612a; } .partly-supported { color: #8a5a00; }
.not-supported { color: #a11d1d; } .not-run { color: #666; } .inconclusive { color: #3a4f8a; }
.note { color: #555; font-size: 0.9rem; }
td small { color: #666; margin-left: 0.3rem; }
th.start, td.start { border-left: 2px solid #888; }
div.wide { overflow-x: auto; }
"""


def write_report(bench_dir: str | Path, out: Path | None = None) -> Path:
    """Write the report of the bench in ``bench_dir`` to ``out`` (default
    ``bench_dir/report.html``) and return its path."""
    require_matplotlib()  # fail before reading anything
    summary = BenchSummary.load(bench_dir)
    path = Path(out) if out is not None else Path(bench_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(summary, evaluate_claims(summary)), encoding="utf-8")
    log.info("bench report written to %s", path)
    return path


def render_report(summary: BenchSummary, findings: list[Finding]) -> str:
    """The report's HTML for ``summary`` and its checked claims."""
    facts = summary.run_info()
    title = f"kedit bench: {facts.get('model', 'model')} on {facts.get('dataset', 'dataset')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _facts(summary),
        _summary_section(summary),
    ]
    for scenario in summary.scenarios():
        parts.append(_scenario_section(scenario_table(summary, scenario)))
    parts.append(_curves(summary))
    parts.append(sweep_section(summary))
    parts.append(traces_section(summary))
    parts.append(_costs(summary))
    parts.append(findings_section(summary, findings))
    parts.append(_skipped(summary))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


# -- sections ---------------------------------------------------------------------------------


def _facts(summary: BenchSummary) -> str:
    facts = summary.run_info()
    labels = (
        ("model", "model"),
        ("model_fingerprint", "model fingerprint"),
        ("dataset", "dataset"),
        ("n_cases", "cases"),
        ("kedit", "kedit"),
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("seed", "seed"),
        ("device", "device"),
    )
    rows = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(facts.get(key, MISSING))}</dd>"
        for key, label in labels
    )
    out = f'<dl class="facts">{rows}</dl>'
    running = [j.job_id for j in summary.jobs.values() if j.status == "running"]
    if running:
        out += (
            '<p class="note">Incomplete (still marked running; resume the bench to finish): '
            f"{escape(', '.join(running))}.</p>"
        )
    return out


#: the survey's short names of the headline groups, as the summary table's headings
SHORT_GROUPS = {
    "reliability": "Rel.",
    "generalization": "Gen.",
    "locality": "Loc.",
    "portability": "Port.",
}


def _summary_section(summary: BenchSummary) -> str:
    """One row per method (the unedited model first), columns grouped by scenario: the
    :class:`~kedit.bench.tables.HeadlineTable` of each, side by side."""
    tables = [t for s in summary.scenarios() if (t := headline_table(summary, s)) is not None]
    if not tables:
        return ""
    head1 = '<th rowspan="2" scope="col">method</th>'
    head2 = ""
    for table in tables:
        span = len(table.columns) + 1
        head1 += f'<th class="start" colspan="{span}" scope="colgroup">{escape(table.title)}</th>'
        for i, col in enumerate(table.columns):
            css = ' class="start"' if i == 0 else ""
            group, _, protocol = table.heading(col).partition(": ")
            name = " ".join(x for x in (SHORT_GROUPS.get(group, group), protocol, col.arrow) if x)
            head2 += f'<th{css} scope="col" title="{escape(col.measure)}">{escape(name)}</th>'
        css = "" if table.columns else ' class="start"'
        head2 += f'<th{css} scope="col">s/edit ↓</th>'
    methods = {r.label for t in tables for r in t.rows if r.job_id is not None}
    methods |= {j.method for t in tables for j in t.not_applicable}
    labels = sorted(methods, key=lambda m: (summary.method_rank(m), m))
    body = [_summary_row(tables, "unedited")]
    body += [_summary_row(tables, label) for label in labels]
    groups = ", ".join(
        f"{SHORT_GROUPS[g]} {g} ({summary.headlines[g]})" for g in headline_groups(summary)
    )
    return (
        "<h2>Summary</h2>"
        f'<div class="wide"><table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f'<p class="note">Headline measures: {escape(groups)}, and beside reliability and '
        "generalization the same quantity under the other protocols (teacher-forced token "
        "accuracy; free generation, where the model answers without being given the target); "
        "each method at the scenario's last checkpoint (1 edit for single, the batch size for "
        "batch:B, the most edits for sequential), and for sequential the general-ability tasks "
        "there with, in small text, the change from the unedited model (the difference for a "
        "downstream task, the relative change for perplexity). Below each value, its 95% "
        "interval (bootstrap over the cases, or over a task's examples; a change's interval is "
        "paired on the same examples). s/edit: the median edit time per edit in seconds. The "
        "unedited row is the model before editing on the same cases. ↑ higher is better, ↓ lower "
        "is better; every measure per checkpoint is in the scenario tables below.</p>"
    )


def _summary_row(tables: list[HeadlineTable], label: str) -> str:
    """``label``'s row of the summary: its cells in each table, ``–`` where it has none."""
    incomplete = False
    cells = ""
    for table in tables:
        width = len(table.columns) + 1
        row = next((r for r in table.rows if r.label == label), None)
        if row is None:
            skipped = any(j.method == label for j in table.not_applicable)
            text = "not applicable" if skipped else MISSING
            cells += f'<td class="start note" colspan="{width}">{text}</td>'
            continue
        incomplete |= row.incomplete
        for i, value in enumerate(row.values):
            extra = ""
            if i == 0 and row.checkpoint != table.last:
                extra = f" <small>(after {row.checkpoint})</small>"
            extra += _change_text(table, row, i)
            css = "num start" if i == 0 else "num"
            cells += f'<td class="{css}">{_cell(value, _get(row.estimates, i))}{extra}</td>'
        css = "num" if table.columns else "num start"
        cells += f'<td class="{css}">{format_value(row.seconds_per_edit)}</td>'
    name = label + (" (incomplete)" if incomplete else "")
    css = ' class="unedited"' if label == "unedited" else ""
    return f'<tr{css}><th scope="row">{escape(name)}</th>{cells}</tr>'


def _get(values: tuple, i: int) -> Any:
    return values[i] if i < len(values) else None


def _cell(value: float | None, est: Estimate | None) -> str:
    """A value with its 95% interval below it, in small text."""
    if est is None:
        return format_value(value)
    low, high = format_value(est.low), format_value(est.high)
    return f"{format_value(value)}<br><small>[{low}, {high}]</small>"


def _change_text(table: HeadlineTable, row: HeadlineRow, i: int) -> str:
    """A general-ability cell's change from the unedited model, with its paired interval."""
    change = table.change(row, i)
    if change is None:
        return ""
    fmt = _signed if table.columns[i].higher_is_better else format_relative
    est = _get(row.changes, i)
    bounds = f" [{fmt(est.low)}, {fmt(est.high)}]" if est is not None else ""
    return f" <small>{fmt(change)}{bounds}</small>"


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _scenario_section(table: ScenarioTable) -> str:
    out = [f"<h2>Scenario {escape(table.scenario)}</h2>"]
    if table.rows:
        out.append(_table_html(table, _point_heading(table.scenario)))
    else:
        out.append('<p class="note">No results.</p>')
    if table.not_applicable:
        items = "".join(
            f"<li><b>{escape(j.method)}</b>: {escape(j.note or 'not applicable')}</li>"
            for j in table.not_applicable
        )
        out.append(f"<p>Not applicable:</p><ul>{items}</ul>")
    return "\n".join(out)


def _point_heading(scenario: str) -> str | None:
    """The heading of a scenario table's checkpoint column: none for single, the swept key
    for a sweep (its value), else the number of edits."""
    kind, _, rest = scenario.partition(":")
    if kind == "single":
        return None
    return rest.partition("=")[0] if kind == "sweep" else "edits"


def _table_html(table: ScenarioTable, point: str | None) -> str:
    lead = ["method"] + ([point] if point else [])
    head1 = "".join(f'<th rowspan="2" scope="col">{escape(h)}</th>' for h in lead)
    for group, cols in groupby(table.columns, key=lambda c: c.group):
        head1 += f'<th colspan="{len(list(cols))}" scope="colgroup">{escape(group)}</th>'
    head2 = "".join(
        f'<th scope="col">{escape(c.measure)} {escape(c.arrow)}</th>' for c in table.columns
    )
    bodies = []
    for checkpoint, rows in groupby(table.rows, key=lambda r: r.checkpoint):
        rows = list(rows)
        best = []
        for i, col in enumerate(table.columns):
            values = [
                r.values[i] for r in rows if r.label != "unedited" and r.values[i] is not None
            ]
            pick = max if col.higher_is_better else min
            best.append(pick(values) if len(values) > 1 else None)
        html_rows = []
        for row in rows:
            label = row.label + (" (incomplete)" if row.incomplete else "")
            cells = f'<th scope="row">{escape(label)}</th>'
            if point:
                cells += f'<td class="num">{checkpoint}</td>'
            for i, (value, top) in enumerate(zip(row.values, best)):
                is_best = row.label != "unedited" and value is not None and value == top
                text = _cell(value, _get(row.estimates, i))
                cells += f'<td class="num{" best" if is_best else ""}">{text}</td>'
            css = ' class="unedited"' if row.label == "unedited" else ""
            html_rows.append(f"<tr{css}>{cells}</tr>")
        bodies.append(f"<tbody>{''.join(html_rows)}</tbody>")
    return (
        f"<table><thead><tr>{head1}</tr><tr>{head2}</tr></thead>{''.join(bodies)}</table>"
        '<p class="note">↑ higher is better, ↓ lower is better; bold: the best method. '
        "The unedited row is the model before editing on the same cases.</p>"
    )


def _curves(summary: BenchSummary) -> str:
    out = []
    for scenario in summary.scenarios():
        if not scenario.startswith("sequential"):
            continue
        figures = []
        for plot in decay_plots(summary, scenario):
            data = base64.b64encode(plot_png(plot)).decode("ascii")
            alt = alt_text(plot)
            figures.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}"></figure>'
            )
        if figures:
            out.append(f"<h3>{escape(scenario)}</h3>" + "".join(figures))
    if not out:
        return ""
    return (
        "<h2>Decay curves</h2>"
        '<p class="note">Headline measures and general-ability tasks against the number of '
        "sequential edits; 0 is the unedited model (its scores on the same cases, and the "
        "unedited model's general-ability scores).</p>" + "\n".join(out)
    )


def _costs(summary: BenchSummary) -> str:
    order = {m: i for i, m in enumerate(summary.methods())}
    scenarios = {s: i for i, s in enumerate(summary.scenarios())}
    costs = sorted(
        summary.costs.values(),
        key=lambda c: (order.get(c.method, -1), scenarios.get(c.scenario, -1), c.job_id),
    )
    if not costs:
        return ""
    head = (
        "<tr><th>method</th><th>scenario</th><th>cases</th><th>errors</th>"
        "<th>median edit time per edit (s)</th><th>median edit memory per update (MiB)</th>"
        "<th>median peak memory (MiB)</th>"
        "<th>median eval time per case (s)</th><th>memory measured as</th></tr>"
    )
    rows = []
    for c in costs:
        memory = None if c.median_edit_memory_bytes is None else c.median_edit_memory_bytes / MIB
        peak = None if c.median_peak_memory_bytes is None else c.median_peak_memory_bytes / MIB
        rows.append(
            f"<tr><th scope='row'>{escape(c.method)}</th><td>{escape(c.scenario)}</td>"
            f'<td class="num">{c.cases}</td><td class="num">{c.errors}</td>'
            f'<td class="num">{format_value(c.median_edit_time_s)}</td>'
            f'<td class="num">{format_value(memory, 1)}</td>'
            f'<td class="num">{format_value(peak, 0)}</td>'
            f'<td class="num">{format_value(c.median_eval_time_s)}</td>'
            f"<td>{escape(c.memory_kind or MISSING)}</td></tr>"
        )
    return (
        "<h2>Cost per edit</h2>"
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Edit time is per edit: a batch:B update\'s time is divided by its B '
        "cases; a sequential case counts once, with the edit that applied it. Edit memory is "
        "per update: the memory the update took above what was in use before it (its peak), "
        "the whole batch's for a batch:B case; peak memory is all in use at the update's peak, "
        "the model included. On CUDA both come from the allocator and are exact. On CPU they "
        "are the process's resident set (its high-water mark reset before each update): memory "
        "that earlier work freed and the C allocator kept is reused without growing it, so "
        "there the edit memory is a lower bound.</p>"
    )


def _skipped(summary: BenchSummary) -> str:
    skipped = summary.skipped()
    if not skipped:
        return ""
    items = "".join(
        f"<li><code>{escape(s.measure)}</code>: {escape(s.reason)} "
        f"<span class='note'>({escape(', '.join(s.scenarios))})</span></li>"
        for s in skipped
    )
    return f"<h2>Skipped measures</h2><ul>{items}</ul>"
