"""Who runs a bench's shards: this process (``local``) or a Ray cluster (``ray``).

Both take shards and give back a stream of events (finished units, progress notes, a shard's
failure); the driver alone writes them to the store. The Ray executor starts one actor per
worker, each loading the model once (one GPU each where the cluster has GPUs), and lets Ray
place them; each shard runs as a streaming actor call whose units come back as they finish.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kedit.bench.plan import BenchPlan, Job
from kedit.bench.work import BenchWorker, Event, JobShard
from kedit.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class ShardFailed:
    """A shard stopped with an error; its finished units are already stored."""

    job_id: str
    error: str


class LocalExecutor:
    """Runs every shard in this process on one model (the given one, or the plan's)."""

    def __init__(self, plan: BenchPlan, model: Any = None, tok: Any = None) -> None:
        self.worker = BenchWorker(plan, "local", model, tok)

    def describe(self, jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
        return {job.job_id: _describe(self.worker, job) for job in jobs}

    def run(self, shards: Sequence[JobShard]) -> Iterator[Event | ShardFailed]:
        for shard in shards:
            try:
                yield from self.worker.run(shard)
            except Exception as err:  # the bench goes on with the other jobs
                log.exception("shard of %s failed", shard.job.job_id)
                yield ShardFailed(shard.job.job_id, f"{type(err).__name__}: {err}")

    def close(self) -> None:
        pass


def _describe(worker: BenchWorker, job: Job) -> dict[str, Any]:
    """A job's metadata, or ``{"error": ...}`` if its method cannot be set up (the driver says
    so, or, for a job already finished, that it stays as it is)."""
    try:
        return worker.describe(job)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


class RayExecutor:
    """Runs shards as Ray actor calls: ``workers`` actors, each with its own model (see module
    docstring). ``plan.ray_address`` names an existing cluster; without it Ray starts a local
    instance."""

    def __init__(self, plan: BenchPlan, model: Any = None, tok: Any = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("--executor ray needs Ray: pip install 'kedit[ray]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()  # then this executor shuts it down
        if self.started:
            ray.init(
                address=plan.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": _forwarded_env()},
            )
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        workers = plan.workers or max(gpus, 1)
        options: dict[str, Any] = {"max_concurrency": 1}
        if gpus:
            options["num_gpus"] = 1
        else:
            options["num_cpus"] = max(1, int(resources.get("CPU", 1)) // workers)
        actor = ray.remote(_RayWorker).options(**options)
        plan_dict = plan.to_dict()
        self.actors = [actor.remote(plan_dict, f"ray-{i}") for i in range(workers)]
        log.info("Ray: %d worker(s), %s each", workers, options)

    def describe(self, jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
        infos = self.ray.get(self.actors[0].describe.remote(list(jobs)))
        return dict(zip([j.job_id for j in jobs], infos))

    def run(self, shards: Sequence[JobShard]) -> Iterator[Event | ShardFailed]:
        """Hand the shards to idle actors in order; yield events as any of them produces one."""
        ray = self.ray
        queue = list(shards)
        idle = list(self.actors)
        running: dict[Any, tuple[Any, JobShard]] = {}
        while queue or running:
            while queue and idle:
                actor, shard = idle.pop(0), queue.pop(0)
                running[actor.run.remote(shard)] = (actor, shard)
            ready, _ = ray.wait(list(running), num_returns=1)
            stream = ready[0]
            actor, shard = running[stream]
            try:
                yield ray.get(next(stream))
            except StopIteration:
                del running[stream]
                idle.append(actor)
            except ray.exceptions.RayError as err:
                del running[stream]
                idle.append(actor)
                cause = getattr(err, "cause", None) or err
                log.error("shard of %s failed on Ray: %s", shard.job.job_id, cause)
                yield ShardFailed(shard.job.job_id, f"{type(cause).__name__}: {cause}")

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started:
            self.ray.shutdown()


class _RayWorker:
    """The actor: a :class:`BenchWorker` whose ``run`` streams its events back."""

    def __init__(self, plan: dict[str, Any], name: str) -> None:
        import torch

        if not torch.cuda.is_available():  # Ray sets OMP_NUM_THREADS to the actor's CPUs
            threads = int(os.environ.get("OMP_NUM_THREADS", "0"))
            if threads > 0:
                torch.set_num_threads(threads)
        self.worker = BenchWorker(BenchPlan.from_dict(plan), name)

    def describe(self, jobs: list[Job]) -> list[dict[str, Any]]:
        return [_describe(self.worker, job) for job in jobs]

    def run(self, shard: JobShard) -> Iterator[Event]:
        yield from self.worker.run(shard)


def _forwarded_env() -> dict[str, str]:
    """Where data and caches are, for workers started by this driver."""
    keys = ("KEDIT_DATA_DIR", "KEDIT_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "PYTHONPATH")
    return {k: os.environ[k] for k in keys if k in os.environ}


EXECUTORS: Registry[type] = Registry("executor")
EXECUTORS.register("local", LocalExecutor, "this process, one model")
EXECUTORS.register("ray", RayExecutor, "Ray actors, one model each (kedit[ray])")
