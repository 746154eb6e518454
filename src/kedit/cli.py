"""Command line: parse, call the API, print. ``main(argv)`` returns the exit code.

Examples::

    kedit edit --method rome --prompt "{} is located in the city of" \\
        --subject "The Eiffel Tower" --target Rome
    kedit eval --method rome --dataset counterfact --limit 20 --out runs/rome
    kedit eval --method rome --dataset counterfact-full --suite pitfalls --limit 20
    kedit eval --method memit --sequential 40 --checkpoints 1,10,20 --out runs/memit-seq
    kedit audit --method rome --prompt "{} is located in the city of" \\
        --subject "The Eiffel Tower" --target Rome
    kedit bench --methods rome,ft --dataset counterfact --limit 20 \\
        --scenarios single,sequential:1,10,20 --out runs/bench
    kedit report runs/bench --csv
    kedit stats --method memit
    kedit ls methods
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from kedit import api
from kedit.cli_bench import add_bench_parsers, run_bench_command, run_report_command
from kedit.config import parse_override
from kedit.console import format_predictions, format_report_card, format_summary
from kedit.data import DATASETS
from kedit.env import Environment
from kedit.eval.audit import audit
from kedit.eval.general import GENERAL_TASKS
from kedit.eval.metrics import METRICS, SUITES, resolve_metrics
from kedit.methods import ALIASES, METHODS, get_method, make_method
from kedit.methods._spread import edited_layers
from kedit.methods._stats import StatsConfig, stats_for
from kedit.model.arch import ARCHS, ArchSpec
from kedit.model.lm import as_language_model
from kedit.model.loading import ALIASES as MODEL_ALIASES
from kedit.model.loading import DEFAULT_MODEL
from kedit.types import EditRequest

log = logging.getLogger("kedit")

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

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Hub id, local folder or alias (default {DEFAULT_MODEL})",
    )
    common.add_argument("--method", default="rome", help="editing method (kedit ls methods)")
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method hyperparameter, e.g. --set layer=5",
    )
    common.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    common.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    common.add_argument("--data-dir", help="benchmark data folder (default $KEDIT_DATA_DIR)")
    common.add_argument("--cache-dir", help="statistics and model cache (default $KEDIT_CACHE_DIR)")
    common.add_argument(
        "--stats-corpus",
        default="wikitext-2",
        help="text for covariance statistics: a file, wikitext-2, or hf:NAME",
    )
    common.add_argument("--arch", help="YAML ArchSpec for a model_type kedit does not know")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true")

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

    ev = sub.add_parser("eval", parents=[common], help="edit and audit every case of a dataset")
    ev.add_argument("--dataset", default="demo", help="dataset name or file (kedit ls datasets)")
    ev.add_argument("--limit", type=int, help="first N cases")
    ev.add_argument(
        "--suite",
        choices=list(SUITES),
        default="core",
        help="core (default: reliability, generalization, locality, portability) or pitfalls "
        "(every measure the dataset supports; the rest are listed as skipped)",
    )
    ev.add_argument(
        "--metrics", help="comma-separated metric names (default: the suite's; kedit ls metrics)"
    )
    ev.add_argument("--out", help="folder for results.jsonl, run.json, summary.json")
    ev.add_argument("--resume", action="store_true", help="continue the run in --out")
    ev.add_argument("--json", action="store_true", help="print the summary as JSON")
    ev.add_argument(
        "--sequential",
        type=int,
        metavar="N",
        help="edit the first N cases one after another without restoring",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="with --sequential: edits per update (batch methods)",
    )
    ev.add_argument(
        "--checkpoints",
        help="with --sequential: also score the cases edited so "
        "far after these numbers of edits, e.g. 1,10,20,40",
    )
    ev.add_argument(
        "--scoring",
        choices=["final", "immediate"],
        default="final",
        help="with --sequential: score every case after the last edit (final) or "
        "each right after its own edit (immediate)",
    )
    ev.add_argument(
        "--general",
        help="with --sequential: general-ability tasks measured before editing and at "
        "every checkpoint, e.g. wikitext,sst2,mmlu (kedit ls general)",
    )
    ev.add_argument(
        "--general-limit",
        type=int,
        default=100,
        help="examples per general-ability task (default 100, as AlphaEdit)",
    )

    au = sub.add_parser(
        "audit",
        parents=[common],
        help="one edit, every measure that needs no benchmark, as a report card",
    )
    au.add_argument("--prompt", required=True, help="template with {} for the subject")
    au.add_argument("--subject", required=True)
    au.add_argument("--target", required=True, help="the new answer")
    au.add_argument(
        "--target-true", help="the current answer (default: the unedited model's own answer)"
    )
    au.add_argument(
        "--paraphrase",
        action="append",
        default=[],
        help="another wording of the filled prompt (repeatable; default: written from templates)",
    )
    au.add_argument(
        "--neighbor",
        action="append",
        default=[],
        metavar="PROMPT=ANSWER",
        help="a prompt about another subject and its answer, which the edit must not change "
        "(repeatable; default: the edit prompt with well-known subjects)",
    )
    au.add_argument("--json", action="store_true", help="print the summary and rows as JSON")

    st = sub.add_parser(
        "stats", parents=[common], help="precompute the key statistics a method needs"
    )
    st.add_argument("--layers", help="comma-separated layers (default: the method's)")

    add_bench_parsers(sub)

    ls = sub.add_parser("ls", help="list methods, metrics, datasets or models")
    ls.add_argument("what", choices=["methods", "metrics", "datasets", "models", "general"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "ls":
            print(list_things(args.what))
            return 0
        commands = {
            "edit": run_edit,
            "eval": run_eval,
            "audit": run_audit,
            "stats": run_stats,
            "bench": run_bench_command,
            "report": run_report_command,
        }
        return commands[args.command](args)
    except (ValueError, KeyError, OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"kedit: error: {message}", file=sys.stderr)
        return 2


def _environment(args: argparse.Namespace) -> Environment:
    kwargs: dict[str, Any] = {
        "stats_corpus": args.stats_corpus,
        "seed": args.seed,
        "progress": not args.quiet,
    }
    if args.cache_dir:
        kwargs["cache_dir"] = Path(args.cache_dir)
    if args.data_dir:
        kwargs["data_dir"] = Path(args.data_dir)
    return Environment(**kwargs)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_override(item) for item in args.set)


def _load(args: argparse.Namespace, env: Environment) -> tuple[Any, Any]:
    get_method(args.method)  # fail on a typo before loading a model
    if args.arch:
        ARCHS.register(ArchSpec.from_yaml(args.arch), replace=True)
    return api.load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=env.cache_dir)


def run_edit(args: argparse.Namespace) -> int:
    env = _environment(args)
    request = EditRequest(args.prompt, args.subject, args.target, args.target_true)
    model, tok = _load(args, env)
    paraphrase = args.paraphrase or f"Here is a fact. {request.text}"
    unrelated = args.unrelated or next(
        p
        for p in UNRELATED
        if args.subject.lower() not in p.lower() and args.target.lower() not in p.lower()
    )
    prompts = [("edit prompt", request.text), ("paraphrase", paraphrase), ("unrelated", unrelated)]
    lm = as_language_model(model, tok)
    before = lm.next_token_logprobs([p for _, p in prompts])
    edit = api.edit(model, tok, request, method=args.method, env=env, **_overrides(args))
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


def run_eval(args: argparse.Namespace) -> int:
    env = _environment(args)
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    for name in metrics or []:
        METRICS[name]
    if args.resume and not args.out:
        raise ValueError("--resume needs --out: the folder of the run to continue")
    sequential = {}
    if args.sequential is not None:
        points = [int(x) for x in args.checkpoints.split(",")] if args.checkpoints else []
        sequential = {
            "n_edits": args.sequential,
            "batch_size": args.batch_size,
            "checkpoints": points,
            "scoring": args.scoring,
        }
        if args.general:
            sequential["general"] = [t.strip() for t in args.general.split(",") if t.strip()]
            sequential["general_limit"] = args.general_limit
    elif args.checkpoints or args.batch_size != 1 or args.general:
        raise ValueError("--checkpoints, --batch-size and --general go with --sequential N")
    model, tok = _load(args, env)
    report = api.evaluate(
        model,
        tok,
        args.dataset,
        args.method,
        overrides=_overrides(args),
        metrics=metrics,
        suite=args.suite,
        limit=args.limit,
        out_dir=args.out,
        resume=args.resume,
        env=env,
        progress=not args.quiet,
        **sequential,
    )
    if args.json:
        print(json.dumps(report.summary, indent=1))
    else:
        print(format_summary(report))
        if report.out_dir:
            print(f"\nper-case results: {report.out_dir / 'results.jsonl'}")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    env = _environment(args)
    request = EditRequest(args.prompt, args.subject, args.target, args.target_true)
    neighbors = []
    for item in args.neighbor:
        prompt, sep, answer = item.rpartition("=")
        if not sep or not prompt.strip() or not answer.strip():
            raise ValueError(f"--neighbor takes PROMPT=ANSWER, got {item!r}")
        neighbors.append((prompt.strip(), answer.strip()))
    model, tok = _load(args, env)
    report = audit(
        model,
        tok,
        request,
        args.method,
        paraphrases=args.paraphrase,
        neighbors=neighbors,
        overrides=_overrides(args),
        env=env,
    )
    if args.json:
        print(json.dumps({"summary": report.summary, "rows": report.rows}, indent=1))
    else:
        print(format_report_card(report))
    return 0 if not report.summary["errors"] else 1


def run_stats(args: argparse.Namespace) -> int:
    env = _environment(args)
    model, tok = _load(args, env)
    method = make_method(args.method, model, _overrides(args), env)
    config = method.config
    if not isinstance(config, StatsConfig):
        raise ValueError(f"{args.method} uses no key statistics")
    layers = [int(x) for x in args.layers.split(",")] if args.layers else config.stats_layers()
    paths = edited_layers(model, layers)
    start = time.perf_counter()
    stats = stats_for(model, tok, paths, env, config)
    elapsed = time.perf_counter() - start
    for path, mom2 in stats.items():
        print(f"{path}: {tuple(mom2.shape)} second moment")
    print(f"{len(paths)} layer(s) in {elapsed:.1f} s, cached under {env.cache_dir / 'stats'}")
    return 0


def list_things(what: str) -> str:
    if what == "methods":
        rows = [
            (n, "batch" if METHODS[n].supports_batch else "single", METHODS.help(n))
            for n in METHODS.names()
        ]
        rows += [(a, "alias", f"= {t}") for a, t in ALIASES.items()]
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
