"""A bench's numbers, aggregated from the store's rows: what the tables, the report, the
findings and the console read.

Everything here is a pure function of the rows :class:`~kedit.bench.store.BenchStore` returns
(``jobs()``, ``cases()``, ``results()``, ``identity()``), through the same summariser as
``kedit eval`` (:mod:`kedit.eval.summary`), so it is tested without a model:

* per job x checkpoint x measure, the pooled means of the unedited (``pre``) and edited
  (``post``) values and the number of cases (:func:`kedit.eval.summary.measure_means`);
* :func:`choose_headlines`: the measure that stands for each group (reliability,
  generalization, locality, portability), the first of :data:`HEADLINE_PREFERENCE` present;
* per job, the median edit time per edit, edit memory per update and evaluation time per case
  (:class:`JobCost`); per layer-sweep job, each case's causal trace (:func:`case_traces`);
* :class:`BenchSummary`: all of the above plus the jobs and the plan's method order. Tables and
  decay curves are drawn from it by :mod:`kedit.bench.tables`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kedit.bench.details import answer_traces, case_traces, general_results
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.store import BenchStore
from kedit.eval.formulas.uncertainty import Estimate
from kedit.eval.general.task import task_estimate
from kedit.eval.metric import GENERAL_GROUP
from kedit.eval.protocol_text import order_key
from kedit.eval.rows import CaseRow, MeasureRow
from kedit.eval.summary import Costs, MeasureMean, case_costs, measure_means

#: the measure that stands for a group in headlines and decay curves: the first one present
HEADLINE_PREFERENCE: dict[str, tuple[str, ...]] = {
    "reliability": ("efficacy_score", "rewrite_token_acc", "rewrite_gen_match"),
    "generalization": ("paraphrase_score", "paraphrase_token_acc", "paraphrase_gen_match"),
    "locality": ("neighborhood_score", "locality_top1_agreement"),
    "portability": ("portability_token_acc",),
}

STATUS_NOT_APPLICABLE = "not applicable"


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
class JobCost(Costs):
    """What a job's edits cost (:class:`~kedit.eval.summary.Costs`), and whose they are."""

    job_id: str = ""
    method: str = ""
    scenario: str = ""


def job_costs(cases: Iterable[dict[str, Any]]) -> dict[str, JobCost]:
    """Per job, its :class:`JobCost` from :meth:`BenchStore.cases` rows."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in cases:
        by_job[row["job_id"]].append(row)
    out = {}
    for job_id, rows in by_job.items():
        costs = case_costs(CaseRow.from_dict(r) for r in rows)
        if not costs.cases:
            continue  # only the general pseudo-case
        method = rows[0].get("method") or job_id.split("/", 1)[0]
        scenario = rows[0].get("scenario") or job_id.split("/", 1)[-1]
        out[job_id] = JobCost(**asdict(costs), job_id=job_id, method=method, scenario=scenario)
    return out


def job_rows(results: Iterable[dict[str, Any]]) -> dict[str, list[MeasureRow]]:
    """job -> its measure rows, from :meth:`BenchStore.results` rows."""
    by_job: dict[str, list[MeasureRow]] = defaultdict(list)
    for row in results:
        by_job[row["job_id"]].append(MeasureRow.from_dict(row))
    return by_job


def job_means(results: Iterable[dict[str, Any]]) -> dict[tuple[str, int, str], MeasureMean]:
    """(job, checkpoint, measure) -> pooled means, from :meth:`BenchStore.results` rows."""
    return _means(job_rows(results))


def _means(by_job: dict[str, list[MeasureRow]]) -> dict[tuple[str, int, str], MeasureMean]:
    return {
        (job_id, k, measure): mean
        for job_id, rows in by_job.items()
        for (k, measure), mean in measure_means(rows).items()
    }


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
        """``single``, ``batch``, ``sequential``, ``sweep``, or ``baseline`` for the unedited
        model's job."""
        if self.job_id == BASELINE_JOB:
            return "baseline"
        return self.scenario.partition(":")[0]


@dataclass(frozen=True)
class SkippedMeasure:
    """A measure some jobs skipped (the dataset cannot feed it, the scenario cannot run it)."""

    measure: str
    reason: str
    scenarios: tuple[str, ...]


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
    #: (job_id, checkpoint, measure) -> pooled means
    means: dict[tuple[str, int, str], MeasureMean]
    costs: dict[str, JobCost]
    #: group -> its headline measure (see :data:`HEADLINE_PREFERENCE`)
    headlines: dict[str, str]
    #: the plan of the bench's last run (``BenchPlan.to_dict()``), or ``{}``
    plan: dict[str, Any] = field(default_factory=dict)
    #: job -> its measure rows (one per case, measure and checkpoint): what paired comparisons
    #: between jobs resample
    rows: dict[str, list[MeasureRow]] = field(default_factory=dict)
    #: (job, checkpoint) -> general-ability task results, with their per-example samples
    general_detail: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    #: job -> case -> its causal trace on the unedited model (layer sweeps)
    traces: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: job -> how the edited model answered each prompt (:func:`answer_traces`)
    answer_traces: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _by_job: dict[str, list[MeasureMean]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_job = defaultdict(list)
        for (job_id, _, _), m in self.means.items():
            self._by_job[job_id].append(m)

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
        cases = list(cases)
        rows = job_rows(results)
        means = _means(rows)
        return cls(
            identity=dict(identity),
            jobs=job_infos,
            means=means,
            costs=job_costs(cases),
            headlines=choose_headlines(means.values()),
            plan=dict(plan or {}),
            rows=dict(rows),
            general_detail=general_results(cases),
            traces=case_traces(cases),
            answer_traces=answer_traces(cases),
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
        return sorted(found, key=order_key)

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

    def estimate(
        self, job_id: str, checkpoint: int, measure: str, which: str = "post"
    ) -> Estimate | None:
        """The pooled mean of ``which`` with its 95% interval: over the cases for an editing
        measure, over the task's examples for a general-ability task (which has no ``pre``:
        the unedited model's is the baseline job's)."""
        mean = self.means.get((job_id, checkpoint, measure))
        if mean is None:
            return None
        if mean.group == GENERAL_GROUP:
            result = self.general_result(job_id, checkpoint, measure) if which == "post" else None
            return None if result is None else task_estimate(measure, result)
        return mean.pre_estimate if which == "pre" else mean.post_estimate

    def case_values(
        self, job_id: str, checkpoint: int, measure: str, which: str = "post"
    ) -> dict[str, tuple[float, int]]:
        """case -> (value, pooling weight) of one measure of a job at a checkpoint."""
        return {
            r.case_id: (getattr(r, which), r.weight)
            for r in self.rows.get(job_id, [])
            if r.checkpoint == checkpoint and r.measure == measure and getattr(r, which) is not None
        }

    def general_result(self, job_id: str, checkpoint: int, task: str) -> dict[str, Any] | None:
        """A general-ability task's full result (samples included) of a job at a checkpoint;
        the unedited model's is the baseline job's at checkpoint 0."""
        return self.general_detail.get((job_id, checkpoint), {}).get(task)

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
            SkippedMeasure(name, why, tuple(sorted(scenarios, key=order_key)))
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


def summarize_bench(bench_dir: str | Path) -> BenchSummary:
    """The summary of the bench in ``bench_dir`` (:meth:`BenchSummary.load`)."""
    return BenchSummary.load(bench_dir)
