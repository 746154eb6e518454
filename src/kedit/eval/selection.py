"""Choosing the cases and the measures of a run, before any model work."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kedit.data import load_dataset
from kedit.env import Environment
from kedit.eval.metric import SUITES, Metric, missing_probes, resolve_metrics
from kedit.eval.protocols import Protocol
from kedit.types import EditCase

log = logging.getLogger(__name__)


def select_cases(
    dataset: str | Sequence[EditCase], env: Environment, limit: int | None
) -> list[EditCase]:
    """The first ``limit`` cases of a dataset name, file or list of cases."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if isinstance(dataset, str):
        cases = load_dataset(dataset, env.data_dir, limit)
    else:
        cases = list(dataset)[: limit or None]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique within a dataset")
    if not cases:
        raise ValueError("the dataset holds no case that can be an edit")
    return cases


def choose_metrics(
    names: list[str] | None, suite: str, cases: list[EditCase], protocol: Protocol
) -> tuple[list[Metric], dict[str, str]]:
    """The metrics to compute, and those skipped with the reason (logged): no case has probes
    for them, or they read a case's edit steps one by one, which only the single protocol runs. A
    metric named explicitly that the dataset cannot feed is an error."""
    chosen = resolve_metrics(names, suite)
    skipped = missing_probes(chosen, cases)
    if names is not None and skipped:
        raise ValueError(
            "the dataset cannot feed "
            + "; ".join(f"{name} ({why})" for name, why in skipped.items())
            + "; pick metrics from its probes (kedit ls metrics) or another dataset"
        )
    if not protocol.runs_steps:
        for metric in chosen:
            if (metric.mid or metric.alone) and metric.name not in skipped:
                skipped[metric.name] = (
                    "it reads a case's edit steps one by one, which only the single protocol runs"
                )
    for name, why in skipped.items():
        log.info("skipping %s: %s", name, why)
    kept = [m for m in chosen if m.name not in skipped]
    if not kept:
        raise ValueError(nothing_to_measure(suite, cases))
    return kept, skipped


def nothing_to_measure(suite: str, cases: list[EditCase]) -> str:
    """Why a run would measure nothing, and the suites that measure something on ``cases``."""
    kinds = sorted({p.kind for case in cases for p in case.probes})
    others = [
        s
        for s in SUITES
        if s != suite
        and len(missing_probes(resolve_metrics(None, s), cases)) < len(resolve_metrics(None, s))
    ]
    hint = f"; use --suite {' or '.join(others)}" if others else "; use a dataset with such probes"
    return (
        f"no measure of the {suite!r} suite can be computed on these cases (their probes: "
        f"{', '.join(kinds) or 'none'}){hint}"
    )
