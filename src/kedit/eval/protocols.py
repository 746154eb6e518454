"""The editing protocols, each written once: how edits are applied and when cases are scored.

* :class:`Single` (``single``): each case edited on the unedited model (in its steps, when it
  has several), scored, and the edit undone;
* :class:`Batch` (``batch:B``): the cases in groups of B, each group in one update (batch
  methods only), scored, undone;
* :class:`Sequential` (``sequential:K1,K2,...[;batch=B][;scoring=immediate][;sample=S]
  [;final=all]``): the first K cases edited one after another (B per update) without undoing.
  With ``final`` scoring (the default), after K1, K2, ... edits the cases edited so far are
  scored and general ability is measured: the decay curves. A checkpoint past S edits (500 by
  default) scores a seeded sample of S of the cases edited so far, so that checkpoints of a
  10,000-edit run stay cheap; ``final=all`` scores every case at the last one. With
  ``immediate`` scoring (one K), each update's cases are scored right after it (EasyEdit's
  sequential mode since 2026-06), which measures the edit, not its survival;
* :class:`Sweep` (``sweep:layer=0-3,8``): ``single`` once per value of a config field of the
  method, set on top of its config (ranges inclusive); the rows' checkpoint is the value;
* :class:`GeneralBaseline` (``general``): the unedited model's general ability, checkpoint 0 of
  every sequential curve.

``kedit eval``, ``kedit bench`` and the Python API take the same protocol objects, or their text
form (:func:`kedit.eval.protocol_text.parse_protocol`). A protocol plans its work as *units*
(what a sink commits at once) and *shards* (what one worker runs at once: cases whose unedited
scores share one batched pass, or a whole sequence). Shards are fixed by position, never by
what is finished, so a resumed or distributed run scores exactly the batches an uninterrupted
one does; a resumed sequence replays its edits and scores only its missing units.
:meth:`kedit.eval.engine.Engine.run` runs a protocol's shard, yielding its units
(:mod:`kedit.eval.rows`) as they finish.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from kedit.eval.number_lists import format_ranges
from kedit.eval.rows import batch_unit, case_unit, checkpoint_unit, edit_unit, sweep_unit
from kedit.methods.base import EditMethod, batch_error

#: cases whose unedited scores share one batched pass
PRE_BATCH = 16
#: cases a sequential checkpoint scores at most, by default (a seeded sample past it)
CHECKPOINT_SAMPLE = 500

Scoring = Literal["final", "immediate"]


@dataclass(frozen=True)
class Shard:
    """What one worker runs at once: the cases it covers (in order) and its units to do."""

    case_ids: tuple[str, ...]
    units: frozenset[str]


class Protocol(ABC):
    """How edits are applied and when cases are scored (see module docstring)."""

    #: the text form's first word
    kind: ClassVar[str]
    #: cases are edited in their steps and scored after the first (ConflictEdit, RoundEdit)
    runs_steps: ClassVar[bool] = False

    @abstractmethod
    def describe(self) -> str:
        """The protocol in one sentence, for summaries."""

    def cases_needed(self) -> int:
        """How many of the selected cases it edits; 0: all of them."""
        return 0

    def update_size(self) -> int:
        """Cases applied by one update."""
        return 1

    def why_not(self, method: type[EditMethod]) -> str | None:
        """Why ``method`` cannot run under this protocol, or None."""
        return None

    @abstractmethod
    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        """Every shard of the work: (its case ids, its units)."""

    def units(self, case_ids: Sequence[str]) -> set[str]:
        """Every unit: what must be stored for the work to be done."""
        return {u for _, units in self.pieces(case_ids) for u in units}

    def split_pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        """The work in pieces that can run side by side at some extra cost (a sequence's
        checkpoints, each replaying the edits before it); by default :meth:`pieces`."""
        return self.pieces(case_ids)

    def shards(
        self, case_ids: Sequence[str], finished: set[str], split: bool = False
    ) -> list[Shard]:
        """The shards that still have units to do (of :meth:`split_pieces` with ``split``)."""
        out = []
        for ids, units in (self.split_pieces if split else self.pieces)(case_ids):
            todo = frozenset(units) - finished
            if todo:
                out.append(Shard(ids, todo))
        return out


def _chunked(ids: Sequence[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(ids[i : i + size]) for i in range(0, len(ids), size)]


@dataclass(frozen=True)
class Single(Protocol):
    """Each case edited on the unedited model and scored right after."""

    kind: ClassVar[str] = "single"
    runs_steps: ClassVar[bool] = True

    def __str__(self) -> str:
        return self.kind

    def describe(self) -> str:
        return "single: each case edited on the unedited model and scored right after"

    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        return [(chunk, [case_unit(c) for c in chunk]) for chunk in _chunked(case_ids, PRE_BATCH)]


@dataclass(frozen=True)
class Batch(Protocol):
    """The cases in groups of ``size``, each group in one update, scored, undone."""

    size: int
    kind: ClassVar[str] = "batch"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.size}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.size}"

    def describe(self) -> str:
        return (
            f"batch:{self.size}: the cases in groups of {self.size}, each group edited in one "
            "update on the unedited model and scored right after"
        )

    def update_size(self) -> int:
        return self.size

    def why_not(self, method: type[EditMethod]) -> str | None:
        if method.supports_batch:
            return None
        return f"{method.name} edits one request per update; {self} needs a batch method"

    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        per_shard = self.size * max(1, PRE_BATCH // self.size)
        return [
            (chunk, [batch_unit(batch[0]) for batch in _chunked(chunk, self.size)])
            for chunk in _chunked(case_ids, per_shard)
        ]


@dataclass(frozen=True)
class Sequential(Protocol):
    """Edits that accumulate; the cases edited so far scored at ``checkpoints`` (the last is
    the number of edits), or each update's cases right after it (``scoring="immediate"``).

    ``sample``: a checkpoint scores at most this many of the cases edited so far, a seeded
    sample (None: all of them); ``score_all_final``: the last checkpoint scores every case."""

    checkpoints: tuple[int, ...]
    batch_size: int = 1
    scoring: Scoring = "final"
    sample: int | None = CHECKPOINT_SAMPLE
    score_all_final: bool = False
    kind: ClassVar[str] = "sequential"

    @classmethod
    def of(
        cls,
        n_edits: int,
        checkpoints: Sequence[int] = (),
        batch_size: int = 1,
        scoring: Scoring = "final",
        sample: int | None = CHECKPOINT_SAMPLE,
        score_all_final: bool = False,
    ) -> Sequential:
        """``n_edits`` edits, scored at ``checkpoints`` and after the last edit."""
        if n_edits < 1:
            raise ValueError(f"the number of sequential edits must be at least 1, got {n_edits}")
        if scoring == "immediate" and checkpoints:
            raise ValueError(
                "checkpoints go with final scoring; immediate scoring scores each case once, "
                "right after its own edit"
            )
        wrong = [k for k in checkpoints if not 0 < k <= n_edits]
        if wrong:
            raise ValueError(f"checkpoints must lie between 1 and {n_edits} edits, got {wrong}")
        points = tuple(sorted({*checkpoints, n_edits}))
        return cls(points, batch_size, scoring, sample, score_all_final)

    def __post_init__(self) -> None:
        points = self.checkpoints
        if not points or list(points) != sorted(set(points)) or points[0] < 1:
            raise ValueError(f"checkpoints must be increasing edit counts >= 1, got {points}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.scoring not in ("final", "immediate"):
            raise ValueError(f"scoring is 'final' or 'immediate', got {self.scoring!r}")
        if self.scoring == "immediate" and len(points) > 1:
            raise ValueError("immediate scoring takes the number of edits only, no checkpoints")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"a checkpoint sample must hold at least 1 case, got {self.sample}")
        if self.scoring == "immediate" and self.score_all_final:
            raise ValueError("final=all goes with final scoring")
        uneven = [k for k in points[:-1] if k % self.batch_size]
        if uneven:
            raise ValueError(
                f"checkpoints {uneven} fall inside a batch of {self.batch_size}: "
                "use multiples of the batch size"
            )

    @property
    def n_edits(self) -> int:
        return self.checkpoints[-1]

    def __str__(self) -> str:
        text = f"{self.kind}:{','.join(map(str, self.checkpoints))}"
        if self.batch_size > 1:
            text += f";batch={self.batch_size}"
        if self.scoring != "final":
            text += f";scoring={self.scoring}"
        if self.sample != CHECKPOINT_SAMPLE:
            text += f";sample={'all' if self.sample is None else self.sample}"
        if self.score_all_final:
            text += ";final=all"
        return text

    def describe(self) -> str:
        how = f"{self.n_edits} edits applied one after another" + (
            f" in batches of {self.batch_size}" if self.batch_size > 1 else ""
        )
        if self.scoring == "immediate":
            return f"sequential-immediate: {how}; each case scored right after its own edit"
        points = ", ".join(map(str, self.checkpoints))
        scored = "the cases edited so far"
        if self.sample is not None and self.checkpoints[-1] > self.sample:
            scored += f" (a seeded sample of {self.sample} where there are more"
            scored += ", every case at the last)" if self.score_all_final else ")"
        return f"sequential-final: {how}; {scored} scored at checkpoints {points}"

    def cases_needed(self) -> int:
        return self.n_edits

    def update_size(self) -> int:
        return self.batch_size

    def why_not(self, method: type[EditMethod]) -> str | None:
        if self.batch_size > 1 and not method.supports_batch:
            return batch_error(method.name)
        return None

    def scoring_points(self) -> dict[int, str]:
        """Edit count -> the unit scored there."""
        if self.scoring == "final":
            return {k: checkpoint_unit(k) for k in self.checkpoints}
        ends = [*range(self.batch_size, self.n_edits, self.batch_size), self.n_edits]
        return {k: edit_unit(k) for k in ends}

    def scored_positions(self, edited: int, seed: int) -> tuple[int, ...]:
        """Positions (in edit order) of the cases scored after ``edited`` edits: the update's
        (immediate), or those edited so far, or a sample of ``sample`` of them drawn from one
        seeded order of all ``n_edits`` cases, so each checkpoint's sample is uniform over its
        cases and the same on every run and resume."""
        if self.scoring == "immediate":
            return tuple(range((edited - 1) // self.batch_size * self.batch_size, edited))
        everything = self.score_all_final and edited == self.n_edits
        if self.sample is None or edited <= self.sample or everything:
            return tuple(range(edited))
        order = random.Random(f"{seed}:{self.n_edits}").sample(range(self.n_edits), self.n_edits)
        return tuple(sorted([i for i in order if i < edited][: self.sample]))

    def measures_general(self, edits: int) -> bool:
        """General ability is measured at every checkpoint, or after the last edit."""
        return self.scoring == "final" or edits == self.n_edits

    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        return [(tuple(case_ids[: self.n_edits]), list(self.scoring_points().values()))]

    def split_pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        """One piece per checkpoint (final scoring), each replaying the edits before it: the
        checkpoints' evaluations run side by side, for 1 + 10 + 20 edits instead of 20 on
        ``sequential:1,10,20``. Every piece holds the whole sequence's cases, so its unedited
        pass is the one an uninterrupted run makes. Immediate scoring stays one piece."""
        if self.scoring != "final":
            return self.pieces(case_ids)
        ids = tuple(case_ids[: self.n_edits])
        return [(ids, [unit]) for unit in self.scoring_points().values()]


@dataclass(frozen=True)
class Sweep(Protocol):
    """``single`` once per value of the method's config field ``key`` (set on top of the
    method's config); each row's checkpoint is the value."""

    key: str
    values: tuple[int, ...]
    kind: ClassVar[str] = "sweep"
    runs_steps: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.key.isidentifier():
            raise ValueError(f"a sweep sets a config field, e.g. sweep:layer=0-3; got {self.key!r}")
        values = self.values
        if not values or list(values) != sorted(set(values)) or values[0] < 0:
            raise ValueError(f"sweep values must be increasing whole numbers >= 0, got {values}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}={format_ranges(self.values)}"

    def describe(self) -> str:
        return f"{self}: single (edit, score, undo) once per value of {self.key}"

    def why_not(self, method: type[EditMethod]) -> str | None:
        if self.key not in method.config_cls.field_names():
            return f"{method.name} has no config field {self.key!r} for {self} to set"
        try:
            for value in self.values:
                method.config_cls.checked({self.key: value})
        except ValueError as err:
            return f"{self}: {err}"
        return None

    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        # a shard covers every value of its cases: their unedited scores are computed once
        chunks = _chunked(case_ids, PRE_BATCH)
        return [(c, [sweep_unit(v, i) for v in self.values for i in c]) for c in chunks]


@dataclass(frozen=True)
class GeneralBaseline(Protocol):
    """The unedited model's general ability: checkpoint 0 of the sequential curves."""

    kind: ClassVar[str] = "general"

    def __str__(self) -> str:
        return self.kind

    def describe(self) -> str:
        return "general: general ability of the unedited model"

    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        return [((), [checkpoint_unit(0)])]
