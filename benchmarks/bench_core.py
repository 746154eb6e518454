"""Core speed figures on the default model: ROME edit time and per-case evaluation time.

Usage: python benchmarks/bench_core.py [--cases 10] [--device cpu] [--out benchmarks/results]

The statistics and context templates are computed first by a warm-up edit (and cached), so the
edit time is the per-edit cost a long run pays. Evaluation time is the scoring of one case with
all its probes, before and after its edit (the unedited scores are batched across cases).
Prints a table and writes ``core-<device>.json``. Medians, since shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import kedit
from kedit.env import Environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    env = Environment(progress=False)
    model, tok = kedit.load_model(args.model, device=args.device)
    warm_cases = kedit.load_dataset("counterfact", env.data_dir, limit=1)
    t0 = time.perf_counter()
    kedit.edit(model, tok, warm_cases[0].request, method="rome", env=env).restore()
    warmup = time.perf_counter() - t0

    figures = {}
    for dataset in ("counterfact", "counterfact-full"):
        cases = kedit.load_dataset(dataset, env.data_dir, limit=args.cases + 1)[1:]
        report = kedit.evaluate(model, tok, cases, "rome", env=env, progress=False)
        rows = [r for r in report.rows if "metrics" in r]
        figures[dataset] = {
            "cases": len(rows),
            "median_rome_edit_s": statistics.median(r["edit_time_s"] for r in rows),
            "median_eval_per_case_s": statistics.median(
                r["pre_eval_time_s"] + r["post_eval_time_s"] for r in rows
            ),
            "probes_per_case": statistics.median(len(c.probes) for c in cases),
            "efficacy_score": report.summary["metrics"]["efficacy_score"]["post"],
        }
    result = {
        "model": args.model,
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "warmup_edit_with_statistics_s": warmup,
        "datasets": figures,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"core-{result['device'].split(':')[0]}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(f"model {args.model} on {result['device']} ({result['threads']} threads)")
    print(f"first edit incl. statistics and templates: {warmup:.1f} s")
    print(f"{'dataset':<18} {'cases':>5} {'ROME edit (median s)':>22} {'eval/case (median s)':>22}")
    for dataset, f in figures.items():
        print(
            f"{dataset:<18} {f['cases']:>5} {f['median_rome_edit_s']:>22.2f} "
            f"{f['median_eval_per_case_s']:>22.2f}"
        )
    print(f"written to {out / name}")


if __name__ == "__main__":
    main()
