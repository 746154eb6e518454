"""Before and after tables of a re-run acceptance bench, and one sentence per number that moved.

Usage:
    python benchmarks/acceptance_tables.py BEFORE.csv[.gz] AFTER_DIR [--out DIR]

BEFORE is a bench's CSV export (``kedit report DIR --csv``; the bench issue's acceptance bench
at dd07874 is ``benchmarks/results/regression-e8b86c4-dd07874/after.csv.gz``); AFTER_DIR is a
bench folder (its ``bench.sqlite``) of the same cases and seed at a later commit. For every job
and checkpoint:

* each case measure's pooled mean before and after (as the bench report pools it), the after
  mean's 95% bootstrap interval over the cases, and the paired change (after - before on the
  same cases, bootstrap over them) with the number of cases whose value changed;
* each general-ability task the after bench measured: its score on all its examples with the
  interval over them, and, where the before bench measured the same task on fewer examples,
  both scores on those examples alone (the first N of the after sample: the tasks select the
  first N records, so they are the same ones).

Then the after bench's verdict on each of the survey's claims with its intervals. A number
"moved" when it differs at the printed precision; each moved number gets a sentence
with the changes since dd07874 that touch its method (:data:`CHANGES`; issue 12's fixes and the
later work that is exact only up to float noise). Writes ``acceptance.md`` and
``acceptance.json`` to ``--out`` (default: AFTER_DIR) and prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from kedit.bench.details import general_results
from kedit.bench.findings import evaluate_claims
from kedit.bench.store import BenchStore
from kedit.bench.summary import BenchSummary
from kedit.eval.formulas.uncertainty import estimate, mean_estimate, value_of, weighted_mean
from kedit.eval.general.task import GENERAL_TASKS, change_estimate

#: the measures shown in the tables (every measure is in the JSON)
SHOWN = (
    "efficacy_score",
    "paraphrase_score",
    "neighborhood_score",
    "rewrite_gen_match",
    "locality_top1_agreement",
)

#: what changed since dd07874 that can move a method's numbers (issue 12's fixes, then the
#: speed work whose results equal the old ones up to float noise)
CHANGES = {
    "kl": "the v* search's KL prompt is '{subject} is a' as in ROME/MEMIT (it filled the whole "
    "prompt in)",
    "pmet": "PMET's top-1 relaxation switches back when the target stops being top-1",
    "grace": "GRACE reads one query token (the last prompt token) at the references' layer and "
    "updates a value only outside the radius",
    "ftl": "FT-L on Llama-like models follows EasyEdit's published setting",
    "noise": "cached and batched passes (prefix keys and values, shared blocks) that equal the "
    "old ones up to float noise",
}
METHOD_CHANGES = {
    "rome": ("kl", "noise"),
    "r-rome": ("kl", "noise"),
    "memit": ("kl", "noise"),
    "emmet": ("kl", "noise"),
    "alphaedit": ("kl", "noise"),
    "pmet": ("kl", "pmet", "noise"),
    "grace": ("grace", "noise"),
    "ft-l": ("ftl", "noise"),
    "kn": ("noise",),
    "ft-m": ("noise",),
    "ike": ("noise",),
}


def read_before(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def number(value) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


def case_values(rows: list[dict]) -> dict[tuple[str, int, str], dict[str, tuple[float, float]]]:
    """(job, checkpoint, measure) -> case -> (post value, pooling weight), for the case
    measures."""
    out: dict[tuple[str, int, str], dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in rows:
        if r["group"] == "general" or number(r["post"]) is None:
            continue
        key = (r["job_id"], int(r["checkpoint"]), r["measure"])
        out[key][str(r["case_id"])] = (number(r["post"]), number(r["weight"]) or 1.0)
    return out


def general_before(rows: list[dict]) -> dict[tuple[str, int, str], tuple[float, int]]:
    """(job, checkpoint, task) -> (score, examples) of the before bench's general rows."""
    return {
        (r["job_id"], int(r["checkpoint"]), r["measure"]): (float(r["post"]), int(r["weight"]))
        for r in rows
        if r["group"] == "general"
    }


