"""The trained editors (MEND, KE, MALMEN, SERAC) on the default model: train each on
CounterFact's training split within a step budget, then edit the first evaluation cases beside
the unedited model and ROME; MALMEN's one-call batch against MEMIT's on the same facts.

Usage: python benchmarks/bench_meta.py [--methods mend,ke,malmen,serac] [--steps 1200]
       [--minutes 60] [--eval-only] [--val-every 100] [--cases 50] [--batch 100]
       [--device cpu] [--out benchmarks/results]
       [--set mend.lr=1e-4 ...]

1. Training (``kedit.train``, resumable: an interrupted run of this script continues where it
   stopped; ``--minutes`` ends each method's run after the step that passes it; ``--eval-only``
   trains nothing and reports the run already in the cache, e.g. one made by ``kedit train``):
   per method the steps, wall time, the validation curve (every ``--val-every``
   steps: held-out loss, edit token accuracy, unrelated top-1 kept) and the best step.
2. Evaluation (``kedit.evaluate``, protocol ``single``, the core suite) on the first ``--cases``
   of ``counterfact`` (the evaluation split, never trained on): efficacy, paraphrase and
   neighbourhood scores (probability comparison) and top-1 agreement on unrelated prompts, with
   their 95% bootstrap intervals, for each trained editor, ROME, and the unedited model (the
   ``pre`` values).
3. MALMEN edits the first ``--batch`` cases in one call (``batch:N``), MEMIT the same; scores
   and the seconds of the edit call (and of the whole run with its scoring).

Prints a line per editor and writes ``meta-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

SCORES = ("efficacy_score", "paraphrase_score", "neighborhood_score", "locality_top1_agreement")


def overrides_of(items: list[str]) -> dict[str, dict]:
    from kedit.config import parse_override

    out: dict[str, dict] = {}
    for item in items:
        method, _, rest = item.partition(".")
        key, value = parse_override(rest)
        out.setdefault(method, {})[key] = value
    return out


def scores(report, which: str = "post") -> dict:
    metrics = report.summary["metrics"]
    out = {
        name: {"value": metrics[name].get(which), "ci95": metrics[name].get(f"{which}_ci")}
        for name in SCORES
        if name in metrics
    }
    if which == "post":  # seconds of the edit call per fact (a batch's call over its facts)
        out["median_edit_s_per_fact"] = report.summary.get("median_edit_time_s")
    return out


def train(kedit, model, tok, name: str, args, overrides: dict | None, env) -> dict:
    """Train (or continue training) ``name``'s editor; its run as a dict."""
    start = time.perf_counter()
    trained = kedit.train(
        model,
        tok,
        name,
        steps=args.steps,
        val_every=args.val_every,
        overrides=overrides,
        env=env,
        progress=True,
        time_limit_s=args.minutes * 60 if args.minutes else None,
    )
    return {
        "steps": trained.steps,
        "best_step": trained.best_step,
        "best": trained.best,
        "wall_s_total": trained.wall_s,
        "wall_s_this_run": time.perf_counter() - start,
        "resumed_from": trained.resumed_from,
        "stopped_early": trained.stopped_early,
        "out_of_time": trained.out_of_time,
        "curve": trained.curve,
        "folder": str(trained.folder),
    }


def cached_run(model, name: str, overrides: dict | None, env) -> dict:
    """The run in the cache of ``name``'s editor for ``model`` (its checkpoint's progress)."""
    from kedit.methods import METHODS

    folder = METHODS[name].for_model(model, overrides or {}, env).editor_folder(model)
    progress = json.loads((folder / "checkpoint.json").read_text())["progress"]
    best = next(p["val"] for p in progress["curve"] if p["step"] == progress["best_step"])
    return {
        "steps": progress["step"],
        "best_step": progress["best_step"],
        "best": best,
        "wall_s_total": progress["wall_s"],
        "stopped_early": progress["stopped_early"],
        "curve": progress["curve"],
        "folder": str(folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="mend,ke,malmen,serac")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--minutes", type=float, help="time budget of each training run")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the cached editors")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--device")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE")
    args = parser.parse_args()

    import kedit

    model, tok = kedit.load_model("smollm2-135m", device=args.device)
    device = next(model.parameters()).device.type
    env = kedit.Environment(progress=False)
    overrides = overrides_of(args.set)
    result: dict = {
        "model": "smollm2-135m",
        "device": device,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "steps": args.steps,
        "cases": args.cases,
        "methods": {},
    }
    methods = [m for m in args.methods.split(",") if m]

    def evaluate(name: str, protocol: str, limit: int):
        """``name`` on the first ``limit`` counterfact cases under ``protocol``."""
        return kedit.evaluate(
            model,
            tok,
            "counterfact",
            name,
            overrides=overrides.get(name),
            protocol=protocol,
            limit=limit,
            env=env,
            progress=False,
        )

    for name in methods:
        if args.eval_only:
            entry = {"train": cached_run(model, name, overrides.get(name), env)}
        else:
            entry = {"train": train(kedit, model, tok, name, args, overrides.get(name), env)}
        entry["eval"] = scores(evaluate(name, "single", args.cases))
        result["methods"][name] = entry
        best = entry["train"]["best_step"]
        print(name, json.dumps(entry["eval"]), f"best step {best}", flush=True)
    rome = evaluate("rome", "single", args.cases)
    result["rome"] = scores(rome)
    result["unedited"] = scores(rome, "pre")
    if "malmen" in methods:
        for name in ("malmen", "memit"):
            start = time.perf_counter()
            report = evaluate(name, f"batch:{args.batch}", args.batch)
            measured = scores(report)
            result[f"{name}_batch"] = {
                "facts": args.batch,
                "edit_call_s": measured["median_edit_s_per_fact"] * args.batch,
                "wall_s_with_scoring": time.perf_counter() - start,
                "scores": measured,
            }
    out = Path(args.out) / f"meta-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
