"""``kedit eval``'s results folder: ``results.jsonl``, ``run.json`` and ``summary.json``.

``results.jsonl`` holds one line per case row (:class:`~kedit.eval.rows.CaseRow`: a case at a
checkpoint, or the ``general`` pseudo-case), with its measure rows under ``metrics``
(``{"efficacy_score": {"pre": 0.0, "post": 1.0}}``; ``n`` for a pooled measure's weight; group,
protocol and direction inline for measures that are not registered metrics, the general-ability
tasks). Each line names its ``unit`` and how many lines the unit has (``unit_lines``): a unit's
lines are written with one write and one fsync, so a killed run keeps every finished unit, and a
torn last unit is dropped when the run resumes (``resume=True``), which then does only the
units that are missing. ``run.json`` holds the resolved configuration, package versions and model
fingerprint, and a resumed run must match it.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from kedit.env import private_tmp
from kedit.eval.metric import METRICS
from kedit.eval.rows import CaseRow, MeasureRow, Unit

RESULTS, RUN, SUMMARY = "results.jsonl", "run.json", "summary.json"
#: the layout of results.jsonl; a folder written with another cannot be resumed
RESULTS_SCHEMA = 2
_META = ("group", "protocol", "higher_is_better")


def unit_lines(unit: Unit) -> list[dict[str, Any]]:
    """The JSON lines of a unit: one per case row, its measure rows nested."""
    measures: dict[tuple[str, int], list[MeasureRow]] = defaultdict(list)
    for row in unit.measures:
        measures[(row.case_id, row.checkpoint)].append(row)
    lines = []
    for case in unit.cases:
        line: dict[str, Any] = {"unit": unit.key, "unit_lines": len(unit.cases)}
        line.update({k: v for k, v in case.to_dict().items() if v is not None})
        line["metrics"] = {
            m.measure: _entry(m) for m in measures.get((case.case_id, case.checkpoint), [])
        }
        lines.append(line)
    return lines


def _entry(row: MeasureRow) -> dict[str, Any]:
    entry: dict[str, Any] = {} if row.pre is None else {"pre": row.pre}
    entry["post"] = row.post
    if row.weight != 1:
        entry["n"] = row.weight
    if row.measure not in METRICS:
        entry.update({k: getattr(row, k) for k in _META})
    return entry


def rows_of(line: dict[str, Any]) -> tuple[CaseRow, list[MeasureRow]]:
    """The case row and measure rows a line was written from."""
    case = CaseRow.from_dict(line)
    measures = []
    for name, entry in line.get("metrics", {}).items():
        meta = entry if "group" in entry else {k: getattr(METRICS[name], k) for k in _META}
        measures.append(
            MeasureRow(
                case.case_id,
                case.checkpoint,
                name,
                **{k: meta[k] for k in _META},
                pre=entry.get("pre"),
                post=entry.get("post"),
                weight=entry.get("n", 1),
            )
        )
    return case, measures


class ResultsFolder:
    """``results.jsonl`` + ``run.json`` + ``summary.json`` in one folder."""

    RESUME_KEYS = (
        "results_schema",
        "method",
        "config",
        "dataset",
        "model_fingerprint",
        "stats_corpus",
        "seed",
        "protocol",
        "general",
        "metrics",
    )

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.results = self.root / RESULTS

    def open(self, run: dict[str, Any], resume: bool) -> dict[str, list[dict[str, Any]]]:
        """Start the folder (or check it holds this run, to resume); the lines of its finished
        units, by unit."""
        run = {**run, "results_schema": RESULTS_SCHEMA}
        self.root.mkdir(parents=True, exist_ok=True)
        run_file = self.root / RUN
        has_results = self.results.is_file() and self.results.stat().st_size > 0
        if has_results and not resume:
            raise FileExistsError(
                f"{self.results} already holds results; pass --resume to continue that run or "
                "choose another --out folder"
            )
        if resume and run_file.is_file():
            previous = json.loads(run_file.read_text())
            diff = [k for k in self.RESUME_KEYS if previous.get(k) != run.get(k)]
            if diff:
                raise ValueError(
                    f"cannot resume {self.root}: the run differs in {', '.join(diff)}"
                    "; start a new --out folder"
                )
        _write_json(run_file, run)
        return self._finished() if resume else {}

    def _finished(self) -> dict[str, list[dict[str, Any]]]:
        """The complete units in results.jsonl; a torn last unit is cut off the file."""
        if not self.results.is_file():
            return {}
        raw = self.results.read_bytes()
        units: dict[str, list[dict[str, Any]]] = {}
        keep = 0  # bytes up to the end of the last complete unit
        offset = 0
        for line in raw.splitlines(keepends=True):
            offset += len(line)
            if not line.endswith(b"\n"):
                break  # a killed writer's partial line
            row = json.loads(line)
            units.setdefault(row["unit"], []).append(row)
            if len(units[row["unit"]]) == row["unit_lines"]:
                keep = offset
        complete = {k: v for k, v in units.items() if len(v) == v[0]["unit_lines"]}
        if keep != len(raw):
            with open(self.results, "r+b") as f:
                f.truncate(keep)
        return complete

    def write(self, unit: Unit) -> list[dict[str, Any]]:
        """Append a unit's lines durably (one write, one fsync); returns them."""
        lines = unit_lines(unit)
        with open(self.results, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        return lines

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.root / SUMMARY, summary)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = private_tmp(path)
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)
