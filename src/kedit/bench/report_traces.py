"""The report's section on how answers came about, for methods that answer through steps of
their own (MeLLo's subquestions, DeepEdit's search, SERAC's scope classifier): per job, how
often each outcome occurred at its last checkpoint, and the first traces in full."""

from __future__ import annotations

from collections import Counter
from html import escape

from kedit.bench.summary import BenchSummary
from kedit.formatting import format_trace, trace_outcome

#: traces shown in full per job
SHOWN = 3

NOTE = (
    "For each prompt the edited model was asked at the job's last checkpoint (a prompt shared by "
    "several probes counts once per case): how the answer came about, as the method traced it. "
    "SERAC: which model answered (the counterfactual model when the scope classifier put the "
    "prompt within an edit's scope); MeLLo and DeepEdit: whether the answer came from the "
    "memory of edited facts or from the model, and why the loop ended."
)


def traces_section(summary: BenchSummary) -> str:
    """The section's HTML, or ``""`` when no job traced its answers."""
    if not summary.answer_traces:
        return ""
    parts = ["<h2>How answers came about</h2>", f'<p class="note">{escape(NOTE)}</p>']
    for job_id, entries in summary.answer_traces.items():
        last = max(e["checkpoint"] for e in entries)
        shown = [e for e in entries if e["checkpoint"] == last]
        counts = Counter(trace_outcome(e["trace"]) or "(no outcome)" for e in shown)
        rows = "".join(
            f"<tr><td>{escape(outcome)}</td><td>{n}</td><td>{n / len(shown):.0%}</td></tr>"
            for outcome, n in counts.most_common()
        )
        parts.append(
            f"<h3>{escape(job_id)} (checkpoint {last}: {len(shown)} prompts)</h3>"
            f"<table><tr><th>outcome</th><th>prompts</th><th>share</th></tr>{rows}</table>"
        )
        for entry in shown[:SHOWN]:
            lines = [
                f"case {entry['case_id']}, {', '.join(entry['kinds'])}: {entry['prompt'][-160:]!r}"
            ]
            lines += format_trace(entry["trace"])
            parts.append(f"<pre>{escape(chr(10).join(lines))}</pre>")
    return "\n".join(parts)
