"""Plain-text tables for the command line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from kedit.bench.driver import BenchOutcome
from kedit.bench.summary import BenchSummary
from kedit.bench.sweep import SWEEP_MEASURES, SweepAnalysis, correlation_sentence, sweep_analyses
from kedit.bench.tables import HeadlineTable, headline_groups, headline_table
from kedit.eval.evaluate import EvalReport
from kedit.eval.metric import resolve_metrics
from kedit.formatting import MISSING, format_duration, format_interval, format_trace
from kedit.formatting import format_value as _fmt
from kedit.methods import METHODS


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(f"{h:<{w}}" for h, w in zip(header, widths)), line]
    out += ["  ".join(f"{c!s:<{w}}" for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def format_metrics(report: EvalReport) -> str:
    """The table of measures before and after editing, in group order."""
    s = report.summary
    rows = [
        (
            name,
            group,
            protocol,
            "higher" if s["metrics"][name].get("higher_is_better", True) else "lower",
            format_interval(pre, s["metrics"][name].get("pre_ci")),
            format_interval(post, s["metrics"][name].get("post_ci")),
            str(n),
        )
        for name, group, protocol, pre, post, n in report.table()
    ]
    header = ("metric", "group", "protocol", "better", "before [95% CI]", "after [95% CI]", "n")
    return format_table(header, rows)


def format_summary(report: EvalReport) -> str:
    """Metrics before and after editing, grouped as the survey groups them."""
    s = report.summary
    head = (
        f"{s['run']['method']} on {s['run']['dataset']} ({s['run']['model']}): "
        f"{s['cases']} cases, {s['errors']} errors; {s['protocol']}"
    )
    times = (
        f"median edit time per edit {_fmt(s['median_edit_time_s'])} s, "
        f"median evaluation time per case after editing {_fmt(s['median_eval_time_s'])} s"
    )
    out = f"{head}\n\n{format_metrics(report)}\n\n{times}"
    if s.get("skipped"):
        out += "\n\nskipped (the dataset cannot feed them):\n" + "\n".join(
            f"  {name}: {why}" for name, why in s["skipped"].items()
        )
    bins = s.get("analyses", {}).get("dialogue_reversion_by_confidence")
    if bins:
        out += "\n\n" + format_reversion(bins)
    if len(s.get("checkpoints", {})) > 1:
        out += "\n\n" + format_decay(s["checkpoints"])
    if s.get("sweep"):
        key = s["sweep"]["key"]
        title = f"each case edited with each {key} (unedited model in brackets):\n"
        out += "\n\n" + format_decay(s["sweep"]["values"], key, title)
    if s.get("general"):
        out += "\n\n" + format_general(s["general"])
    return out


def format_reversion(bins: list[dict]) -> str:
    """Dialogue reversion rate by the unedited model's confidence in the old answer."""
    rows = [
        (f"[{b['low']:.2f}, {b['high']:.2f})", str(b["count"]), _fmt(b["reversion_rate"]))
        for b in bins
    ]
    title = "dialogue reversion by the unedited model's P(old answer):\n"
    return title + format_table(("confidence", "replies", "reverted"), rows)


def format_general(general: dict[str, dict]) -> str:
    """General-ability scores (rows: tasks) after 0 (unedited), ..., N edits (columns)."""
    points = sorted(general, key=int)
    tasks = list(general[points[0]])
    rows = [
        (
            task,
            general[points[0]][task]["metric"],
            *(_general_cell(general[k].get(task)) for k in points),
        )
        for task in tasks
    ]
    header = ("task", "metric", *(f"after {k}" if k != "0" else "unedited" for k in points))
    title = "general ability (first N examples of each task; 95% CI over them):\n"
    return title + format_table(header, rows)


def _general_cell(result: dict | None) -> str:
    if result is None:
        return MISSING
    return format_interval(result["score"], result.get("ci"))


DECAY_COLUMNS = (
    "efficacy_score",
    "paraphrase_score",
    "neighborhood_score",
    "locality_top1_agreement",
)


