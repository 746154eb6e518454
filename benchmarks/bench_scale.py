"""Editing thousands of facts on the default model: the batched v* search and MEMIT in batches.

Usage:
    python benchmarks/bench_scale.py search [--batch 100] [--alone 10] [--device cpu]
    python benchmarks/bench_scale.py memit [--batch 100] [--batches 10] [--device cpu]
    python benchmarks/bench_scale.py ultraedit [--batch 100] [--batches 100] [--window 0|all]

* ``search``: v* for a batch of CounterFact requests (MEMIT's configuration for the model),
  searched together (``optimise_values``); the same search running every block at every step
  (no blocks handed on: what that saves); and, for the first ``--alone`` of them, one request
  at a time as MEMIT's reference does (``optimise_value`` each): seconds per fact of each in
  the same run, and how far each batched v* is from its one-at-a-time value (relative L2
  distance, and whether the steps taken agree).
* ``memit`` / ``ultraedit``: ``--batches`` calls (UltraEdit's turns) of ``--batch`` facts each
  (CounterFact edit split, in order) applied one after another in one ``EditSession``: editing
  seconds per batch (median and all), the total, the session's restore data (with
  ``--window 0``, the default, the session folds every edit, as ``kedit eval``'s sequences do;
  ``--window all`` keeps every turn's factors so that any can be rolled back), and the
  process's peak resident memory.

Prints a table and writes ``scale-<kind>-<device>.json`` under ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from unittest.mock import patch


def search(model, tok, env, batch: int, alone: int) -> dict:
    import kedit
    from kedit.methods import _value, make_method
    from kedit.methods._suffix import HandOn
    from kedit.methods._templates import context_templates, flatten
    from kedit.methods._value import optimise_value, optimise_values

    requests = [c.request for c in kedit.load_dataset("counterfact", env.data_dir, limit=batch)]
    method = make_method("memit", model, None, env)
    cfg = method.config
    templates = flatten(context_templates(model, tok, env, cfg.context_template_length_params))
    _, paths = method.target_paths(model)
    start = time.perf_counter()
    joint = optimise_values(model, tok, requests, templates, paths, cfg.search())
    joint_s = time.perf_counter() - start
    # the same search running every block at every step (no blocks handed on)
    with patch.object(_value, "delta_hand_on", lambda model, paths, adds: HandOn(model, 0)):
        start = time.perf_counter()
        every_block = optimise_values(model, tok, requests, templates, paths, cfg.search())
        every_block_s = time.perf_counter() - start
    start = time.perf_counter()
    one = [optimise_value(model, tok, r, templates, paths, cfg.search()) for r in requests[:alone]]
    alone_s = time.perf_counter() - start
    distance = [float((a.target - j.target).norm() / a.target.norm()) for a, j in zip(one, joint)]
    return {
        "batch": batch,
        "alone": alone,
        "batched_s_per_fact": joint_s / batch,
        "every_block_s_per_fact": every_block_s / batch,
        "hand_on_speed_up": every_block_s / joint_s,
        "every_block_max_relative_distance": max(
            float((e.target - j.target).norm() / e.target.norm())
            for e, j in zip(every_block, joint)
        ),
        "alone_s_per_fact": alone_s / alone,
        "speed_up": (alone_s / alone) / (joint_s / batch),
        "max_relative_distance": max(distance),
        "steps_agree": sum(a.steps == j.steps for a, j in zip(one, joint)),
        "steps": [j.steps for j in joint],
    }


def sequential(model, tok, env, method: str, batch: int, batches: int, window: int | None) -> dict:
    import kedit
    from kedit.methods import make_method

    cases = kedit.load_dataset("counterfact", env.data_dir, limit=batch * batches)
    editor = make_method(method, model, None, env)
    warm = kedit.load_dataset("counterfact", env.data_dir, limit=batch * batches + 2)[-2:]
    # statistics and templates computed before the clock starts (a batch of two: UltraEdit's
    # first turn needs two target tokens)
    kedit.edit(model, tok, [c.request for c in warm], method=editor, env=env).restore()
    session = kedit.EditSession(model, tok, env, rollback_window=window)
    seconds = []
    for k in range(batches):
        requests = [c.request for c in cases[k * batch : (k + 1) * batch]]
        start = time.perf_counter()
        session.edit(requests, editor)
        seconds.append(time.perf_counter() - start)
        print(f"batch {k + 1}/{batches}: {seconds[-1]:.1f} s", flush=True)
    restore_mb = session.restore_bytes / 2**20
    session.restore()
    return {
        "batch": batch,
        "batches": batches,
        "edits": batch * batches,
        "seconds_per_batch": statistics.median(seconds),
        "all_seconds": seconds,
        "total_seconds": sum(seconds),
        "s_per_edit": sum(seconds) / (batch * batches),
        "restore_mb": restore_mb,
        "rollback_window": window,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["search", "memit", "ultraedit"])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--alone", type=int, default=10)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument(
        "--window",
        default="0",
        help="the session's rollback window in edits ('all': every edit can be rolled back)",
    )
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    import torch

    import kedit
    from kedit.env import Environment

    env = Environment(progress=False)
    model, tok = kedit.load_model("smollm2-135m", device=args.device)
    if args.kind == "search":
        result = search(model, tok, env, args.batch, args.alone)
    else:
        window = None if args.window == "all" else int(args.window)
        result = sequential(model, tok, env, args.kind, args.batch, args.batches, window)
    device = str(next(model.parameters()).device).split(":")[0]
    result.update(model="smollm2-135m", device=device, threads=torch.get_num_threads())
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scale-{args.kind}-{device}.json"
    path.write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        if key not in ("steps", "all_seconds"):
            print(f"{key:>24}: {value:.3f}" if isinstance(value, float) else f"{key:>24}: {value}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
