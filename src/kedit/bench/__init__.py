"""``kedit bench``: methods x scenarios on one model and dataset, into a resumable SQLite store,
run here or on a Ray cluster; ``kedit report`` turns the store into an HTML report."""

from kedit.bench.driver import BenchOutcome, run_bench
from kedit.bench.plan import BenchPlan, Job
from kedit.bench.store import BenchStore

__all__ = ["BenchOutcome", "BenchPlan", "BenchStore", "Job", "run_bench"]