def format_decay(
    points: dict[str, dict],
    heading: str = "edits",
    title: str = "after N edits, over the cases edited so far (unedited model in brackets):\n",
) -> str:
    """The main score of each group at every checkpoint of a sequential run (a summary's
    ``checkpoints``), or at every value of a sweep."""
    columns = [c for c in DECAY_COLUMNS if any(c in m for m in points.values())]
    rows = [
        (
            k,
            str(next(iter(m.values()))["n"]) if m else "0",
            *(_decay_cell(m.get(c, {})) for c in columns),
        )
        for k, m in points.items()
    ]
    return title + format_table((heading, "cases", *columns), rows)


def _decay_cell(values: dict) -> str:
    post = format_interval(values.get("post"), values.get("post_ci"))
    if values.get("pre") is None:
        return post
    return f"{post} ({_fmt(values['pre'])})"


def format_predictions(
    prompts: Sequence[tuple[str, str]],
    before: torch.Tensor,
    after: torch.Tensor,
    tok: PreTrainedTokenizerBase,
    top_k: int = 5,
) -> str:
    """Top-k next tokens before and after an edit, for each (label, prompt)."""
    blocks = []
    for (label, prompt), b, a in zip(prompts, before, after):
        rows = []
        tb, ta = b.topk(top_k), a.topk(top_k)
        for i in range(top_k):
            rows.append(
                (
                    str(i + 1),
                    f"{tok.decode([int(tb.indices[i])])!r} {tb.values[i].exp():.3f}",
                    f"{tok.decode([int(ta.indices[i])])!r} {ta.values[i].exp():.3f}",
                )
            )
        blocks.append(f"{label}: {prompt!r}\n" + format_table(("#", "before", "after"), rows))
    return "\n\n".join(blocks)


def format_report_card(report: EvalReport) -> str:
    """``kedit audit``'s report: the measures by group, then what the edited model said."""
    row = report.rows[0]
    if "error" in row:
        return f"the edit failed: {row['error']}"
    request = row["details"]["requests"][0]
    text = request["prompt"].replace("{}", request["subject"], 1)
    head = (
        f"audit of {report.summary['run']['method']}: {text} "
        f"{request['target_true']!r} -> {request['target_new']!r}"
    )
    out = [head, "", format_metrics(report)]
    details = row.get("details", {})
    for turn in details.get("dialogue", []):
        out.append(
            f"\n{turn['kind']}: answered {turn['post_answer']!r}; after the follow-up "
            f"{turn['post_reply'].strip()[:80]!r} -> {turn['post_outcome']}"
            f" (unedited: {turn['pre_outcome']})"
        )
    sample = details.get("generation_sample")
    if sample:
        out.append(f"\nsampled text after the edit:\n  {sample['post'][:300]!r}")
    for entry in details.get("answer_traces", []):
        kinds = ", ".join(entry["kinds"])
        out.append(f"\nhow the edited model answered {entry['prompt'][-120:]!r} ({kinds}):")
        out += ["  " + line for line in format_trace(entry["trace"])]
    out.append(
        f"\nedit time {_fmt(row.get('edit_time_s'))} s; the benchmark measures (portability, "
        "conflicts, distortion) run with kedit eval --suite pitfalls"
    )
    return "\n".join(out)


def format_bench(summary: BenchSummary, outcome: BenchOutcome | None = None) -> str:
    """A bench at a glance: what this run did (``outcome``, a
    :class:`~kedit.bench.driver.BenchOutcome`); per scenario, methods by the headline measure of
    each group after editing (at the last checkpoint: 1 edit for single, the batch size for
    batch:B, the most edits for sequential), the general-ability tasks at the last sequential
    checkpoint and the median edit time per edit; then the jobs that are not done, and why."""
    out = []
    if outcome is not None:
        out.append(_format_outcome(outcome))
    shown = headline_groups(summary)
    if shown:
        names = ", ".join(f"{g} = {summary.headlines[g]}" for g in shown)
        out.append(f"headline measures after editing: {names} (unedited: before editing)")
    for scenario in summary.scenarios():
        table = headline_table(summary, scenario)
        if table is not None:
            out.append(_format_headline_table(table))
    out += [_format_sweep(a) for a in sweep_analyses(summary)]
    not_done = [
        f"  {j.job_id}: {j.status}" + (f": {j.note}" if j.note else "")
        for j in sorted(
            summary.jobs.values(), key=lambda j: (summary.method_rank(j.method), j.job_id)
        )
        if j.status != "done"
    ]
    if not_done:
        out.append("jobs not done:\n" + "\n".join(not_done))
    return "\n\n".join(out) if out else "the bench has no results yet"


