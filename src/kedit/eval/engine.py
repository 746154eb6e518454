"""The engine every protocol runs on: one model, its cases, the batched scorer, and the edits.

:class:`Engine` holds what a run measures and on what (the model, the cases, the general-ability
tasks) and runs the protocols of :mod:`kedit.eval.protocols`, each written once
(:meth:`Engine.run`), from a few primitives: the unedited scores of some cases (batched,
optionally cached across jobs), one case edited in its steps (once per value of a sweep, with
the case's causal trace for a layer sweep), one batch in one update, a sequence of accumulating
edits, and general ability at a checkpoint. Each yields or returns the rows of
:mod:`kedit.eval.rows`. Nothing here asks which method ran. ``kedit eval`` and ``kedit bench``
run their work through it alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from kedit.env import Environment
from kedit.eval.cost import MemoryUse, measure_memory
from kedit.eval.general import general_ability
from kedit.eval.metric import Metric, needs_of
from kedit.eval.number_lists import format_ranges
from kedit.eval.protocols import (
    PRE_BATCH,
    Batch,
    GeneralBaseline,
    Protocol,
    Sequential,
    Shard,
    Single,
    Sweep,
)
from kedit.eval.rows import (
    CaseRow,
    Event,
    Progress,
    Unit,
    batch_unit,
    case_unit,
    checkpoint_unit,
    sweep_unit,
)
from kedit.eval.scored import edit_cost, general_ability_unit, requests_of, scored_unit
from kedit.eval.scoring import Needs, ProbeResult, score_probes
from kedit.methods import EditMethod, EditSession
from kedit.methods._trace import subject_mlp_trace
from kedit.methods.edit import Edit
from kedit.model.arch import num_layers
from kedit.model.lm import LanguageModel, as_language_model, hf_module, model_device
from kedit.types import EditCase

log = logging.getLogger(__name__)

Scores = dict[str, list[ProbeResult]]


class Engine:
    """One model and the cases of a run (see module docstring).

    Args:
        general: general-ability tasks measured at sequential checkpoints.
        general_limit: examples per general-ability task (None: all the task holds).
        cache_unedited: keep the unedited scores of each batch of cases for later calls (a
            bench runs many jobs on the same cases); off, they are scored for each call.
    """

    def __init__(
        self,
        model: Any,
        tok: PreTrainedTokenizerBase,
        env: Environment,
        cases: Sequence[EditCase],
        general: Sequence[str] = (),
        general_limit: int | None = None,
        cache_unedited: bool = False,
    ) -> None:
        self.model, self.tok, self.env = model, tok, env
        self.by_id = {c.case_id: c for c in cases}
        self.general, self.general_limit = list(general), general_limit
        self._cache: dict[tuple, Scores] | None = {} if cache_unedited else None
        #: case id -> its causal trace on the unedited model (layer sweeps)
        self._traces: dict[str, dict[str, Any]] = {}
        #: seconds spent scoring the unedited model
        self.unedited_time_s = 0.0

    def cases_of(self, case_ids: Sequence[str]) -> list[EditCase]:
        return [self.by_id[i] for i in case_ids]

    def unedited_lm(self) -> LanguageModel:
        return as_language_model(self.model, self.tok)

    # -- scoring ---------------------------------------------------------------------------------

    def unedited(self, cases: Sequence[EditCase], metrics: list[Metric]) -> Scores:
        """The unedited model's scores of ``cases``, :data:`PRE_BATCH` cases per batched pass;
        every call gets its own copies to fill with scores after editing."""
        needs, out = needs_of(metrics), {}
        for start in range(0, len(cases), PRE_BATCH):
            chunk = list(cases[start : start + PRE_BATCH])
            key = (tuple(c.case_id for c in chunk), needs)
            scored = self._cache.get(key) if self._cache is not None else None
            if scored is None:
                scored = {}
                t0 = time.perf_counter()
                score_probes(self.unedited_lm(), chunk, needs, "pre", scored, self.env.seed)
                self.unedited_time_s += time.perf_counter() - t0
                if self._cache is not None:
                    self._cache[key] = scored
            out.update(_fresh(scored))
        return out

    def _score(
        self,
        lm: LanguageModel,
        cases: Sequence[EditCase],
        needs: Needs,
        stage: str,
        scores: Scores,
    ) -> float:
        """Score ``cases`` at ``stage`` into ``scores``; the time per case."""
        t0 = time.perf_counter()
        score_probes(lm, cases, needs, stage, scores, self.env.seed)
        return (time.perf_counter() - t0) / len(cases)

    # -- the protocols -----------------------------------------------------------------------------

    def run(
        self, protocol: Protocol, method: EditMethod | None, metrics: list[Metric], shard: Shard
    ) -> Iterator[Event]:
        """Run a shard of ``protocol`` with ``method``, yielding each unit as it finishes."""
        if method is not None:
            method.prepare(self.model)  # e.g. a missing trained editor fails here, not per case
        runners = {
            Single: self._single,
            Batch: self._batch,
            Sequential: self.sequence,
            Sweep: self._sweep,
            GeneralBaseline: self._baseline,
        }
        yield from runners[type(protocol)](protocol, method, metrics, shard)

    def _single(
        self, protocol: Protocol, method: EditMethod, metrics: list[Metric], shard: Shard
    ) -> Iterator[Event]:
        cases = self.cases_of(shard.case_ids)
        unedited = self.unedited(cases, metrics)
        for case in cases:
            if case_unit(case.case_id) in shard.units:
                unit = self.edit_case(case, method, metrics, unedited)
                yield Progress(1)
                yield unit

    def _batch(
        self, protocol: Batch, method: EditMethod, metrics: list[Metric], shard: Shard
    ) -> Iterator[Event]:
        cases = self.cases_of(shard.case_ids)
        unedited = self.unedited(cases, metrics)
        for start in range(0, len(cases), protocol.size):
            batch = cases[start : start + protocol.size]
            key = batch_unit(batch[0].case_id)
            if key in shard.units:
                unit = self.edit_batch(batch, key, method, metrics, unedited)
                yield Progress(len(batch))
                yield unit

    def _sweep(
        self, protocol: Sweep, method: EditMethod, metrics: list[Metric], shard: Shard
    ) -> Iterator[Event]:
        """``single`` once per value: each case edited with the protocol's key set to the value
        on top of ``method``'s config. A layer sweep also keeps each case's causal trace (on the
        unedited model, before any edit) in its rows' details."""
        self.check_protocol(protocol)
        cases = self.cases_of(shard.case_ids)
        unedited = self.unedited(cases, metrics)
        todo = {
            v: [c for c in cases if sweep_unit(v, c.case_id) in shard.units]
            for v in protocol.values
        }
        traced = (
            {c.case_id: c for cs in todo.values() for c in cs} if protocol.key == "layer" else {}
        )
        traces = {case_id: self.layer_trace(case) for case_id, case in traced.items()}
        for value, pending in ((v, cs) for v, cs in todo.items() if cs):
            editor = method.with_overrides({protocol.key: value})
            scores = _fresh(unedited)  # edit_case fills these: no value sees another's scores
            for case in pending:
                key = sweep_unit(value, case.case_id)
                unit = self.edit_case(case, editor, metrics, scores, key, checkpoint=value)
                for row in unit.cases:
                    row.details = {**(row.details or {}), **traces.get(case.case_id, {})}
                yield Progress(1)
                yield unit

    def check_protocol(self, protocol: Protocol) -> None:
        """Refuse, before anything is edited, what only the model can rule out: a layer sweep
        past the model's last layer."""
        if not isinstance(protocol, Sweep) or protocol.key != "layer":
            return
        depth = num_layers(hf_module(self.model))
        beyond = [v for v in protocol.values if v >= depth]
        if beyond:
            raise ValueError(
                f"{protocol}: layer {format_ranges(beyond)} is past the model's last layer: "
                f"it has {depth} layers, 0-{depth - 1}"
            )

    def layer_trace(self, case: EditCase) -> dict[str, Any]:
        """``{"trace": ...}``: the MLP causal trace of the case's first request on the unedited
        model (computed once per case), or ``{"trace_error": ...}`` if it cannot be traced."""
        if case.case_id not in self._traces:
            try:
                trace = subject_mlp_trace(self.model, self.tok, case.requests[0], self.env)
                self._traces[case.case_id] = {"trace": trace.to_dict()}
            except Exception as err:  # a case that cannot be traced is still edited and scored
                log.warning("case %s could not be traced: %s", case.case_id, err)
                self._traces[case.case_id] = {"trace_error": _error(err)}
        return self._traces[case.case_id]

    def _baseline(
        self, protocol: Protocol, method: EditMethod | None, metrics: list[Metric], shard: Shard
    ) -> Iterator[Event]:
        yield self.general_unit(self.unedited_lm(), 0, checkpoint_unit(0))

    # -- the protocols' steps --------------------------------------------------------------------

    def edit_case(
        self,
        case: EditCase,
        method: EditMethod,
        metrics: list[Metric],
        scores: Scores,
        key: str | None = None,
        checkpoint: int = 1,
    ) -> Unit:
        """Edit one case on the unedited model in its steps, score it after the first step
        (where a measure reads that) and after the last, undo the edit; where a measure reads
        it, apply the last step alone to the unedited model and score that too. ``key``: the
        unit's key (default the case's), ``checkpoint``: its rows' (a sweep's value)."""
        key = case_unit(case.case_id) if key is None else key
        needs = needs_of(metrics)
        steps, edits, eval_time, edit_time, peak = case.edit_steps, [], 0.0, 0.0, None
        try:
            with EditSession(self.model, self.tok, self.env) as session:
                for number, requests in enumerate(steps, start=1):
                    memory, took, made = self._update(session, requests, method)
                    edits += made
                    edit_time += took
                    peak = memory if peak is None else max(peak, memory, key=_extra)
                    if number == 1 and len(steps) > 1 and needs.mid:
                        eval_time += self._score(session.lm, [case], needs, "mid", scores)
                eval_time += self._score(session.lm, [case], needs, "post", scores)
            if case.last_step_alone and needs.alone:
                with EditSession(self.model, self.tok, self.env) as session:
                    memory, took, made = self._update(session, steps[-1], method)
                    edits += made
                    edit_time += took
                    peak = max(peak, memory, key=_extra)
                    eval_time += self._score(session.lm, [case], needs, "alone", scores)
        except Exception as err:  # one failing case must not end a run of thousands
            log.warning("case %s failed: %s", case.case_id, err)
            row = CaseRow(case.case_id, checkpoint, error=_error(err), details=requests_of([case]))
            return Unit(key, [row])
        cost = {case.case_id: edit_cost(peak, edit_time, edits)}
        return scored_unit(key, checkpoint, [case], cost, eval_time, metrics, scores)

    def edit_batch(
        self,
        batch: Sequence[EditCase],
        key: str,
        method: EditMethod,
        metrics: list[Metric],
        scores: Scores,
    ) -> Unit:
        """One update with every request of ``batch``, its cases scored, the edit undone."""
        requests = [r for case in batch for r in case.requests]
        try:
            with EditSession(self.model, self.tok, self.env) as session:
                memory, took, edits = self._update(session, requests, method)
                eval_time = self._score(session.lm, batch, needs_of(metrics), "post", scores)
        except Exception as err:  # one failing batch must not end the run
            log.warning("batch from %s failed: %s", batch[0].case_id, err)
            details = [requests_of([c]) for c in batch]
            rows = [
                CaseRow(c.case_id, len(batch), error=_error(err), details=d)
                for c, d in zip(batch, details)
            ]
            return Unit(key, rows)
        cost = edit_cost(memory, took / len(batch), edits)
        costs = dict.fromkeys((c.case_id for c in batch), cost)
        return scored_unit(key, len(batch), batch, costs, eval_time, metrics, scores)

    def sequence(
        self, protocol: Sequential, method: EditMethod, metrics: list[Metric], shard: Shard
    ) -> Iterator[Event]:
        """Edit the shard's cases one update after another; at each pending scoring point,
        score the cases edited so far or the protocol's sample of them (final) or the update's
        cases (immediate), and general ability. Updates before a finished point are replayed
        without scoring, and none is made after the shard's last point. Only the cases some
        point scores are scored unedited, and the session keeps no edit to roll back alone (a
        rollback window of 0): restore data stays one copy of the touched weights however many
        edits the sequence makes."""
        cases = self.cases_of(shard.case_ids)
        points = protocol.scoring_points()
        pending = sorted(k for k, unit in points.items() if unit in shard.units)
        if not pending:
            return
        # every point's cases are scored unedited, pending or not: a resumed or split shard then
        # batches that pass exactly as an uninterrupted run does, to the last bit
        scored_at = {k: protocol.scored_positions(k, self.env.seed) for k in points}
        needed = sorted(set().union(*scored_at.values()))
        scores = self.unedited([cases[i] for i in needed], metrics)
        costs: dict[str, dict[str, Any]] = {}
        needs = needs_of(metrics)
        session = EditSession(self.model, self.tok, self.env, rollback_window=0)
        try:
            for start in range(0, pending[-1], protocol.batch_size):
                batch = cases[start : start + protocol.batch_size]
                requests = [r for case in batch for r in case.requests]
                memory, took, edits = self._update(session, requests, method)
                cost = edit_cost(memory, took / len(batch), edits)
                costs.update(dict.fromkeys((c.case_id for c in batch), cost))
                yield Progress(len(batch))
                edited = start + len(batch)
                if edited not in pending:
                    continue
                scored = [cases[i] for i in scored_at[edited]]
                eval_time = self._score(session.lm, scored, needs, "post", scores)
                unit = scored_unit(
                    points[edited], edited, scored, costs, eval_time, metrics, scores
                )
                general = self.general if protocol.measures_general(edited) else []
                extra = self.general_unit(session.lm, edited, unit.key, session, general)
                unit.cases += extra.cases
                unit.measures += extra.measures
                yield unit
        finally:
            session.restore()

    def general_unit(
        self,
        lm: LanguageModel,
        checkpoint: int,
        key: str,
        session: EditSession | None = None,
        tasks: Sequence[str] | None = None,
    ) -> Unit:
        """General ability of ``lm`` at ``checkpoint`` (the pseudo-case ``general``), with the
        memory ``session`` holds to undo its edits."""
        tasks = self.general if tasks is None else tasks
        t0 = time.perf_counter()
        scores = (
            general_ability(lm, tasks, self.env.data_dir, limit=self.general_limit, seed=None)
            if tasks
            else {}
        )
        restore_bytes = session.restore_bytes if session is not None else None
        return general_ability_unit(key, checkpoint, scores, t0, restore_bytes)

    # -- rows --------------------------------------------------------------------------------------

    def _update(
        self, session: EditSession, requests: Sequence[Any], method: EditMethod
    ) -> tuple[MemoryUse, float, list[Edit]]:
        """One update in ``session``: the memory it took, its time and the edits it made."""
        with measure_memory(model_device(self.model)) as memory:
            t0 = time.perf_counter()
            edits = session.edit_all(list(requests), method)
            took = time.perf_counter() - t0
        return memory, took, edits


def _fresh(scores: Scores) -> Scores:
    """Copies of unedited scores, to be filled with scores after editing."""
    return {
        case_id: [ProbeResult(r.probe, pre=r.pre) for r in rs] for case_id, rs in scores.items()
    }


def _extra(memory: MemoryUse) -> int:
    return memory.extra_bytes


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"
