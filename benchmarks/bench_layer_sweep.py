"""ROME's layer sweep against the causal trace (Hase et al. 2023), from a bench folder.

Usage: kedit bench --methods rome --dataset counterfact --limit 20 \
           --scenarios sweep:layer=0-29 --general none --out runs/sweep
       python benchmarks/bench_layer_sweep.py runs/sweep [--out benchmarks/results]

Reads the bench's sweep jobs (each case edited at each swept layer, with its MLP causal trace
on the unedited model) and writes ``layer-sweep-<device>.json``: per layer the efficacy,
paraphrase and neighbourhood scores and edit success (``efficacy_magnitude``) with their 95%
intervals and the mean MLP indirect effect; the correlation of trace effect and edit success
over (case, layer) pairs and within layers, the R² of the layer and the R² the trace adds, how
often a case's trace peaks at its best layer; and the median edit time. Also prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sqlite3
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    from kedit.bench.summary import summarize_bench
    from kedit.bench.sweep import correlation_sentence, sweep_analyses

    summary = summarize_bench(args.bench)
    with sqlite3.connect(Path(args.bench) / "bench.sqlite") as db:
        times = [t for (t,) in db.execute("select edit_time_s from cases") if t is not None]
        device = db.execute("select info from jobs limit 1").fetchone()[0]
    record = {"bench": str(args.bench), "median_edit_s": statistics.median(times), "jobs": []}
    for analysis in sweep_analyses(summary):
        record["jobs"].append(
            {
                **_plain(dataclasses.asdict(analysis)),
                "sentence": correlation_sentence(analysis.correlation)
                if analysis.correlation
                else None,
            }
        )
        print(analysis.job_id)
        for point in analysis.points:
            shown = {k: v and round(v.value, 3) for k, v in point.measures.items()}
            print(point.value, point.cases, shown, point.trace_effect and point.trace_effect.value)
        if analysis.correlation:
            print(correlation_sentence(analysis.correlation))
    kind = "cpu" if '"device": "cpu"' in device else "gpu"
    out = Path(args.out) / f"layer-sweep-{kind}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"median edit time {record['median_edit_s']:.1f} s; wrote {out}")


def _plain(value):
    """Dataclass dicts with numpy scalars made JSON-ready."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


if __name__ == "__main__":
    main()
