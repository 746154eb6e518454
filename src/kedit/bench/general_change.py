"""General ability after editing against the unedited model's, with paired intervals.

The change of a general-ability task from the unedited model's score (:func:`task_change`) is
the difference for a downstream task (higher is better) and the relative change for a
lower-is-better one (perplexity). Both models answer the same examples, so the change's 95%
interval comes from resampling those examples once for both (a paired bootstrap,
:func:`kedit.eval.general.task.change_estimate`).

A downstream task on which the unedited model is not clearly above chance (its interval reaches
the score of a constant answer: MMLU for SmolLM2-135M) is shown in the tables but does not count
toward a claim (:func:`informative_tasks`): a model at chance cannot get measurably worse.
:class:`GeneralChange` averages the changes of the informative tasks of a job at a checkpoint.
The survey's decay claims (:mod:`kedit.bench.findings`) are judged on these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kedit.bench.plan import BASELINE_JOB
from kedit.bench.summary import BenchSummary
from kedit.eval.formulas.uncertainty import Estimate
from kedit.eval.general.task import (
    change_estimate,
    change_statistic,
    mean_change_estimate,
    task_estimate,
)
from kedit.formatting import format_relative


def task_change(value: float, base: float, higher_is_better: bool) -> float | None:
    """A task's change from the unedited model's ``base``: ``value - base`` where higher is
    better, ``value / base - 1`` where lower is (None if ``base`` is 0)."""
    if higher_is_better:
        return value - base
    return value / base - 1 if base else None


def general_change_estimate(
    summary: BenchSummary, job_id: str, checkpoint: int, task: str
) -> Estimate | None:
    """A task's change at a job's checkpoint from the unedited model, with its paired interval
    (None without both results' samples)."""
    base = summary.general_result(BASELINE_JOB, 0, task)
    edited = summary.general_result(job_id, checkpoint, task)
    if base is None or edited is None:
        return None
    return change_estimate(task, base, edited)


def informative_tasks(summary: BenchSummary) -> tuple[list[str], dict[str, str]]:
    """(downstream tasks that count toward claims, task -> why another one does not): a task
    counts when the unedited model's score is above chance with its whole 95% interval."""
    kept, excluded = [], {}
    for task in summary.downstream_tasks():
        result = summary.general_result(BASELINE_JOB, 0, task)
        est = task_estimate(task, result) if result is not None else None
        chance = (result or {}).get("chance")
        if est is None or chance is None:
            excluded[task] = "no per-example results stored for the unedited model"
        elif est.low <= chance:
            excluded[task] = (
                f"the unedited model is at chance ({est.value:.3f} [{est.low:.3f}, "
                f"{est.high:.3f}], a constant answer scores {chance:.3f})"
            )
        else:
            kept.append(task)
    return kept, excluded


@dataclass(frozen=True)
class GeneralChange:
    """A job's general ability at a checkpoint against the unedited model's: mean changes with
    their paired 95% intervals."""

    checkpoint: int
    #: mean over the informative downstream tasks of (score - unedited score)
    downstream: Estimate | None
    #: mean over lower-is-better tasks of (score / unedited score - 1)
    perplexity: Estimate | None

    def text(self) -> str:
        parts = []
        if self.downstream is not None:
            d = self.downstream
            parts.append(f"downstream {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        if self.perplexity is not None:
            p = self.perplexity
            parts.append(
                f"perplexity {format_relative(p.value)} "
                f"[{format_relative(p.low)}, {format_relative(p.high)}]"
            )
        return f"after {self.checkpoint}: {', '.join(parts)}"

    def numbers(self, method: str) -> dict[str, float]:
        out = {}
        for name, est in (("downstream", self.downstream), ("perplexity", self.perplexity)):
            if est is not None:
                key = f"{method}_{name}_change_{self.checkpoint}"
                out |= {key: est.value, f"{key}_low": est.low, f"{key}_high": est.high}
        return out


def task_changes(
    summary: BenchSummary, job_id: str, checkpoint: int
) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """(informative downstream task -> change, lower-is-better task -> relative change) of a
    job at a checkpoint against the unedited model, each with its paired interval; tasks
    without both results' samples are left out."""
    downstream, _ = informative_tasks(summary)
    found: tuple[dict[str, Estimate], dict[str, Estimate]] = ({}, {})
    for tasks, out in ((downstream, found[0]), (summary.lower_is_better_tasks(), found[1])):
        for task in tasks:
            est = general_change_estimate(summary, job_id, checkpoint, task)
            if est is not None:
                out[task] = est
    return found


def general_change(summary: BenchSummary, job_id: str, checkpoint: int) -> GeneralChange | None:
    """The job's :class:`GeneralChange` at ``checkpoint``, or None without general results
    (with samples) there or for the unedited model."""
    downstream, perplexity = informative_tasks(summary)[0], summary.lower_is_better_tasks()
    base = {t: summary.general_result(BASELINE_JOB, 0, t) for t in [*downstream, *perplexity]}
    changes = []
    for tasks in (downstream, perplexity):
        found = {}
        for task in tasks:
            edited = summary.general_result(job_id, checkpoint, task)
            if base[task] is not None and edited is not None:
                statistic = change_statistic(task, base[task], edited)
                if statistic is not None:
                    found[task] = statistic
        changes.append(mean_change_estimate(found))
    if changes == [None, None]:
        return None
    return GeneralChange(checkpoint, changes[0], changes[1])


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
