"""The bench's results store: one SQLite file, ``bench.sqlite``, in the bench folder.

Tables (one row per ...):

* ``bench``: key / value (JSON): the plan's ``identity``, the schema version and the last run's
  ``plan`` (its method order, for the report, kept by a run of only some methods; not checked
  on resume);
* ``jobs``: job (``method/scenario``) with its run metadata as JSON in ``info`` (model and its
  fingerprint, method config, package versions, seed, device, dataset, measures, skipped
  measures), ``status`` (``running``, ``done``, ``not applicable``) and a ``note`` saying why;
* ``units``: a finished unit of a job (a case, a batch, a sequential checkpoint); written in the
  same transaction as its rows, so a unit is either wholly there or not at all;
* ``cases``: case x checkpoint of a job (:class:`~kedit.eval.rows.CaseRow`): edit time,
  evaluation time, the edit's memory, error, details (requests, the edit's own figures, dialogue
  turns, a sampled text) as JSON;
* ``results``: case x measure x checkpoint of a job (:class:`~kedit.eval.rows.MeasureRow`):
  group, protocol, direction, the value before (``pre``) and after (``post``) the edits, and its
  pooling ``weight``. General-ability scores are rows of the pseudo-case ``general`` (group
  ``general``); checkpoint 0 of the job ``unedited/general`` is the unedited model.

These are the rows ``kedit eval`` writes as JSON lines (:mod:`kedit.eval.results`): the store is
the other sink of the same rows. ``checkpoint`` is the number of cases edited into the model when
it was scored (1 for single, B for batch:B, K for a sequential checkpoint).

Only the process that drives a bench writes (executors stream results back to it); each unit is
one transaction in WAL mode with full sync, so killing the process at any moment loses at most
the unit in flight and never leaves half a unit. Reports open the file read-only
(``BenchStore(root, create=False)``), so they can read a bench while it runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedit.eval.rows import Unit

DB_FILE = "bench.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, method TEXT NOT NULL, scenario TEXT NOT NULL,
    info TEXT NOT NULL, status TEXT NOT NULL, note TEXT, started REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS units (
    job_id TEXT NOT NULL, unit TEXT NOT NULL, finished REAL NOT NULL, worker TEXT,
    PRIMARY KEY (job_id, unit)
);
CREATE TABLE IF NOT EXISTS cases (
    job_id TEXT NOT NULL, case_id TEXT NOT NULL, checkpoint INTEGER NOT NULL,
    unit TEXT NOT NULL, edit_time_s REAL, eval_time_s REAL,
    edit_memory_bytes INTEGER, peak_memory_bytes INTEGER, memory_kind TEXT,
    error TEXT, details TEXT,
    PRIMARY KEY (job_id, case_id, checkpoint)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL, case_id TEXT NOT NULL, checkpoint INTEGER NOT NULL,
    measure TEXT NOT NULL, grp TEXT NOT NULL, protocol TEXT NOT NULL,
    higher_is_better INTEGER NOT NULL, pre REAL, post REAL, weight INTEGER NOT NULL,
    PRIMARY KEY (job_id, case_id, checkpoint, measure)
);
"""

CASE_COLUMNS = (
    "edit_time_s",
    "eval_time_s",
    "edit_memory_bytes",
    "peak_memory_bytes",
    "memory_kind",
    "error",
)


@dataclass
class UnitResult:
    """What a worker sends back for one finished unit of a job."""

    job_id: str
    unit: Unit
    worker: str = "local"


