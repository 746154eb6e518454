"""General-ability tasks: the protocol a task follows, its registry and ``general_ability``.

The tasks themselves are registered by :mod:`kedit.eval.general.perplexity` and
:mod:`kedit.eval.general.downstream`, which :data:`GENERAL_TASKS` imports on first read.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from kedit.env import default_data_dir
from kedit.eval.formulas.uncertainty import (
    Estimate,
    Statistic,
    draws,
    estimate,
    mean_of_draws,
    seed_for,
    value_of,
)
from kedit.model.lm import LanguageModel
from kedit.registry import Registry

logger = logging.getLogger(__name__)

Record = dict[str, Any]
Result = dict[str, Any]

#: AlphaEdit's ``FEW_SHOT_TEST_SPLIT``: the first records of each file are demonstrations only
POOL = 10
DATA_HINT = "pass --data-dir DIR or set KEDIT_DATA_DIR to the folder that holds {}/"


def data_file(data_dir: str | Path | None, relpath: str) -> Path:
    """The file ``<data_dir>/<relpath>`` (``data_dir`` defaults to ``KEDIT_DATA_DIR``), with an
    error that says how to point at it."""
    folder = relpath.split("/")[0]
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if root is None:
        raise FileNotFoundError(f"no data directory for {relpath}; {DATA_HINT.format(folder)}")
    path = root / relpath
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}; {DATA_HINT.format(folder)}")
    return path


def select_indices(n: int, limit: int | None, seed: int | None) -> list[int]:
    """Which of ``n`` records to test, in file order: all of them when ``limit`` is None or at
    least ``n``; else the first ``limit`` (``seed=None``, AlphaEdit's rule) or a sample of
    ``limit`` drawn with ``random.Random(seed)``."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    if seed is None:
        return list(range(limit))
    return sorted(random.Random(seed).sample(range(n), limit))


def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive pieces of ``size``."""
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {size}")
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


class GeneralTask(Protocol):
    """A registered measure of general ability.

    Its result holds the headline ``score`` and the per-example ``samples`` it was computed
    from, so that the score's interval and its change against another model on the same
    examples can be bootstrapped (:func:`task_estimate`, :func:`change_estimate`)."""

    name: str
    description: str
    metric: str  # the headline measure
    #: what the bootstrap resamples: ``examples`` or ``texts``
    unit: str

    def statistic(self, samples: dict[str, list]) -> tuple[int, Statistic]:
        """(number of examples, the headline score of a resample of them)."""
        ...

    def same_examples(self, a: dict[str, list], b: dict[str, list]) -> bool:
        """Whether two results' samples are of the same examples, in the same order."""
        ...

    def chance(self, samples: dict[str, list]) -> float | None:
        """The score a constant answer gets on these examples (None: not a choice task)."""
        ...

    def evaluate(
        self,
        lm: LanguageModel,
        data_dir: str | Path | None,
        *,
        limit: int | None,
        seed: int | None,
        batch_size: int,
        shots: int,
    ) -> Result: ...


#: every general-ability task; the modules that register them are imported on first read
GENERAL_TASKS: Registry[GeneralTask] = Registry(
    "general task",
    providers=("kedit.eval.general.perplexity", "kedit.eval.general.downstream"),
)


def general_ability(
    lm: LanguageModel,
    tasks: Sequence[str],
    data_dir: str | Path | None = None,
    *,
    limit: int | None = 100,
    seed: int | None = None,
    batch_size: int = 32,
    shots: int = 0,
) -> dict[str, Result]:
    """Measure ``lm`` on each named task of :data:`GENERAL_TASKS`.

    Args:
        lm: any :class:`LanguageModel` (plain, weight-edited, or an in-context wrapper).
        tasks: task names, e.g. ``["wikitext", "sst2", "mrpc", "cola", "rte", "nli", "mmlu"]``.
        data_dir: the folder holding ``wikitext-2/`` and ``downstream/`` (default
            ``KEDIT_DATA_DIR``).
        limit: examples per task (paragraphs for perplexity); None for all.
        seed: seeds the sample of test records; None takes the first ``limit`` (AlphaEdit).
        batch_size: texts or examples per ``score_targets`` call.
        shots: demonstrations before each downstream prompt (AlphaEdit uses 0; at most 10).

    Returns:
        Per task: ``score`` and ``metric`` (the headline), the other scores, ``n`` and the
        ``protocol`` string.
    """
    specs = [GENERAL_TASKS[name] for name in tasks]  # unknown names fail before any work
    results: dict[str, Result] = {}
    for spec in specs:
        results[spec.name] = spec.evaluate(
            lm, data_dir, limit=limit, seed=seed, batch_size=batch_size, shots=shots
        )
        logger.info(
            "%s: %s %.4f (n=%d)",
            spec.name,
            results[spec.name]["metric"],
            results[spec.name]["score"],
            results[spec.name]["n"],
        )
    return results


def task_estimate(task: str, result: Result) -> Estimate | None:
    """A task result's headline score with its bootstrap interval over its examples (None for a
    result stored without samples)."""
    if "samples" not in result:
        return None
    spec = GENERAL_TASKS[task]
    n, statistic = spec.statistic(result["samples"])
    return estimate(statistic, n, spec.unit, seed=seed_for(task))


def change_statistic(task: str, base: Result, edited: Result) -> tuple[int, Statistic] | None:
    """The edited model's change from the unedited one on the same examples, as a statistic of
    one resample of them: the difference where higher is better, the relative change where
    lower is (perplexity). None without samples, or when the examples differ."""
    spec = GENERAL_TASKS[task]
    if "samples" not in base or "samples" not in edited:
        return None
    if not spec.same_examples(base["samples"], edited["samples"]):
        return None
    n, before = spec.statistic(base["samples"])
    _, after = spec.statistic(edited["samples"])
    if edited.get("higher_is_better", True):
        return n, lambda rows: after(rows) - before(rows)
    return n, lambda rows: after(rows) / before(rows) - 1


def change_estimate(task: str, base: Result, edited: Result) -> Estimate | None:
    """:func:`change_statistic` with its paired bootstrap interval."""
    found = change_statistic(task, base, edited)
    if found is None:
        return None
    n, statistic = found
    return estimate(statistic, n, GENERAL_TASKS[task].unit, seed=seed_for(task))


def mean_change_estimate(changes: dict[str, tuple[int, Statistic]]) -> Estimate | None:
    """The mean of several tasks' changes (task -> :func:`change_statistic`), each task
    resampled on its own examples (its own seed); n is the smallest task's."""
    if not changes:
        return None
    parts = [
        (value_of(statistic, n), draws(statistic, n, seed=seed_for(task)))
        for task, (n, statistic) in changes.items()
    ]
    n = min(n for n, _ in changes.values())
    units = "/".join(sorted({GENERAL_TASKS[t].unit for t in changes}))
    return mean_of_draws(parts, n, units)
