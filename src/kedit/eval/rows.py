"""The rows every editing protocol yields, and every sink stores.

A protocol (:mod:`kedit.eval.protocols`) yields :class:`Unit` s: the pieces a sink commits at
once (a case, a batch, a sequential checkpoint). A unit holds

* :class:`CaseRow` s, one per case and checkpoint: what editing and scoring the case cost, its
  error if it failed, and details (its requests, the edit's own figures, dialogue turns, a
  sampled text);
* :class:`MeasureRow` s, one per case, measure and checkpoint: the value before (``pre``) and
  after (``post``) the edits, with the measure's group, protocol and direction, and its pooling
  ``weight`` (the number of probes for pooled measures).

What is measured of the model as a whole at a checkpoint (general ability, the memory a session
holds to undo its edits) belongs to the pseudo-case :data:`GENERAL_CASE`: its measure rows are
the general-ability tasks, its case row holds their full results and the time they took.

``kedit eval`` writes units as JSON lines (:mod:`kedit.eval.results`), ``kedit bench`` into
SQLite (:mod:`kedit.bench.store`): two sinks of the same rows.

``checkpoint`` is the number of cases edited into the model when it was scored: 1 for single
edits, the batch's size for a batch, K at a sequential checkpoint; under a sweep, the swept
value the case was edited with (its layer, for ``sweep:layer=...``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: the pseudo-case of what is measured of the model as a whole at a checkpoint
GENERAL_CASE = "general"


@dataclass
class MeasureRow:
    """One measure of one case at one checkpoint."""

    case_id: str
    checkpoint: int
    measure: str
    group: str
    protocol: str
    higher_is_better: bool
    pre: float | None
    post: float | None
    weight: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureRow:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class CaseRow:
    """One case at one checkpoint: what it cost, its error, its details."""

    case_id: str
    checkpoint: int
    #: this case's share of the update(s) that applied it: the update's time divided by the
    #: cases it applied
    edit_time_s: float | None = None
    #: this case's share of the time to score the cases after editing
    eval_time_s: float | None = None
    #: the memory the update took above what was in use before it (per update)
    edit_memory_bytes: int | None = None
    #: all memory in use at the update's peak, the model included
    peak_memory_bytes: int | None = None
    #: how memory was measured (``cuda allocated``, ``cpu rss``)
    memory_kind: str | None = None
    error: str | None = None
    details: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseRow:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Unit:
    """What a sink commits at once: a case, a batch, a sequential checkpoint."""

    key: str
    cases: list[CaseRow] = field(default_factory=list)
    measures: list[MeasureRow] = field(default_factory=list)


@dataclass
class Progress:
    """``steps`` more steps are done: cases edited and scored, or edits applied (a replayed
    sequence counts its edits again)."""

    steps: int = 1


Event = Unit | Progress


def case_unit(case_id: str) -> str:
    return case_id


def sweep_unit(value: int, case_id: str) -> str:
    """The unit of one case edited with a sweep's value (:class:`~kedit.eval.protocols.Sweep`)."""
    return f"value={value}@{case_id}"


def batch_unit(first_case_id: str) -> str:
    return f"batch@{first_case_id}"


def checkpoint_unit(edits: int) -> str:
    return f"checkpoint@{edits}"


def edit_unit(edits: int) -> str:
    """The unit of the cases scored right after the update that brought the edits to ``edits``
    (sequential, immediate scoring)."""
    return f"edit@{edits}"
