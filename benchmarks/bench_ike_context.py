"""IKE's context encoded once per edit against once per query: general-ability scoring time.

Usage: python benchmarks/bench_ike_context.py [--facts 20] [--limit 50] [--tasks sst2,rte]
       [--repeats 3] [--uncached-repeats N] [--embedder minilm] [--device cpu]
       [--out benchmarks/results]

On the default model (SmolLM2-135M), a session of ``--facts`` IKE edits (CounterFact facts, one
at a time) builds IKE's context: 32 demonstrations and one statement per fact. Then
``general_ability(lm, tasks, limit=...)`` is timed behind that context two ways:

* ``cached``: IKE's wrapper as it is, whose context's keys and values are computed once (in
  the timed call, as each checkpoint of a sequential job computes them once);
* ``uncached``: the same wrapper's strings scored by the plain model, which encodes the whole
  context again for every query (IKE before the cache).

Each measurement runs in a fresh process, alternating the two, and the figure is the median of
``--repeats`` (``--uncached-repeats`` for the slow one). The scores and every per-example
prediction must be equal. Prints a table and writes ``ike-context-<device>.json``; peak memory
is the child's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class FullContextLM:
    """IKE's wrapper as it answered before the cache: the plain model reads the whole
    contextualised string of every query."""

    def __init__(self, wrapper) -> None:
        self.wrapper = wrapper
        self.tokenizer = wrapper.tokenizer

    def score_targets(self, prompts: Sequence[str], targets: Sequence[str]) -> list:
        return self.wrapper.base.score_targets(self.wrapper.contextualise(prompts), targets)

    def next_token_logprobs(self, prompts: Sequence[str]):
        return self.wrapper.base.next_token_logprobs(self.wrapper.contextualise(prompts))

    def generate(self, prompts, max_new_tokens, top_k=None, seed=None, stop_at_eos=True):
        texts = self.wrapper.contextualise(prompts)
        return self.wrapper.base.generate(texts, max_new_tokens, top_k, seed, stop_at_eos)


def child(kind: str, args: argparse.Namespace) -> dict:
    import torch

    import kedit
    from kedit.eval.general import general_ability
    from kedit.model.tokens import encode

    env = kedit.Environment(progress=False)
    model, tok = kedit.load_model(args.model, device=args.device)
    start = time.perf_counter()
    session = kedit.EditSession(model, tok, env)
    for case in kedit.load_dataset("counterfact", env.data_dir, limit=args.facts):
        session.edit(case.request, "ike", overrides={"embedder": args.embedder})
    wrapper = session.model
    setup = time.perf_counter() - start
    lm = wrapper if kind == "cached" else FullContextLM(wrapper)
    tasks = args.tasks.split(",")
    start = time.perf_counter()
    results = general_ability(lm, tasks, env.data_dir, limit=args.limit)
    seconds = time.perf_counter() - start
    out = {
        "seconds": seconds,
        "setup_s": setup,
        "context_tokens": len(encode(tok, wrapper.context).ids),
        "cached_tokens": len(wrapper.lm.prefix_ids),
        "scores": {t: r["score"] for t, r in results.items()},
        "preds": {t: r.get("samples", {}).get("preds") for t, r in results.items()},
        "threads": torch.get_num_threads(),
    }
    if kind == "cached":  # the one full-context pass, on its own
        wrapper.lm.release()
        start = time.perf_counter()
        wrapper.lm.prefix_kv()
        out["prefix_pass_s"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(kind: str, argv: list[str]) -> dict:
    """One measurement in a fresh process (its stderr passes through); its last line is JSON."""
    command = [sys.executable, __file__, *argv, "--child", kind]
    out = subprocess.check_output(command, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=20)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--uncached-repeats", type=int, help="repeats of the uncached runs (default: --repeats)"
    )
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", choices=["cached", "uncached"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    argv = sys.argv[1:]
    runs: dict[str, list[dict]] = {"cached": [], "uncached": []}
    repeats = {"cached": args.repeats, "uncached": args.uncached_repeats or args.repeats}
    for i in range(max(repeats.values())):
        for kind in ("cached", "uncached"):
            if i >= repeats[kind]:
                continue
            runs[kind].append(run_child(kind, argv))
            print(
                f"run {i + 1}/{repeats[kind]} {kind}: {runs[kind][-1]['seconds']:.1f} s", flush=True
            )
    first = runs["cached"][0]
    equal = all(
        r["scores"] == first["scores"] and r["preds"] == first["preds"]
        for r in runs["cached"] + runs["uncached"]
    )
    figures = {kind: statistics.median(r["seconds"] for r in rs) for kind, rs in runs.items()}
    result = {
        "model": args.model,
        "device": args.device or "default",
        "facts": args.facts,
        "tasks": args.tasks.split(","),
        "limit": args.limit,
        "embedder": args.embedder,
        "repeats": repeats,
        "context_tokens": first["context_tokens"],
        "cached_tokens": first["cached_tokens"],
        "median_cached_s": figures["cached"],
        "median_uncached_s": figures["uncached"],
        "speedup": figures["uncached"] / figures["cached"],
        "median_prefix_pass_s": statistics.median(r["prefix_pass_s"] for r in runs["cached"]),
        "scores": first["scores"],
        "scores_and_predictions_equal": equal,
        "runs": runs,
        "cpu": platform.processor() or platform.machine(),
        "threads": first["threads"],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"ike-context-{(args.device or 'cpu').split(':')[0]}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(
        f"IKE context of {result['context_tokens']} tokens ({args.facts} facts), "
        f"{args.tasks} x {args.limit}, {result['threads']} threads"
    )
    print(f"{'':<10} {'median s':>9} {'peak RSS MB':>12}")
    for kind in ("cached", "uncached"):
        peak = max(r["peak_rss_mb"] for r in runs[kind])
        print(f"{kind:<10} {figures[kind]:>9.1f} {peak:>12.0f}")
    print(
        f"speedup x{result['speedup']:.1f}; the one context pass: "
        f"{result['median_prefix_pass_s']:.2f} s; scores {result['scores']}; "
        f"scores and predictions equal: {equal}"
    )
    print(f"written to {out / name}")


if __name__ == "__main__":
    main()
