"""A bench's tables and decay curves, built from its :class:`~kedit.bench.summary.BenchSummary`.

* :func:`scenario_table`: methods by measures for one scenario, per checkpoint, with the
  unedited model's row first (:class:`ScenarioTable`);
* :func:`headline_table`: the compact view of one scenario: each method at the last checkpoint,
  the headline measure of each group, the general-ability tasks (sequential) and the median edit
  time per edit (:class:`HeadlineTable`; ``kedit bench``'s console summary and the report's
  Summary table);
* :func:`decay_plots`: the headline measures and general-ability tasks against the number of
  sequential edits (:class:`DecayPlot`).

Methods come in the summary's order (:meth:`BenchSummary.methods`: the plan's, when the store
recorded it).
"""

from __future__ import annotations

from dataclasses import dataclass

from kedit.bench.general_change import general_change_estimate, task_change
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.summary import STATUS_NOT_APPLICABLE, BenchSummary, JobInfo
from kedit.eval.formulas.uncertainty import Estimate
from kedit.eval.metric import GENERAL_GROUP, group_rank
from kedit.eval.summary import MeasureMean

#: the groups whose headline measure the compact tables show, in order
HEADLINE_GROUPS = ("reliability", "generalization", "locality", "portability")

#: beside a group's headline measure, the compact tables show these where the bench has them:
#: the same quantity under the other protocols (teacher-forced token accuracy, and free
#: generation, where the model answers without being given the target), so that a table never
#: shows only the most flattering protocol ("in the wild" studies report single-edit success
#: falling from about 97% to about 39% under free generation)
OTHER_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "reliability": ("rewrite_token_acc", "rewrite_gen_match"),
    "generalization": ("paraphrase_token_acc", "paraphrase_gen_match"),
    "portability": ("portability_one_hop_gen_match",),
}

#: short names of the protocols, for column headings
PROTOCOL_LABELS = {
    "probability comparison": "P(new)>P(old)",
    "probability magnitude": "P(new)-P(old)",
    "teacher-forced token accuracy": "teacher-forced",
    "generation exact match": "free generation",
    "top-1 agreement": "top-1 agreement",
}

#: above this many downstream tasks the decay curves show their mean instead of one plot each
MAX_TASK_PLOTS = 6


@dataclass(frozen=True)
class Column:
    """A table column: one measure, under its group."""

    group: str
    measure: str
    higher_is_better: bool
    protocol: str = ""

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


@dataclass(frozen=True)
class TableRow:
    """One row of a scenario table: a method (or ``unedited``) at a checkpoint."""

    label: str
    checkpoint: int
    values: tuple[float | None, ...]
    #: the job is still marked running (the bench was stopped before it finished)
    incomplete: bool = False
    #: the row's job (None for the unedited row)
    job_id: str | None = None
    #: each value with its 95% interval (None where it has none)
    estimates: tuple[Estimate | None, ...] = ()


@dataclass(frozen=True)
class ScenarioTable:
    """Methods by measures for one scenario (per checkpoint for batch and sequential, per value
    for a sweep), with the unedited model's values as the first row of each checkpoint."""

    scenario: str
    columns: tuple[Column, ...]
    rows: tuple[TableRow, ...]
    not_applicable: tuple[JobInfo, ...]


@dataclass(frozen=True)
class HeadlineRow:
    """One row of a :class:`HeadlineTable`: a method (or ``unedited``) at its last checkpoint."""

    label: str
    #: the scenario's last checkpoint, or the method's own last one if it stopped short
    checkpoint: int
    values: tuple[float | None, ...]
    incomplete: bool = False
    #: the row's job (None for the unedited row)
    job_id: str | None = None
    #: the job's median edit time per edit in seconds (None for the unedited row)
    seconds_per_edit: float | None = None
    #: each value with its 95% interval (None where it has none)
    estimates: tuple[Estimate | None, ...] = ()
    #: for a general-ability column, the change from the unedited model on the same examples
    #: with its paired 95% interval (None elsewhere, or without stored samples)
    changes: tuple[Estimate | None, ...] = ()


@dataclass(frozen=True)
class HeadlineTable:
    """One scenario at a glance: methods by the headline measure of each group
    (:data:`HEADLINE_GROUPS`) at the last checkpoint (1 edit for single, the batch size for
    batch:B, the most edits for sequential), and for sequential the general-ability tasks there;
    the unedited model's row first."""

    scenario: str
    #: the scenario's last checkpoint
    last: int
    #: the headline measures (one per group), then the general-ability tasks
    columns: tuple[Column, ...]
    rows: tuple[HeadlineRow, ...]
    not_applicable: tuple[JobInfo, ...]

    @property
    def title(self) -> str:
        """The scenario and what its last checkpoint means."""
        if self.scenario.startswith("sequential"):
            return f"{self.scenario}, after {self.last} edits"
        if self.scenario.startswith("batch"):
            return f"{self.scenario}, batches of {self.last}"
        return self.scenario

    def heading(self, column: Column) -> str:
        """A column's name: the task for general ability; the group for a headline measure,
        with its protocol where the group has columns under several protocols."""
        if column.group == GENERAL_GROUP:
            return column.measure
        if sum(c.group == column.group for c in self.columns) == 1:
            return column.group
        return f"{column.group}: {PROTOCOL_LABELS.get(column.protocol, column.measure)}"

    def change(self, row: HeadlineRow, index: int) -> float | None:
        """For a general-ability column, ``row``'s change from the unedited model
        (:func:`kedit.bench.general_change.task_change`: the difference for a downstream task, the
        relative change for perplexity); None elsewhere, for the unedited row, or without both
        values."""
        column = self.columns[index]
        value, base = row.values[index], self.rows[0].values[index]
        if column.group != GENERAL_GROUP or row.job_id is None or value is None or base is None:
            return None
        return task_change(value, base, column.higher_is_better)


@dataclass(frozen=True)
class Curve:
    """One method's line on a decay plot: (number of sequential edits, value) points."""

    label: str
    points: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class DecayPlot:
    """A quantity against the number of sequential edits, one curve per method; checkpoint 0 is
    the unedited model."""

    scenario: str
    title: str
    quantity: str
    higher_is_better: bool
    curves: tuple[Curve, ...]


def scenario_table(summary: BenchSummary, scenario: str) -> ScenarioTable:
    """Methods by measures for ``scenario`` (see :class:`ScenarioTable`)."""
    with_rows = summary.scenario_jobs(scenario)
    means = [m for j in with_rows for m in summary.job_means(j.job_id)]
    columns = _columns(summary, means)
    baseline = summary.baseline_general()
    rows = []
    for checkpoint in sorted({m.checkpoint for m in means}):
        unedited = []
        for col in columns:
            if col.group == GENERAL_GROUP:
                unedited.append(baseline.get(col.measure))
            else:
                pres = (summary.value(j.job_id, checkpoint, col.measure, "pre") for j in with_rows)
                unedited.append(next((p for p in pres if p is not None), None))
        before = tuple(_unedited_estimate(summary, with_rows, checkpoint, c) for c in columns)
        rows.append(TableRow("unedited", checkpoint, tuple(unedited), estimates=before))
        for job in with_rows:
            if checkpoint not in summary.checkpoints(job.job_id):
                continue
            values = tuple(summary.value(job.job_id, checkpoint, c.measure) for c in columns)
            estimates = tuple(summary.estimate(job.job_id, checkpoint, c.measure) for c in columns)
            incomplete = job.status == "running"
            rows.append(TableRow(job.method, checkpoint, values, incomplete, job.job_id, estimates))
    not_applicable = [
        j
        for j in summary.jobs.values()
        if j.scenario == scenario and j.status == STATUS_NOT_APPLICABLE
    ]
    not_applicable.sort(key=lambda j: summary.method_rank(j.method))
    return ScenarioTable(scenario, tuple(columns), tuple(rows), tuple(not_applicable))


def _unedited_estimate(
    summary: BenchSummary, jobs: list[JobInfo], checkpoint: int, column: Column
) -> Estimate | None:
    """The unedited model's value of a column with its interval: the baseline job's
    general-ability result, or the first job's ``pre`` over its cases at the checkpoint."""
    if column.group == GENERAL_GROUP:
        return summary.estimate(BASELINE_JOB, 0, column.measure)
    found = (summary.estimate(j.job_id, checkpoint, column.measure, "pre") for j in jobs)
    return next((e for e in found if e is not None), None)


def headline_measures(summary: BenchSummary, present: set[str]) -> list[str]:
    """The measures a compact table shows, in order: per group of :func:`headline_groups`, its
    headline measure, then the same quantity under the other protocols
    (:data:`OTHER_PROTOCOLS`) that ``present`` holds."""
    out = []
    for group in headline_groups(summary):
        for measure in (summary.headlines[group], *OTHER_PROTOCOLS.get(group, ())):
            if measure in present and measure not in out:
                out.append(measure)
    return out


def headline_groups(summary: BenchSummary) -> list[str]:
    """The groups of :data:`HEADLINE_GROUPS` that have a headline measure in ``summary``."""
    return [g for g in HEADLINE_GROUPS if g in summary.headlines]


def headline_table(summary: BenchSummary, scenario: str) -> HeadlineTable | None:
    """``scenario`` at a glance (see :class:`HeadlineTable`), built from its
    :func:`scenario_table`; None when it has no results, or for a sweep, whose values have no
    last one to stand for them (its glance is per value: :mod:`kedit.bench.sweep`)."""
    if scenario.startswith("sweep"):
        return None
    table = scenario_table(summary, scenario)
    if not table.rows:
        return None
    last = max(r.checkpoint for r in table.rows)
    index = {c.measure: i for i, c in enumerate(table.columns)}
    picked = [index[m] for m in headline_measures(summary, set(index))]
    if scenario.startswith("sequential"):  # general ability is measured at sequential checkpoints
        picked += [i for i, c in enumerate(table.columns) if c.group == GENERAL_GROUP]
    unedited = next(r for r in table.rows if r.label == "unedited" and r.checkpoint == last)
    # each method at the scenario's last checkpoint, or its own last one if it stopped short
    latest = {r.job_id: r for r in table.rows if r.job_id}
    columns = tuple(table.columns[i] for i in picked)
    rows = [
        HeadlineRow(
            unedited.label,
            last,
            tuple(unedited.values[i] for i in picked),
            estimates=tuple(unedited.estimates[i] for i in picked),
        )
    ]
    for row in sorted(latest.values(), key=lambda r: summary.method_rank(r.label)):
        cost = summary.costs.get(row.job_id) if row.job_id else None
        rows.append(
            HeadlineRow(
                row.label,
                row.checkpoint,
                tuple(row.values[i] for i in picked),
                row.incomplete,
                row.job_id,
                cost.median_edit_time_s if cost else None,
                tuple(row.estimates[i] for i in picked),
                tuple(
                    general_change_estimate(summary, row.job_id, row.checkpoint, c.measure)
                    if c.group == GENERAL_GROUP and row.job_id
                    else None
                    for c in columns
                ),
            )
        )
    return HeadlineTable(scenario, last, columns, tuple(rows), table.not_applicable)


def _columns(summary: BenchSummary, means: list[MeasureMean]) -> list[Column]:
    seen = {(m.group, m.measure): (m.higher_is_better, m.protocol) for m in means}
    headlines = set(summary.headlines.values())

    def order(key: tuple[str, str]) -> tuple[tuple[float, str], int, str]:
        group, measure = key
        return (group_rank(group), 0 if measure in headlines else 1, measure)

    return [Column(g, m, *seen[(g, m)]) for g, m in sorted(seen, key=order)]


def decay_plots(summary: BenchSummary, scenario: str) -> list[DecayPlot]:
    """For a sequential scenario: the reliability, generalization and locality headlines, each
    lower-is-better general task (perplexity), and each downstream task (their mean when there
    are more than :data:`MAX_TASK_PLOTS`), against the number of edits. Other scenarios have
    none."""
    if not scenario.startswith("sequential"):
        return []
    jobs = summary.scenario_jobs(scenario)
    plots: list[DecayPlot] = []
    for group in ("reliability", "generalization", "locality"):
        measure = summary.headlines.get(group)
        if measure is None:
            continue
        curves = [_case_curve(summary, j.job_id, measure, j.method) for j in jobs]
        _add_plot(plots, scenario, f"{group} ({measure})", measure, True, curves)
    baseline = summary.baseline_general()
    tasks = [(t, False) for t in summary.lower_is_better_tasks()]
    downstream = summary.downstream_tasks()
    if len(downstream) <= MAX_TASK_PLOTS:
        tasks += [(t, True) for t in downstream]
    for task, higher in tasks:
        curves = [
            _points(
                j.method,
                baseline.get(task),
                {k: summary.general(j.job_id, k).get(task) for k in summary.checkpoints(j.job_id)},
            )
            for j in jobs
        ]
        _add_plot(plots, scenario, f"general ability: {task}", task, higher, curves)
    if len(downstream) > MAX_TASK_PLOTS:
        curves = [
            _points(
                j.method,
                mean_of(baseline, downstream),
                {
                    k: mean_of(summary.general(j.job_id, k), downstream)
                    for k in summary.checkpoints(j.job_id)
                },
            )
            for j in jobs
        ]
        title = f"general ability: mean of {len(downstream)} downstream tasks"
        _add_plot(plots, scenario, title, "downstream mean", True, curves)
    return plots


def _case_curve(summary: BenchSummary, job_id: str, measure: str, label: str) -> Curve:
    checkpoints = summary.checkpoints(job_id)
    # the unedited model on every case the job edited: the pre mean at its last checkpoint
    start = summary.value(job_id, checkpoints[-1], measure, "pre") if checkpoints else None
    return _points(label, start, {k: summary.value(job_id, k, measure) for k in checkpoints})


def _points(label: str, start: float | None, values: dict[int, float | None]) -> Curve:
    points = [(0, start), *sorted(values.items())]
    return Curve(label, tuple((k, v) for k, v in points if v is not None))


def _add_plot(
    plots: list[DecayPlot],
    scenario: str,
    title: str,
    quantity: str,
    higher: bool,
    curves: list[Curve],
) -> None:
    curves = [c for c in curves if any(k > 0 for k, _ in c.points)]
    if curves:
        plots.append(DecayPlot(scenario, title, quantity, higher, tuple(curves)))


def mean_of(scores: dict[str, float], tasks: list[str]) -> float | None:
    """The mean over ``tasks``, or None unless every one has a score."""
    if not tasks or any(t not in scores for t in tasks):
        return None
    return sum(scores[t] for t in tasks) / len(tasks)
