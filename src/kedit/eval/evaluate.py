"""``evaluate``: edit the cases of a dataset under a protocol, score them, keep every result.

The protocol is explicit (:mod:`kedit.eval.protocols`): ``Single()`` (the default), ``Batch(B)``,
``Sequential.of(n, checkpoints, batch_size, scoring)``, or their text form (``"batch:10"``,
``"sequential:1,10,20"``). Everything that can be checked without the model (the dataset file and
its format, the protocol against the method, hyperparameter names and types, measure and task
names, the number of cases) is checked by :meth:`EvalSetup.prepare` before any model work, so the
command line can fail fast before it loads a model.

The units the protocol yields go to ``results.jsonl`` as they finish (:mod:`kedit.eval.results`),
so a killed run keeps everything it finished and ``resume=True`` does only the rest;
``summary.json`` aggregates the measures (:func:`kedit.eval.summary.summarize_run`), each with
its group and protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from kedit.env import Environment
from kedit.eval.engine import Engine
from kedit.eval.general import GENERAL_TASKS
from kedit.eval.metric import Metric
from kedit.eval.protocol_text import parse_protocol
from kedit.eval.protocols import GeneralBaseline, Protocol, Sequential, Shard
from kedit.eval.provenance import run_info
from kedit.eval.results import ResultsFolder, rows_of, unit_lines
from kedit.eval.rows import CaseRow, MeasureRow, Unit
from kedit.eval.selection import choose_metrics, select_cases
from kedit.eval.summary import summarize_run
from kedit.methods import METHODS, EditMethod, make_method
from kedit.types import EditCase


@dataclass
class EvalReport:
    """Aggregated measures, every result line, and the folder they were written to."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None

    def table(self) -> list[tuple[str, str, str, float | None, float | None, int]]:
        """(metric, group, protocol, pre, post, n) rows in group order."""
        return [
            (name, m["group"], m["protocol"], m.get("pre"), m.get("post"), m["n"])
            for name, m in self.summary["metrics"].items()
        ]


