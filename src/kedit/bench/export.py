"""A bench's results as one flat table (CSV, or Parquet with pyarrow) for analysis elsewhere.

One row per job x case x measure x checkpoint: the result row, its job's method, method family,
scenario, model, model fingerprint, seed and kedit version, and the case's edit time and edit
memory (a sweep's checkpoint is its value). :func:`export_sweeps` writes the sweeps' tables by
value (:func:`kedit.bench.sweep.sweep_rows`) as CSV.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from kedit.bench.store import BenchStore
from kedit.bench.summary import BenchSummary
from kedit.bench.sweep import sweep_analyses, sweep_rows
from kedit.methods import METHODS

log = logging.getLogger(__name__)

#: the exported columns, in order, with their Parquet types
COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "string"),
    ("method", "string"),
    ("family", "string"),
    ("scenario", "string"),
    ("model", "string"),
    ("model_fingerprint", "string"),
    ("seed", "int64"),
    ("kedit_version", "string"),
    ("case_id", "string"),
    ("checkpoint", "int64"),
    ("measure", "string"),
    ("group", "string"),
    ("protocol", "string"),
    ("higher_is_better", "bool"),
    ("pre", "float64"),
    ("post", "float64"),
    ("weight", "int64"),
    ("edit_time_s", "float64"),
    ("edit_memory_bytes", "int64"),
)
FORMATS = (".csv", ".parquet")


def export_results(bench_dir: str | Path, path: str | Path) -> Path:
    """Write the results of the bench in ``bench_dir`` to ``path``; its suffix picks the format
    (:data:`FORMATS`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot export to {path.name!r}: supported formats are {', '.join(FORMATS)}"
        )
    with BenchStore(bench_dir, create=False) as store:
        rows = result_rows(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        _write_csv(rows, path)
    else:
        _write_parquet(rows, path)
    log.info("%d result rows written to %s", len(rows), path)
    return path


def result_rows(store: BenchStore) -> list[dict[str, Any]]:
    """The rows :func:`export_results` writes, as dicts keyed by :data:`COLUMNS`."""
    jobs = {j["job_id"]: j for j in store.jobs()}
    cases = {(c["job_id"], c["case_id"], c["checkpoint"]): c for c in store.cases()}
    families: dict[str, str | None] = {}
    out = []
    for r in store.results():
        job = jobs[r["job_id"]]
        info = job["info"]
        method = job["method"]
        if method not in families:
            families[method] = METHODS[method].family if method in METHODS else None
        case = cases.get((r["job_id"], r["case_id"], r["checkpoint"]), {})
        out.append(
            {
                "job_id": r["job_id"],
                "method": method,
                "family": families[method],
                "scenario": job["scenario"],
                "model": info.get("model"),
                "model_fingerprint": info.get("model_fingerprint"),
                "seed": info.get("seed"),
                "kedit_version": (info.get("versions") or {}).get("kedit"),
                "case_id": r["case_id"],
                "checkpoint": r["checkpoint"],
                "measure": r["measure"],
                "group": r["group"],
                "protocol": r["protocol"],
                "higher_is_better": bool(r["higher_is_better"]),
                "pre": r["pre"],
                "post": r["post"],
                "weight": r["weight"],
                "edit_time_s": case.get("edit_time_s"),
                "edit_memory_bytes": case.get("edit_memory_bytes"),
            }
        )
    return out


def export_sweeps(bench_dir: str | Path, path: str | Path) -> Path | None:
    """Write the sweeps of the bench in ``bench_dir`` by value (cases, each mean with its 95%
    interval, edit success, the mean trace effect) to ``path`` as CSV; None, writing nothing,
    when the bench has no sweep with results."""
    rows = sweep_rows(sweep_analyses(BenchSummary.load(bench_dir)))
    if not rows:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_csv(rows, path, list(rows[0]))
    log.info("%d sweep rows written to %s", len(rows), path)
    return path


def _write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] | None = None) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or [name for name, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(
            "exporting Parquet needs pyarrow: pip install 'kedit[report]' (or export to .csv)"
        ) from err
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)
