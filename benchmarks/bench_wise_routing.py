"""WISE's router after N sequential edits: how edit, paraphrase and neighbourhood prompts split
between the side and the main memory, for every routing threshold at once.

Usage: python benchmarks/bench_wise_routing.py [--edits 100] [--set key=value ...]
       [--ratios 0.8,0.88,0.95,1.0,1.05,1.1,1.2] [--device cpu] [--out benchmarks/results]

WISE (its preset for the model, plus ``--set`` overrides) edits the first ``--edits``
CounterFact cases one after another in one session. ``act_ratio`` only decides routing, not
training, and with fewer edits than ``save_freq`` there is one side memory: each prompt is
answered by the side memory when its ``D`` (mean over the prompt's tokens of the activation
distance between side and main memory) reaches ``act_ratio`` times the smallest edit
activation, else by the main memory. So every probe is scored once under each memory, its
``D`` read once, and each ratio's scores are combined from those: efficacy and paraphrase
(P(new) > P(old), mean log-probability per target token) and the neighbourhood score
(P(true) > P(new)), with the share of each kind of prompt that fired. Separates the two ways
WISE loses edits: a prompt that does not reach the side memory (routing) and a side memory
that no longer holds the fact (the shard forgot it: the score with every prompt routed).

How well ``D`` can separate the prompts at all is its ROC AUC (edit or paraphrase against
neighbourhood prompts), whatever the threshold. Prints a line per ratio and writes
``wise-routing-<device>.json`` (with every prompt's ``D``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

KINDS = ("edit", "paraphrase", "neighbourhood")


def probes_of(cases) -> dict[str, list[tuple[str, str, str]]]:
    """kind -> (prompt, target that should win, target that should lose)."""
    from kedit.types import ProbeKind

    out: dict[str, list[tuple[str, str, str]]] = {k: [] for k in KINDS}
    for case in cases:
        r = case.request
        out["edit"].append((r.text, r.target_new, r.target_true))
        for p in case.probes:
            if p.kind == ProbeKind.PARAPHRASE:
                out["paraphrase"].append((p.prompt, r.target_new, r.target_true))
            elif p.kind == ProbeKind.NEIGHBORHOOD:
                out["neighbourhood"].append((p.prompt, r.target_true, r.target_new))
    return out


def distances(model, tok, memory, prompts: list[str], batch_size: int = 32) -> list[float]:
    """Each prompt's ``D`` between the current side memory and the main memory, read on the
    prompt's own tokens (right padding: the real tokens' states are the unpadded ones)."""
    from kedit.model.tokens import encode, pad, pad_id

    captured = {}
    hook = memory.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    device = next(model.parameters()).device
    out: list[float] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                ids = [encode(tok, p).ids for p in prompts[start : start + batch_size]]
                batch = pad(ids, pad_id(tok), left=False)
                model(**{k: v.to(device) for k, v in batch.model_inputs().items()})
                x = captured["x"]  # (batch, seq, d_in)
                main, side = memory.layer(x), memory.side_output(x, memory.side)
                read = batch.attention_mask.bool().to(device)  # (batch, seq)
                out += memory.distance(main, side, read).tolist()
    finally:
        hook.remove()
    return out


def wins(lm, memory, weight, probes) -> dict[str, list[bool]]:
    """Per kind and prompt, whether the right target wins with ``weight`` answering every row."""
    out = {}
    with memory.setting(train_weight=weight):
        for kind, rows in probes.items():
            prompts = [p for p, _, _ in rows]
            good = lm.score_targets(prompts, [t for _, t, _ in rows])
            bad = lm.score_targets(prompts, [t for _, _, t in rows])
            out[kind] = [g.mean_logprob > b.mean_logprob for g, b in zip(good, bad)]
    return out


def separation(high: list[float], low: list[float]) -> float:
    """The chance that a ``high`` prompt's ``D`` exceeds a ``low`` one's (ROC AUC; 0.5: no
    threshold on ``D`` tells them apart, 1.0: one threshold routes all of one and none of the
    other)."""
    wins = sum((h > x) + 0.5 * (h == x) for h in high for x in low)
    return wins / (len(high) * len(low))


def main() -> None:
    import kedit
    from kedit.config import parse_override
    from kedit.env import Environment
    from kedit.methods import make_method
    from kedit.methods.wise import WiseMemory

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ratios", default="0.8,0.88,0.95,1.0,1.05,1.1,1.2")
    parser.add_argument("--device")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    env = Environment(progress=False)
    model, tok = kedit.load_model(args.model, device=args.device)
    cases = kedit.load_dataset("counterfact", env.data_dir, limit=args.edits)
    overrides = dict(parse_override(item) for item in args.set)
    editor = make_method("wise", model, overrides, env)
    session = kedit.EditSession(model, tok, env, rollback_window=0)
    seconds, activations = [], []
    for i, case in enumerate(cases, 1):
        start = time.perf_counter()
        edit = session.edit(case.request, editor)
        seconds.append(time.perf_counter() - start)
        activations.append(edit.info["activation"])
        if i % 10 == 0:
            print(f"{i} edits, median {statistics.median(seconds):.1f} s/edit", flush=True)
    memory = next(m for m in model.modules() if isinstance(m, WiseMemory))
    if memory.memories:
        raise SystemExit("more edits than save_freq: several memories, the sweep needs one")
    probes = probes_of(cases)
    dist = {k: distances(model, tok, memory, [p for p, _, _ in v]) for k, v in probes.items()}
    side = wins(session.lm, memory, memory.side, probes)
    main_ = wins(session.lm, memory, memory.main_weight(), probes)
    sweep = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        row = {"act_ratio": ratio, "threshold": ratio * memory.side_min_act}
        for kind in KINDS:
            fired = [d >= row["threshold"] for d in dist[kind]]
            row[f"fired_{kind}"] = statistics.mean(fired)
            chosen = [s if f else m for f, s, m in zip(fired, side[kind], main_[kind])]
            row[f"score_{kind}"] = statistics.mean(chosen)
        sweep.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    result = {
        "model": args.model,
        "device": str(next(model.parameters()).device),
        "edits": args.edits,
        "overrides": overrides,
        "median_s_per_edit": statistics.median(seconds),
        "activations": activations,
        "side_min_act": memory.side_min_act,
        "unedited": {k: statistics.mean(v) for k, v in main_.items()},
        "all_routed_to_side": {k: statistics.mean(v) for k, v in side.items()},
        "separation_edit_vs_neighbourhood": separation(dist["edit"], dist["neighbourhood"]),
        "separation_paraphrase_vs_neighbourhood": separation(
            dist["paraphrase"], dist["neighbourhood"]
        ),
        "D": dist,
        "sweep": sweep,
    }
    print(
        "unedited",
        result["unedited"],
        "every prompt to the side memory",
        result["all_routed_to_side"],
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"wise-routing-{result['device'].split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