def _format_outcome(outcome: BenchOutcome) -> str:
    counts = Counter(outcome.status.values())
    took = format_duration(outcome.elapsed_s)
    units = f"{outcome.written} unit{'s' * (outcome.written != 1)}"
    failed = max(counts["failed"], len(outcome.failures))
    return (
        f"{units} written in {took}; {counts['done']} jobs done, "
        f"{counts['not applicable']} not applicable, {failed} failed"
    )


def _format_headline_table(table: HeadlineTable) -> str:
    rows = []
    for row in table.rows:
        label = row.label
        if row.checkpoint != table.last:
            label += f" (after {row.checkpoint})"
        if row.incomplete:
            label += " (incomplete)"
        cells = [
            format_interval(v, None if e is None else (e.low, e.high))
            for v, e in zip(row.values, row.estimates or (None,) * len(row.values))
        ]
        rows.append((label, *cells, _fmt(row.seconds_per_edit)))
    lower = [c.measure for c in table.columns if not c.higher_is_better]
    note = "\nvalues with their 95% interval [low, high] over the cases (a task's examples)"
    note += f"\nlower is better: {', '.join(lower)}" if lower else ""
    header = ("method", *map(table.heading, table.columns), "s/edit")
    return f"{table.title}\n" + format_table(header, rows) + note


def _format_sweep(analysis: SweepAnalysis) -> str:
    """A sweep by value, and for a layer sweep edit success against the causal trace."""
    extra = analysis.measure not in (None, *SWEEP_MEASURES)
    traced = any(p.trace_effect is not None for p in analysis.points)
    header = [analysis.key, "cases", *SWEEP_MEASURES]
    header += [str(analysis.measure)] if extra else []
    header += ["MLP indirect effect"] if traced else []
    rows = []
    for p in analysis.points:
        shown = [p.measures.get(m) for m in SWEEP_MEASURES]
        shown += [p.success] if extra else []
        shown += [p.trace_effect] if traced else []
        cells = [
            format_interval(None, None) if e is None else format_interval(e.value, e.as_list())
            for e in shown
        ]
        rows.append((str(p.value), str(p.cases), *cells))
    out = f"{analysis.job_id}\n" + format_table(header, rows)
    if analysis.correlation is not None:
        out += "\n" + correlation_sentence(analysis.correlation)
    return out


def markdown_methods() -> str:
    """The README's method table, from the registry: one row per method."""
    aliases: dict[str, list[str]] = {}
    for alias, name in METHODS.aliases().items():
        aliases.setdefault(name, []).append(alias)
    rows = ["| method | family | kind of change | paper | batch |", "|---|---|---|---|---|"]
    for name in METHODS.names():
        cls = METHODS[name]
        also = ", ".join(f"`{a}`" for a in aliases.get(name, []))
        label = f"`{name}` ({cls.display_name}" + (f"; alias {also})" if also else ")")
        batch = "yes" if cls.supports_batch else "no"
        rows.append(f"| {label} | {cls.family} | {METHODS.help(name)} | {cls.paper} | {batch} |")
    return "\n".join(rows)


def markdown_measures() -> str:
    """The README's measure table, from the registry: one row per measure, in group order."""
    rows = ["| group | measure | protocol | suites | what it measures |", "|---|---|---|---|---|"]
    for m in resolve_metrics(None, "pitfalls"):
        suites = ", ".join(m.suites)
        rows.append(f"| {m.group} | `{m.name}` | {m.protocol} | {suites} | {m.description} |")
    return "\n".join(rows)
