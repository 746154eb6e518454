"""The lifelong-editing table of one or more finished ``kedit bench`` folders: per sequential job
and checkpoint, reliability, generalization and locality (probability comparison, with their 95%
bootstrap intervals over the cases), the routing rates of added-parameter methods, each
general-ability task with its change from the unedited model (paired interval over the
examples), and the median edit time per edit; then each bench's verdicts on the survey's claims
that it can decide (the report's findings).

Usage: python benchmarks/lifelong_table.py BENCH_DIR [BENCH_DIR ...] [--json out.json]

The issue-14 lifelong bench (three folders run side by side, one CPU thread each, with the
same identity: model, data, cases, general tasks and sample, seed):

    COMMON="--dataset counterfact --limit 100 --general wikitext,sst2,rte --general-limit 100 \\
        --seed 0"
    kedit bench --out runs/lifelong-a --methods grace,melo,t-patcher \\
        --scenarios 'sequential:1,10,50,100' $COMMON
    kedit bench --out runs/lifelong-a --methods calinet \\
        --scenarios 'sequential:10,50,100;batch=10' $COMMON
    kedit bench --out runs/lifelong-a --methods rome --scenarios 'sequential:1,10,50,100' $COMMON
    kedit bench --out runs/lifelong-wise --methods wise --scenarios 'sequential:1,10,50,100' $COMMON
    kedit bench --out runs/lifelong-wise-shards --methods wise --set wise.save_freq=10 \\
        --scenarios 'sequential:1,10,50,100' $COMMON
    python benchmarks/lifelong_table.py runs/lifelong-a runs/lifelong-wise \\
        runs/lifelong-wise-shards --json lifelong.json

Prints markdown; ``--json`` also writes every figure (value, low, high, n) to a file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kedit.bench.findings import evaluate_claims
from kedit.bench.general_change import general_change_estimate
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.summary import BenchSummary
from kedit.bench.verdicts import NOT_RUN
from kedit.eval.formulas.uncertainty import Estimate
from kedit.formatting import MISSING, format_interval, format_relative

EDIT_MEASURES = ("efficacy_score", "paraphrase_score", "neighborhood_score")
ROUTING = ("routed_rewrite", "routed_paraphrase", "routed_neighborhood")


def figure(est: Estimate | None) -> dict | None:
    if est is None:
        return None
    return {"value": est.value, "low": est.low, "high": est.high, "n": est.n}


def bounds(fig: dict) -> tuple[float, float] | None:
    """The interval, or None where every unit agreed (an interval of one point)."""
    return None if fig["high"] - fig["low"] < 1e-9 else (fig["low"], fig["high"])


def fmt(fig: dict | None, digits: int = 2) -> str:
    if fig is None:
        return MISSING
    return format_interval(fig["value"], bounds(fig), digits)


def fmt_change(fig: dict | None, relative: bool) -> str:
    """A general task's change: relative (perplexity) in percent, else signed."""
    if fig is None:
        return MISSING
    show = format_relative if relative else (lambda v: f"{v:+.3f}")
    interval = bounds(fig)
    if interval is None:
        return show(fig["value"])
    return f"{show(fig['value'])} [{show(interval[0])}, {show(interval[1])}]"


def job_table(summary: BenchSummary, job_id: str, bench: str) -> list[dict]:
    tasks = sorted(summary.baseline_general())
    cost = summary.costs.get(job_id)
    rows = []
    for k in summary.checkpoints(job_id):
        if k == 0:
            continue
        row: dict = {"bench": bench, "job": job_id, "edits": k}
        for m in EDIT_MEASURES + ROUTING:
            row[m] = figure(summary.estimate(job_id, k, m))
            row[m + "_unedited"] = figure(summary.estimate(job_id, k, m, "pre"))
        for task in tasks:
            row[task] = figure(summary.estimate(job_id, k, task))
            row[task + "_change"] = figure(general_change_estimate(summary, job_id, k, task))
            row[task + "_change_is_relative"] = task in summary.lower_is_better_tasks()
        row["s_per_edit"] = cost.median_edit_time_s if cost else None
        rows.append(row)
    return rows


def markdown(rows: list[dict], tasks: list[str]) -> str:
    head = [
        "bench: job",
        "edits",
        "efficacy",
        "paraphrase",
        "neighbourhood (unedited)",
        "routed e/p/n",
    ]
    head += [f"{t} (change)" for t in tasks] + ["s/edit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        routed = "/".join(MISSING if r[m] is None else f"{r[m]['value']:.2f}" for m in ROUTING)
        cells = [
            f"{r['bench']}: {r['job']}",
            str(r["edits"]),
            fmt(r["efficacy_score"]),
            fmt(r["paraphrase_score"]),
            f"{fmt(r['neighborhood_score'])} ({fmt(r['neighborhood_score_unedited'])})",
            routed,
        ]
        for t in tasks:
            if t not in r:  # a bench that did not measure this task
                cells.append(MISSING)
                continue
            relative = r[t + "_change_is_relative"]
            change = fmt_change(r[t + "_change"], relative)
            cells.append(f"{fmt(r[t], 1 if relative else 3)} ({change})")
        cells.append(MISSING if r["s_per_edit"] is None else f"{r['s_per_edit']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benches", nargs="+")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows, unedited, tasks, findings = [], {}, [], {}
    for bench in args.benches:
        summary = BenchSummary.load(bench)
        own = sorted(summary.baseline_general())
        tasks = sorted(set(tasks) | set(own))  # every bench's tasks, not the last one's
        unedited.update({t: figure(summary.estimate(BASELINE_JOB, 0, t)) for t in own})
        for job in summary.jobs.values():
            if job.job_id != BASELINE_JOB and job.scenario.startswith("sequential"):
                rows.extend(job_table(summary, job.job_id, Path(bench).name))
        findings[bench] = [
            {"claim": f.claim, "verdict": f.verdict, "sentence": f.sentence}
            for f in evaluate_claims(summary)
            if f.verdict != NOT_RUN
        ]
    print("unedited: " + ", ".join(f"{t} {fmt(unedited[t], 3)}" for t in tasks))
    print(markdown(rows, tasks))
    for bench, found in findings.items():
        print(f"\n{bench}:")
        for f in found:
            print(f"- {f['claim']}: **{f['verdict']}**. {f['sentence']}")
    if args.json:
        out = {"unedited": unedited, "rows": rows, "findings": findings}
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
