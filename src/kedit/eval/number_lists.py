"""The text forms of whole-number lists in protocols: counts (``1,10,20``) and values with
inclusive ranges (``0-3,8``), and the canonical spelling of the latter."""

from __future__ import annotations

from collections.abc import Sequence


def parse_counts(text: str, form: str) -> list[int]:
    """``1,10,20`` -> ``[1, 10, 20]``: whole numbers >= 1 (sizes, edit counts); ``form`` is the
    text form errors name."""
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"sizes must be whole numbers ({form})") from None
    if any(n < 1 for n in numbers):
        raise ValueError(f"sizes must be at least 1 ({form})")
    return numbers


def parse_ranges(text: str) -> tuple[int, ...]:
    """``0-3,8`` -> ``(0, 1, 2, 3, 8)``: whole numbers >= 0 and inclusive ranges, sorted, each
    once."""
    values: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(
                f"{part!r} is neither a whole number >= 0 nor a range such as 0-29"
            ) from None
        if first > last:
            raise ValueError(f"the range {part!r} runs backwards")
        values.update(range(first, last + 1))
    if not values:
        raise ValueError("no value given: write e.g. 0-29, 0,5,10 or 0-3,8")
    return tuple(sorted(values))


def format_ranges(values: Sequence[int]) -> str:
    """``(0, 1, 2, 3, 8)`` -> ``0-3,8``: each run of consecutive values as a range (the
    inverse of :func:`parse_ranges` on sorted distinct values)."""
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
