"""How kedit prints numbers (and answer traces), in the console, the report and the findings
alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: what a missing value prints as
MISSING = "–"


def format_value(value: float | None, digits: int = 3) -> str:
    """A score with ``digits`` decimals; very large values (an exploded perplexity) in
    scientific notation; :data:`MISSING` for None."""
    if value is None:
        return MISSING
    return f"{value:.3g}" if abs(value) >= 1e6 else f"{value:.{digits}f}"


def format_interval(value: float | None, interval: Sequence[float] | None, digits: int = 3) -> str:
    """A value with its 95% interval, ``0.850 [0.700, 0.950]``; the value alone without one."""
    if value is None or interval is None:
        return format_value(value, digits)
    low, high = (format_value(x, digits) for x in interval)
    return f"{format_value(value, digits)} [{low}, {high}]"


def format_relative(change: float) -> str:
    """A relative change as a percentage, or as a factor once it is tenfold or more (a
    perplexity that exploded)."""
    return f"x{1 + change:.3g}" if abs(change) >= 10 else f"{change:+.1%}"


def format_duration(seconds: float) -> str:
    """Seconds, minutes or hours, whichever reads best."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


#: the keys of an answer trace that sum up how its answer came about, where the method has them
#: (SERAC: which model answered; MeLLo, DeepEdit: where the answer came from, why the loop ended)
TRACE_OUTCOME_KEYS = ("answered_by", "answer_from", "stopped")


def trace_outcome(trace: dict[str, Any]) -> str:
    """One line for how a traced answer came about, e.g. ``answer_from memory; stopped final
    answer`` (a missing value reads ``none``)."""
    parts = [
        f"{k} {trace[k] if trace[k] is not None else 'none'}"
        for k in TRACE_OUTCOME_KEYS
        if k in trace
    ]
    return "; ".join(parts)


def format_trace(trace: dict[str, Any], width: int = 160) -> list[str]:
    """An answer trace as lines: the method, the answer and its outcome, the other scalar
    fields, then each step of its lists (MeLLo's hops, DeepEdit's path and log) on its own line,
    every line cut to ``width`` characters. A step already shown under an earlier list (each of
    DeepEdit's path steps is also in its log) is named, not printed again."""
    scalars = {k: v for k, v in trace.items() if not isinstance(v, (list, dict))}
    head = f"{scalars.pop('method', 'trace')}:"
    if "answer" in scalars:
        head += f" answer {scalars.pop('answer')!r}"
    outcome = trace_outcome(trace)
    lines = [head + (f" ({outcome})" if outcome else "")]
    rest = {k: v for k, v in scalars.items() if k not in TRACE_OUTCOME_KEYS}
    if rest:
        lines.append("  " + "; ".join(f"{k}: {v}" for k, v in rest.items()))
    shown: list[tuple[dict[str, Any], str]] = []  # (step, where it was printed)
    for key, value in trace.items():
        if not (isinstance(value, list) and value and all(isinstance(x, dict) for x in value)):
            continue
        for i, step in enumerate(value):
            earlier = next((where for seen, where in shown if seen == step), None)
            if earlier is not None:
                lines.append(f"  {key}[{i}] = {earlier}")
                continue
            lines.append(f"  {key}[{i}] " + "; ".join(f"{k}: {v}" for k, v in step.items()))
            shown.append((step, f"{key}[{i}]"))
    return [line if len(line) <= width else line[: width - 3] + "..." for line in lines]
