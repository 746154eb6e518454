"""What a bench runs: a plan of methods × scenarios on one model and dataset, and its jobs.

A scenario is an editing protocol (:mod:`kedit.eval.protocols`), written as on the command line:

* ``single``: every case edited on the unedited model, scored, undone;
* ``batch:B``: the cases in groups of B, each group in one update (batch methods only), scored,
  undone;
* ``sequential:1,10,20,40``: the first 40 cases edited one after another without undoing; after
  1, 10, 20 and 40 edits the cases edited so far are scored, and the general-ability tasks
  measured (the decay curves); ``;batch=B`` edits B cases per update;
* ``sweep:layer=0-29`` (or ``0,5,10``, ``0-3,8``): ``single`` once per value of a config field of
  the method (here ROME's ``layer``), set on top of its config; a layer sweep also records each
  case's causal trace on the unedited model, and the report sets edit success by layer against
  it (Hase et al. 2023, :mod:`kedit.bench.sweep`). Methods without the field are not applicable.

Each (method, scenario) is a job. A protocol cuts its work into *units*, the pieces the store
commits at once (a case, a batch, a checkpoint, a case at one swept value), and *shards*, the
pieces an executor hands to a worker (a few cases whose unedited scores share one batched pass,
at every swept value; a whole sequence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from kedit.eval.general import GENERAL_TASKS
from kedit.eval.metric import SUITES
from kedit.eval.protocol_text import parse_protocol, parse_protocols
from kedit.eval.protocols import GeneralBaseline, Protocol
from kedit.methods import METHODS

DEFAULT_GENERAL = ("wikitext", "sst2", "rte", "mmlu")


@dataclass(frozen=True)
class Job:
    """One method under one scenario."""

    method: str
    protocol: Protocol

    @property
    def job_id(self) -> str:
        return f"{self.method}/{self.protocol}"


#: the job that measures the unedited model's general ability once for the whole bench
BASELINE = Job("unedited", GeneralBaseline())
BASELINE_JOB = BASELINE.job_id  # "unedited/general"


@dataclass
class BenchPlan:
    """Everything that decides a bench's numbers (and so must match when it resumes), plus how
    to run it (executor, workers), which does not."""

    methods: list[str]
    scenarios: list[Protocol]
    model: str = "smollm2-135m"
    dataset: str = "counterfact"
    limit: int | None = 20
    suite: str = "core"
    general: list[str] = field(default_factory=lambda: list(DEFAULT_GENERAL))
    #: examples per general-ability task; None: all the shared subsets hold
    general_limit: int | None = None
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
    #: each checkpoint of a sequential job its own shard (replaying the edits before it), so
    #: that several workers evaluate one job's checkpoints side by side
    split_checkpoints: bool = False

    def __post_init__(self) -> None:
        self.methods = [METHODS.canonical(m) if m in METHODS else m for m in self.methods]
        problems = []
        scenarios = []
        for item in self.scenarios:
            try:
                scenarios.append(parse_protocol(item))
            except ValueError as err:
                problems.append(str(err))
        self.scenarios = scenarios
        self.validate(problems)

    def validate(self, problems: list[str] | None = None) -> None:
        """Fail on anything wrong before a model is loaded (all problems in one message)."""
        problems = list(problems or [])
        if not self.methods:
            problems.append("no method given (e.g. --methods rome,ft)")
        if len(set(self.methods)) != len(self.methods):
            problems.append("a method is named twice")
        for name in self.methods:
            try:
                METHODS[name]
            except KeyError as err:
                problems.append(str(err.args[0]))
                continue
            try:
                METHODS[name].config_cls.checked(self.overrides.get(name) or {})
            except ValueError as err:
                problems.append(f"--set {name}.*: {err}")
        if not self.scenarios and not problems:
            problems.append("no scenario given (e.g. --scenarios single,sequential:1,10)")
        if self.suite not in SUITES:
            problems.append(f"unknown suite {self.suite!r}; choose from {', '.join(SUITES)}")
        for task in self.general:
            if task not in GENERAL_TASKS:
                problems.append(f"unknown general task {task!r} (kedit ls general)")
        unknown = set(self.overrides) - set(self.methods)
        if unknown:
            problems.append(f"overrides for methods not in the plan: {', '.join(sorted(unknown))}")
        needed = max((s.cases_needed() for s in self.scenarios), default=0)
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
        for key in ("methods", "general"):
            if isinstance(data.get(key), str):
                data[key] = [x.strip() for x in data[key].split(",") if x.strip()]
        if isinstance(data["scenarios"], str):
            data["scenarios"] = [str(p) for p in parse_protocols(data["scenarios"])]
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BenchPlan:
        """A plan file (see :func:`read_plan_file`)."""
        return cls.from_dict(read_plan_file(path))


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """A YAML plan: the same keys as the command's options (``methods``, ``scenarios``,
    ``dataset``, ``limit``, ...), plus ``overrides: {method: {key: value}}``; options given on
    the command line may complete it."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a plan is a mapping of keys to values")
    return data
