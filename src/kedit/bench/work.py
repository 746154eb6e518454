"""A bench worker: one model, loaded once, running shards of a plan's jobs.

A shard's run yields :class:`~kedit.bench.store.UnitResult`s as its units finish, and
:class:`Progress` notes in between (an edit applied, a case scored), so a driver, local or across
a Ray cluster, can store each unit the moment it exists and show live progress. The numbers do
not depend on who runs a shard: the unedited scores of a shard's cases are computed in one
batched pass over all of them (finished or not), exactly as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedit.bench.plan import (
    BASELINE_JOB,
    BenchPlan,
    Job,
    Scenario,
    Shard,
    batch_unit,
    checkpoint_unit,
)
from kedit.bench.store import UnitResult
from kedit.env import Environment
from kedit.eval.cost import measure_memory
from kedit.eval.general import general_ability
from kedit.eval.metrics import Metric, needs_of
from kedit.eval.runner import (
    PRE_BATCH,
    apply_requests,
    case_details,
    case_metrics,
    choose_metrics,
    model_device,
    model_info,
    run_case,
    run_info,
    select_cases,
)
from kedit.eval.scoring import ProbeResult, score_probes
from kedit.methods import EditSession, make_method
from kedit.methods.base import EditMethod
from kedit.model.lm import as_language_model
from kedit.model.loading import load_model
from kedit.types import EditCase

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """``steps`` more steps of a job are finished: cases edited and scored (single, batch), or
    edits applied (sequential, replayed ones included)."""

    job_id: str
    steps: int = 1


Event = UnitResult | Progress


def plan_environment(plan: BenchPlan) -> Environment:
    kwargs: dict[str, Any] = {"stats_corpus": plan.stats_corpus, "seed": plan.seed}
    if plan.cache_dir:
        kwargs["cache_dir"] = Path(plan.cache_dir)
    if plan.data_dir:
        kwargs["data_dir"] = Path(plan.data_dir)
    return Environment(progress=False, **kwargs)


class BenchWorker:
    """Runs shards of ``plan`` on one model (loaded from the plan unless given)."""

    def __init__(
        self, plan: BenchPlan, name: str = "local", model: Any = None, tok: Any = None
    ) -> None:
        self.plan, self.name = plan, name
        self.env = plan_environment(plan)
        if model is None:
            model, tok = load_model(
                plan.model, device=plan.device, dtype=plan.dtype, cache_dir=self.env.cache_dir
            )
        self.model, self.tok = model, tok
        self.cases = select_cases(plan.dataset, self.env, plan.limit)
        self.by_id = {c.case_id: c for c in self.cases}
        self._editors: dict[str, EditMethod] = {}
        #: unedited scores by (case ids of one batch, measurement set); see _pre_scores
        self._unedited: dict[tuple, dict[str, list[ProbeResult]]] = {}

    # -- what a job is -------------------------------------------------------------------------

    def describe(self, job: Job) -> dict[str, Any]:
        """A job's run metadata (model fingerprint, method config, versions, measures...)."""
        if job.job_id == BASELINE_JOB:
            info = model_info(self.model, self.env)
        else:
            editor = self._editor(job.method)
            chosen, skipped = self._metrics(job.scenario)
            cases = self._job_cases(job.scenario)
            info = run_info(self.model, editor, self.plan.dataset, cases, chosen, self.env)
            info["skipped"] = skipped
            info["family"] = type(editor).family
        info["protocol"] = {"name": str(job.scenario)}
        info["general"] = {"tasks": self.plan.general, "limit": self.plan.general_limit}
        info["worker"] = self.name
        return info

    def _editor(self, method: str) -> EditMethod:
        if method not in self._editors:
            overrides = self.plan.overrides.get(method)
            self._editors[method] = make_method(method, self.model, overrides, self.env)
        return self._editors[method]

    def _metrics(self, scenario: Scenario) -> tuple[list[Metric], dict[str, str]]:
        chosen, skipped = choose_metrics(None, self.plan.suite, self._job_cases(scenario))
        if scenario.kind != "single":  # edit steps are a single-edit protocol
            for metric in chosen:
                if metric.mid:
                    skipped[metric.name] = "it reads a case's first edit step, which only the "
                    skipped[metric.name] += "single scenario runs"
            chosen = [m for m in chosen if not m.mid]
        return chosen, skipped

    def _job_cases(self, scenario: Scenario) -> list[EditCase]:
        return self.cases[: scenario.cases_needed or None]

    # -- running -------------------------------------------------------------------------------

    def run(self, shard: Shard) -> Iterator[Event]:
        """Run the shard's pending units, yielding each as it finishes."""
        job = shard.job
        if job.job_id == BASELINE_JOB:
            yield self._baseline(job)
            return
        runner = {"single": self._single, "batch": self._batch, "sequential": self._sequential}
        yield from runner[job.scenario.kind](shard)

    def _baseline(self, job: Job) -> UnitResult:
        lm = as_language_model(self.model, self.tok)
        return UnitResult(
            job.job_id, checkpoint_unit(0), [], self._general_rows(lm, 0), worker=self.name
        )

    def _prepare(self, shard: Shard) -> tuple[EditMethod, list[Metric], Any, list[EditCase]]:
        editor = self._editor(shard.job.method)
        chosen, _ = self._metrics(shard.job.scenario)
        return editor, chosen, needs_of(chosen), [self.by_id[i] for i in shard.case_ids]

    def _pre_scores(self, cases: list[EditCase], needs: Any) -> dict[str, list[ProbeResult]]:
        """The unedited model's scores of ``cases``, PRE_BATCH cases per batched pass. The model
        is unedited between shards, so each batch is scored once per worker and measurement
        set, whatever the method or scenario; every shard gets its own copies to fill."""
        results: dict[str, list[ProbeResult]] = {}
        base = as_language_model(self.model, self.tok)
        for start in range(0, len(cases), PRE_BATCH):
            chunk = cases[start : start + PRE_BATCH]
            key = (tuple(c.case_id for c in chunk), needs)
            if key not in self._unedited:
                self._unedited[key] = {}
                score_probes(base, chunk, needs, "pre", self._unedited[key], self.env.seed)
            for case_id, scored in self._unedited[key].items():
                results[case_id] = [ProbeResult(r.probe, pre=r.pre) for r in scored]
        return results

    def _single(self, shard: Shard) -> Iterator[Event]:
        editor, chosen, needs, cases = self._prepare(shard)
        results = self._pre_scores(cases, needs)
        pending = [c for c in cases if c.case_id in shard.units]
        for case in pending:
            row = run_case(self.model, self.tok, case, editor, self.env, chosen, needs, results)
            row["checkpoint"] = 1
            yield Progress(shard.job.job_id)
            yield self._unit(shard.job, case.case_id, [row], chosen)

    def _batch(self, shard: Shard) -> Iterator[Event]:
        editor, chosen, needs, cases = self._prepare(shard)
        results = self._pre_scores(cases, needs)
        size = shard.job.scenario.sizes[0]
        batches = [cases[i : i + size] for i in range(0, len(cases), size)]
        for batch in batches:
            unit = batch_unit(batch[0].case_id)
            if unit not in shard.units:
                continue
            rows = self._edit_and_score(batch, editor, chosen, needs, results)
            yield Progress(shard.job.job_id, len(batch))
            yield self._unit(shard.job, unit, rows, chosen)

    def _edit_and_score(
        self,
        batch: list[EditCase],
        editor: EditMethod,
        chosen: list[Metric],
        needs: Any,
        results: dict[str, list[ProbeResult]],
    ) -> list[dict[str, Any]]:
        """One update with every request of ``batch``, its cases scored, the edit undone."""
        requests = [r for case in batch for r in case.requests]
        try:
            with EditSession(self.model, self.tok, self.env) as session:
                with measure_memory(model_device(self.model)) as memory:
                    t0 = time.perf_counter()
                    apply_requests(session, requests, editor)
                    edit_time = time.perf_counter() - t0
                t0 = time.perf_counter()
                score_probes(session.lm, batch, needs, "post", results, self.env.seed)
                eval_time = (time.perf_counter() - t0) / len(batch)
        except Exception as err:  # one failing batch must not end the bench
            log.warning("batch from %s failed: %s", batch[0].case_id, err)
            error = f"{type(err).__name__}: {err}"
            return [{"case_id": c.case_id, "checkpoint": len(batch), "error": error} for c in batch]
        cost = {"edit_time_s": edit_time, "post_eval_time_s": eval_time, **memory.as_row()}
        return [self._scored_row(c, len(batch), cost, chosen, results) for c in batch]

    def _sequential(self, shard: Shard) -> Iterator[Event]:
        """Edit the cases one after another; at each pending checkpoint score the cases edited
        so far and the general tasks. Finished checkpoints are replayed (edits only)."""
        editor, chosen, needs, cases = self._prepare(shard)
        results = self._pre_scores(cases, needs)
        pending = sorted(k for k in shard.job.scenario.sizes if checkpoint_unit(k) in shard.units)
        if not pending:
            return
        costs: dict[str, dict[str, Any]] = {}
        session = EditSession(self.model, self.tok, self.env)
        try:
            for edited, case in enumerate(cases[: pending[-1]], start=1):
                with measure_memory(model_device(self.model)) as memory:
                    t0 = time.perf_counter()
                    apply_requests(session, case.requests, editor)
                    costs[case.case_id] = {"edit_time_s": time.perf_counter() - t0}
                costs[case.case_id].update(memory.as_row())
                yield Progress(shard.job.job_id)
                if edited in pending:
                    yield self._checkpoint(
                        shard.job, cases[:edited], session, costs, chosen, needs, results
                    )
        finally:
            session.restore()

    def _checkpoint(
        self,
        job: Job,
        edited_cases: list[EditCase],
        session: EditSession,
        costs: dict[str, dict[str, Any]],
        chosen: list[Metric],
        needs: Any,
        results: dict[str, list[ProbeResult]],
    ) -> UnitResult:
        k = len(edited_cases)
        t0 = time.perf_counter()
        score_probes(session.lm, edited_cases, needs, "post", results, self.env.seed)
        per_case = (time.perf_counter() - t0) / k
        rows = [
            self._scored_row(
                c, k, costs[c.case_id] | {"post_eval_time_s": per_case}, chosen, results
            )
            for c in edited_cases
        ]
        unit = self._unit(job, checkpoint_unit(k), rows, chosen)
        unit.results += self._general_rows(session.lm, k)
        return unit

    def _scored_row(
        self,
        case: EditCase,
        checkpoint: int,
        cost: dict[str, Any],
        chosen: list[Metric],
        results: dict[str, list[ProbeResult]],
    ) -> dict[str, Any]:
        row = {"case_id": case.case_id, "checkpoint": checkpoint, **cost}
        row["metrics"] = case_metrics(results[case.case_id], chosen)
        details = case_details(results[case.case_id])
        if details:
            row["details"] = details
        return row

    def _general_rows(self, lm: Any, checkpoint: int) -> list[dict[str, Any]]:
        if not self.plan.general:
            return []
        scores = general_ability(
            lm, self.plan.general, self.env.data_dir, limit=self.plan.general_limit, seed=None
        )
        return [
            {
                "case_id": "general",
                "checkpoint": checkpoint,
                "measure": task,
                "group": "general",
                "protocol": f"{score['metric']}: {score['protocol']}",
                "higher_is_better": score["higher_is_better"],
                "post": score["score"],
                "weight": score["n"],
            }
            for task, score in scores.items()
        ]

    def _unit(
        self, job: Job, unit: str, rows: list[dict[str, Any]], chosen: list[Metric]
    ) -> UnitResult:
        """Case rows (times, memory, error, details) and one result row per measure."""
        metrics = {m.name: m for m in chosen}
        cases, results = [], []
        for row in rows:
            cases.append(
                {
                    "case_id": row["case_id"],
                    "checkpoint": row["checkpoint"],
                    "edit_time_s": row.get("edit_time_s"),
                    "eval_time_s": row.get("post_eval_time_s"),
                    "edit_memory_bytes": row.get("edit_memory_bytes"),
                    "peak_memory_bytes": row.get("peak_memory_bytes"),
                    "memory_kind": row.get("memory_kind"),
                    "error": row.get("error"),
                    "details": row.get("details"),
                }
            )
            for name, value in row.get("metrics", {}).items():
                metric = metrics[name]
                results.append(
                    {
                        "case_id": row["case_id"],
                        "checkpoint": row["checkpoint"],
                        "measure": name,
                        "group": metric.group,
                        "protocol": metric.protocol,
                        "higher_is_better": metric.higher_is_better,
                        "pre": value.get("pre"),
                        "post": value["post"],
                        "weight": value.get("n", 1),
                    }
                )
        return UnitResult(job.job_id, unit, cases, results, worker=self.name)
