"""``kedit trace``: causal traces of one fact or of a dataset's facts, written as files."""

from __future__ import annotations

import argparse
from pathlib import Path

from kedit import api
from kedit.cli_common import environment, load
from kedit.eval.selection import select_cases
from kedit.figures import require_matplotlib
from kedit.locate.effects import CATEGORIES
from kedit.locate.facts import DEFAULT_KINDS, TraceOptions
from kedit.locate.report import averages_of, write_traces
from kedit.model.causal_trace import KINDS, SEVERABLE
from kedit.types import EditRequest


def add_trace_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    trace = sub.add_parser(
        "trace",
        parents=[common],
        help="causal tracing: which hidden states carry a fact (Meng et al. 2022)",
    )
    what = trace.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help='template with {} for the subject, e.g. "{} is in"')
    what.add_argument("--dataset", help="trace the first request of each case of a dataset")
    trace.add_argument("--subject", help="the subject (with --prompt)")
    trace.add_argument("--answer", help="the answer traced (default: the model's own)")
    trace.add_argument("--limit", type=int, default=50, help="cases of --dataset (default 50)")
    trace.add_argument(
        "--kinds",
        default=",".join(DEFAULT_KINDS),
        help=f"traces to run, of {', '.join(KINDS)} (default all)",
    )
    trace.add_argument(
        "--severed",
        default="",
        help=f"also hidden-state traces with {' or '.join(SEVERABLE)} outputs of later layers "
        "held at their corrupted values, e.g. --severed mlp,attn",
    )
    trace.add_argument("--samples", type=int, default=10, help="noise samples (default 10)")
    trace.add_argument("--window", type=int, default=10, help="layers restored together")
    trace.add_argument("--noise", type=float, help="noise std (default 3x the embeddings' std)")
    trace.add_argument(
        "--min-clean",
        type=float,
        default=0.0,
        help="leave out facts whose clean answer probability is below this",
    )
    trace.add_argument("--out", default="runs/trace", help="output folder (default runs/trace)")


def trace_options(args: argparse.Namespace) -> TraceOptions:
    """The options, checked before a model is loaded."""
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    severed = tuple(k.strip() for k in args.severed.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS] + [k for k in severed if k not in SEVERABLE]
    if unknown or not (kinds or severed):
        raise ValueError(
            f"--kinds takes {', '.join(KINDS)} and --severed {', '.join(SEVERABLE)}; "
            f"got {', '.join(unknown) or 'nothing'}"
        )
    if args.samples < 1 or args.window < 1:
        raise ValueError("--samples and --window must be at least 1")
    return TraceOptions(
        kinds, severed, args.samples, args.window, args.seed, args.noise, args.min_clean
    )


def run_trace(args: argparse.Namespace) -> int:
    options = trace_options(args)
    require_matplotlib()  # the figures are written after the traces: fail before, not after
    env = environment(args)
    if args.prompt is not None:
        if not args.subject:
            raise ValueError("--prompt needs --subject (the text the {} stands for)")
        # the answer traced is the request's true target; a placeholder new target is needed
        # only because a request is an edit
        facts: list = [EditRequest(args.prompt, args.subject, "\u2205", args.answer)]
    else:
        facts = select_cases(args.dataset, env, args.limit)
    model, tok = load(args, env)
    traced = api.trace(model, tok, facts, options, env=env)
    meta = {"model": args.model, "dataset": args.dataset, "limit": args.limit}
    files = write_traces(traced, Path(args.out), meta)
    for fact in traced.traces[:1]:
        for name, trace in fact.items():
            last = trace.subject_last
            print(
                f"{name}: p({trace.answer.strip()!r}) clean {trace.clean:.3f}, corrupted "
                f"{trace.corrupted:.3f}; at the subject's last token the peak is layer "
                f"{trace.peak_layer(last)} ({trace.scores[last].max():.3f})"
            )
    index = CATEGORIES.index("last subject token")
    for name, average in averages_of(traced).items():
        peak = average.peak()
        print(
            f"{name}, {len(traced.traces)} facts: average indirect effect at the last subject "
            f"token peaks at layer {peak} ({average.mean[index, peak]:.3f} "
            f"[{average.low[index, peak]:.3f}, {average.high[index, peak]:.3f}])"
        )
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return 0
