"""A bench worker: one model, loaded once, running shards of a plan's jobs on the evaluation
engine (:mod:`kedit.eval.engine`), exactly as ``kedit eval`` runs them.

A shard's run yields :class:`~kedit.bench.store.UnitResult` s as its units finish, and
:class:`JobProgress` notes in between (an edit applied, a case scored), so a driver, local or
across a Ray cluster, can store each unit the moment it exists and show live progress. The
numbers do not depend on who runs a shard: the unedited scores of a shard's cases are computed in
one batched pass over all of them (finished or not), exactly as an uninterrupted run would, and
kept for the worker's later jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedit.bench.plan import BASELINE_JOB, BenchPlan, Job
from kedit.bench.store import UnitResult
from kedit.env import Environment
from kedit.eval.engine import Engine
from kedit.eval.metric import Metric
from kedit.eval.protocols import Protocol, Shard
from kedit.eval.provenance import model_info, run_info
from kedit.eval.rows import Unit
from kedit.eval.selection import choose_metrics, select_cases
from kedit.methods import EditMethod, make_method
from kedit.model.loading import load_model


@dataclass(frozen=True)
class JobShard:
    """A shard of one job's work."""

    job: Job
    shard: Shard


@dataclass
class JobProgress:
    """``steps`` more steps of a job are finished (see :class:`kedit.eval.rows.Progress`)."""

    job_id: str
    steps: int = 1


Event = UnitResult | JobProgress


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
        env = plan_environment(plan)
        if model is None:
            model, tok = load_model(
                plan.model, device=plan.device, dtype=plan.dtype, cache_dir=env.cache_dir
            )
        self.cases = select_cases(plan.dataset, env, plan.limit)
        self.engine = Engine(
            model, tok, env, self.cases, plan.general, plan.general_limit, cache_unedited=True
        )
        self._editors: dict[str, EditMethod] = {}

    def describe(self, job: Job) -> dict[str, Any]:
        """A job's run metadata (model fingerprint, method config, versions, measures...)."""
        engine = self.engine
        if job.job_id == BASELINE_JOB:
            info = model_info(engine.model, engine.env) | {"protocol": str(job.protocol)}
        else:
            editor = self._editor(job.method)
            if job.protocol.why_not(type(editor)) is None:  # else the job is not applicable
                engine.check_protocol(job.protocol)  # refuses a layer sweep past the last layer
                editor.prepare(engine.model)  # a missing trained editor fails the job here
            metrics, skipped = self._metrics(job.protocol)
            cases = self._job_cases(job.protocol)
            info = run_info(
                engine.model, editor, self.plan.dataset, cases, metrics, engine.env, job.protocol
            )
            info["skipped"] = skipped
        info["general"] = {"tasks": self.plan.general, "limit": self.plan.general_limit}
        info["worker"] = self.name
        return info

    def _editor(self, method: str) -> EditMethod:
        if method not in self._editors:
            overrides = self.plan.overrides.get(method)
            engine = self.engine
            self._editors[method] = make_method(method, engine.model, overrides, engine.env)
        return self._editors[method]

    def _metrics(self, protocol: Protocol) -> tuple[list[Metric], dict[str, str]]:
        return choose_metrics(None, self.plan.suite, self._job_cases(protocol), protocol)

    def _job_cases(self, protocol: Protocol) -> list[Any]:
        return self.cases[: protocol.cases_needed() or None]

    def run(self, piece: JobShard) -> Iterator[Event]:
        """Run the shard's pending units, yielding each as it finishes."""
        job = piece.job
        baseline = job.job_id == BASELINE_JOB
        editor = None if baseline else self._editor(job.method)
        metrics = [] if baseline else self._metrics(job.protocol)[0]
        for event in self.engine.run(job.protocol, editor, metrics, piece.shard):
            if isinstance(event, Unit):
                yield UnitResult(job.job_id, event, self.name)
            else:
                yield JobProgress(job.job_id, event.steps)
