"""General ability after editing against the unedited model's.

The change of a general-ability task from the unedited model's score (:func:`task_change`) is
the difference for a downstream task (higher is better) and the relative change for a
lower-is-better one (perplexity). :class:`GeneralChange` averages them over the tasks of a job at
a checkpoint. The survey's decay claims (:mod:`kedit.bench.findings`) are judged on these, and
the report's summary table (:mod:`kedit.bench.tables`) shows them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from kedit.bench.summary import BenchSummary
from kedit.formatting import format_relative


def task_change(value: float, base: float, higher_is_better: bool) -> float | None:
    """A task's change from the unedited model's ``base``: ``value - base`` where higher is
    better, ``value / base - 1`` where lower is (None if ``base`` is 0)."""
    if higher_is_better:
        return value - base
    return value / base - 1 if base else None


@dataclass(frozen=True)
class GeneralChange:
    """A job's general ability at a checkpoint against the unedited model's."""

    checkpoint: int
    #: mean over downstream tasks of (score - unedited score); None without downstream tasks
    downstream: float | None
    #: mean over lower-is-better tasks of (score / unedited score - 1); None without them
    perplexity: float | None

    def text(self) -> str:
        parts = []
        if self.downstream is not None:
            parts.append(f"downstream {self.downstream:+.3f}")
        if self.perplexity is not None:
            parts.append(f"perplexity {format_relative(self.perplexity)}")
        return f"after {self.checkpoint}: {', '.join(parts)}"

    def numbers(self, method: str) -> dict[str, float]:
        out = {}
        if self.downstream is not None:
            out[f"{method}_downstream_change_{self.checkpoint}"] = self.downstream
        if self.perplexity is not None:
            out[f"{method}_perplexity_change_{self.checkpoint}"] = self.perplexity
        return out


def task_changes(
    summary: BenchSummary, job_id: str, checkpoint: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(downstream task -> change, lower-is-better task -> relative change) of a job at a
    checkpoint against the unedited model (:func:`task_change`); tasks without both scores are
    left out."""
    baseline = summary.baseline_general()
    scores = summary.general(job_id, checkpoint)
    found: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for tasks, higher, out in (
        (summary.downstream_tasks(), True, found[0]),
        (summary.lower_is_better_tasks(), False, found[1]),
    ):
        for task in tasks:
            if task in scores and task in baseline:
                change = task_change(scores[task], baseline[task], higher)
                if change is not None:
                    out[task] = change
    return found


def general_change(summary: BenchSummary, job_id: str, checkpoint: int) -> GeneralChange | None:
    """The job's :class:`GeneralChange` at ``checkpoint``, or None without general scores
    there (or without the unedited model's)."""
    downstream, perplexity = task_changes(summary, job_id, checkpoint)
    if not downstream and not perplexity:
        return None
    return GeneralChange(
        checkpoint,
        statistics.fmean(downstream.values()) if downstream else None,
        statistics.fmean(perplexity.values()) if perplexity else None,
    )


def general_changes(
    summary: BenchSummary, job_id: str, wanted: Callable[[int], bool]
) -> list[GeneralChange]:
    """The job's :class:`GeneralChange` at each of its checkpoints that ``wanted`` accepts and
    that has general scores, in checkpoint order."""
    return [
        change
        for k in summary.checkpoints(job_id)
        if wanted(k) and (change := general_change(summary, job_id, k)) is not None
    ]
