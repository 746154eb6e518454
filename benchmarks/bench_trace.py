"""Causal traces of CounterFact facts: time per traced fact and the average indirect effect.

Usage: python benchmarks/bench_trace.py [--facts 50] [--samples 10] [--kinds hidden,mlp,attn]
       [--shard I/N] [--device cpu] [--trace-dir runs/trace-bench] [--out benchmarks/results]

Traces the first ``--facts`` CounterFact cases' true facts (their prompt, subject and true
answer) on the default model (SmolLM2-135M) with ``kedit.trace``: every (token, layer)
restoration of each kind, Gaussian noise of three embedding standard deviations (measured on
the WikiText-2 sample), ``--samples`` noise samples per restoration, window 10. ``--shard I/N``
traces every N-th fact from the I-th (run N processes side by side, then ``--merge`` their
folders). Writes every trace, heatmap and the page to ``--trace-dir`` (not committed) and the
figures to ``<out>/trace-<device>.json``: seconds per traced fact (median and range, with the
number of tokens per prompt), the average indirect effect at the last subject token by layer
with 95% intervals, and its peak layer per kind; the same over the facts the model knows
(``--known``: clean probability of the true answer at least 0.05; the paper traces known facts
only), whose traces and figure go to ``<trace-dir>/known``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path


def run(args: argparse.Namespace) -> Path:
    import torch

    import kedit
    from kedit.eval.selection import select_cases
    from kedit.locate.facts import TraceOptions
    from kedit.locate.report import write_traces

    env = kedit.Environment(progress=False)
    model, tok = kedit.load_model("smollm2-135m", device=args.device)
    cases = select_cases("counterfact", env, args.facts)
    index, count = (int(x) for x in args.shard.split("/"))
    cases = cases[index::count]
    options = TraceOptions(kinds=tuple(args.kinds.split(",")), samples=args.samples)
    t0 = time.perf_counter()
    traced = kedit.trace(model, tok, cases, options, env=env)
    meta = {
        "model": "smollm2-135m",
        "dataset": "counterfact",
        "facts": [c.case_id for c in cases],
        "device": str(args.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "wall_s": time.perf_counter() - t0,
    }
    folder = Path(args.trace_dir) / f"shard{index}"
    write_traces(traced, folder, meta)
    return folder


def merge(folders: list[Path], args: argparse.Namespace) -> dict:
    """The shards' traces as one set: the figures and the summary JSON."""
    from kedit.locate.effects import CATEGORIES
    from kedit.locate.facts import TracedFacts, TraceOptions
    from kedit.locate.report import averages_of, write_traces
    from kedit.model.causal_trace import FactTrace

    records = [json.loads((f / "traces.json").read_text()) for f in folders]
    options = TraceOptions(
        **{**records[0]["options"], "kinds": tuple(records[0]["options"]["kinds"]), "severed": ()}
    )
    traced = TracedFacts(records[0]["noise"], options)
    for record in records:
        traced.seconds += record["seconds_per_fact"]
        for fact in record["facts"]:
            traced.traces.append({n: _trace(FactTrace, t) for n, t in fact.items()})
    meta = {k: records[0][k] for k in ("model", "dataset", "device", "threads", "cpu")}
    write_traces(traced, Path(args.trace_dir) / "all", meta)
    known = TracedFacts(traced.noise, options)
    known.traces = [f for f in traced.traces if next(iter(f.values())).clean >= args.known]
    write_traces(known, Path(args.trace_dir) / "known", meta)
    last = CATEGORIES.index("last subject token")
    tokens = [len(next(iter(f.values())).tokens) for f in traced.traces]
    summary = {
        "protocol": "Meng et al. 2022 causal tracing, noise 3 x embedding std on WikiText-2, "
        f"{options.samples} noise samples, window {options.window}; CounterFact true facts",
        **meta,
        "facts": len(traced.traces),
        "noise": traced.noise,
        "seconds_per_fact": {
            "median": statistics.median(traced.seconds),
            "min": min(traced.seconds),
            "max": max(traced.seconds),
            "kinds": list(options.kinds),
        },
        "tokens_per_prompt": {"median": statistics.median(tokens), "max": max(tokens)},
        "average_indirect_effect_last_subject_token": _peaks(averages_of(traced), last),
        "known_facts": {
            "rule": f"clean probability of the true answer >= {args.known}",
            "facts": len(known.traces),
            "average_indirect_effect_last_subject_token": _peaks(averages_of(known), last),
        },
    }
    out = Path(args.out) / f"trace-{'cpu' if args.device == 'cpu' else 'gpu'}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if "average" not in k}, indent=1))
    for label, peaks in (
        ("all facts", summary["average_indirect_effect_last_subject_token"]),
        ("known facts", summary["known_facts"]["average_indirect_effect_last_subject_token"]),
    ):
        for name, a in peaks.items():
            peak = a["peak_layer"]
            print(
                f"{label}, {name}: AIE at the last subject token peaks at layer {peak}: "
                f"{a['mean'][peak]:.3f} [{a['low'][peak]:.3f}, {a['high'][peak]:.3f}]; "
                f"last token, layer {a['last_token_peak_layer']}: {a['last_token_peak']:.3f}"
            )
    return summary


def _peaks(averages: dict, last: int) -> dict:
    """Per trace: the last subject token's curve and peak, the last token's peak."""
    from kedit.locate.effects import CATEGORIES

    final = CATEGORIES.index("last token")
    out = {}
    for name, a in averages.items():
        out[name] = {
            "peak_layer": a.peak(),
            "mean": a.mean[last].tolist(),
            "low": a.low[last].tolist(),
            "high": a.high[last].tolist(),
            "last_token_peak_layer": a.peak("last token"),
            "last_token_peak": float(a.mean[final].max()),
            "total_effect": [a.total_effect, a.total_low, a.total_high],
        }
    return out


def _trace(cls, data: dict):
    import numpy as np

    data = dict(data)
    data["scores"] = np.asarray(data["scores"])
    data["subject_range"] = tuple(data["subject_range"])
    return cls(**data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=int, default=50)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--kinds", default="hidden,mlp,attn")
    parser.add_argument("--shard", default="0/1")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trace-dir", default="runs/trace-bench")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--merge", nargs="*", help="shard folders to merge (no tracing)")
    parser.add_argument(
        "--known",
        type=float,
        default=0.05,
        help="with --merge: also average the facts whose clean answer probability is at least "
        "this (the paper traces facts the model knows)",
    )
    args = parser.parse_args()
    if args.merge is not None:
        merge([Path(f) for f in args.merge], args)
        return
    folder = run(args)
    print(f"traces in {folder}")


if __name__ == "__main__":
    main()