class BenchStore:
    """Reads and writes ``DIR/bench.sqlite`` (see module docstring)."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        """``create=True``: open ``root/bench.sqlite`` for writing, making the folder, the file
        and its tables as needed. ``create=False``: open an existing one read-only (fails if
        there is none); nothing is created or changed, and writes raise
        ``sqlite3.OperationalError``."""
        self.root = Path(root)
        self.path = self.root / DB_FILE
        self.read_only = not create
        if self.read_only:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"{self.path} does not exist: is {self.root} a bench folder?"
                )
            uri = self.path.resolve().as_uri() + "?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self.conn.row_factory = sqlite3.Row
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # explicit transactions; wait for a reader (a report, a progress poll) rather than fail
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> BenchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def check_identity(self, identity: dict[str, Any]) -> None:
        """Record the plan's identity, or fail if the folder holds a bench that differs."""
        row = self.conn.execute("SELECT value FROM bench WHERE key='identity'").fetchone()
        if row is None:
            with self._transaction():
                self.conn.execute(
                    "INSERT INTO bench VALUES ('identity', ?), ('schema', ?)",
                    (json.dumps(identity), str(SCHEMA_VERSION)),
                )
            return
        previous = json.loads(row["value"])
        diff = sorted(
            k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k)
        )
        if diff:
            raise ValueError(
                f"{self.root} holds a bench that differs in {', '.join(diff)} "
                f"({', '.join(f'{k}={previous.get(k)!r}' for k in diff)}); "
                "re-run it with the same settings to resume, or choose another --out folder"
            )

    def record_plan(self, plan: dict[str, Any]) -> None:
        """Store this run's plan (``BenchPlan.to_dict()``) under key ``plan``; the report
        orders methods as its ``methods`` lists them. A run that covers every recorded method
        sets that order; a run of only some (finishing one job) keeps it, with its new methods
        appended. Not part of the identity a resumed bench must match."""
        before = self.plan().get("methods") or []
        methods = plan.get("methods") or []
        if not set(before) <= set(methods):
            plan = plan | {"methods": [*before, *(m for m in methods if m not in before)]}
        with self._transaction():
            self.conn.execute(
                "INSERT INTO bench VALUES ('plan', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (json.dumps(plan, default=str),),
            )

    def open_job(self, job_id: str, method: str, scenario: str, info: dict[str, Any]) -> set[str]:
        """Register a job, or check that a stored one ran with the same metadata (resume).
        Returns the units already finished."""
        row = self.conn.execute(
            "SELECT info, status FROM jobs WHERE job_id=?", (job_id,)
        ).fetchone()
        if row is None:
            with self._transaction():
                self.conn.execute(
                    "INSERT INTO jobs VALUES (?, ?, ?, ?, 'running', NULL, ?, NULL)",
                    (job_id, method, scenario, json.dumps(info), time.time()),
                )
            return set()
        previous = json.loads(row["info"])
        if "error" not in previous:  # a job that could not even be set up has nothing to match
            keys = ("config", "model_fingerprint", "dataset", "n_cases", "seed", "metrics")
            diff = [k for k in keys if previous.get(k) != info.get(k)]
            if diff:
                raise ValueError(
                    f"job {job_id} in {self.root} ran with a different {', '.join(diff)}; "
                    "resume with the same settings, or choose another --out folder"
                )
        if row["status"] == "failed":  # try again, keeping its finished units
            with self._transaction():
                self.conn.execute(
                    "UPDATE jobs SET info=?, status='running', note=NULL WHERE job_id=?",
                    (json.dumps(info), job_id),
                )
        return self.finished_units(job_id)

    def has_job(self, job_id: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM jobs WHERE job_id=?", (job_id,)).fetchone() is not None
        )

    def finished_units(self, job_id: str) -> set[str]:
        rows = self.conn.execute("SELECT unit FROM units WHERE job_id=?", (job_id,))
        return {r["unit"] for r in rows}

    def write_unit(self, result: UnitResult) -> bool:
        """Write one unit's rows and its marker in one transaction. A unit already stored is
        left alone (returns False): nothing is ever written twice."""
        job, unit = result.job_id, result.unit
        with self._transaction():
            done = self.conn.execute(
                "SELECT 1 FROM units WHERE job_id=? AND unit=?", (job, unit.key)
            ).fetchone()
            if done:
                return False
            self.conn.executemany(
                "INSERT INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job,
                        c.case_id,
                        c.checkpoint,
                        unit.key,
                        *(getattr(c, k) for k in CASE_COLUMNS),
                        json.dumps(c.details) if c.details else None,
                    )
                    for c in unit.cases
                ],
            )
            self.conn.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job,
                        r.case_id,
                        r.checkpoint,
                        r.measure,
                        r.group,
                        r.protocol,
                        int(r.higher_is_better),
                        r.pre,
                        r.post,
                        r.weight,
                    )
                    for r in unit.measures
                ],
            )
            self.conn.execute(
                "INSERT INTO units VALUES (?, ?, ?, ?)", (job, unit.key, time.time(), result.worker)
            )
        return True

    def finish_job(self, job_id: str, status: str = "done", note: str | None = None) -> None:
        with self._transaction():
            self.conn.execute(
                "UPDATE jobs SET status=?, note=?, finished=? WHERE job_id=?",
                (status, note, time.time(), job_id),
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    # -- reading -------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        row = self.conn.execute("SELECT value FROM bench WHERE key='identity'").fetchone()
        return json.loads(row["value"]) if row else {}

    def plan(self) -> dict[str, Any]:
        """The plan :meth:`record_plan` stored last, or ``{}``."""
        row = self.conn.execute("SELECT value FROM bench WHERE key='plan'").fetchone()
        return json.loads(row["value"]) if row else {}

    def jobs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM jobs ORDER BY started, job_id")
        return [dict(r) | {"info": json.loads(r["info"])} for r in rows]

    def cases(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT c.*, j.method, j.scenario FROM cases c JOIN jobs j USING (job_id) "
            "ORDER BY c.job_id, c.checkpoint, c.case_id"
        )
        return [
            dict(r) | {"details": json.loads(r["details"]) if r["details"] else None} for r in rows
        ]

    def results(self) -> list[dict[str, Any]]:
        """Every result row (the fields of :class:`~kedit.eval.rows.MeasureRow`) with its job,
        method and scenario."""
        rows = self.conn.execute(
            'SELECT r.*, r.grp AS "group", j.method, j.scenario FROM results r '
            "JOIN jobs j USING (job_id) ORDER BY r.job_id, r.checkpoint, r.case_id, r.measure"
        )
        return [{k: v for k, v in dict(r).items() if k != "grp"} for r in rows]

    def count(self, table: str) -> int:
        if table not in ("jobs", "units", "cases", "results"):
            raise ValueError(f"no table {table!r}")
        return self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
