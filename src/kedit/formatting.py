"""How kedit prints numbers, in the console, the report and the findings alike."""

from __future__ import annotations

from collections.abc import Sequence

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
