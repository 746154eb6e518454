"""What an edit costs in memory: its peak above what was in use before it.

On CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``, reset before the edit).
On Linux CPUs the process's resident-set high-water mark, reset before the edit by writing
``5`` to ``/proc/self/clear_refs`` (the kernel's documented way to reset ``VmHWM``), so each
edit gets its own peak. Elsewhere the process's lifetime peak RSS, which only bounds it.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class MemoryUse:
    """Bytes in use before, the peak during, and what ``peak_bytes`` measures (``kind``)."""

    kind: str = ""
    before_bytes: int = 0
    peak_bytes: int = 0

    @property
    def extra_bytes(self) -> int:
        return max(self.peak_bytes - self.before_bytes, 0)

    def as_row(self) -> dict[str, int | str]:
        return {
            "edit_memory_bytes": self.extra_bytes,
            "peak_memory_bytes": self.peak_bytes,
            "memory_kind": self.kind,
        }


@contextmanager
def measure_memory(device: torch.device | str) -> Iterator[MemoryUse]:
    """Measure the peak memory of the block on ``device`` (see module docstring)."""
    device = torch.device(device)
    use = MemoryUse()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        use.kind, use.before_bytes = "cuda allocated", torch.cuda.memory_allocated(device)
        yield use
        torch.cuda.synchronize(device)
        use.peak_bytes = torch.cuda.max_memory_allocated(device)
        return
    resettable = _reset_rss_peak()
    use.kind = "cpu rss" if resettable else "cpu rss (process lifetime peak)"
    use.before_bytes = _status_bytes("VmRSS") or 0
    yield use
    use.peak_bytes = _status_bytes("VmHWM") or _lifetime_peak_rss()


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None where there is no /proc)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _lifetime_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux
