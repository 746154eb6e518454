"""A bench's numbers, aggregated from the store's rows: what the report, the findings and the
console read.

Everything here is a pure function of the rows :class:`~kedit.bench.store.BenchStore` returns
(``jobs()``, ``cases()``, ``results()``, ``identity()``), so it is tested without a model:

* :func:`measure_means`: per job x checkpoint x measure, the pooled (weighted) means of the
  unedited (``pre``) and edited (``post``) values and the number of cases;
* :func:`choose_headlines`: the measure that stands for each group (reliability,
  generalization, locality, portability), the first of :data:`HEADLINE_PREFERENCE` present;
* :func:`job_costs`: per job, the median edit time per edit, edit memory per update and
  evaluation time per case;
* :class:`BenchSummary`: all of the above plus the jobs and the plan's method order, with the
  tables and decay curves built from them (:meth:`BenchSummary.table`,
  :meth:`BenchSummary.headline_table`, :meth:`BenchSummary.decay_plots`, in
  :mod:`kedit.bench.tables`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedit.bench.plan import BASELINE_JOB, Scenario
from kedit.bench.store import BenchStore
from kedit.eval.metrics import GROUP_ORDER as METRIC_GROUPS

if TYPE_CHECKING:
    from kedit.bench.tables import DecayPlot, HeadlineTable, ScenarioTable

#: the pseudo-case and group of general-ability scores (perplexity, downstream tasks)
GENERAL_CASE = "general"
GENERAL_GROUP = "general"

#: the measure that stands for a group in headlines and decay curves: the first one present
HEADLINE_PREFERENCE: dict[str, tuple[str, ...]] = {
    "reliability": ("efficacy_score", "rewrite_token_acc", "rewrite_gen_match"),
    "generalization": ("paraphrase_score", "paraphrase_token_acc", "paraphrase_gen_match"),
    "locality": ("neighborhood_score", "locality_top1_agreement"),
    "portability": ("portability_token_acc",),
}

#: the survey's order of measure groups in tables, general ability last
GROUP_ORDER = (*METRIC_GROUPS, GENERAL_GROUP)

STATUS_NOT_APPLICABLE = "not applicable"


# -- rows -> numbers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasureMean:
    """One measure of one job at one checkpoint: pooled means before and after the edits."""

    job_id: str
    method: str
    scenario: str
    checkpoint: int
    measure: str
    group: str
    protocol: str
    higher_is_better: bool
    #: sum(pre * weight) / sum(weight) over the rows with a ``pre`` value; None if none has one
    pre: float | None
    #: the same over ``post``
    post: float | None
    #: result rows (cases) that have a ``post`` value
    n: int


def measure_means(results: Iterable[dict[str, Any]]) -> list[MeasureMean]:
    """Weighted means of ``pre`` and ``post`` per job x checkpoint x measure, from
    :meth:`BenchStore.results` rows (a row's ``weight`` pools measures counted over several
    probes)."""
    sums: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in results:
        key = (row["job_id"], int(row["checkpoint"]), row["measure"])
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = {"row": row, "pre": 0.0, "pre_w": 0, "post": 0.0, "post_w": 0, "n": 0}
        weight = row.get("weight", 1)
        if row.get("pre") is not None:
            acc["pre"] += row["pre"] * weight
            acc["pre_w"] += weight
        if row.get("post") is not None:
            acc["post"] += row["post"] * weight
            acc["post_w"] += weight
            acc["n"] += 1
    out = []
    for (job_id, checkpoint, measure), acc in sums.items():
        row = acc["row"]
        out.append(
            MeasureMean(
                job_id=job_id,
                method=row.get("method") or job_id.split("/", 1)[0],
                scenario=row.get("scenario") or job_id.split("/", 1)[-1],
                checkpoint=checkpoint,
                measure=measure,
                group=row["grp"],
                protocol=row["protocol"],
                higher_is_better=bool(row["higher_is_better"]),
                pre=acc["pre"] / acc["pre_w"] if acc["pre_w"] else None,
                post=acc["post"] / acc["post_w"] if acc["post_w"] else None,
                n=acc["n"],
            )
        )
    return out


def choose_headlines(means: Iterable[MeasureMean]) -> dict[str, str]:
    """For each group of :data:`HEADLINE_PREFERENCE`, its first preferred measure that the bench
    has (the same measure for every job, so that methods compare)."""
    present = {m.measure for m in means}
    chosen = {}
    for group, preference in HEADLINE_PREFERENCE.items():
        for measure in preference:
            if measure in present:
                chosen[group] = measure
                break
    return chosen


@dataclass(frozen=True)
class JobCost:
    """What a job's edits cost: medians over its edited cases."""

    job_id: str
    method: str
    scenario: str
    #: distinct cases the job edited (the ``general`` pseudo-case is not one)
    cases: int
    #: distinct cases with an error
    errors: int
    #: median over cases of the edit time per edit: the time of the update that applied the
    #: case, divided by the cases it applied (B for a batch:B update; a sequential case counts
    #: once, with its own edit)
    median_edit_time_s: float | None
    #: median over cases of the memory the update that applied the case took above what was in
    #: use before it (per update, not divided by the batch size)
    median_edit_memory_bytes: float | None
    #: median over cases of the peak memory in use during the update (the model included)
    median_peak_memory_bytes: float | None
    #: median over case x checkpoint rows of the time to score the case
    median_eval_time_s: float | None
    #: how memory was measured ("cuda allocated", "cpu rss"), joined if it varies
    memory_kind: str | None


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _time_per_edit(row: dict[str, Any]) -> float | None:
    """A case row's edit time per edit: a batch:B row carries the whole update's time and has
    checkpoint B (the cases that update applied)."""
    time_s = row.get("edit_time_s")
    scenario = row.get("scenario") or row["job_id"].split("/", 1)[-1]
    if time_s is None or not scenario.startswith("batch"):
        return time_s
    return time_s / max(int(row["checkpoint"]), 1)


def job_costs(cases: Iterable[dict[str, Any]]) -> dict[str, JobCost]:
    """Per job, the medians of :class:`JobCost` from :meth:`BenchStore.cases` rows."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in cases:
        if row["case_id"] != GENERAL_CASE:
            by_job[row["job_id"]].append(row)
    out = {}
    for job_id, rows in by_job.items():
        first: dict[str, dict[str, Any]] = {}  # each case at its first checkpoint
        for row in sorted(rows, key=lambda r: r["checkpoint"]):
            first.setdefault(row["case_id"], row)
        kinds = sorted({r["memory_kind"] for r in rows if r.get("memory_kind")})
        out[job_id] = JobCost(
            job_id=job_id,
            method=rows[0].get("method") or job_id.split("/", 1)[0],
            scenario=rows[0].get("scenario") or job_id.split("/", 1)[-1],
            cases=len(first),
            errors=len({r["case_id"] for r in rows if r.get("error")}),
            median_edit_time_s=_median(_time_per_edit(r) for r in first.values()),
            median_edit_memory_bytes=_median(r.get("edit_memory_bytes") for r in first.values()),
            median_peak_memory_bytes=_median(r.get("peak_memory_bytes") for r in first.values()),
            median_eval_time_s=_median(r.get("eval_time_s") for r in rows),
            memory_kind=", ".join(kinds) or None,
        )
    return out


# -- jobs and the summary ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobInfo:
    """A job's row: its method, scenario, status, the note on why it was not applicable, and its
    run metadata (``info``: model, fingerprint, versions, seed, device, dataset, skipped ...)."""

    job_id: str
    method: str
    scenario: str
    status: str
    note: str | None
    info: dict[str, Any]

    @property
    def kind(self) -> str:
        """``single``, ``batch``, ``sequential``, or ``baseline`` for the unedited model's job."""
        if self.job_id == BASELINE_JOB:
            return "baseline"
        return self.scenario.partition(":")[0]


@dataclass(frozen=True)
class SkippedMeasure:
    """A measure some jobs skipped (the dataset cannot feed it, the scenario cannot run it)."""

    measure: str
    reason: str
    scenarios: tuple[str, ...]


def _scenario_order(text: str) -> tuple[int, tuple[int, ...], str]:
    try:
        scenario = Scenario.parse(text)
    except ValueError:
        return (len(("single", "batch", "sequential")), (), text)
    return (("single", "batch", "sequential").index(scenario.kind), scenario.sizes, text)


