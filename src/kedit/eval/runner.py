"""``evaluate``: edit every case of a dataset, score it before and after, keep every result.

Protocol ``single``: each case is edited on the unedited model, scored, and the edit is undone
before the next case. Scores of the unedited model are computed for several cases in one batch.

Results are appended to ``results.jsonl`` one line per finished case (flushed and fsynced), so a
killed run keeps everything it finished; ``resume=True`` skips those cases. ``run.json`` holds
the resolved configuration, package versions and model fingerprint, and a resumed run must match
it. ``summary.json`` aggregates the metrics, each with its group and protocol.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from kedit.data import load_dataset
from kedit.env import Environment
from kedit.eval.cost import MemoryUse, measure_memory
from kedit.eval.formulas import reversion_rate_by_confidence
from kedit.eval.metrics import Metric, missing_probes, needs_of, resolve_metrics
from kedit.eval.metrics_pitfalls import dialogue_details
from kedit.eval.scoring import ProbeResult, score_probes
from kedit.methods import EditSession, make_method
from kedit.methods.base import EditMethod, hf_module
from kedit.model.lm import as_language_model
from kedit.types import EditCase

log = logging.getLogger(__name__)

PRE_BATCH = 16  # cases whose unedited scores share one batched pass
RESULTS, RUN, SUMMARY = "results.jsonl", "run.json", "summary.json"


@dataclass
class EvalReport:
    """Aggregated metrics plus where the per-case results are."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None

    def table(self) -> list[tuple[str, str, str, float | None, float | None, int]]:
        """(metric, group, protocol, pre, post, n) rows in group order."""
        return [
            (name, m["group"], m["protocol"], m.get("pre"), m.get("post"), m["n"])
            for name, m in self.summary["metrics"].items()
        ]


def evaluate(
    model: Any,
    tok: PreTrainedTokenizerBase,
    dataset: str | Sequence[EditCase],
    method: str | EditMethod,
    *,
    overrides: dict[str, Any] | None = None,
    metrics: list[str] | None = None,
    suite: str = "core",
    limit: int | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    env: Environment | None = None,
    progress: bool = True,
) -> EvalReport:
    """Edit and score each case of ``dataset`` with ``method`` (see module docstring).

    ``metrics`` names the measures; by default those of ``suite`` (``core``, or ``pitfalls`` for
    every registered measure). Measures the dataset has no probes for are skipped, and the
    summary says which and why.
    """
    env = env if env is not None else Environment()
    cases = select_cases(dataset, env, limit)
    editor = (
        method if isinstance(method, EditMethod) else make_method(method, model, overrides, env)
    )
    chosen, skipped = choose_metrics(metrics, suite, cases)
    run = run_info(model, editor, dataset, cases, chosen, env)
    store = ResultStore(Path(out_dir)) if out_dir is not None else None
    done: dict[str, dict] = {}
    if store is not None:
        done = store.open(run, resume)
    pending = [c for c in cases if c.case_id not in done]
    rows = [done[c.case_id] for c in cases if c.case_id in done]
    base_lm = as_language_model(model, tok)
    needs = needs_of(chosen)
    bar = tqdm(
        total=len(cases),
        initial=len(rows),
        unit="case",
        disable=not progress,
        desc=f"{editor.name} on {run['dataset']}",
    )
    try:
        for start in range(0, len(pending), PRE_BATCH):
            chunk = pending[start : start + PRE_BATCH]
            results: dict[str, list[ProbeResult]] = {}
            t0 = time.perf_counter()
            score_probes(base_lm, chunk, needs, "pre", results, env.seed)
            pre_time = (time.perf_counter() - t0) / len(chunk)
            for case in chunk:
                row = run_case(model, tok, case, editor, env, chosen, needs, results)
                row["pre_eval_time_s"] = pre_time
                rows.append(row)
                if store is not None:
                    store.append(row)
                bar.update(1)
    finally:
        bar.close()
    summary = summarize(rows, chosen, run, skipped=skipped)
    if store is not None:
        store.write_summary(summary)
    return EvalReport(summary, rows, store.root if store else None)


def choose_metrics(
    names: list[str] | None, suite: str, cases: list[EditCase]
) -> tuple[list[Metric], dict[str, str]]:
    """The metrics to compute, and those skipped because no case has probes for them (with the
    reason, logged). A metric named explicitly that the dataset cannot feed is an error."""
    chosen = resolve_metrics(names, suite)
    skipped = missing_probes(chosen, cases)
    if names is not None and skipped:
        raise ValueError(
            "the dataset cannot feed "
            + "; ".join(f"{name} ({why})" for name, why in skipped.items())
            + "; pick metrics from its probes (kedit ls metrics) or another dataset"
        )
    for name, why in skipped.items():
        log.info("skipping %s: %s", name, why)
    return [m for m in chosen if m.name not in skipped], skipped


