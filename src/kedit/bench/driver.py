"""``run_bench``: every job of a plan, resumably, into ``DIR/bench.sqlite``.

The driver checks the folder's bench is this plan's (or starts one), asks a worker for each
job's metadata and checks it against a stored job (a resumed job must have the same method
config, model fingerprint, data, seed and measures), plans the shards of the units not yet
stored, hands them to the executor and writes each unit as it arrives, in one transaction. Kill
it at any moment and run the same command again: it finishes what is missing, nothing twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kedit.bench.executors import EXECUTORS, ShardFailed
from kedit.bench.plan import BASELINE, BenchPlan, Job
from kedit.bench.store import BenchStore, UnitResult
from kedit.bench.work import JobProgress, JobShard, plan_environment
from kedit.eval.protocols import Sequential
from kedit.eval.selection import select_cases
from kedit.methods import METHODS

log = logging.getLogger(__name__)


@dataclass
class BenchOutcome:
    """What a bench run did: the folder, each job's status, units written now, failures."""

    out_dir: Path
    status: dict[str, str] = field(default_factory=dict)
    written: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0


def run_bench(
    plan: BenchPlan,
    out_dir: str | Path,
    *,
    model: Any = None,
    tok: Any = None,
    progress: bool = True,
) -> BenchOutcome:
    """Run ``plan`` into ``out_dir`` (see module docstring). ``model``/``tok``: an already
    loaded model for the local executor (else the plan's model is loaded)."""
    start = time.perf_counter()
    outcome = BenchOutcome(Path(out_dir))
    case_ids = [c.case_id for c in select_cases(plan.dataset, plan_environment(plan), plan.limit)]
    with BenchStore(out_dir) as store:
        store.check_identity(plan.identity())
        store.record_plan(plan.to_dict())
        executor = EXECUTORS[plan.executor](plan, model, tok)
        try:
            shards, expected = _plan_work(plan, store, executor, case_ids, outcome)
            display = _Display(expected, shards, store, progress)
            for event in executor.run(shards):
                if isinstance(event, UnitResult):
                    outcome.written += store.write_unit(event)
                    if display.unit_done(event.job_id, event.unit.key):
                        store.finish_job(event.job_id)
                        outcome.status[event.job_id] = "done"
                elif isinstance(event, JobProgress):
                    display.progress(event)
                else:
                    _record_failure(store, event, outcome)
            display.close()
        finally:
            executor.close()
    outcome.elapsed_s = time.perf_counter() - start
    return outcome


def _plan_work(
    plan: BenchPlan,
    store: BenchStore,
    executor: Any,
    case_ids: list[str],
    outcome: BenchOutcome,
) -> tuple[list[JobShard], dict[str, set[str]]]:
    """Register the jobs and list the shards still to run; ``expected`` holds each runnable
    job's units."""
    jobs = plan.jobs()
    if plan.general and any(isinstance(j.protocol, Sequential) for j in jobs):
        jobs.insert(0, BASELINE)
    infos = executor.describe(jobs)
    shards: list[JobShard] = []
    expected: dict[str, set[str]] = {}
    for job in jobs:
        info = infos[job.job_id]
        if "error" in info:  # its method could not be set up: record why, run the others
            if _complete(store, job, case_ids):  # nothing left to run, so nothing is lost
                log.warning(
                    "%s cannot be set up now (%s); its stored results are complete "
                    "and stay as they are",
                    job.job_id,
                    info["error"],
                )
                store.finish_job(job.job_id)
                outcome.status[job.job_id] = "done"
                continue
            log.error("cannot set up %s: %s", job.job_id, info["error"])
            if not store.has_job(job.job_id):
                store.open_job(job.job_id, job.method, str(job.protocol), info)
            _record_failure(store, ShardFailed(job.job_id, info["error"]), outcome)
            continue
        store.open_job(job.job_id, job.method, str(job.protocol), info)
        why_not = job.protocol.why_not(METHODS[job.method]) if job is not BASELINE else None
        if why_not:
            store.finish_job(job.job_id, "not applicable", why_not)
            outcome.status[job.job_id] = "not applicable"
            continue
        finished = store.finished_units(job.job_id)
        expected[job.job_id] = job.protocol.units(case_ids)
        shards_left = job.protocol.shards(case_ids, finished, split=plan.split_checkpoints)
        todo = [JobShard(job, s) for s in shards_left]
        if not todo:
            store.finish_job(job.job_id)
            outcome.status[job.job_id] = "done"
        shards += todo
    return shards, expected


def _complete(store: BenchStore, job: Job, case_ids: list[str]) -> bool:
    """Whether a stored job finished every unit it has (a rerun of a finished bench must not
    mark it failed because, say, a trained editor it used is no longer in the cache)."""
    return store.has_job(job.job_id) and job.protocol.units(case_ids) <= store.finished_units(
        job.job_id
    )


def _record_failure(store: BenchStore, failure: ShardFailed, outcome: BenchOutcome) -> None:
    store.finish_job(failure.job_id, "failed", failure.error)
    outcome.status[failure.job_id] = "failed"
    outcome.failures[failure.job_id] = failure.error


class _Display:
    """One live progress bar per running job (cases edited or scored, rate, time left); a bar
    closes when its job's last unit is stored, and its line is reused."""

    def __init__(
        self,
        expected: dict[str, set[str]],
        shards: list[JobShard],
        store: BenchStore,
        enabled: bool,
    ) -> None:
        self.enabled = enabled
        self.remaining = {j: units - store.finished_units(j) for j, units in expected.items()}
        self.steps: dict[str, int] = {}
        for shard in shards:
            self.steps[shard.job.job_id] = self.steps.get(shard.job.job_id, 0) + _steps(shard)
        self.bars: dict[str, tqdm] = {}

    def progress(self, event: JobProgress) -> None:
        if not self.enabled or not self.remaining.get(event.job_id):
            return
        bar = self.bars.get(event.job_id)
        if bar is None:
            taken = {b.pos for b in self.bars.values()}
            line = next(i for i in range(len(taken) + 1) if i not in taken)
            total = self.steps.get(event.job_id)
            bar = tqdm(total=total, desc=event.job_id, unit="case", position=line)
            self.bars[event.job_id] = bar
        bar.update(event.steps)

    def unit_done(self, job_id: str, unit: str) -> bool:
        """Count a stored unit; True when it was the job's last (its bar is then closed)."""
        remaining = self.remaining.get(job_id)
        if not remaining:
            return False
        remaining.discard(unit)
        if not remaining and job_id in self.bars:
            self.bars.pop(job_id).close()
        return not remaining

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _steps(piece: JobShard) -> int:
    """Progress steps a shard reports: its pending cases, or a sequence's edits up to its last
    pending point."""
    protocol, shard = piece.job.protocol, piece.shard
    if isinstance(protocol, Sequential):
        points = protocol.scoring_points()
        return max(k for k, unit in points.items() if unit in shard.units)
    return len(shard.units) * protocol.update_size()  # the last batch may be short