@dataclass
class BenchSummary:
    """A bench aggregated: jobs, means per job x checkpoint x measure, costs, headline measures.

    Build it with :meth:`load` (a bench folder), :meth:`from_store` or :meth:`from_rows`.
    Methods come in the order of the recorded plan (:meth:`BenchStore.record_plan`), then any
    others in the store's job order.
    """

    identity: dict[str, Any]
    #: every job, in the store's order, the baseline job included
    jobs: dict[str, JobInfo]
    #: (job_id, checkpoint, measure) -> means
    means: dict[tuple[str, int, str], MeasureMean]
    costs: dict[str, JobCost]
    #: group -> its headline measure (see :data:`HEADLINE_PREFERENCE`)
    headlines: dict[str, str]
    #: the plan of the bench's last run (``BenchPlan.to_dict()``), or ``{}``
    plan: dict[str, Any] = field(default_factory=dict)
    _by_job: dict[str, list[MeasureMean]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_job = defaultdict(list)
        for m in self.means.values():
            self._by_job[m.job_id].append(m)

    @classmethod
    def from_rows(
        cls,
        identity: dict[str, Any],
        jobs: Iterable[dict[str, Any]],
        cases: Iterable[dict[str, Any]],
        results: Iterable[dict[str, Any]],
        plan: dict[str, Any] | None = None,
    ) -> BenchSummary:
        """From the rows of :meth:`BenchStore.identity`, ``jobs``, ``cases`` and ``results``,
        and the recorded ``plan`` (:meth:`BenchStore.plan`)."""
        job_infos = {
            j["job_id"]: JobInfo(
                j["job_id"], j["method"], j["scenario"], j["status"], j.get("note"), j["info"]
            )
            for j in jobs
        }
        means = measure_means(results)
        return cls(
            identity=dict(identity),
            jobs=job_infos,
            means={(m.job_id, m.checkpoint, m.measure): m for m in means},
            costs=job_costs(cases),
            headlines=choose_headlines(means),
            plan=dict(plan or {}),
        )

    @classmethod
    def from_store(cls, store: BenchStore) -> BenchSummary:
        return cls.from_rows(
            store.identity(), store.jobs(), store.cases(), store.results(), store.plan()
        )

    @classmethod
    def load(cls, bench_dir: str | Path) -> BenchSummary:
        """Read the bench in ``bench_dir``, read-only (fails if it holds none)."""
        with BenchStore(bench_dir, create=False) as store:
            return cls.from_store(store)

    # -- lookups ---------------------------------------------------------------------------------

    def methods(self) -> list[str]:
        """Methods in the bench (not the unedited baseline): in the plan's order where the
        store recorded one, the others after them in the store's job order."""
        found = list(dict.fromkeys(j.method for j in self.jobs.values() if j.kind != "baseline"))
        planned = [m for m in self.plan.get("methods") or [] if m in found]
        return list(dict.fromkeys([*planned, *found]))

    def method_rank(self, method: str) -> int:
        """``method``'s place in :meth:`methods` (after all of them if it is not there)."""
        order = self.methods()
        return order.index(method) if method in order else len(order)

    def scenario_jobs(self, scenario: str) -> list[JobInfo]:
        """The jobs of ``scenario`` that have results, in :meth:`methods` order."""
        jobs = [
            j for j in self.jobs.values() if j.scenario == scenario and self._by_job.get(j.job_id)
        ]
        return sorted(jobs, key=lambda j: self.method_rank(j.method))

    def job_means(self, job_id: str) -> list[MeasureMean]:
        """Every :class:`MeasureMean` of a job."""
        return list(self._by_job.get(job_id, []))

    def scenarios(self) -> list[str]:
        """Scenarios in the bench, single first, then batch by size, then sequential."""
        found = {j.scenario for j in self.jobs.values() if j.kind != "baseline"}
        return sorted(found, key=_scenario_order)

    def checkpoints(self, job_id: str) -> list[int]:
        return sorted({m.checkpoint for m in self._by_job.get(job_id, [])})

    def job(self, method: str, kind: str) -> JobInfo | None:
        """``method``'s job of scenario kind ``kind`` that has results; for ``sequential`` the
        one whose last checkpoint is largest."""
        found = [
            j
            for j in self.jobs.values()
            if j.method == method and j.kind == kind and self._by_job.get(j.job_id)
        ]
        return max(found, key=lambda j: (self.checkpoints(j.job_id)[-1], j.job_id), default=None)

    def value(
        self, job_id: str, checkpoint: int, measure: str, which: str = "post"
    ) -> float | None:
        """The pooled mean of ``which`` (``pre`` or ``post``), or None where there is none."""
        mean = self.means.get((job_id, checkpoint, measure))
        return None if mean is None else getattr(mean, which)

    def headline(
        self, job_id: str, checkpoint: int, group: str, which: str = "post"
    ) -> float | None:
        """The value of ``group``'s headline measure (see :attr:`headlines`)."""
        measure = self.headlines.get(group)
        return None if measure is None else self.value(job_id, checkpoint, measure, which)

    def general(self, job_id: str, checkpoint: int) -> dict[str, float]:
        """General-ability scores (task -> value) of a job at a checkpoint."""
        return {
            m.measure: m.post
            for m in self._by_job.get(job_id, [])
            if m.group == GENERAL_GROUP and m.checkpoint == checkpoint and m.post is not None
        }

    def baseline_general(self) -> dict[str, float]:
        """The unedited model's general-ability scores (job ``unedited/general``)."""
        return self.general(BASELINE_JOB, 0)

    def lower_is_better_tasks(self) -> list[str]:
        """General tasks where lower is better (perplexity)."""
        return sorted(
            {m.measure for m in self.means.values() if m.group == GENERAL_GROUP}
            - set(self.downstream_tasks())
        )

    def downstream_tasks(self) -> list[str]:
        """General tasks where higher is better (downstream accuracy)."""
        return sorted(
            {
                m.measure
                for m in self.means.values()
                if m.group == GENERAL_GROUP and m.higher_is_better
            }
        )

    def skipped(self) -> list[SkippedMeasure]:
        """Measures jobs skipped, one entry per measure and reason, with the scenarios."""
        found: dict[tuple[str, str], list[str]] = defaultdict(list)
        for job in self.jobs.values():
            for name, why in (job.info.get("skipped") or {}).items():
                if job.scenario not in found[(name, why)]:
                    found[(name, why)].append(job.scenario)
        return [
            SkippedMeasure(name, why, tuple(sorted(scenarios, key=_scenario_order)))
            for (name, why), scenarios in sorted(found.items())
        ]

    def run_info(self) -> dict[str, str]:
        """The header facts (model, fingerprint, dataset, cases, versions, seed, device), each
        value joined with ", " where jobs differ."""
        keys = ("model", "model_fingerprint", "dataset", "n_cases", "seed", "device")
        found: dict[str, list[str]] = {k: [] for k in (*keys, "kedit", "torch", "transformers")}
        for job in self.jobs.values():
            info = job.info
            for key in keys:
                if info.get(key) is not None:
                    found[key].append(str(info[key]))
            for package in ("kedit", "torch", "transformers"):
                version = (info.get("versions") or {}).get(package)
                if version is not None:
                    found[package].append(str(version))
        if found["n_cases"]:  # sequential jobs edit a prefix of the cases: the bench has the most
            found["n_cases"] = [str(max(int(n) for n in found["n_cases"]))]
        for key in ("model", "dataset", "seed"):
            if not found[key] and self.identity.get(key) is not None:
                found[key].append(str(self.identity[key]))
        return {k: ", ".join(dict.fromkeys(v)) for k, v in found.items() if v}

    # -- tables and curves (:mod:`kedit.bench.tables`) ------------------------------------------

    def table(self, scenario: str) -> ScenarioTable:
        """Methods by measures for ``scenario`` (:func:`kedit.bench.tables.scenario_table`)."""
        from kedit.bench.tables import scenario_table

        return scenario_table(self, scenario)

    def headline_table(self, scenario: str) -> HeadlineTable | None:
        """``scenario`` at a glance (:func:`kedit.bench.tables.headline_table`)."""
        from kedit.bench.tables import headline_table

        return headline_table(self, scenario)

    def decay_plots(self, scenario: str) -> list[DecayPlot]:
        """Decay curves of a sequential scenario (:func:`kedit.bench.tables.decay_plots`)."""
        from kedit.bench.tables import decay_plots

        return decay_plots(self, scenario)


def summarize_bench(bench_dir: str | Path) -> BenchSummary:
    """The summary of the bench in ``bench_dir`` (:meth:`BenchSummary.load`)."""
    return BenchSummary.load(bench_dir)