def select_cases(
    dataset: str | Sequence[EditCase], env: Environment, limit: int | None
) -> list[EditCase]:
    if isinstance(dataset, str):
        cases = load_dataset(dataset, env.data_dir, limit)
    else:
        cases = list(dataset)[: limit or None]
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique within a dataset")
    return cases


def run_case(
    model: Any,
    tok: PreTrainedTokenizerBase,
    case: EditCase,
    editor: EditMethod,
    env: Environment,
    chosen: list[Metric],
    needs: Any,
    results: dict[str, list[ProbeResult]],
) -> dict[str, Any]:
    """Edit one case on the unedited model (in its steps), score it after the edit (and after
    its first step where a measure reads that), undo the edit; a row of its metrics, times and
    the edit's memory, or of the error that stopped it."""
    row: dict[str, Any] = {
        "case_id": case.case_id,
        "requests": [r.to_dict() for r in case.requests],
    }
    try:
        with EditSession(model, tok, env) as session:
            steps = case.edit_steps
            post_eval = 0.0
            peak = MemoryUse()
            for number, requests in enumerate(steps, start=1):
                with measure_memory(model_device(model)) as memory:
                    edit = apply_requests(session, requests, editor)
                peak = max(peak, memory, key=lambda m: m.extra_bytes)
                if number == 1 and len(steps) > 1 and needs.mid:
                    t0 = time.perf_counter()
                    score_probes(session.lm, [case], needs, "mid", results, env.seed)
                    post_eval += time.perf_counter() - t0
            row["edit_time_s"] = sum(e.info.get("edit_time_s", 0.0) for e in session.edits)
            row.update(peak.as_row())
            row["edit_info"] = _jsonable(edit.info)
            t0 = time.perf_counter()
            score_probes(session.lm, [case], needs, "post", results, env.seed)
            row["post_eval_time_s"] = post_eval + time.perf_counter() - t0
    except Exception as err:  # one failing case must not end a run of thousands
        log.warning("case %s failed: %s", case.case_id, err)
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    row["metrics"] = case_metrics(results[case.case_id], chosen)
    details = case_details(results[case.case_id])
    if details:
        row["details"] = details
    return row


def apply_requests(session: EditSession, requests: Sequence[Any], editor: EditMethod) -> Any:
    """One edit step: all requests in one call for batch methods, else one after another."""
    if len(requests) == 1 or editor.supports_batch:
        return session.apply(list(requests), editor)
    for request in requests:
        edit = session.apply(request, editor)
    return edit


def case_metrics(results: list[ProbeResult], chosen: list[Metric]) -> dict[str, dict]:
    out = {}
    for metric in chosen:
        post = metric(results, "post")
        if post is None:
            continue
        entry = {"post": post} if metric.paired else {"pre": metric(results, "pre"), "post": post}
        if metric.pooled:
            entry["n"] = sum(r.probe.kind in metric.kinds for r in results)
        out[metric.name] = entry
    return out


def case_details(results: list[ProbeResult]) -> dict[str, Any]:
    """What a case's numbers alone do not show: for dialogue probes, the turns and outcomes; the
    first sampled text about the subject (fluency), before and after."""
    details: dict[str, Any] = {}
    dialogue = dialogue_details(results)
    if dialogue:
        details["dialogue"] = dialogue
    sampled = next((r for r in results if r.post.text is not None), None)
    if sampled is not None:
        details["generation_sample"] = {"pre": sampled.pre.text, "post": sampled.post.text}
    return details


SINGLE = "single: each case edited on the unedited model and scored right after"