@dataclass
class EvalSetup:
    """An evaluation checked before any model work: the cases, the protocol, the measures."""

    dataset: str | Sequence[EditCase]
    method: str | EditMethod
    overrides: dict[str, Any] | None
    protocol: Protocol
    cases: list[EditCase]
    metrics: list[Metric]
    skipped: dict[str, str]
    general: list[str]
    general_limit: int | None
    env: Environment

    @classmethod
    def prepare(
        cls,
        dataset: str | Sequence[EditCase],
        method: str | EditMethod,
        *,
        protocol: Protocol | str = "single",
        overrides: dict[str, Any] | None = None,
        metrics: list[str] | None = None,
        suite: str = "core",
        limit: int | None = None,
        general: Sequence[str] = (),
        general_limit: int | None = None,
        env: Environment | None = None,
    ) -> EvalSetup:
        """Check everything that needs no model; errors name the option at fault."""
        env = env if env is not None else Environment()
        protocol = parse_protocol(protocol)
        method_cls = type(method) if isinstance(method, EditMethod) else METHODS[method]
        if isinstance(method, EditMethod) and overrides:
            raise ValueError("pass hyperparameter overrides with a method name, not an object")
        method_cls.config_cls.checked(overrides or {})
        why_not = protocol.why_not(method_cls)
        if why_not:
            raise ValueError(why_not)
        for task in general:
            GENERAL_TASKS[task]  # an unknown name fails here, naming the known ones
        if general and not isinstance(protocol, Sequential):
            raise ValueError(
                "general ability is measured at sequential checkpoints; "
                "give a sequential protocol (--sequential N) or leave --general out"
            )
        need = protocol.cases_needed()
        if need and limit is not None and limit < need:
            raise ValueError(f"{protocol} edits {need} cases, but --limit is {limit}")
        cases = select_cases(dataset, env, need or limit)
        if need and len(cases) < need:
            raise ValueError(f"{protocol} edits {need} cases, but the dataset has {len(cases)}")
        chosen, skipped = choose_metrics(metrics, suite, cases, protocol)
        return cls(
            dataset,
            method,
            overrides,
            protocol,
            cases,
            chosen,
            skipped,
            list(general),
            general_limit,
            env,
        )

    def run(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        *,
        out_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> EvalReport:
        """Edit, score, write the results (see module docstring)."""
        editor = make_method(self.method, model, self.overrides, self.env)
        run = run_info(
            model, editor, self.dataset, self.cases, self.metrics, self.env, self.protocol
        )
        run["general"] = {"tasks": self.general, "limit": self.general_limit}
        folder = ResultsFolder(out_dir) if out_dir is not None else None
        done = folder.open(run, resume) if folder is not None else {}
        lines = [line for unit in done.values() for line in unit]
        engine = Engine(model, tok, self.env, self.cases, self.general, self.general_limit)
        ids = [c.case_id for c in self.cases]
        plans = [GeneralBaseline()] if self.general else []
        work = [(p, s) for p in [*plans, self.protocol] for s in p.shards(ids, set(done))]
        bar = tqdm(
            total=sum(_steps(p, s) for p, s in work),
            unit="edit" if isinstance(self.protocol, Sequential) else "case",
            disable=not progress,
            desc=f"{editor.name}, {self.protocol}",
        )
        try:
            for protocol, shard in work:
                for event in engine.run(protocol, editor, self.metrics, shard):
                    if isinstance(event, Unit):
                        lines += folder.write(event) if folder is not None else unit_lines(event)
                    else:
                        bar.update(event.steps)
        finally:
            bar.close()
        cases: list[CaseRow] = []
        measures: list[MeasureRow] = []
        for line in lines:
            case, rows = rows_of(line)
            cases.append(case)
            measures += rows
        summary = summarize_run(cases, measures, run, self.protocol, self.skipped)
        summary["unedited_eval_time_s"] = engine.unedited_time_s
        if folder is not None:
            folder.write_summary(summary)
        return EvalReport(summary, lines, folder.root if folder is not None else None)


def _steps(protocol: Protocol, shard: Shard) -> int:
    """Progress steps a shard reports: its pending cases, or the edits of a sequence."""
    if isinstance(protocol, Sequential):
        done = [k for k, u in protocol.scoring_points().items() if u in shard.units]
        return max(done, default=0)
    if isinstance(protocol, GeneralBaseline):
        return 0
    return len(shard.units) * protocol.update_size()


def evaluate(
    model: Any,
    tok: PreTrainedTokenizerBase,
    dataset: str | Sequence[EditCase] = "demo",
    method: str | EditMethod = "rome",
    *,
    protocol: Protocol | str = "single",
    overrides: dict[str, Any] | None = None,
    metrics: list[str] | None = None,
    suite: str = "core",
    limit: int | None = None,
    general: Sequence[str] = (),
    general_limit: int | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    env: Environment | None = None,
    progress: bool = True,
) -> EvalReport:
    """Edit and score the cases of ``dataset`` with ``method`` under ``protocol``.

    ``metrics`` names the measures; by default those of ``suite`` (``core``, or ``pitfalls`` for
    every registered measure). Measures the dataset has no probes for are skipped, and the
    summary says which and why. ``general`` names general-ability tasks measured on the unedited
    model and at the checkpoints of a sequential protocol. ``limit`` takes the first cases; a
    sequential protocol edits the first N.
    """
    setup = EvalSetup.prepare(
        dataset,
        method,
        protocol=protocol,
        overrides=overrides,
        metrics=metrics,
        suite=suite,
        limit=limit,
        general=general,
        general_limit=general_limit,
        env=env,
    )
    return setup.run(model, tok, out_dir=out_dir, resume=resume, progress=progress)