def _pooled(values: np.ndarray, weights: np.ndarray) -> float:
    return value_of(weighted_mean(values, weights), len(values))


def case_table(before: dict, after: dict, summary: BenchSummary) -> list[dict]:
    """One entry per (job, checkpoint, measure) of the after bench: its value and interval as
    the bench report gives them, and the paired change from the before bench."""
    entries = []
    for (job, checkpoint, measure), cases in sorted(after.items()):
        ids = sorted(cases, key=lambda c: (len(c), c))
        post = np.array([cases[c][0] for c in ids])
        weights = np.array([cases[c][1] for c in ids])
        found = summary.estimate(job, checkpoint, measure)
        entry = {
            "job": job,
            "checkpoint": checkpoint,
            "measure": measure,
            "after": found.value if found else _pooled(post, weights),
            "after_ci": _interval(found),
            "n": len(ids),
        }
        old = before.get((job, checkpoint, measure))
        if old is not None and set(old) == set(ids):
            pre = np.array([old[c][0] for c in ids])
            change = post - pre  # a case's probes are the same before and after: same weights
            entry |= {
                "before": _pooled(pre, weights),
                "change": _pooled(change, weights),
                "change_ci": _interval(mean_estimate(change, weights)),
                "cases_changed": int((np.abs(change) > 1e-9).sum()),
            }
        entries.append(entry)
    return entries


def general_table(store: BenchStore, before: dict) -> list[dict]:
    """One entry per (job, checkpoint, task) of the after bench's general ability, with its
    change from the unedited model (paired over the same examples)."""
    entries = []
    results = general_results(store.cases())
    unedited = next((r for (job, _), r in results.items() if job.startswith("unedited/")), {})
    for (job, checkpoint), tasks in sorted(results.items()):
        for task, result in sorted(tasks.items()):
            spec = GENERAL_TASKS[task]
            n, statistic = spec.statistic(result["samples"])
            entry = {
                "job": job,
                "checkpoint": checkpoint,
                "measure": task,
                "after": float(result["score"]),
                "after_ci": _interval(estimate(statistic, n, spec.unit)),
                "n": n,
            }
            base = unedited.get(task)
            found = change_estimate(task, base, result) if base and base is not result else None
            if found is not None:
                entry |= {"from_unedited": found.value, "from_unedited_ci": _interval(found)}
            old = before.get((job, checkpoint, task))
            if old is not None and old[1] <= n:
                first = np.arange(old[1])[None]  # (1, N): the first N examples
                entry |= {
                    "before": old[0],
                    "before_n": old[1],
                    "after_on_before_examples": float(statistic(first)[0]),
                }
            entries.append(entry)
    return entries


def _interval(found) -> list[float] | None:
    return None if found is None else [found.low, found.high]


def moved(entry: dict) -> bool:
    if "before" not in entry:
        return False
    after = entry.get("after_on_before_examples", entry["after"])
    return _fmt(entry["before"]) != _fmt(after)


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= 1e4:
        return f"{value:.3g}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _ci(interval: list[float] | None) -> str:
    return "" if interval is None else f" [{_fmt(interval[0])}, {_fmt(interval[1])}]"


def _change(task: str, value: float, interval: list[float] | None) -> str:
    """A change from the unedited model: a difference, or a relative change for perplexity."""
    if GENERAL_TASKS[task].metric == "perplexity":
        low, high = interval or (value, value)
        return f"{value:+.1%} [{low:+.1%}, {high:+.1%}]"
    return f"{value:+.3f}{_ci(interval)}"


