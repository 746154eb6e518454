"""Time per edit of the added-parameter editors on the default model, with ROME and GRACE in the
same run.

Usage: python benchmarks/bench_added.py [--edits 10] [--device cpu] [--out benchmarks/results]
       [--methods rome,grace,t-patcher,melo,wise,calinet]

Each method edits the first ``--edits`` CounterFact cases one after another in one
``EditSession`` (its preset for the model; a warm-up edit first, so cached statistics and
templates are not timed); a batch method (CaliNET) also edits them as one batch. Per method:
the median and every edit's seconds, and, after the last edit, on the edited cases: the share
whose edit prompt prefers the new target (efficacy, probability comparison), and for methods
that route, the share of edit prompts and of their neighbourhood prompts on which the added part
fired. Prints a table and writes ``added-<device>.json``. Medians, since the machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

DEFAULT_METHODS = "rome,grace,t-patcher,melo,wise,calinet"


def efficacy_and_routing(lm, cases) -> dict:
    from kedit.model.lm import RoutingModel
    from kedit.types import ProbeKind

    prompts = [c.request.text for c in cases]
    new = lm.score_targets(prompts, [c.request.target_new for c in cases])
    old = lm.score_targets(prompts, [c.request.target_true for c in cases])
    figures = {
        "efficacy": statistics.mean(n.mean_logprob > o.mean_logprob for n, o in zip(new, old))
    }
    if isinstance(lm, RoutingModel):
        neighbours = [p.prompt for c in cases for p in c.probes if p.kind == ProbeKind.NEIGHBORHOOD]
        figures["routed_edit_prompts"] = statistics.mean(lm.routed(prompts))
        figures["routed_neighbours"] = statistics.mean(lm.routed(neighbours))
    return figures


def run_method(model, tok, env, name: str, cases, warm) -> dict:
    import kedit
    from kedit.methods import make_method

    editor = make_method(name, model, None, env)
    kedit.edit(model, tok, warm.request, method=editor, env=env).restore()
    session = kedit.EditSession(model, tok, env)
    seconds = []
    for case in cases:
        start = time.perf_counter()
        session.edit(case.request, editor)
        seconds.append(time.perf_counter() - start)
    result = {
        "sequential_median_s_per_edit": statistics.median(seconds),
        "sequential_s": seconds,
        **efficacy_and_routing(session.lm, cases),
    }
    session.restore()
    if editor.supports_batch:
        start = time.perf_counter()
        edit = kedit.edit(model, tok, [c.request for c in cases], method=editor, env=env)
        result["batch_s_per_edit"] = (time.perf_counter() - start) / len(cases)
        result["batch"] = efficacy_and_routing(edit.lm, cases)
        edit.restore()
    return result


def main() -> None:
    import kedit
    from kedit.env import Environment

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    env = Environment(progress=False)
    model, tok = kedit.load_model(args.model, device=args.device)
    loaded = kedit.load_dataset("counterfact", env.data_dir, limit=args.edits + 1)
    warm, cases = loaded[0], loaded[1:]
    figures = {}
    for name in args.methods.split(","):
        figures[name] = run_method(model, tok, env, name, cases, warm)
        f = figures[name]
        print(
            f"{name:<10} {f['sequential_median_s_per_edit']:>8.2f} s/edit  "
            f"efficacy {f['efficacy']:.2f}  "
            f"routed edit/neighbours {f.get('routed_edit_prompts', float('nan')):.2f}/"
            f"{f.get('routed_neighbours', float('nan')):.2f}",
            flush=True,
        )
    result = {
        "model": args.model,
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "edits": args.edits,
        "methods": figures,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"added-{result['device'].split(':')[0]}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(f"written to {out / name}")


if __name__ == "__main__":
    main()
