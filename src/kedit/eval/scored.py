"""The rows of a scored case: one measure row per metric its probes feed, and the details its
numbers alone do not show (its requests, the edit's own figures, dialogue turns, a sampled
text); :func:`scored_unit` puts them with each case's cost into a unit."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kedit.eval.cost import MemoryUse
from kedit.eval.measures.pitfalls import dialogue_details
from kedit.eval.metric import GENERAL_GROUP, Metric
from kedit.eval.rows import GENERAL_CASE, CaseRow, MeasureRow, Unit
from kedit.eval.scoring import ProbeResult
from kedit.methods.edit import Edit
from kedit.types import EditCase


def case_measures(
    case_id: str, checkpoint: int, results: list[ProbeResult], metrics: list[Metric]
) -> list[MeasureRow]:
    """One row per metric the case's probes feed: paired metrics have no ``pre``; pooled ones
    weigh the case by its number of probes."""
    rows = []
    for metric in metrics:
        post = metric(results, "post")
        if post is None:
            continue
        pre = None if metric.paired else metric(results, "pre")
        weight = sum(r.probe.kind in metric.kinds for r in results) if metric.pooled else 1
        rows.append(
            MeasureRow(
                case_id,
                checkpoint,
                metric.name,
                metric.group,
                metric.protocol,
                metric.higher_is_better,
                pre,
                post,
                weight,
            )
        )
    return rows


def case_details(results: list[ProbeResult]) -> dict[str, Any]:
    """What a case's numbers alone do not show: for dialogue probes, the turns and outcomes; the
    first sampled text about the subject (fluency), before and after; for a method that routes,
    whether its added part fired on each probe (by probe kind, in probe order); for one that
    answers through steps of its own, the trace of each prompt (:func:`edited_traces`)."""
    details: dict[str, Any] = {}
    routed: dict[str, list[bool]] = {}
    for r in results:
        if r.post.routed is not None:
            routed.setdefault(str(r.probe.kind), []).append(r.post.routed)
    if routed:
        details["routed"] = routed
    dialogue = dialogue_details(results)
    if dialogue:
        details["dialogue"] = dialogue
    sampled = next((r for r in results if r.post.text is not None), None)
    if sampled is not None:
        details["generation_sample"] = {"pre": sampled.pre.text, "post": sampled.post.text}
    traces = edited_traces(results)
    if traces:
        details["answer_traces"] = traces
    return details


def edited_traces(results: list[ProbeResult]) -> list[dict[str, Any]]:
    """For a model that answers through steps of its own (MeLLo, DeepEdit, SERAC), how the
    edited model answered each distinct prompt, with the kinds of the probes that asked it."""
    by_prompt: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.post.trace is not None:
            entry = by_prompt.setdefault(
                r.probe.prompt, {"prompt": r.probe.prompt, "kinds": [], "trace": r.post.trace}
            )
            if str(r.probe.kind) not in entry["kinds"]:
                entry["kinds"].append(str(r.probe.kind))
    return list(by_prompt.values())


def requests_of(cases: Sequence[EditCase]) -> dict[str, Any]:
    return {"requests": [r.to_dict() for case in cases for r in case.requests]}


def edit_infos(edits: Sequence[Edit]) -> dict[str, Any] | list[dict[str, Any]]:
    """The edits' own figures (JSON-safe values only): one mapping, or one per edit."""
    infos = [
        {k: v for k, v in e.info.items() if isinstance(v, (int, float, str, bool, type(None)))}
        for e in edits
    ]
    return infos[0] if len(infos) == 1 else infos


def edit_cost(memory: MemoryUse, seconds: float, edits: Sequence[Edit]) -> dict[str, Any]:
    """A case's cost: its share of the update's time, the update's memory, the edits' figures."""
    return {"edit_time_s": seconds, **memory.as_row(), "edit": edit_infos(edits)}


def scored_unit(
    key: str,
    checkpoint: int,
    cases: Sequence[EditCase],
    costs: dict[str, dict[str, Any]],
    eval_time: float,
    metrics: list[Metric],
    scores: dict[str, list[ProbeResult]],
) -> Unit:
    """Case and measure rows of scored ``cases``, with each case's cost (by case id, from
    :func:`edit_cost`)."""
    unit = Unit(key)
    for case in cases:
        cost = dict(costs[case.case_id])
        results = scores[case.case_id]
        details = {**requests_of([case]), **case_details(results)}
        if cost.get("edit"):
            details["edit"] = cost["edit"]
        cost.pop("edit", None)
        unit.cases.append(
            CaseRow(case.case_id, checkpoint, eval_time_s=eval_time, details=details, **cost)
        )
        unit.measures += case_measures(case.case_id, checkpoint, results, metrics)
    return unit


def general_ability_unit(
    key: str,
    checkpoint: int,
    scores: dict[str, dict[str, Any]],
    started: float,
    restore_bytes: int | None = None,
) -> Unit:
    """The unit of general ability at ``checkpoint`` (the pseudo-case ``general``): one measure
    row per task (post = its score, weight = its examples), the tasks' per-example details and
    the restore data the session held; ``started``: when measuring began
    (``time.perf_counter``)."""
    details: dict[str, Any] = {"general": scores} if scores else {}
    if restore_bytes is not None:
        details["session_restore_bytes"] = restore_bytes
    row = CaseRow(GENERAL_CASE, checkpoint, eval_time_s=time.perf_counter() - started)
    row.details = details or None
    measures = [
        MeasureRow(
            GENERAL_CASE,
            checkpoint,
            task,
            GENERAL_GROUP,
            f"{score['metric']}: {score['protocol']}",
            score["higher_is_better"],
            None,
            score["score"],
            score["n"],
        )
        for task, score in scores.items()
    ]
    return Unit(key, [row], measures)