def sentence(entry: dict) -> str:
    """One moved number: where, what, before -> after and its paired change or sample."""
    checkpoint, measure = entry["checkpoint"], entry["measure"]
    scenario = entry["job"].split("/", 1)[1]
    if scenario == "single":
        where = "single edits"
    else:
        where = f"{checkpoint} sequential edit{'s' if checkpoint != 1 else ''}"
    if "change" in entry:
        how = (
            f"{_fmt(entry['before'])} -> {_fmt(entry['after'])} (paired change "
            f"{entry['change']:+.3f}{_ci(entry['change_ci'])} over {entry['n']} cases, "
            f"{entry['cases_changed']} of them changed)"
        )
    else:
        how = (
            f"{_fmt(entry['before'])} -> {_fmt(entry['after_on_before_examples'])} on the same "
            f"first {entry['before_n']} examples ({_fmt(entry['after'])}{_ci(entry['after_ci'])}"
            f" on all {entry['n']})"
        )
    return f"After {where}, {measure} moved {how}."


def moved_sections(entries: list[dict]) -> list[str]:
    """The moved numbers by method: the changes that touch the method once, then a sentence
    per number."""
    by_method: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        if moved(entry):
            by_method[entry["job"].split("/", 1)[0]].append(sentence(entry))
    lines = [f"## Numbers that moved ({sum(map(len, by_method.values()))})", ""]
    for method, sentences in sorted(by_method.items()):
        causes = "; ".join(CHANGES[c] for c in METHOD_CHANGES.get(method, ()))
        lines += [
            f"### {method}: {len(sentences)}",
            "",
            f"Changes that touch it: {causes or 'none named'}.",
            "",
        ]
        lines += [f"- {s}" for s in sentences] + [""]
    return lines


def verdicts(summary: BenchSummary) -> list[dict]:
    """The after bench's verdict on each of the survey's claims, with the sentence (and its
    intervals) that decided it."""
    return [
        {"claim": f.claim, "verdict": f.verdict, "sentence": f.sentence, "needed": f.needed}
        for f in evaluate_claims(summary)
    ]


def markdown(cases: list[dict], general: list[dict], claims: list[dict]) -> str:
    lines = ["# Acceptance bench: before (dd07874) and after", ""]
    lines += ["## Case measures (mean over cases; after with its 95% interval)", ""]
    lines += [
        "| job | checkpoint | measure | before | after | paired change |",
        "|---|---|---|---|---|---|",
    ]
    for e in cases:
        if e["measure"] not in SHOWN:
            continue
        change = f"{e['change']:+.3f}{_ci(e['change_ci'])}" if "change" in e else "new"
        lines.append(
            f"| {e['job']} | {e['checkpoint']} | {e['measure']} | {_fmt(e.get('before'))} | "
            f"{_fmt(e['after'])}{_ci(e['after_ci'])} | {change} |"
        )
    lines += ["", "## General ability", ""]
    lines += [
        "| job | checkpoint | task | before (n) | after on the same examples | after, all (n) "
        "| change from unedited |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in general:
        before = f"{_fmt(e['before'])} ({e['before_n']})" if "before" in e else "–"
        same = _fmt(e.get("after_on_before_examples"))
        change = (
            _change(e["measure"], e["from_unedited"], e["from_unedited_ci"])
            if "from_unedited" in e
            else "–"
        )
        lines.append(
            f"| {e['job']} | {e['checkpoint']} | {e['measure']} | {before} | {same} | "
            f"{_fmt(e['after'])}{_ci(e['after_ci'])} ({e['n']}) | {change} |"
        )
    lines += ["", "## The survey's claims (after)", ""]
    lines += [f"- {c['claim']}: **{c['verdict']}**. {c['sentence']}" for c in claims]
    lines += ["", *moved_sections(cases + general)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    before_rows = read_before(args.before)
    store = BenchStore(args.after, create=False)
    summary = BenchSummary.load(args.after)
    cases = case_table(case_values(before_rows), case_values(store.results()), summary)
    general = general_table(store, general_before(before_rows))
    claims = verdicts(summary)
    text = markdown(cases, general, claims)
    out = args.out or args.after
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceptance.md").write_text(text, encoding="utf-8")
    payload = {"before": str(args.before), "cases": cases, "general": general, "claims": claims}
    (out / "acceptance.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
