"""What the model commands of the command line share: their common options, the environment
they describe, the checked ``--set`` overrides, and loading the model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kedit import api
from kedit.config import parse_override
from kedit.env import Environment
from kedit.methods import METHODS
from kedit.model.arch import ARCHS, ArchSpec
from kedit.model.loading import DEFAULT_MODEL


def common_options() -> argparse.ArgumentParser:
    """The options every model command takes (a parent parser)."""
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
    common.add_argument(
        "--editor",
        metavar="PATH",
        help="a trained editor (MEND, KE, MALMEN, SERAC) to edit with: kedit train's folder "
        "(default: the cache's, for this model and config)",
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
    return common


def environment(args: argparse.Namespace) -> Environment:
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


def checked_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set`` overrides, checked against the method's config before any model work."""
    overrides = dict(parse_override(item) for item in args.set)
    if getattr(args, "editor", None):
        if "editor" not in METHODS[args.method].config_cls.field_names():
            raise ValueError(f"--editor names a trained editor; {args.method} uses none")
        overrides["editor"] = args.editor
    METHODS[args.method].config_cls.checked(overrides)
    return overrides


def load(args: argparse.Namespace, env: Environment) -> tuple[Any, Any]:
    METHODS[args.method]  # fail on a typo before loading a model
    if args.arch:
        ARCHS.register(ArchSpec.from_yaml(args.arch), replace=True)
    return api.load_model(args.model, device=args.device, dtype=args.dtype, cache_dir=env.cache_dir)
