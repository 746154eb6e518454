"""The report's section on the survey's claims: each verdict with the numbers and intervals that
decided it, the sample that would settle an inconclusive one, the downstream tasks left out of
the claims, and the thresholds."""

from __future__ import annotations

from html import escape

from kedit.bench import verdicts
from kedit.bench.claims_edits import OTHER_ATTRIBUTION_GOOD
from kedit.bench.findings import CLAIMS, Finding
from kedit.bench.general_change import informative_tasks
from kedit.bench.summary import BenchSummary

#: the thresholds the report lists, with what each decides
THRESHOLDS = (
    (
        "DIFFERENCE",
        verdicts.DIFFERENCE,
        "one method is better than another on the same cases if "
        "the difference of their scores lies above this",
    ),
    ("LOCALITY_DROP", verdicts.LOCALITY_DROP, "locality is stable if it drops by less than this"),
    (
        "OTHER_ATTRIBUTION_GOOD",
        OTHER_ATTRIBUTION_GOOD,
        "good on Other-Attribution: agreement above this",
    ),
    (
        "DOWNSTREAM_DEGRADE",
        verdicts.DOWNSTREAM_DEGRADE,
        "degraded: mean downstream change from the unedited model at most minus this ...",
    ),
    (
        "PERPLEXITY_DEGRADE",
        verdicts.PERPLEXITY_DEGRADE,
        "... or perplexity up by at least this fraction",
    ),
    ("DEGRADE_CHECKPOINTS", verdicts.DEGRADE_CHECKPOINTS, "where MEND, ROME, KN are tested"),
    ("STABLE_UP_TO", verdicts.STABLE_UP_TO, "MEMIT is stable if no checkpoint up to this degrades"),
    ("DOWNSTREAM_TOLERANCE", verdicts.DOWNSTREAM_TOLERANCE, "unchanged downstream score, ±"),
    ("PERPLEXITY_TOLERANCE", verdicts.PERPLEXITY_TOLERANCE, "unchanged perplexity, ± fraction"),
    ("DOWNSTREAM_DROP", verdicts.DOWNSTREAM_DROP, "a mean downstream change below minus this"),
)


def findings_section(summary: BenchSummary, findings: list[Finding]) -> str:
    """The claims table, the tasks left out of the claims, and the thresholds."""
    by_id = {c.id: c for c in CLAIMS}
    rows = []
    for finding in findings:
        claim = by_id[finding.claim]
        css = finding.verdict.split(" at ")[0].replace(" ", "-")
        rows.append(
            f"<tr><td>{escape(claim.text)}</td>"
            f'<td class="verdict {css}">{escape(finding.verdict)}</td>'
            f"<td>{escape(finding.sentence)}</td><td>{escape(claim.threshold)}</td></tr>"
        )
    items = "".join(
        f"<li><code>{escape(name)} = {escape(str(value))}</code>: {escape(what)}</li>"
        for name, value, what in THRESHOLDS
    )
    _, excluded = informative_tasks(summary)
    left_out = "".join(
        f"<li><code>{escape(task)}</code>: {escape(why)}</li>" for task, why in excluded.items()
    )
    if left_out:
        left_out = (
            "<p>Downstream tasks shown in the tables but not counted toward the claims:</p>"
            f"<ul>{left_out}</ul>"
        )
    return (
        "<h2>The survey's claims</h2>"
        "<table><thead><tr><th>claim</th><th>verdict</th><th>what decided it</th>"
        f"<th>test</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="note">Every number comes with its 95% interval (seeded percentile bootstrap '
        "over the cases, or over the examples of a downstream task; paired where two models or "
        "methods answered the same ones). A claim is supported or not supported only where the "
        "intervals clear its thresholds; otherwise it is inconclusive at this sample size, with "
        "the sample that would settle it if the estimates stayed where they are. The decay "
        "claims (MEND, ROME and KN degrade, MEMIT is stable) are judged, as the survey reads them "
        "off its downstream-task plots, on general ability: a method degrades at a checkpoint "
        f"if its informative downstream task scores change by at most "
        f"-{verdicts.DOWNSTREAM_DEGRADE:.2f} on average from the unedited model's, or its "
        f"perplexity rises by at least {verdicts.PERPLEXITY_DEGRADE:.0%}.</p>"
        f"{left_out}"
        f"<p>Thresholds (<code>kedit.bench.verdicts</code>):</p><ul>{items}</ul>"
    )
