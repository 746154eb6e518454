"""Multi-hop questions after editing: MeLLo and DeepEdit beside ROME and MEMIT on MQuAKE, on the
default model.

Usage: python benchmarks/bench_multihop.py [--cases 50] [--methods mello,deepedit,rome,memit]
       [--timed 10] [--store runs/multihop] [--device cpu] [--out benchmarks/results]

1. Scores: ``kedit bench`` (protocol ``single``: each case's edited facts in one edit call,
   restored after it; suite ``pitfalls``, which on MQuAKE is its four measures; no general
   ability) on the first ``--cases`` MQuAKE cases, into the bench folder ``--store``: one case
   is stored as it finishes, so a killed run resumes where it stopped when run again (on one
   CPU thread the 50 cases took about 35 min for MeLLo, 30 for DeepEdit, 20 for ROME and
   15 for MEMIT). Per method, unedited (``pre``) and edited
   (``post``) with 95% bootstrap intervals: multi-hop accuracy (any of the case's three
   questions answered with the new answer), multi-hop original accuracy (any still answered with
   the old one), edit-wise success (the edited facts recalled by their cloze statements) and
   instance accuracy (every hop of the new chain recalled). The questions carry MQuAKE's own
   few-shot prompt (``mquake``); MeLLo and DeepEdit run their own prompts on the question
   inside it. ``--timed 0`` stops here.
2. Time, on the first ``--timed`` cases: seconds of the edit call per edited fact, and seconds
   per question for the three questions of a case answered in one ``generate`` call (MeLLo's and
   DeepEdit's whole pipelines; for ROME and MEMIT the edited model's greedy answer). Medians.

Prints a table and writes ``multihop-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

MEASURES = (
    "mquake_multi_hop_accuracy",
    "mquake_multi_hop_original_accuracy",
    "mquake_edit_wise_success",
    "mquake_instance_accuracy",
)
#: tokens a plain model may generate for an answer (MeLLo and DeepEdit stop on their own)
ANSWER_TOKENS = 16


def scores(summary, method: str) -> dict:
    """The MQuAKE measures of ``method``'s job in a bench summary, pre and post with intervals."""
    out = {}
    for name in MEASURES:
        mean = summary.means.get((f"{method}/single", 1, name))
        if mean is None:
            continue
        entry = mean.entry()
        out[name] = {
            stage: {"value": entry.get(stage), "ci95": entry.get(f"{stage}_ci")}
            for stage in ("pre", "post")
        }
        out[name]["n"] = entry["n"]
    return out


def timings(model, tok, env, name: str, cases) -> dict:
    """Seconds per edited fact (the edit call) and per question (one ``generate`` call for a
    case's three questions) on ``cases``, medians over them."""
    from kedit.methods import METHODS, EditSession
    from kedit.types import ProbeKind

    method = METHODS[name].for_model(model, None, env)
    per_fact, per_question = [], []
    for case in cases:
        questions = [p.prompt for p in case.probes if p.kind == ProbeKind.MULTI_HOP]
        # as the bench edits a case: one update for a batch method, else one edit per fact
        with EditSession(model, tok, env) as session:
            start = time.perf_counter()
            session.edit_all(list(case.requests), method)
            per_fact.append((time.perf_counter() - start) / len(case.requests))
            start = time.perf_counter()
            session.lm.generate(questions, ANSWER_TOKENS)
            per_question.append((time.perf_counter() - start) / len(questions))
    return {
        "median_s_per_edited_fact": statistics.median(per_fact),
        "median_s_per_question": statistics.median(per_question),
        "s_per_edited_fact": per_fact,
        "s_per_question": per_question,
    }


def main() -> None:
    import kedit
    from kedit.bench.driver import run_bench
    from kedit.bench.plan import BenchPlan
    from kedit.bench.summary import summarize_bench
    from kedit.env import Environment

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--methods", default="mello,deepedit,rome,memit")
    parser.add_argument("--store", default="runs/multihop", help="bench folder (resumable)")
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    env = Environment(progress=False)
    model, tok = kedit.load_model(args.model, device=args.device)
    device = next(model.parameters()).device.type
    cases = kedit.load_dataset("mquake", env.data_dir, limit=args.cases)
    result: dict = {
        "model": args.model,
        "device": device,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "dataset": "mquake",
        "protocol": "single",
        "cases": len(cases),
        "methods": {},
    }
    methods = args.methods.split(",")
    plan = BenchPlan(
        methods=methods,
        scenarios=["single"],
        model=args.model,
        dataset="mquake",
        limit=args.cases,
        suite="pitfalls",
        general=[],
        device=args.device,
    )
    start = time.perf_counter()
    outcome = run_bench(plan, args.store, model=model, tok=tok, progress=False)
    result["bench"] = {"store": str(args.store), "wall_s_this_run": time.perf_counter() - start}
    summary = summarize_bench(args.store)
    for name in methods:
        job = f"{name}/single"
        cost = summary.costs.get(job)
        entry = {
            "status": outcome.status.get(job),
            "failure": outcome.failures.get(job),
            "scores": scores(summary, name),
            "median_edit_s_per_case": cost.median_edit_time_s if cost else None,
            "median_eval_s_per_case": cost.median_eval_time_s if cost else None,
        }
        if args.timed:
            entry["timing"] = timings(model, tok, env, name, cases[: args.timed])
        result["methods"][name] = entry
        shown = "  ".join(
            f"{m.removeprefix('mquake_')} {s['pre']['value']:.2f}->{s['post']['value']:.2f}"
            for m, s in entry["scores"].items()
            if s["post"]["value"] is not None and s["pre"]["value"] is not None
        )
        t = entry.get("timing")
        timed = (
            f"  {t['median_s_per_edited_fact']:.2f} s/fact  "
            f"{t['median_s_per_question']:.2f} s/question"
            if t
            else ""
        )
        print(f"{name:<9} {shown}{timed}", flush=True)
    out = Path(args.out) / f"multihop-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
