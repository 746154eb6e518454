"""``evaluate_sequential``: edits that accumulate, and how the earlier ones decay.

N cases are edited one after another (or B at a time with a batch method) in one
:class:`~kedit.methods.EditSession`, without restoring in between. Two protocols, named in every
output:

* ``final`` (default): every case is scored after the last edit, and, at each checkpoint k, the
  k cases edited so far are scored too. The checkpoints trace how reliability, generalisation
  and locality of earlier edits decay as edits accumulate.
* ``immediate``: each case is scored right after its own edit (EasyEdit's sequential mode since
  2026-06), which measures the edit, not its survival.

Scores of the unedited model come first, batched across cases. Result rows carry the number of
edits applied when they were scored (``checkpoint``); a resumed run replays the edits (they are
deterministic) and scores only what is missing. The model is restored at the end.

``general`` names general-ability tasks (:mod:`kedit.eval.general`: WikiText perplexity,
downstream tasks) measured on the unedited model (checkpoint 0) and at every checkpoint (with
immediate scoring: after the last edit), each stored as a ``general`` row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from kedit.env import Environment
from kedit.eval.general import GENERAL_TASKS, general_ability
from kedit.eval.metrics import needs_of
from kedit.eval.runner import (
    PRE_BATCH,
    EvalReport,
    ResultStore,
    apply_requests,
    case_details,
    case_metrics,
    choose_metrics,
    row_key,
    run_info,
    select_cases,
    summarize,
)
from kedit.eval.scoring import ProbeResult, score_probes
from kedit.methods import EditSession, make_method
from kedit.methods.base import EditMethod, batch_error
from kedit.model.lm import as_language_model
from kedit.types import EditCase

Scoring = Literal["final", "immediate"]


def evaluate_sequential(
    model: Any,
    tok: PreTrainedTokenizerBase,
    dataset: str | Sequence[EditCase],
    method: str | EditMethod,
    *,
    n_edits: int,
    batch_size: int = 1,
    checkpoints: Sequence[int] = (),
    scoring: Scoring = "final",
    overrides: dict[str, Any] | None = None,
    metrics: list[str] | None = None,
    suite: str = "core",
    out_dir: str | Path | None = None,
    resume: bool = False,
    env: Environment | None = None,
    progress: bool = True,
    general: Sequence[str] = (),
    general_limit: int | None = 100,
) -> EvalReport:
    """Edit the first ``n_edits`` cases in sequence and score them (see module docstring)."""
    env = env if env is not None else Environment()
    if n_edits < 1 or batch_size < 1:
        raise ValueError("the number of sequential edits and the batch size must be at least 1")
    if scoring not in ("final", "immediate"):
        raise ValueError(f"scoring is 'final' or 'immediate', got {scoring!r}")
    cases = select_cases(dataset, env, n_edits)
    if len(cases) < n_edits:
        raise ValueError(f"{n_edits} sequential edits asked for, but the dataset has {len(cases)}")
    editor = (
        method if isinstance(method, EditMethod) else make_method(method, model, overrides, env)
    )
    if batch_size > 1 and not editor.supports_batch:
        raise ValueError(batch_error(editor.name))
    if scoring == "immediate" and checkpoints:
        raise ValueError(
            "checkpoints go with final scoring; immediate scoring scores each "
            "case once, right after its own edit"
        )
    checkpoint_list = (
        []
        if scoring == "immediate"
        else sorted({k for k in checkpoints if 0 < k <= n_edits} | {n_edits})
    )
    points = list(checkpoint_list)  # consumed as the edits go
    chosen, skipped = choose_metrics(metrics, suite, cases)
    for metric in chosen:
        if metric.mid:
            skipped[metric.name] = "it reads a case's first edit step, which sequential runs skip"
    chosen = [m for m in chosen if not m.mid]
    needs = needs_of(chosen)
    run = run_info(model, editor, dataset, cases, chosen, env)
    run["protocol"] = {
        "name": f"sequential-{scoring}",
        "n_edits": n_edits,
        "batch_size": batch_size,
        "checkpoints": checkpoint_list,
        "general": list(general),
        "general_limit": general_limit,
    }
    for task in general:
        GENERAL_TASKS[task]  # an unknown name fails before any editing
    store = ResultStore(Path(out_dir)) if out_dir is not None else None
    done = store.open(run, resume) if store is not None else {}
    rows = list(done.values())

    results: dict[str, list[ProbeResult]] = {}
    base_lm = as_language_model(model, tok)
    for start in range(0, len(cases), PRE_BATCH):
        score_probes(base_lm, cases[start : start + PRE_BATCH], needs, "pre", results, env.seed)

    def measure_general(lm: Any, edited: int) -> None:
        if general and row_key({"case_id": "general", "checkpoint": edited}) not in done:
            scores = general_ability(lm, general, env.data_dir, limit=general_limit, seed=None)
            row = {"case_id": "general", "checkpoint": edited, "general": scores}
            general_rows.append(row)
            if store is not None:
                store.append(row)

    general_rows = [r for r in rows if r["case_id"] == "general"]
    rows = [r for r in rows if r["case_id"] != "general"]
    measure_general(base_lm, 0)

    session = EditSession(model, tok, env)
    edit_info: dict[str, dict] = {}
    bar = tqdm(
        total=n_edits,
        unit="edit",
        disable=not progress,
        desc=f"{editor.name}, {n_edits} sequential edits",
    )
    try:
        for start in range(0, n_edits, batch_size):
            batch = cases[start : start + batch_size]
            t0 = time.perf_counter()
            apply_requests(session, [r for case in batch for r in case.requests], editor)
            info = {"edit_time_s": time.perf_counter() - t0, "batch_size": len(batch)}
            edit_info.update({c.case_id: info for c in batch})
            edited = start + len(batch)
            bar.update(len(batch))
            to_score = list(batch) if scoring == "immediate" else []
            at_checkpoint = bool(points) and points[0] <= edited
            while points and points[0] <= edited:
                points.pop(0)
                to_score = cases[:edited]
            rows += _score(
                session, to_score, edited, needs, chosen, results, edit_info, done, store, env.seed
            )
            if at_checkpoint or edited == n_edits:
                measure_general(session.lm, edited)
        restore_bytes = session.restore_bytes  # what undoing all edits costs in memory
    finally:
        bar.close()
        session.restore()

    protocol = _describe(scoring, n_edits, batch_size, checkpoint_list)
    by_point: dict[int, list[dict]] = {}
    for row in rows:
        by_point.setdefault(row["checkpoint"], []).append(row)
    last = rows if scoring == "immediate" else by_point.get(n_edits, [])
    summary = summarize(last, chosen, run, protocol, skipped)
    summary["checkpoints"] = {
        str(k): summarize(by_point[k], chosen, run, protocol)["metrics"] for k in sorted(by_point)
    }
    summary["session_restore_bytes"] = restore_bytes
    if general:
        summary["general"] = {
            str(r["checkpoint"]): r["general"]
            for r in sorted(general_rows, key=lambda r: r["checkpoint"])
        }
    if store is not None:
        store.write_summary(summary)
    return EvalReport(summary, rows + general_rows, store.root if store else None)


def _score(
    session: EditSession,
    cases: list[EditCase],
    edited: int,
    needs: Any,
    chosen: list,
    results: dict[str, list[ProbeResult]],
    edit_info: dict[str, dict],
    done: dict[str, dict],
    store: ResultStore | None,
    seed: int,
) -> list[dict]:
    """Score the cases not yet scored at this number of edits, and write their rows."""
    todo = [c for c in cases if row_key({"case_id": c.case_id, "checkpoint": edited}) not in done]
    if not todo:
        return []
    t0 = time.perf_counter()
    score_probes(session.lm, todo, needs, "post", results, seed)
    elapsed = (time.perf_counter() - t0) / len(todo)
    rows = []
    for case in todo:
        row = {
            "case_id": case.case_id,
            "checkpoint": edited,
            "requests": [r.to_dict() for r in case.requests],
            **edit_info[case.case_id],
            "post_eval_time_s": elapsed,
            "metrics": case_metrics(results[case.case_id], chosen),
        }
        details = case_details(results[case.case_id])
        if details:
            row["details"] = details
        rows.append(row)
        if store is not None:
            store.append(row)
    return rows


def _describe(scoring: str, n_edits: int, batch_size: int, points: list[int]) -> str:
    how = f"{n_edits} edits applied one after another" + (
        f" in batches of {batch_size}" if batch_size > 1 else ""
    )
    if scoring == "immediate":
        return f"sequential-immediate: {how}; each case scored right after its own edit"
    return (
        f"sequential-final: {how}; every case scored after the last edit, and the cases "
        f"edited so far at checkpoints {', '.join(map(str, points))}"
    )
