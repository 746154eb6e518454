"""The one summariser of rows: pooled means of each measure, costs as medians, and the analyses
across cases. ``kedit eval``'s ``summary.json`` (:func:`summarize_run`) and ``kedit bench``'s
tables (:mod:`kedit.bench.summary`, per job) are drawn from the same functions.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from kedit.eval.formulas import reversion_rate_by_confidence
from kedit.eval.formulas.uncertainty import Estimate, mean_estimate
from kedit.eval.general.task import task_estimate
from kedit.eval.metric import group_rank
from kedit.eval.protocols import Protocol, Sequential, Sweep
from kedit.eval.rows import GENERAL_CASE, CaseRow, MeasureRow


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None, or None if there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True)
class MeasureMean:
    """One measure over many rows: pooled means before and after the edits."""

    measure: str
    group: str
    protocol: str
    higher_is_better: bool
    #: the rows' checkpoint (the largest, when they differ)
    checkpoint: int
    #: sum(pre * weight) / sum(weight) over the rows with a ``pre`` value; None if none has one
    pre: float | None
    #: the same over ``post``
    post: float | None
    #: rows (cases) that have a ``post`` value
    n: int
    #: ``pre`` with its 95% bootstrap interval over the cases
    pre_estimate: Estimate | None = None
    #: ``post`` with its 95% bootstrap interval over the cases
    post_estimate: Estimate | None = None

    def entry(self) -> dict[str, Any]:
        """The summary.json form: group, protocol, direction, n, and pre / post where known,
        each with its 95% interval (``pre_ci``, ``post_ci``: ``[low, high]``)."""
        out: dict[str, Any] = {
            "group": self.group,
            "protocol": self.protocol,
            "higher_is_better": self.higher_is_better,
            "n": self.n,
        }
        for key, value, est in (
            ("pre", self.pre, self.pre_estimate),
            ("post", self.post, self.post_estimate),
        ):
            if value is not None:
                out[key] = value
            if est is not None:
                out[f"{key}_ci"] = est.as_list()
        return out


def pooled(rows: Iterable[MeasureRow]) -> dict[str, MeasureMean]:
    """Per measure, the weighted means of ``pre`` and ``post`` over ``rows`` (a row's weight
    pools measures counted over several probes)."""
    groups: dict[str, list[MeasureRow]] = defaultdict(list)
    for row in rows:
        groups[row.measure].append(row)
    out = {}
    for measure, group in groups.items():
        pre = [(r.pre, r.weight) for r in group if r.pre is not None]
        post = [(r.post, r.weight) for r in group if r.post is not None]
        first = group[0]
        out[measure] = MeasureMean(
            measure,
            first.group,
            first.protocol,
            bool(first.higher_is_better),
            max(r.checkpoint for r in group),
            _weighted(pre),
            _weighted(post),
            len(post),
            _interval(pre, first.case_id),
            _interval(post, first.case_id),
        )
    return out


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _interval(pairs: list[tuple[float, int]], case_id: str) -> Estimate | None:
    """The weighted mean's bootstrap interval over the rows (cases; a general-ability row's
    interval comes from its examples instead, see :func:`general_results`)."""
    if not pairs or case_id == GENERAL_CASE:
        return None
    return mean_estimate([v for v, _ in pairs], [w for _, w in pairs])


def general_results(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A general pseudo-case's task results as summaries show them: without the per-example
    samples, with the headline's 95% interval over them (``ci``: ``[low, high]``)."""
    out = {}
    for task, result in details.get("general", {}).items():
        shown = {k: v for k, v in result.items() if k != "samples"}
        est = task_estimate(task, result)
        if est is not None:
            shown["ci"] = est.as_list()
        out[task] = shown
    return out


def measure_means(rows: Iterable[MeasureRow]) -> dict[tuple[int, str], MeasureMean]:
    """(checkpoint, measure) -> the pooled means of the rows at that checkpoint."""
    by_point: dict[int, list[MeasureRow]] = defaultdict(list)
    for row in rows:
        by_point[int(row.checkpoint)].append(row)
    return {
        (k, measure): mean
        for k, group in by_point.items()
        for measure, mean in pooled(group).items()
    }


def latest(rows: Iterable[MeasureRow]) -> list[MeasureRow]:
    """Each case's rows at the last checkpoint it was scored at: the state after all edits."""
    last: dict[str, int] = {}
    kept = list(rows)
    for row in kept:
        last[row.case_id] = max(last.get(row.case_id, 0), row.checkpoint)
    return [r for r in kept if r.checkpoint == last[r.case_id]]


@dataclass(frozen=True)
class Costs:
    """What editing the cases cost: medians over them."""

    #: distinct cases (the ``general`` pseudo-case is not one)
    cases: int
    #: distinct cases with an error
    errors: int
    #: median over cases of the edit time per edit (each case at its first checkpoint: its
    #: share of the update that applied it)
    median_edit_time_s: float | None
    #: median over cases of the memory the update that applied the case took above what was in
    #: use before it (per update, not divided by the cases it applied)
    median_edit_memory_bytes: float | None
    #: median over cases of the peak memory in use during the update (the model included)
    median_peak_memory_bytes: float | None
    #: median over case x checkpoint rows of the time to score the case after editing
    median_eval_time_s: float | None
    #: how memory was measured ("cuda allocated", "cpu rss"), joined if it varies
    memory_kind: str | None


