"""``kedit train``: train the editor of a meta-learning method (see ``cli.py``)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from kedit import api
from kedit.cli_common import checked_overrides, environment, load
from kedit.methods import METHODS
from kedit.train import TRAINING_SETS


def add_train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    train = sub.add_parser(
        "train",
        parents=[common],
        help="train what MEND, KE, MALMEN or SERAC edit with",
        description="Trains the editor of a method that needs one (MEND, KE, MALMEN: a network; "
        "SERAC: its scope classifier and counterfactual model) for a model on a training split, "
        "validating on held-out examples, and saves it (safetensors + JSON) in kedit's cache "
        "keyed by the model's fingerprint, the method's config and the data, where kedit "
        "edit/eval/bench find it. Re-running the same command resumes a killed run; a larger "
        "--steps continues a finished one.",
    )
    train.add_argument(
        "--dataset",
        help=f"training split ({', '.join(TRAINING_SETS)}) or a file of your own "
        "(default: the method's train_data)",
    )
    train.add_argument("--steps", type=int, help="optimiser steps (default: max_steps)")
    train.add_argument("--val-every", type=int, help="steps between validations and checkpoints")
    train.add_argument(
        "--time-limit",
        type=duration_s,
        metavar="DURATION",
        help="stop this run after the step or validation that passes DURATION (90m, 1h, 1h30m, "
        "or seconds), validated and checkpointed: the same command continues it",
    )
    train.add_argument("--limit", type=int, help="read at most N training examples")
    train.add_argument("--out", help="editor folder (default: kedit's cache, found automatically)")


def duration_s(text: str) -> float:
    """Seconds in ``text``: ``3600``, ``90s``, ``45m``, ``1h`` or ``1h30m``."""
    match = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or match is None or not any(match.groups()):
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (write 3600, 90s, 45m, 1h or 1h30m)"
        )
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError(f"the duration must be positive, got {text!r}")
    return total


def run_train(args: argparse.Namespace) -> int:
    env = environment(args)
    if not METHODS[args.method].needs_training:
        raise ValueError(f"{args.method} trains nothing; kedit train is for {api.meta_methods()}")
    for name, value in (("--steps", args.steps), ("--val-every", args.val_every)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    overrides = checked_overrides(args)
    model, tok = load(args, env)
    result = api.train(
        model,
        tok,
        args.method,
        args.dataset,
        steps=args.steps,
        val_every=args.val_every,
        overrides=overrides,
        out=args.out,
        limit=args.limit,
        env=env,
        progress=not args.quiet,
        time_limit_s=args.time_limit,
    )
    best = ", ".join(f"{k} {v:.4g}" for k, v in result.best.items())
    resumed = f", resumed at step {result.resumed_from}" if result.resumed_from else ""
    ended = " (stopped early)" if result.stopped_early else ""
    ended += " (time limit reached; the same command continues)" if result.out_of_time else ""
    print(f"{args.method}: {result.steps} steps{ended}{resumed}, {result.wall_s:.0f} s")
    print(f"best validation at step {result.best_step}: {best}")
    print(f"editor: {result.folder} (curve.png beside it)")
    return 0
