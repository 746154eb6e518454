"""Decay over thousands of sequential edits: efficacy, paraphrase, neighbourhood, perplexity.

Usage:
    python benchmarks/bench_decay.py [--runs memit:1000,alphaedit:1000,ultraedit@lr=1e-4:1000]
        [--checkpoints 100,1000,10000] [--batch 100] [--sample 500] [--general-limit N]
        [--store runs/decay] [--device cpu] [--dry-run]

Each method of ``--runs`` edits the first N CounterFact cases (the dataset's edit split, in
order) in batches of ``--batch`` in one session, and is scored at every checkpoint up to its N:
``kedit eval --protocol "sequential:K1,...,N;batch=B;sample=S" --general wikitext`` (a seeded
sample of S of the cases edited so far per checkpoint; efficacy, paraphrase and neighbourhood
scores, each with its 95% bootstrap interval over cases; WikiText-2 perplexity with its
interval over texts). A run named ``method@key=value@...`` edits with those settings (``kedit
eval --set key=value``) and is reported under that name. Each run lives in ``--store/<name>``
and is resumed there, so a killed benchmark loses no finished checkpoint.

Prints the decay table, draws ``decay-<device>.png`` and writes ``decay-<device>.json`` under
``benchmarks/results``; runs already in that file under other names are kept (and drawn), so
methods run at different times end up in one table. A method "collapses" at the first
checkpoint where its efficacy interval lies wholly below 0.5 (no better than the unedited
model's chance of preferring the new target) or its perplexity is more than twice the unedited
model's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MEASURES = ("efficacy_score", "paraphrase_score", "neighborhood_score")
RESULTS = Path(__file__).parent / "results"


def parse_runs(text: str) -> dict[str, int]:
    """``name:edits`` pairs, a name being ``method`` or ``method@key=value@...``."""
    runs = {}
    for part in text.split(","):
        name, _, edits = part.rpartition(":")
        settings = name.split("@")[1:]
        if not edits.isdigit() or not name or any("=" not in s for s in settings):
            raise SystemExit(f"--runs takes method[@key=value...]:edits pairs, got {part!r}")
        runs[name.strip()] = int(edits)
    return runs


def command(name: str, edits: int, args: argparse.Namespace) -> list[str]:
    points = [k for k in args.checkpoints if k < edits] + [edits]
    protocol = f"sequential:{','.join(map(str, points))};batch={args.batch};sample={args.sample}"
    out = args.store / name
    method, *settings = name.split("@")
    cmd = [sys.executable, "-m", "kedit.cli", "eval", "--method", method]
    for setting in settings:
        cmd += ["--set", setting]
    cmd += ["--dataset", "counterfact", "--limit", str(edits), "--protocol", protocol]
    cmd += ["--metrics", ",".join(MEASURES), "--general", "wikitext", "--out", str(out), "--quiet"]
    if args.general_limit:
        cmd += ["--general-limit", str(args.general_limit)]
    if args.device:
        cmd += ["--device", args.device]
    if (out / "results.jsonl").exists():
        cmd.append("--resume")
    return cmd


def decay_rows(method: str, summary: dict) -> list[dict]:
    """One row per checkpoint: each measure's mean and interval, perplexity and its change."""
    general = summary.get("general", {})
    base = general.get("0", {}).get("wikitext", {}).get("score")
    rows = []
    for point, measures in sorted(
        summary.get("checkpoints", {}).items(), key=lambda kv: int(kv[0])
    ):
        row = {"method": method, "edits": int(point)}
        for name in MEASURES:
            entry = measures.get(name, {})
            row[name] = entry.get("post")
            row[f"{name}_ci"] = entry.get("post_ci")
            row["n"] = entry.get("n", row.get("n"))
        ppl = general.get(point, {}).get("wikitext", {})
        row["perplexity"], row["perplexity_ci"] = ppl.get("score"), ppl.get("ci")
        row["perplexity_change"] = ppl["score"] / base - 1 if base and "score" in ppl else None
        rows.append(row)
    return rows


def collapse(rows: list[dict]) -> int | None:
    for row in rows:
        ci = row.get("efficacy_score_ci")
        if (ci and ci[1] < 0.5) or (row["perplexity_change"] or 0) > 1.0:
            return row["edits"]
    return None


def fmt(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| method | edits | n | efficacy | paraphrase | neighbourhood | WikiText ppl (change) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ppl = fmt(r["perplexity"], r["perplexity_ci"])
        if r["perplexity_change"] is not None:
            ppl += f" ({r['perplexity_change']:+.1%})"
        cells = [fmt(r[m], r[f"{m}_ci"]) for m in MEASURES]
        lines.append(f"| {r['method']} | {r['edits']:,} | {r['n']} | {' | '.join(cells)} | {ppl} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        x = [r["edits"] for r in mine]
        for ax, name in zip(axes, [*MEASURES, "perplexity"]):
            y = [r[name] for r in mine]
            ci = [r[f"{name}_ci"] for r in mine]
            ax.plot(x, y, marker="o", label=method)
            if all(ci):
                ax.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], alpha=0.2)
            ax.set_xscale("log")
            if name == "perplexity":
                ax.set_yscale("log")  # a collapse multiplies it
            ax.set_title(name.replace("_", " "))
            ax.set_xlabel("sequential edits")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="memit:1000,alphaedit:1000,ultraedit:10000")
    parser.add_argument("--checkpoints", default="100,1000,10000")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--sample", type=int, default=500)
    parser.add_argument("--general-limit", type=int)
    parser.add_argument("--store", type=Path, default=Path("runs/decay"))
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args()
    args.checkpoints = [int(k) for k in args.checkpoints.split(",")]
    rows: list[dict] = []
    collapses = {}
    for method, edits in parse_runs(args.runs).items():
        cmd = command(method, edits, args)
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        subprocess.run(cmd, check=True)
        summary = json.loads((args.store / method / "summary.json").read_text())
        mine = decay_rows(method, summary)
        rows += mine
        collapses[method] = collapse(mine)
    if args.dry_run:
        return
    device = args.device or ("cuda" if _cuda() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"decay-{device}.json"
    if path.exists():  # keep the runs of earlier invocations under other names
        earlier = json.loads(path.read_text())
        rows = [r for r in earlier["rows"] if r["method"] not in collapses] + rows
        collapses = {k: v for k, v in earlier["collapse"].items() if k not in collapses} | collapses
    print(table(rows))
    for method, point in collapses.items():
        print(f"{method}: " + (f"collapses by {point:,} edits" if point else "no collapse seen"))
    path.write_text(
        json.dumps({"rows": rows, "collapse": collapses, "sample": args.sample}, indent=1)
    )
    plot(rows, args.out / f"decay-{device}.png")
    print(f"written to {path} and .png")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
