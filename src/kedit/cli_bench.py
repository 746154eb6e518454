"""``kedit bench`` and ``kedit report``: their options and what they do (see ``cli.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kedit.bench import BenchPlan, run_bench
from kedit.bench.export import export_results, export_sweeps
from kedit.bench.plan import DEFAULT_GENERAL, read_plan_file
from kedit.bench.report import write_report
from kedit.bench.summary import summarize_bench
from kedit.config import parse_override
from kedit.console import format_bench
from kedit.eval.protocol_text import parse_protocols
from kedit.methods import METHODS
from kedit.model.loading import DEFAULT_MODEL

DEFAULT_SCENARIOS = "single,sequential:1,10,20"


def add_bench_parsers(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="compare methods across scenarios into a resumable store, and report",
        description="Each (method, scenario) is a job; results go to DIR/bench.sqlite one "
        "finished unit at a time, so re-running the same command resumes a killed bench. "
        "Options given on the command line override those of --plan.",
    )
    bench.add_argument("--out", required=True, help="bench folder (created; reused to resume)")
    bench.add_argument("--plan", help="YAML plan with the keys below (methods, scenarios, ...)")
    bench.add_argument("--model", help=f"Hub id, local folder or alias (default {DEFAULT_MODEL})")
    bench.add_argument(
        "--methods", help="comma-separated methods, or 'all' for every registered one"
    )
    bench.add_argument("--dataset", help="dataset name or file (default counterfact)")
    bench.add_argument(
        "--scenarios",
        help="editing protocols, e.g. single,batch:10,sequential:1,10,20,40 "
        "(sequential:...;batch=B edits B cases per update; sweep:layer=0-29 edits every case "
        "once per value of a method setting, with each fact's causal trace for a layer sweep; "
        f"default {DEFAULT_SCENARIOS})",
    )
    bench.add_argument("--limit", type=int, help="first N cases (default 20)")
    bench.add_argument("--suite", help="measure suite: core (default) or pitfalls")
    bench.add_argument(
        "--general",
        help="general-ability tasks at sequential checkpoints "
        f"(default {','.join(DEFAULT_GENERAL)}; 'none' for none)",
    )
    bench.add_argument(
        "--general-limit",
        type=int,
        help="examples per general-ability task (default: all the shared subsets hold, e.g. "
        "846 SST-2, 252 RTE, 1506 MMLU records, 2153 WikiText paragraphs)",
    )
    bench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method hyperparameter, e.g. --set rome.layer=5",
    )
    bench.add_argument("--executor", choices=["local", "ray"], help="local (default) or ray")
    bench.add_argument("--workers", type=int, help="Ray workers (default: one per GPU, else 1)")
    bench.add_argument("--ray-address", help="an existing Ray cluster (default: start one here)")
    bench.add_argument(
        "--split-checkpoints",
        action="store_true",
        help="run each checkpoint of a sequential job as its own shard, replaying the edits "
        "before it: more edits, but several workers evaluate one job's checkpoints at once "
        "(for jobs whose general-ability evaluations dominate; the numbers are the same)",
    )
    bench.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    bench.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    bench.add_argument("--data-dir", help="benchmark data folder (default $KEDIT_DATA_DIR)")
    bench.add_argument("--cache-dir", help="statistics and model cache (default $KEDIT_CACHE_DIR)")
    bench.add_argument("--stats-corpus", help="text for covariance statistics (wikitext-2)")
    bench.add_argument("--seed", type=int)
    bench.add_argument("--no-report", action="store_true", help="do not write DIR/report.html")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.add_argument("-v", "--verbose", action="store_true")

    report = sub.add_parser("report", help="write a bench folder's HTML report and exports")
    report.add_argument("dir", help="the bench folder (holding bench.sqlite)")
    report.add_argument("--html", help="where to write the report (default DIR/report.html)")
    report.add_argument("--csv", nargs="?", const="", help="also export results as CSV")
    report.add_argument("--parquet", nargs="?", const="", help="also export results as Parquet")
    report.add_argument("-v", "--verbose", action="store_true")


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    """The plan file's keys, overridden by the options given on the command line."""
    data = read_plan_file(args.plan) if args.plan else {}
    given = {
        "model": args.model,
        "dataset": args.dataset,
        "limit": args.limit,
        "suite": args.suite,
        "general_limit": args.general_limit,
        "executor": args.executor,
        "workers": args.workers,
        "ray_address": args.ray_address,
        "device": args.device,
        "dtype": args.dtype,
        "data_dir": args.data_dir,
        "cache_dir": args.cache_dir,
        "stats_corpus": args.stats_corpus,
        "seed": args.seed,
        "split_checkpoints": args.split_checkpoints or None,
    }
    data.update({k: v for k, v in given.items() if v is not None})
    if args.methods:
        data["methods"] = (
            METHODS.names()
            if args.methods.strip() == "all"
            else [m.strip() for m in args.methods.split(",") if m.strip()]
        )
    if args.scenarios or "scenarios" not in data:
        data["scenarios"] = [str(p) for p in parse_protocols(args.scenarios or DEFAULT_SCENARIOS)]
    if args.general:
        data["general"] = (
            [] if args.general == "none" else [t.strip() for t in args.general.split(",")]
        )
    if "methods" not in data:
        raise ValueError("name the methods: --methods rome,ft (or all), or give a --plan")
    overrides = data.setdefault("overrides", {})
    for item in args.set:
        key, value = parse_override(item)
        method, dot, name = key.partition(".")
        if not dot or not name:
            raise ValueError(f"--set takes METHOD.KEY=VALUE, e.g. rome.layer=5; got {item!r}")
        overrides.setdefault(method, {})[name] = value
    return BenchPlan.from_dict(data)


def run_bench_command(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    outcome = run_bench(plan, args.out, progress=not args.quiet)
    print(format_bench(summarize_bench(args.out), outcome))
    if not args.no_report:
        print(f"\nreport: {_write_report(Path(args.out), None)}")
    return 1 if outcome.failures else 0


def run_report_command(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    print(f"report: {_write_report(out, args.html)}")
    for flag, suffix in ((args.csv, ".csv"), (args.parquet, ".parquet")):
        if flag is not None:
            path = Path(flag) if flag else out / f"results{suffix}"
            print(f"results: {export_results(out, path)}")
            if suffix == ".csv":
                sweeps = export_sweeps(out, path.with_name(f"{path.stem}_sweeps.csv"))
                if sweeps is not None:
                    print(f"sweeps: {sweeps}")
    return 0


def _write_report(bench_dir: Path, html: str | None) -> Path:
    return write_report(bench_dir, Path(html) if html else None)
