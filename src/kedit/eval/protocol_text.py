"""The protocols' text form: ``single``, ``batch:10``, ``sequential:1,10,20;batch=10``,
``sweep:layer=0-5``; the registry of protocol kinds a user names, and the order of tables."""

from __future__ import annotations

from kedit.eval.number_lists import parse_counts, parse_ranges
from kedit.eval.protocols import (
    CHECKPOINT_SAMPLE,
    Batch,
    Protocol,
    Sequential,
    Single,
    Sweep,
)
from kedit.registry import Registry


def _parse_single(rest: str) -> Protocol:
    if rest:
        raise ValueError("the single protocol takes no size")
    return Single()


def _parse_batch(rest: str) -> Protocol:
    sizes = parse_counts(rest, "batch:B")
    if len(sizes) != 1:
        raise ValueError("write batch:B with one batch size")
    return Batch(sizes[0])


def _parse_sequential(rest: str) -> Protocol:
    points, *options = rest.split(";")
    numbers = parse_counts(points, "sequential:K1,K2,...")
    if not numbers:
        raise ValueError("write sequential:K1,K2,... (edit counts)")
    settings: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key.strip() not in ("batch", "scoring", "sample", "final"):
            raise ValueError(
                f"unknown sequential option {option!r}: use batch=B, scoring=..., sample=S "
                "(or sample=all) or final=all"
            )
        settings[key.strip()] = value.strip()
    batch = parse_counts(settings.get("batch", "1"), "batch=B")
    if len(batch) != 1:
        raise ValueError("write batch=B with one batch size")
    sample = (
        parse_sample(settings["sample"], "sample=S") if "sample" in settings else CHECKPOINT_SAMPLE
    )
    if settings.get("final", "all") != "all":
        raise ValueError("write final=all to score every case at the last checkpoint")
    points = tuple(sorted(set(numbers)))
    scoring = settings.get("scoring", "final")
    return Sequential(points, batch[0], scoring, sample, "final" in settings)


def parse_sample(text: str, option: str) -> int | None:
    """A sequential checkpoint's sample: a number of cases, or ``all`` (None); ``option`` is
    how the user wrote it, for the error."""
    if text.strip() == "all":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{option} takes a number of cases (at least 1) or 'all', got {text!r}")
    return int(text)


def _parse_sweep(rest: str) -> Protocol:
    key, sep, values = rest.partition("=")
    if not sep or not key.strip():
        raise ValueError("write sweep:KEY=VALUES, e.g. sweep:layer=0-29 or sweep:layer=0,5,10")
    return Sweep(key.strip(), parse_ranges(values))


#: the protocols a user names, by the first word of their text form
PROTOCOLS: Registry = Registry("protocol")
PROTOCOLS.register("single", _parse_single, "each case edited on the unedited model")
PROTOCOLS.register("batch", _parse_batch, "batch:B: B cases per update")
PROTOCOLS.register("sequential", _parse_sequential, "sequential:K1,K2[;batch=B][;scoring=...]")
PROTOCOLS.register("sweep", _parse_sweep, "sweep:KEY=V1-V2,V3: single once per value of KEY")


#: the order of protocols in tables
TABLE_ORDER = ("single", "batch", "sequential", "sweep")


def parse_protocol(text: str | Protocol) -> Protocol:
    """A protocol from its text form (``single``, ``batch:10``, ``sequential:1,10,20``,
    ``sequential:100,1000;batch=100``, ``sequential:20;scoring=immediate``, ``sweep:layer=0-5``)."""
    if isinstance(text, Protocol):
        return text
    kind, _, rest = text.strip().partition(":")
    if kind not in PROTOCOLS:
        raise ValueError(
            f"unknown protocol {text!r}: use single, batch:B, sequential:K1,K2,... or sweep:KEY=V"
        )
    try:
        return PROTOCOLS[kind](rest.strip())
    except ValueError as err:
        raise ValueError(f"protocol {text!r}: {err}") from None


def parse_protocols(text: str) -> list[Protocol]:
    """``single,batch:10,sequential:1,10,20`` -> protocols (numbers after a ``kind:`` belong to
    it until the next kind)."""
    parts: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part[0].isdigit() and parts:
            parts[-1] += "," + part
        else:
            parts.append(part)
    return [parse_protocol(p) for p in parts]


def order_key(protocol: Protocol | str) -> tuple[int, tuple[int, ...], str]:
    """Single first, then batch by size, sequential by checkpoints, sweeps by their values: the
    order of tables."""
    try:
        parsed = parse_protocol(protocol)
    except ValueError:
        return (len(TABLE_ORDER), (), str(protocol))
    sizes = {
        Batch: lambda p: (p.size,),
        Sequential: lambda p: p.checkpoints,
        Sweep: lambda p: p.values,
    }
    rank = TABLE_ORDER.index(parsed.kind)
    return (rank, sizes.get(type(parsed), lambda p: ())(parsed), str(parsed))
