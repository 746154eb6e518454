"""Cost of the bench's durability and reporting: what the store and the report add to a bench.

Usage: python benchmarks/bench_store.py [--bench DIR] [--units 200] [--out benchmarks/results]

Writes ``--units`` single-case units (one case row and 21 result rows each, like a core-suite
CounterFact case) into a fresh store, each in its own fully synced transaction, and reports the
median and 95th-percentile latency. With ``--bench DIR`` (a finished bench) it also times
reading the store into a summary, writing the HTML report, and the CSV and Parquet exports, and
sums each job's editing and scoring time from its case rows. Prints a table and writes
``bench-store.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from kedit.bench.export import export_results
from kedit.bench.report import write_report
from kedit.bench.store import BenchStore, UnitResult
from kedit.bench.summary import summarize_bench
from kedit.eval.rows import CaseRow, MeasureRow, Unit

MEASURES = 21


def synthetic_unit(index: int) -> UnitResult:
    case_id = f"case-{index:05d}"
    results = [
        MeasureRow(
            case_id,
            1,
            f"measure_{m:02d}",
            "reliability",
            "probability comparison",
            True,
            0.25,
            0.75,
        )
        for m in range(MEASURES)
    ]
    case = CaseRow(case_id, 1, edit_time_s=6.5, eval_time_s=2.1)
    return UnitResult("rome/single", Unit(case_id, [case], results))


def time_writes(n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp, BenchStore(tmp) as store:
        store.open_job("rome/single", "rome", "single", {})
        latencies = []
        for i in range(n):
            t0 = time.perf_counter()
            store.write_unit(synthetic_unit(i))
            latencies.append(time.perf_counter() - t0)
    return latencies


def time_reporting(bench: Path) -> dict[str, float]:
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, work in (
            ("summary_s", lambda: summarize_bench(bench)),
            ("report_s", lambda: write_report(bench, Path(tmp) / "report.html")),
            ("csv_s", lambda: export_results(bench, Path(tmp) / "results.csv")),
            ("parquet_s", lambda: export_results(bench, Path(tmp) / "results.parquet")),
        ):
            t0 = time.perf_counter()
            work()
            timings[name] = time.perf_counter() - t0
    return timings


def job_compute_times(bench: Path) -> dict[str, float]:
    """Seconds a job spent editing and scoring cases (the sum over its case rows; general-ability
    measurements and replays not included). Jobs' wall times overlap under parallel workers and
    include queueing, so they are not a cost."""
    with BenchStore(bench, create=False) as store:
        rows = store.conn.execute(
            "SELECT job_id, SUM(COALESCE(edit_time_s, 0) + COALESCE(eval_time_s, 0)) "
            "FROM cases GROUP BY job_id"
        ).fetchall()
    return {job: seconds for job, seconds in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--bench", type=Path, help="a finished bench folder to report on")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    latencies = sorted(time_writes(args.units))
    figures: dict = {
        "units": args.units,
        "result_rows_per_unit": MEASURES,
        "write_unit_median_ms": 1000 * statistics.median(latencies),
        "write_unit_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "platform": platform.platform(),
    }
    median, p95 = figures["write_unit_median_ms"], figures["write_unit_p95_ms"]
    print(
        f"write_unit, {MEASURES} result rows, fully synced: "
        f"median {median:.2f} ms, p95 {p95:.2f} ms"
    )
    if args.bench:
        figures["bench"] = str(args.bench)
        figures["reporting"] = time_reporting(args.bench)
        figures["job_compute_s"] = job_compute_times(args.bench)
        for name, seconds in figures["reporting"].items():
            print(f"{name:<10} {seconds:8.2f} s")
        for job, seconds in sorted(figures["job_compute_s"].items()):
            print(f"{job:<32} {seconds / 60:6.1f} min")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-store.json").write_text(json.dumps(figures, indent=1))
    print(f"written {out / 'bench-store.json'}")


if __name__ == "__main__":
    main()
