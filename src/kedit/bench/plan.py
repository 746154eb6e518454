"""What a bench runs: a plan of methods × scenarios on one model and dataset, and its jobs.

A scenario is written as on the command line:

* ``single``: every case edited on the unedited model, scored, undone;
* ``batch:B``: the cases in groups of B, each group in one update (batch methods only), scored,
  undone;
* ``sequential:1,10,20,40``: the first 40 cases edited one after another without undoing; after
  1, 10, 20 and 40 edits the cases edited so far are scored, and the general-ability tasks
  measured (the decay curves).

Each (method, scenario) is a job. Its work is split into *units*, the pieces the store commits
at once (a case, a batch, a checkpoint), and *shards*, the pieces an executor hands to a worker
(a few cases whose unedited scores share one batched pass; a whole sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kedit.eval.general import GENERAL_TASKS
from kedit.eval.metrics import SUITES
from kedit.eval.runner import PRE_BATCH
from kedit.methods import ALIASES, METHODS, get_method

SCENARIO_KINDS = ("single", "batch", "sequential")
DEFAULT_GENERAL = ("wikitext", "sst2", "rte", "mmlu")


@dataclass(frozen=True)
class Scenario:
    """One way of applying the edits: ``kind`` and its sizes (batch size, or checkpoints)."""

    kind: str
    sizes: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Scenario:
        kind, _, rest = text.strip().partition(":")
        if kind not in SCENARIO_KINDS:
            raise ValueError(
                f"unknown scenario {text!r}: use single, batch:B or sequential:K1,K2,..."
            )
        try:
            sizes = tuple(int(x) for x in rest.split(",") if x.strip()) if rest else ()
        except ValueError:
            raise ValueError(f"scenario {text!r}: sizes must be whole numbers") from None
        if any(s < 1 for s in sizes):
            raise ValueError(f"scenario {text!r}: sizes must be at least 1")
        if kind == "single" and sizes:
            raise ValueError("the single scenario takes no size")
        if kind == "batch" and len(sizes) != 1:
            raise ValueError(f"scenario {text!r}: write batch:B with one batch size")
        if kind == "sequential" and not sizes:
            raise ValueError(f"scenario {text!r}: write sequential:K1,K2,... (edit counts)")
        return cls(kind, tuple(sorted(set(sizes))) if kind == "sequential" else sizes)

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(map(str, self.sizes)) if self.sizes else "")

    @property
    def cases_needed(self) -> int:
        """Cases a sequential scenario edits (its last checkpoint); 0 means all of them."""
        return self.sizes[-1] if self.kind == "sequential" else 0


@dataclass(frozen=True)
class Job:
    """One method under one scenario."""

    method: str
    scenario: Scenario

    @property
    def job_id(self) -> str:
        return f"{self.method}/{self.scenario}"


#: the job that measures the unedited model's general ability once for the whole bench
BASELINE = Job("unedited", Scenario("general"))
BASELINE_JOB = BASELINE.job_id  # "unedited/general"


@dataclass(frozen=True)
class Shard:
    """What one worker runs at once: the cases a job's shard covers (in order) and which of
    its units are still to do."""

    job: Job
    case_ids: tuple[str, ...]
    units: frozenset[str]


def checkpoint_unit(edits: int) -> str:
    return f"checkpoint@{edits}"


def batch_unit(first_case_id: str) -> str:
    return f"batch@{first_case_id}"


def job_shards(job: Job, case_ids: Sequence[str], finished: set[str]) -> list[Shard]:
    """The shards of ``job`` over ``case_ids`` that still have units to do.

    Shards are fixed by position (never by what is finished), so a resumed or distributed run
    scores exactly the batches an uninterrupted local run scores.
    """
    kind = job.scenario.kind
    if job.job_id == BASELINE_JOB:
        pieces = [((), [checkpoint_unit(0)])]
    elif kind == "sequential":
        ids = tuple(case_ids[: job.scenario.cases_needed])
        pieces = [(ids, [checkpoint_unit(k) for k in job.scenario.sizes])]
    elif kind == "single":
        chunks = [tuple(case_ids[i : i + PRE_BATCH]) for i in range(0, len(case_ids), PRE_BATCH)]
        pieces = [(chunk, list(chunk)) for chunk in chunks]
    else:
        size = job.scenario.sizes[0]
        per_shard = size * max(1, PRE_BATCH // size)
        pieces = []
        for i in range(0, len(case_ids), per_shard):
            chunk = tuple(case_ids[i : i + per_shard])
            pieces.append((chunk, [batch_unit(chunk[j]) for j in range(0, len(chunk), size)]))
    shards = []
    for ids, units in pieces:
        todo = frozenset(units) - finished
        if todo:
            shards.append(Shard(job, ids, todo))
    return shards


def job_units(job: Job, case_ids: Sequence[str]) -> set[str]:
    """Every unit of ``job``: what must be stored for it to be done."""
    return {u for shard in job_shards(job, case_ids, set()) for u in shard.units}


@dataclass
class BenchPlan:
    """Everything that decides a bench's numbers (and so must match when it resumes), plus how
    to run it (executor, workers), which does not."""

    methods: list[str]
    scenarios: list[Scenario]
    model: str = "smollm2-135m"
    dataset: str = "counterfact"
    limit: int | None = 20
    suite: str = "core"
    general: list[str] = field(default_factory=lambda: list(DEFAULT_GENERAL))
    general_limit: int | None = 100
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    device: str | None = None
    dtype: str = "auto"
    stats_corpus: str = "wikitext-2"
    data_dir: str | None = None
    cache_dir: str | None = None
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        self.methods = [ALIASES.get(m, m) for m in self.methods]
        self.scenarios = [
            s if isinstance(s, Scenario) else Scenario.parse(s) for s in self.scenarios
        ]
        self.validate()

    def validate(self) -> None:
        """Fail on anything wrong before a model is loaded (all problems in one message)."""
        problems = []
        if not self.methods:
            problems.append("no method given (e.g. --methods rome,ft)")
        if len(set(self.methods)) != len(self.methods):
            problems.append("a method is named twice")
        for name in self.methods:
            try:
                get_method(name)
            except KeyError as err:
                problems.append(str(err.args[0]))
        if not self.scenarios:
            problems.append("no scenario given (e.g. --scenarios single,sequential:1,10)")
        if self.suite not in SUITES:
            problems.append(f"unknown suite {self.suite!r}; choose from {', '.join(SUITES)}")
        for task in self.general:
            if task not in GENERAL_TASKS:
                problems.append(f"unknown general task {task!r} (kedit ls general)")
        unknown = set(self.overrides) - set(self.methods)
        if unknown:
            problems.append(f"overrides for methods not in the plan: {', '.join(sorted(unknown))}")
        needed = max((s.cases_needed for s in self.scenarios), default=0)
        if self.limit is not None and needed > self.limit:
            problems.append(
                f"a sequential scenario edits {needed} cases but --limit is {self.limit}; "
                f"raise the limit or lower the checkpoints"
            )
        if self.limit is not None and self.limit < 1:
            problems.append("--limit must be at least 1")
        if self.executor not in ("local", "ray"):
            problems.append(f"unknown executor {self.executor!r}; choose local or ray")
        if problems:
            raise ValueError("bench plan: " + "; ".join(problems))

    def jobs(self) -> list[Job]:
        return [Job(m, s) for m in self.methods for s in self.scenarios]

    def identity(self) -> dict[str, Any]:
        """The fields that decide the numbers (a resumed bench must agree on these)."""
        keep = ("model", "dataset", "limit", "suite", "general", "general_limit", "seed", "dtype")
        return {k: getattr(self, k) for k in keep} | {"stats_corpus": self.stats_corpus}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scenarios"] = [str(s) for s in self.scenarios]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchPlan:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown plan key(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("methods", "scenarios") if k not in data]
        if missing:
            raise ValueError(f"a bench plan needs {' and '.join(missing)}")
        data = dict(data)
        for key in ("methods", "scenarios", "general"):
            if isinstance(data.get(key), str):
                data[key] = [x.strip() for x in data[key].split(",") if x.strip()]
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchPlan:
        """A plan file (see :func:`read_plan_file`)."""
        return cls.from_dict(read_plan_file(path))


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """A YAML plan: the same keys as the command's options (``methods``, ``scenarios``,
    ``dataset``, ``limit``, ...), plus ``overrides: {method: {key: value}}``; options given on
    the command line may complete it."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a plan is a mapping of keys to values")
    return data


def parse_scenarios(text: str) -> list[Scenario]:
    """``single,batch:10,sequential:1,10,20`` -> scenarios (numbers after a ``kind:`` belong to
    it until the next kind)."""
    scenarios: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.isdigit() and scenarios:
            scenarios[-1] += "," + part
        else:
            scenarios.append(part)
    return [Scenario.parse(s) for s in scenarios]


def registered_methods() -> list[str]:
    return list(METHODS.names())
