"""Cost of the pitfalls suite: the whole suite on N cases, and what each measurement costs.

Usage: python benchmarks/bench_pitfalls.py [--cases 20] [--method rome] [--dataset
counterfact-full] [--device cpu] [--out benchmarks/results]

First times each kind of measurement on the unedited model for the N cases, one batched call per
kind, as the suite makes it (teacher-forced scores, short greedy answers, next-token
distributions, 100-token samples for fluency, dialogue answer + reply); then runs the whole
``pitfalls`` suite (edit, score before and after) and reports its wall time and the median edit
and evaluation time per case. Prints a table and writes ``pitfalls-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import fields
from pathlib import Path

import torch

import kedit
from kedit.env import Environment
from kedit.eval.metric import needs_of, resolve_metrics
from kedit.eval.scoring import Needs, score_probes
from kedit.model.lm import as_language_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="rome")
    parser.add_argument("--dataset", default="counterfact-full")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    env = Environment(progress=False)
    model, tok = kedit.load_model(args.model, device=args.device)
    cases = kedit.load_dataset(args.dataset, env.data_dir, limit=args.cases)
    needs = needs_of(resolve_metrics(None, "pitfalls"))
    lm = as_language_model(model, tok)
    per_kind = {}
    for field in fields(Needs):
        if field.name == "mid" or not getattr(needs, field.name):
            continue
        t0 = time.perf_counter()
        score_probes(lm, cases, Needs(**{field.name: getattr(needs, field.name)}), "pre", {})
        per_kind[field.name] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = kedit.evaluate(
        model, tok, cases, args.method, suite="pitfalls", env=env, progress=False
    )
    wall = time.perf_counter() - t0
    rows = [r for r in report.rows if r["case_id"] != "general" and "error" not in r]
    result = {
        "model": args.model,
        "method": args.method,
        "dataset": args.dataset,
        "cases": len(cases),
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "unedited_measurement_s": per_kind,
        "suite_wall_s": wall,
        "median_edit_s": statistics.median(r["edit_time_s"] for r in rows),
        # the unedited scores are one batched pass over all cases: their share per case
        "median_eval_per_case_s": statistics.median(r["eval_time_s"] for r in rows)
        + report.summary["unedited_eval_time_s"] / len(cases),
        "measures": len(report.summary["metrics"]),
        "errors": report.summary["errors"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"pitfalls-{result['device'].split(':')[0]}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(f"{args.method} on {len(cases)} {args.dataset} cases, {args.model} on {result['device']}")
    print("unedited model, one batched call per measurement over all cases:")
    for kind, seconds in per_kind.items():
        print(f"  {kind:<12} {seconds:8.1f} s")
    print(
        f"whole pitfalls suite ({result['measures']} measures): {wall / 60:.1f} min; median edit "
        f"{result['median_edit_s']:.1f} s, median evaluation per case "
        f"{result['median_eval_per_case_s']:.1f} s"
    )
    print(f"written to {out / name}")


if __name__ == "__main__":
    main()
