"""Compare two bench CSV exports (``kedit report DIR --csv``) number by number.

Usage:
    python benchmarks/compare_bench_csv.py BEFORE.csv AFTER.csv [--tolerance 0] [--out diff.json]

A refactoring that must not change results (the one-engine issue's acceptance) runs the same
bench at two commits and compares the exports: every result row is keyed by (job, case,
checkpoint, measure) and its numbers (``pre``, ``post``, ``weight``) and labels (group,
protocol, direction) must agree; timing and memory columns and the kedit version are left out,
since they differ from run to run. Prints the rows only one side has, the rows that differ (with
both values), and a count per job; writes the same as JSON with ``--out``. Exit status 0 when
the two agree within ``--tolerance`` (absolute, 0 by default: bit-equal as printed), else 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path

KEY = ("job_id", "case_id", "checkpoint", "measure")
LABELS = ("method", "scenario", "group", "protocol", "higher_is_better", "model_fingerprint")
NUMBERS = ("pre", "post", "weight")


def read(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    table = {tuple(r[k] for k in KEY): r for r in rows}
    if len(table) != len(rows):
        raise SystemExit(f"{path}: {len(rows) - len(table)} rows share a key {KEY}")
    return table


def differs(a: str, b: str, tolerance: float) -> bool:
    if a == b:
        return False
    try:
        x, y = float(a), float(b)
    except ValueError:
        return True
    if math.isnan(x) and math.isnan(y):
        return False
    return not abs(x - y) <= tolerance


def compare(before: dict, after: dict, tolerance: float) -> dict:
    only_before = sorted(set(before) - set(after))
    only_after = sorted(set(after) - set(before))
    changed = []
    for key in sorted(set(before) & set(after)):
        a, b = before[key], after[key]
        fields = [f for f in LABELS if a.get(f) != b.get(f)]
        fields += [f for f in NUMBERS if differs(a[f], b[f], tolerance)]
        if fields:
            changed.append({"key": key, "fields": {f: [a.get(f), b.get(f)] for f in fields}})
    return {
        "common_rows": len(set(before) & set(after)),
        "only_before": only_before,
        "only_after": only_after,
        "changed": changed,
        "rows_per_job": dict(Counter(k[0] for k in set(before) & set(after))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = compare(read(args.before), read(args.after), args.tolerance)
    print(f"rows in both: {result['common_rows']}")
    for job, n in sorted(result["rows_per_job"].items()):
        print(f"  {job}: {n}")
    for side in ("only_before", "only_after"):
        print(f"rows only {side[5:]}: {len(result[side])}")
        for key in result[side][:20]:
            print("  ", key)
    print(f"rows that differ: {len(result['changed'])}")
    for change in result["changed"][:50]:
        print("  ", change["key"], change["fields"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=list))
    same = not (result["only_before"] or result["only_after"] or result["changed"])
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