def summarize(
    rows: list[dict],
    chosen: list[Metric],
    run: dict[str, Any],
    protocol: str = SINGLE,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Means over cases of each metric before and after editing (pooled metrics weight each
    case by its number of probes), plus the analyses across cases."""
    ok = [r for r in rows if "metrics" in r]
    metrics: dict[str, dict] = {}
    for metric in chosen:
        values = [r["metrics"][metric.name] for r in ok if metric.name in r["metrics"]]
        if not values:
            continue
        entry: dict[str, Any] = {
            "group": metric.group,
            "protocol": metric.protocol,
            "higher_is_better": metric.higher_is_better,
            "n": len(values),
        }
        for stage in ("pre", "post"):
            weighted = [(v[stage], v.get("n", 1)) for v in values if v.get(stage) is not None]
            if weighted:
                entry[stage] = sum(x * n for x, n in weighted) / sum(n for _, n in weighted)
        metrics[metric.name] = entry
    times = [r["edit_time_s"] for r in ok if "edit_time_s" in r]
    evals = [
        r["post_eval_time_s"] + r.get("pre_eval_time_s", 0.0) for r in ok if "post_eval_time_s" in r
    ]
    return {
        "run": run,
        "protocol": protocol,
        "cases": len(rows),
        "errors": len(rows) - len(ok),
        "metrics": metrics,
        "skipped": dict(skipped or {}),
        "analyses": analyses(ok),
        "median_edit_time_s": _median(times),
        "median_eval_time_s": _median(evals),
    }


def analyses(rows: list[dict]) -> dict[str, Any]:
    """Across-case analyses: dialogue reversion by the unedited model's confidence in the old
    answer (Ma et al.: well-known facts revert more), in confidence quartiles, since a small
    model's probabilities crowd near zero where fixed bins would put every reply in one."""
    turns = [t for r in rows for t in r.get("details", {}).get("dialogue", [])]
    turns = [t for t in turns if t.get("post_outcome") and t.get("confidence") is not None]
    if not turns:
        return {}
    confidences = [t["confidence"] for t in turns]
    ordered = sorted(confidences)
    quartiles = [ordered[round(q * (len(ordered) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)]
    edges = sorted(set(quartiles))
    if len(edges) < 2:  # every reply at one confidence: one bin
        edges = [0.0, 1.0]
    outcomes = [t["post_outcome"] for t in turns]
    bins = reversion_rate_by_confidence(outcomes, confidences, edges)
    return {"dialogue_reversion_by_confidence": [asdict(b) for b in bins]}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_info(
    model: Any,
    editor: EditMethod,
    dataset: Any,
    cases: list[EditCase],
    chosen: list[Metric],
    env: Environment,
) -> dict[str, Any]:
    """What produced a run's numbers: method and config, data, measures, model, versions."""
    return {
        "method": editor.name,
        "config": editor.config.to_dict(),
        "dataset": dataset if isinstance(dataset, str) else "<cases>",
        "n_cases": len(cases),
        **model_info(model, env),
        "metrics": {m.name: {"group": m.group, "protocol": m.protocol} for m in chosen},
        "protocol": {"name": "single"},
    }


def model_info(model: Any, env: Environment) -> dict[str, Any]:
    """The model (name, type, content fingerprint, device), seed, statistics corpus and the
    package versions."""
    import torch
    import transformers

    import kedit

    hf = hf_module(model)
    return {
        "model": getattr(hf.config, "_name_or_path", "") or hf.config.model_type,
        "model_type": hf.config.model_type,
        "model_fingerprint": env.fingerprint(hf),
        "stats_corpus": env.stats_corpus,
        "seed": env.seed,
        "versions": {
            "kedit": kedit.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "device": str(model_device(model)),
    }


def model_device(model: Any) -> Any:
    return next(hf_module(model).parameters()).device


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, type(None)))}


def row_key(row: dict[str, Any]) -> str:
    """A result row's identity: the case, and for sequential runs the number of edits."""
    return f"{row['case_id']}@{row['checkpoint']}" if "checkpoint" in row else row["case_id"]


class ResultStore:
    """``results.jsonl`` + ``run.json`` + ``summary.json`` in one folder."""

    RESUME_KEYS = (
        "method",
        "config",
        "dataset",
        "model_fingerprint",
        "stats_corpus",
        "seed",
        "protocol",
        "metrics",
    )

    def __init__(self, root: Path) -> None:
        self.root = root
        self.results = root / RESULTS

    def open(self, run: dict[str, Any], resume: bool) -> dict[str, dict]:
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
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, indent=1))
        tmp.replace(run_file)
        return self._read_done() if resume else {}

    def _read_done(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if not self.results.is_file():
            return done
        raw = self.results.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]  # a killed writer may leave a partial last line
        if len(complete) != len(raw):
            with open(self.results, "r+b") as f:
                f.truncate(len(complete))
        for line in complete.decode().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row_key(row)] = row
        return done

    def append(self, row: dict[str, Any]) -> None:
        with open(self.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary: dict[str, Any]) -> None:
        path = self.root / SUMMARY
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(path)
