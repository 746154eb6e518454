"""Mass-editing cost on the default model: MEMIT batches, key statistics, memory.

Usage: python benchmarks/bench_mass_edit.py [--batches 1,10,100] [--device cpu]

Each measurement runs in a fresh child process, so its peak memory is its own:

* ``stats``: computing the key statistics of one layer from an empty cache (kedit's default
  sample on this device, and the paper's for comparison on CPU only when asked);
* ``memit-B``: one MEMIT call editing B CounterFact facts (statistics cached), the median of
  three calls for B <= 10 and one call above;
* ``sequential``: 40 ROME edits in one EditSession, with the process's resident memory and the
  session's restore data after 1, 10, 20 and 40 edits (it should stay flat).

Prints a table and writes ``mass-edit-<device>.json``; peak memory is the child's maximum
resident set size (and the CUDA allocator's peak on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(kind: str, arg: str, device: str | None) -> dict:
    import torch

    import kedit
    from kedit.env import Environment
    from kedit.methods import make_method
    from kedit.methods._stats import stats_for, token_cap

    env = Environment(progress=False)
    model, tok = kedit.load_model("smollm2-135m", device=device)
    out: dict = {}
    if kind == "stats":
        env = Environment(cache_dir=Path(arg), progress=False)  # empty: computed, not loaded
        method = make_method("rome", model, None, env)
        path = f"model.layers.{method.config.layer}.mlp.down_proj"
        start = time.perf_counter()
        stats_for(model, tok, [path], env, method.config)
        out["seconds"] = time.perf_counter() - start
        out["multiplier"] = method.config.mom2_dynamic_multiplier
        out["tokens"] = token_cap(model, path, method.config.mom2_dynamic_multiplier)
    elif kind == "memit":
        cases = kedit.load_dataset("counterfact", env.data_dir, limit=int(arg))
        warm = kedit.load_dataset("counterfact", env.data_dir, limit=101)[100]
        kedit.edit(model, tok, warm.request, method="memit", env=env).restore()  # stats, templates
        times = []
        for _ in range(3 if int(arg) <= 10 else 1):
            start = time.perf_counter()
            edit = kedit.edit(model, tok, [c.request for c in cases], method="memit", env=env)
            times.append(time.perf_counter() - start)
            edit.restore()
        out["seconds"], out["all_seconds"] = statistics.median(times), times
    elif kind == "sequential":
        cases = kedit.load_dataset("counterfact", env.data_dir, limit=40)
        session = kedit.EditSession(model, tok, env)
        editor = make_method("rome", model, None, env)
        out["rss_mb"], out["restore_mb"] = {}, {}
        for i, case in enumerate(cases, 1):
            session.edit(case.request, editor)
            if i in (1, 10, 20, 40):
                out["rss_mb"][i] = round(current_rss_mb(), 1)
                out["restore_mb"][i] = round(session.restore_bytes / 2**20, 3)
        session.restore()
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and device != "cpu":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def current_rss_mb() -> float:
    """The process's resident memory now (Linux), else its peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(kind: str, arg: str, device: str | None) -> dict:
    command = [sys.executable, __file__, "--child", kind, arg]
    if device:
        command += ["--device", device]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.device)))
        return

    results: dict = {"model": "smollm2-135m", "device": args.device or "default"}
    with tempfile.TemporaryDirectory() as empty_cache:
        results["stats_one_layer"] = run_child("stats", empty_cache, args.device)
    results["memit"] = {b: run_child("memit", b, args.device) for b in args.batches.split(",")}
    results["sequential_rome_40"] = run_child("sequential", "40", args.device)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"mass-edit-{(args.device or 'cpu').split(':')[0]}.json"
    (out / name).write_text(json.dumps(results, indent=1))
    s = results["stats_one_layer"]
    print(
        f"key statistics, one layer, empty cache: {s['seconds']:.1f} s "
        f"({s['tokens'] or 'all'} tokens), peak RSS {s['peak_rss_mb']:.0f} MB"
    )
    print(f"{'MEMIT batch':>12} {'seconds':>9} {'s/edit':>8} {'peak RSS MB':>12}")
    for b, r in results["memit"].items():
        print(
            f"{b:>12} {r['seconds']:>9.1f} {r['seconds'] / int(b):>8.2f} {r['peak_rss_mb']:>12.0f}"
        )
    q = results["sequential_rome_40"]
    print("40 sequential ROME edits: RSS MB", q["rss_mb"], "restore data MB", q["restore_mb"])
    print(f"written to {out / name}")


if __name__ == "__main__":
    main()
