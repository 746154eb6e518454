"""The editing protocols, each written once: how edits are applied and when cases are scored.

* :class:`Single` (``single``): each case edited on the unedited model (in its steps, when it
  has several), scored, and the edit undone;
* :class:`Batch` (``batch:B``): the cases in groups of B, each group in one update (batch
  methods only), scored, undone;
* :class:`Sequential` (``sequential:K1,K2,...[;batch=B][;scoring=immediate]``): the first K
  cases edited one after another (B per update) without undoing. With ``final`` scoring (the
  default), after K1, K2, ... edits the cases edited so far are scored and general ability is
  measured: the decay curves. With ``immediate`` scoring (one K), each update's cases are scored
  right after it (EasyEdit's sequential mode since 2026-06), which measures the edit, not its
  survival;
* :class:`Sweep` (``sweep:layer=0-3,8``): ``single`` once per value of a config field of the
  method, set on top of its config (ranges inclusive); the rows' checkpoint is the value;
* :class:`GeneralBaseline` (``general``): the unedited model's general ability, checkpoint 0 of
  every sequential curve.

``kedit eval``, ``kedit bench`` and the Python API take the same protocol objects, or their text
form (:func:`parse_protocol`). A protocol plans its work as *units* (what a sink commits at once)
and *shards* (what one worker runs at once: cases whose unedited scores share one batched pass,
or a whole sequence). Shards are fixed by position, never by what is finished, so a resumed or
distributed run scores exactly the batches an uninterrupted one does; a resumed sequence replays
its edits and scores only its missing units. :meth:`kedit.eval.engine.Engine.run` runs a
protocol's shard, yielding its units (:mod:`kedit.eval.rows`) as they finish.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from kedit.eval.number_lists import format_ranges, parse_counts, parse_ranges
from kedit.eval.rows import batch_unit, case_unit, checkpoint_unit, edit_unit, sweep_unit
from kedit.methods.base import EditMethod, batch_error
from kedit.registry import Registry

#: cases whose unedited scores share one batched pass
PRE_BATCH = 16

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

    def shards(self, case_ids: Sequence[str], finished: set[str]) -> list[Shard]:
        """The shards that still have units to do."""
        out = []
        for ids, units in self.pieces(case_ids):
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
    the number of edits), or each update's cases right after it (``scoring="immediate"``)."""

    checkpoints: tuple[int, ...]
    batch_size: int = 1
    scoring: Scoring = "final"
    kind: ClassVar[str] = "sequential"

    @classmethod
    def of(
        cls,
        n_edits: int,
        checkpoints: Sequence[int] = (),
        batch_size: int = 1,
        scoring: Scoring = "final",
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
        return cls(tuple(sorted({*checkpoints, n_edits})), batch_size, scoring)

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
        return text

    def describe(self) -> str:
        how = f"{self.n_edits} edits applied one after another" + (
            f" in batches of {self.batch_size}" if self.batch_size > 1 else ""
        )
        if self.scoring == "immediate":
            return f"sequential-immediate: {how}; each case scored right after its own edit"
        points = ", ".join(map(str, self.checkpoints))
        return (
            f"sequential-final: {how}; every case scored after the last edit, and the cases "
            f"edited so far at checkpoints {points}"
        )

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

    def measures_general(self, edits: int) -> bool:
        """General ability is measured at every checkpoint, or after the last edit."""
        return self.scoring == "final" or edits == self.n_edits

    def pieces(self, case_ids: Sequence[str]) -> list[tuple[tuple[str, ...], list[str]]]:
        return [(tuple(case_ids[: self.n_edits]), list(self.scoring_points().values()))]


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


# -- the text form -----------------------------------------------------------------------------


def _parse_single(rest: str) -> Protocol:
    if rest:
        raise ValueError("the single protocol takes no size")
    return Single()


def _parse_batch(rest: str) -> Protocol:
    sizes = parse_counts(rest, "batch:B")
    if len(sizes) != 1:
        raise ValueError("write batch:B with one batch size")
    return Batch(sizes[0])


def _parse_sequential(rest: str) -> Protocol:
    points, *options = rest.split(";")
    numbers = parse_counts(points, "sequential:K1,K2,...")
    if not numbers:
        raise ValueError("write sequential:K1,K2,... (edit counts)")
    settings: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key.strip() not in ("batch", "scoring"):
            raise ValueError(f"unknown sequential option {option!r}: use batch=B or scoring=...")
        settings[key.strip()] = value.strip()
    batch = parse_counts(settings.get("batch", "1"), "batch=B")
    if len(batch) != 1:
        raise ValueError("write batch=B with one batch size")
    return Sequential(tuple(sorted(set(numbers))), batch[0], settings.get("scoring", "final"))


def _parse_sweep(rest: str) -> Protocol:
    key, sep, values = rest.partition("=")
    if not sep or not key.strip():
        raise ValueError("write sweep:KEY=VALUES, e.g. sweep:layer=0-29 or sweep:layer=0,5,10")
    return Sweep(key.strip(), parse_ranges(values))


#: the protocols a user names, by the first word of their text form
PROTOCOLS: Registry = Registry("protocol")
PROTOCOLS.register("single", _parse_single, "each case edited on the unedited model")
PROTOCOLS.register("batch", _parse_batch, "batch:B: B cases per update")
PROTOCOLS.register("sequential", _parse_sequential, "sequential:K1,K2[;batch=B][;scoring=...]")
PROTOCOLS.register("sweep", _parse_sweep, "sweep:KEY=V1-V2,V3: single once per value of KEY")


#: the order of protocols in tables
TABLE_ORDER = ("single", "batch", "sequential", "sweep")


def parse_protocol(text: str | Protocol) -> Protocol:
    """A protocol from its text form (``single``, ``batch:10``, ``sequential:1,10,20``,
    ``sequential:100,1000;batch=100``, ``sequential:20;scoring=immediate``, ``sweep:layer=0-5``)."""
    if isinstance(text, Protocol):
        return text
    kind, _, rest = text.strip().partition(":")
    if kind not in PROTOCOLS:
        raise ValueError(
            f"unknown protocol {text!r}: use single, batch:B, sequential:K1,K2,... or sweep:KEY=V"
        )
    try:
        return PROTOCOLS[kind](rest.strip())
    except ValueError as err:
        raise ValueError(f"protocol {text!r}: {err}") from None


def parse_protocols(text: str) -> list[Protocol]:
    """``single,batch:10,sequential:1,10,20`` -> protocols (numbers after a ``kind:`` belong to
    it until the next kind)."""
    parts: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part[0].isdigit() and parts:
            parts[-1] += "," + part
        else:
            parts.append(part)
    return [parse_protocol(p) for p in parts]


def order_key(protocol: Protocol | str) -> tuple[int, tuple[int, ...], str]:
    """Single first, then batch by size, sequential by checkpoints, sweeps by their values: the
    order of tables."""
    try:
        parsed = parse_protocol(protocol)
    except ValueError:
        return (len(TABLE_ORDER), (), str(protocol))
    sizes = {
        Batch: lambda p: (p.size,),
        Sequential: lambda p: p.checkpoints,
        Sweep: lambda p: p.values,
    }
    rank = TABLE_ORDER.index(parsed.kind)
    return (rank, sizes.get(type(parsed), lambda p: ())(parsed), str(parsed))
