"""``kedit eval`` and ``kedit audit``: their options and what they do (see ``cli.py``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kedit import api
from kedit.cli_common import checked_overrides, environment, load
from kedit.console import format_report_card, format_summary
from kedit.eval.audit import audit
from kedit.eval.metric import SUITES
from kedit.eval.protocol_text import parse_sample
from kedit.eval.protocols import CHECKPOINT_SAMPLE, Sequential
from kedit.types import EditRequest


def add_eval_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
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
        "--protocol",
        help="single (default), batch:B, sequential:K1,K2,...[;batch=B][;scoring=immediate]"
        "[;sample=S][;final=all], or "
        "sweep:KEY=V1-V2,V3 (e.g. sweep:layer=0-29) (kedit bench's scenarios); --sequential N "
        "and its options are a shorter way to write sequential",
    )
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
        "--sample",
        help=f"with --sequential: a checkpoint scores a seeded sample of this many of the cases "
        f"edited so far (default {CHECKPOINT_SAMPLE}; 'all' scores every one)",
    )
    ev.add_argument(
        "--score-all-final",
        action="store_true",
        help="with --sequential: the last checkpoint scores every case, past the sample",
    )
    ev.add_argument(
        "--general",
        help="with --sequential: general-ability tasks measured before editing and at "
        "every checkpoint, e.g. wikitext,sst2,mmlu (kedit ls general)",
    )
    ev.add_argument(
        "--general-limit",
        type=int,
        default=None,
        help="examples per general-ability task (default: all the shared subsets hold; "
        "AlphaEdit uses 100)",
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


def run_eval(args: argparse.Namespace) -> int:
    env = environment(args)
    if args.resume and not args.out:
        raise ValueError("--resume needs --out: the folder of the run to continue")
    setup = api.EvalSetup.prepare(
        args.dataset,
        args.method,
        protocol=_protocol(args),
        overrides=checked_overrides(args),
        metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
        suite=args.suite,
        limit=args.limit,
        general=[t.strip() for t in (args.general or "").split(",") if t.strip()],
        general_limit=args.general_limit,
        env=env,
    )
    model, tok = load(args, env)
    report = setup.run(model, tok, out_dir=args.out, resume=args.resume, progress=not args.quiet)
    if args.json:
        print(json.dumps(report.summary, indent=1))
    else:
        print(format_summary(report))
        if report.out_dir:
            print(f"\nper-case results: {report.out_dir / 'results.jsonl'}")
    return 0


def _protocol(args: argparse.Namespace) -> str | Sequential:
    """``--protocol``, or the protocol ``--sequential N`` and its options write."""
    shorthand = (
        args.checkpoints
        or args.batch_size != 1
        or args.scoring != "final"
        or args.sample is not None
        or args.score_all_final
    )
    if args.sequential is None:
        if shorthand:
            raise ValueError(
                "--checkpoints, --batch-size, --scoring, --sample and --score-all-final go "
                "with --sequential N"
            )
        return args.protocol or "single"
    if args.protocol:
        raise ValueError("give --protocol or --sequential N, not both")
    try:
        points = [int(x) for x in args.checkpoints.split(",")] if args.checkpoints else []
    except ValueError:
        raise ValueError(
            f"--checkpoints takes edit counts like 1,10,20, got {args.checkpoints!r}"
        ) from None
    sample = CHECKPOINT_SAMPLE if args.sample is None else parse_sample(args.sample, "--sample")
    return Sequential.of(
        args.sequential, points, args.batch_size, args.scoring, sample, args.score_all_final
    )


def run_audit(args: argparse.Namespace) -> int:
    env = environment(args)
    request = EditRequest(args.prompt, args.subject, args.target, args.target_true)
    neighbors = []
    for item in args.neighbor:
        prompt, sep, answer = item.rpartition("=")
        if not sep or not prompt.strip() or not answer.strip():
            raise ValueError(f"--neighbor takes PROMPT=ANSWER, got {item!r}")
        neighbors.append((prompt.strip(), answer.strip()))
    overrides = checked_overrides(args)
    model, tok = load(args, env)
    report = audit(
        model,
        tok,
        request,
        args.method,
        paraphrases=args.paraphrase,
        neighbors=neighbors,
        overrides=overrides,
        env=env,
    )
    if args.json:
        print(json.dumps({"summary": report.summary, "rows": report.rows}, indent=1))
    else:
        print(format_report_card(report))
    return 0 if not report.summary["errors"] else 1
