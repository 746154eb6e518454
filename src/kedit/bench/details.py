"""What a bench's case rows keep in their details beyond the numbers: general-ability results,
the causal traces of a layer sweep, and how a traced method's answers came about."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from kedit.eval.rows import GENERAL_CASE


def general_results(cases: Iterable[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """(job, checkpoint) -> the general-ability task results (with their per-example samples)
    stored in the general pseudo-case's details."""
    out = {}
    for row in cases:
        details = row.get("details") or {}
        if row["case_id"] == GENERAL_CASE and details.get("general"):
            out[(row["job_id"], int(row["checkpoint"]))] = details["general"]
    return out


def case_traces(cases: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """job -> case -> the case's causal trace on the unedited model, which a layer sweep keeps
    in its case rows' details (the same at every value)."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in cases:
        trace = (row.get("details") or {}).get("trace")
        if trace is not None:
            out[row["job_id"]].setdefault(row["case_id"], trace)
    return dict(out)


def answer_traces(cases: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """job -> how its edited model answered each prompt it was asked, for methods that answer
    through steps of their own (MeLLo, DeepEdit, SERAC): the case rows' ``answer_traces``, each
    entry with its ``case_id`` and ``checkpoint`` added, in store order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in cases:
        for entry in (row.get("details") or {}).get("answer_traces", []):
            where = {"case_id": row["case_id"], "checkpoint": int(row["checkpoint"])}
            out[row["job_id"]].append({**where, **entry})
    return dict(out)