def case_costs(rows: Iterable[CaseRow]) -> Costs:
    """The :class:`Costs` of case rows (the ``general`` pseudo-case left out)."""
    kept = [r for r in rows if r.case_id != GENERAL_CASE]
    first: dict[str, CaseRow] = {}
    for row in sorted(kept, key=lambda r: r.checkpoint):
        first.setdefault(row.case_id, row)
    kinds = sorted({r.memory_kind for r in kept if r.memory_kind})
    return Costs(
        cases=len(first),
        errors=len({r.case_id for r in kept if r.error}),
        median_edit_time_s=median(r.edit_time_s for r in first.values()),
        median_edit_memory_bytes=median(r.edit_memory_bytes for r in first.values()),
        median_peak_memory_bytes=median(r.peak_memory_bytes for r in first.values()),
        median_eval_time_s=median(r.eval_time_s for r in kept),
        memory_kind=", ".join(kinds) or None,
    )


def dialogue_analyses(rows: Iterable[CaseRow]) -> dict[str, Any]:
    """Across-case analyses: dialogue reversion by the unedited model's confidence in the old
    answer (Ma et al.: well-known facts revert more), in confidence quartiles, since a small
    model's probabilities crowd near zero where fixed bins would put every reply in one."""
    turns = [t for r in rows for t in (r.details or {}).get("dialogue", [])]
    turns = [t for t in turns if t.get("post_outcome") and t.get("confidence") is not None]
    if not turns:
        return {}
    ordered = sorted(t["confidence"] for t in turns)
    quartiles = [ordered[round(q * (len(ordered) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)]
    edges = sorted(set(quartiles))
    if len(edges) < 2:  # every reply at one confidence: one bin
        edges = [0.0, 1.0]
    outcomes = [t["post_outcome"] for t in turns]
    bins = reversion_rate_by_confidence(outcomes, [t["confidence"] for t in turns], edges)
    return {"dialogue_reversion_by_confidence": [asdict(b) for b in bins]}


def summarize_run(
    cases: list[CaseRow],
    measures: list[MeasureRow],
    run: dict[str, Any],
    protocol: Protocol,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A run's summary: each measure after all edits (each case at its last checkpoint: a
    sweep's last value), per checkpoint for sequential runs, per value for a sweep (``sweep``:
    its key and values), general ability per checkpoint, costs, analyses."""
    per_case = [r for r in measures if r.case_id != GENERAL_CASE]
    last_point: dict[str, int] = {}
    for row in cases:
        last_point[row.case_id] = max(last_point.get(row.case_id, 0), row.checkpoint)
    final_cases = [r for r in cases if r.checkpoint == last_point[r.case_id]]
    headline = latest(per_case)
    if isinstance(protocol, Sequential) and protocol.scoring == "final":
        # after all edits means the last checkpoint's rows: a case sampled at an earlier
        # checkpoint only must not stand in with its score from then
        end = max((r.checkpoint for r in per_case), default=0)
        headline = [r for r in per_case if r.checkpoint == end]
        final_cases = [r for r in cases if r.checkpoint == end]
    costs = case_costs(cases)
    summary: dict[str, Any] = {
        "run": run,
        "protocol": protocol.describe(),
        "cases": costs.cases,
        "errors": costs.errors,
        "metrics": {m.measure: m.entry() for m in _in_group_order(pooled(headline))},
        "skipped": dict(skipped or {}),
        "analyses": dialogue_analyses(r for r in final_cases if r.case_id != GENERAL_CASE),
        **{k: v for k, v in asdict(costs).items() if k.startswith("median_")},
    }
    if isinstance(protocol, (Sequential, Sweep)):
        by_point: dict[str, dict[str, Any]] = defaultdict(dict)
        for (k, measure), mean in sorted(measure_means(per_case).items()):
            by_point[str(k)][measure] = mean.entry()
        if isinstance(protocol, Sweep):  # the checkpoints are the swept values
            summary["sweep"] = {"key": protocol.key, "values": dict(by_point)}
        else:
            summary["checkpoints"] = dict(by_point)
            summary["edits"] = protocol.n_edits
    general = sorted((r for r in cases if r.case_id == GENERAL_CASE), key=lambda r: r.checkpoint)
    scores = {str(r.checkpoint): general_results(r.details) for r in general if _has(r, "general")}
    if scores:
        summary["general"] = scores
    held = [r.details["session_restore_bytes"] for r in general if _has(r, "session_restore_bytes")]
    if held:
        summary["session_restore_bytes"] = held[-1]
    return summary


def _in_group_order(means: dict[str, MeasureMean]) -> list[MeasureMean]:
    return sorted(means.values(), key=lambda m: (group_rank(m.group), m.measure))


def _has(row: CaseRow, key: str) -> bool:
    return bool(row.details) and key in row.details
