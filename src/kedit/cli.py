"""Command line: parse, call the API, print. ``main(argv)`` returns the exit code.

Examples::

    kedit edit --method rome --prompt "{} is located in the city of" \\
        --subject "The Eiffel Tower" --target Rome
    kedit eval --method rome --dataset counterfact --limit 20 --out runs/rome
    kedit eval --method rome --dataset counterfact-full --suite pitfalls --limit 20
    kedit eval --method memit --sequential 40 --checkpoints 1,10,20 --out runs/memit-seq
    kedit eval --method memit --protocol batch:10 --limit 40
    kedit audit --method rome --prompt "{} is located in the city of" \\
        --subject "The Eiffel Tower" --target Rome
    kedit bench --methods rome,ft --dataset counterfact --limit 20 \\
        --scenarios single,sequential:1,10,20 --out runs/bench
    kedit report runs/bench --csv
    kedit stats --method memit
    kedit train --method mend --dataset counterfact-train --steps 2000 --val-every 200
    kedit trace --prompt "{} is located in the city of" --subject "The Eiffel Tower"
    kedit trace --dataset counterfact --limit 50 --out runs/trace
    kedit ls methods
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from kedit import api
from kedit.cli_bench import add_bench_parsers, run_bench_command, run_report_command
from kedit.cli_common import checked_overrides, common_options, environment, load
from kedit.cli_eval import add_eval_parsers, run_audit, run_eval
from kedit.cli_trace import add_trace_parser, run_trace
from kedit.cli_train import add_train_parser, run_train
from kedit.console import (
    format_predictions,
    markdown_measures,
    markdown_methods,
)
from kedit.data import DATASETS
from kedit.eval.general import GENERAL_TASKS
from kedit.eval.metric import resolve_metrics
from kedit.methods import METHODS, make_method
from kedit.methods._spread import edited_layers
from kedit.methods._stats import StatsConfig, stats_for
from kedit.model.arch import ARCHS
from kedit.model.lm import as_language_model
from kedit.model.loading import ALIASES as MODEL_ALIASES
from kedit.types import EditRequest

UNRELATED = [
    "The capital of Japan is",
    "Water is made of hydrogen and",
    "The Great Wall is located in",
    "The largest planet in the solar system is",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kedit",
        description="Edit facts in language models and audit the edits.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("::")[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    common = common_options()

    edit = sub.add_parser("edit", parents=[common], help="apply one edit and show its effect")
    edit.add_argument("--prompt", required=True, help="template with {} for the subject")
    edit.add_argument("--subject", required=True)
    edit.add_argument("--target", required=True, help="the new answer")
    edit.add_argument("--target-true", help="the current answer (optional)")
    edit.add_argument(
        "--paraphrase",
        help="another wording of the prompt (default: the prompt "
        "after an unrelated sentence, like CounterFact's paraphrases)",
    )
    edit.add_argument("--unrelated", help="a prompt the edit must not change")
    edit.add_argument("--top-k", type=int, default=5)

    add_eval_parsers(sub, common)

    st = sub.add_parser(
        "stats", parents=[common], help="precompute the key statistics a method needs"
    )
    st.add_argument("--layers", help="comma-separated layers (default: the method's)")

    add_bench_parsers(sub)
    add_trace_parser(sub, common)
    add_train_parser(sub, common)

    ls = sub.add_parser("ls", help="list methods, metrics, datasets or models")
    ls.add_argument("what", choices=["methods", "metrics", "datasets", "models", "general"])
    ls.add_argument(
        "--markdown",
        action="store_true",
        help="methods or metrics as the README's table (scripts/sync_readme.py writes it there)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "ls":
            print(list_things(args.what, args.markdown))
            return 0
        commands = {
            "edit": run_edit,
            "eval": run_eval,
            "audit": run_audit,
            "stats": run_stats,
            "bench": run_bench_command,
            "report": run_report_command,
            "trace": run_trace,
            "train": run_train,
        }
        return commands[args.command](args)
    except (ValueError, KeyError, OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"kedit: error: {message}", file=sys.stderr)
        return 2


def run_edit(args: argparse.Namespace) -> int:
    env = environment(args)
    request = EditRequest(args.prompt, args.subject, args.target, args.target_true)
    overrides = checked_overrides(args)
    model, tok = load(args, env)
    paraphrase = args.paraphrase or f"Here is a fact. {request.text}"
    unrelated = args.unrelated or next(
        p
        for p in UNRELATED
        if args.subject.lower() not in p.lower() and args.target.lower() not in p.lower()
    )
    prompts = [("edit prompt", request.text), ("paraphrase", paraphrase), ("unrelated", unrelated)]
    lm = as_language_model(model, tok)
    before = lm.next_token_logprobs([p for _, p in prompts])
    edit = api.edit(model, tok, request, method=args.method, overrides=overrides, env=env)
    try:
        after = edit.lm.next_token_logprobs([p for _, p in prompts])
        print(format_predictions(prompts, before, after, tok, args.top_k))
        info = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in edit.info.items()
        )
        print(f"\n{edit.method}: {info}")
    finally:
        edit.restore()
    return 0


def run_stats(args: argparse.Namespace) -> int:
    env = environment(args)
    overrides = checked_overrides(args)
    model, tok = load(args, env)
    method = make_method(args.method, model, overrides, env)
    config = method.config
    if not isinstance(config, StatsConfig):
        raise ValueError(f"{args.method} uses no key statistics")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else config.stats_layers()
    if not layers:
        raise ValueError(
            f"{args.method} picks its layer per fact (layer=auto); name the layers to prepare "
            "with --layers, e.g. --layers 4,5,6"
        )
    paths = edited_layers(model, layers)
    start = time.perf_counter()
    stats = stats_for(model, tok, paths, env, config)
    elapsed = time.perf_counter() - start
    for path, mom2 in stats.items():
        print(f"{path}: {tuple(mom2.shape)} second moment")
    print(f"{len(paths)} layer(s) in {elapsed:.1f} s, cached under {env.cache_dir / 'stats'}")
    return 0


def list_things(what: str, markdown: bool = False) -> str:
    if markdown:
        tables = {"methods": markdown_methods, "metrics": markdown_measures}
        if what not in tables:
            raise ValueError("--markdown lists methods or metrics")
        return tables[what]()
    if what == "methods":
        rows = [
            (n, "batch" if METHODS[n].supports_batch else "single", METHODS.help(n))
            for n in METHODS.names()
        ]
        rows += [(a, "alias", f"= {t}") for a, t in METHODS.aliases().items()]
    elif what == "metrics":
        rows = [
            (m.name, m.group, f"{m.protocol} [{', '.join(m.suites)}]")
            for m in resolve_metrics(None, "pitfalls")
        ]
    elif what == "datasets":
        rows = [
            (n, "bundled" if s.bundled else s.relpath, s.description) for n, s in DATASETS.items()
        ]
    elif what == "general":
        rows = [(n, GENERAL_TASKS[n].metric, GENERAL_TASKS.help(n)) for n in GENERAL_TASKS.names()]
    else:
        rows = [(n, a.hub_id, a.description) for n, a in MODEL_ALIASES.items()]
        rows += [(t, "architecture", "model_type kedit can edit") for t in ARCHS.names()]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows)


if __name__ == "__main__":
    sys.exit(main())
