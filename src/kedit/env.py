"""The environment an edit runs in: directories, the statistics corpus, the seed, and the
explicit caches that live for as long as this object does.

Nothing is cached at module level. Two environments never share state; an
:class:`~kedit.methods.base.EditSession` keeps one for all its edits, so statistics and context
templates computed for the unedited model are reused as edits accumulate (the reference
implementations' intent), instead of being recomputed on an edited model.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def default_cache_dir() -> Path:
    env = os.environ.get("KEDIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kedit"


def private_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other process or thread uses. Write it whole,
    then ``os.replace`` it onto ``path`` (atomic): two processes filling the same cache entry
    at once (two bench workers, two test workers) each write their own file, and readers only
    ever see a whole one."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def default_data_dir() -> Path | None:
    env = os.environ.get("KEDIT_DATA_DIR")
    return Path(env).expanduser() if env else None


@dataclass
class Environment:
    """Where things are and what is cached.

    Args:
        cache_dir: statistics, converted models and templates (``KEDIT_CACHE_DIR``,
            default ``~/.cache/kedit``).
        data_dir: benchmark data folders (``KEDIT_DATA_DIR``).
        stats_corpus: text for covariance statistics: a file path, a named corpus under
            ``data_dir`` (``wikitext-2``), or ``hf:dataset[:config[:split]]`` when online.
        seed: seed for every random choice an edit makes (context templates, sampling).
        progress: show progress bars for long computations.
    """

    cache_dir: Path = field(default_factory=default_cache_dir)
    data_dir: Path | None = field(default_factory=default_data_dir)
    stats_corpus: str = "wikitext-2"
    seed: int = 0
    progress: bool = True
    _fingerprints: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )
    _memo: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False)
    _compute_on: Callable[[], AbstractContextManager[None]] = field(
        default=nullcontext, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir).expanduser()
        if self.data_dir is not None:
            self.data_dir = Path(self.data_dir).expanduser()

    def fingerprint(self, model: nn.Module) -> str:
        """A content hash of ``model``, computed the first time this environment sees it.

        Later calls return the same value even after edits, so caches keyed by it keep
        describing the model as it was before editing.
        """
        if model not in self._fingerprints:
            self._fingerprints[model] = model_fingerprint(model)
        return self._fingerprints[model]

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """An in-memory cache owned by this environment; a miss is computed inside
        :meth:`computing` (on the unedited weights, within :meth:`unedited_from`)."""
        if key not in self._memo:
            with self.computing():
                self._memo[key] = compute()
        return self._memo[key]

    @contextmanager
    def unedited_from(self, weights: Callable[[], AbstractContextManager[None]]) -> Iterator[None]:
        """Inside this block, what is computed for a cache keyed by the unedited model's
        fingerprint (a :meth:`memo` miss, key statistics) runs inside ``weights()``, a session's
        swap to its unedited weights: the swap happens only when something is computed, not
        on every edit whose caches are warm."""
        previous, self._compute_on = self._compute_on, weights
        try:
            yield
        finally:
            self._compute_on = previous

    @contextmanager
    def computing(self) -> Iterator[None]:
        """Compute something cached under the unedited fingerprint: inside the weights of
        :meth:`unedited_from` (once, however deeply computations nest)."""
        weights, self._compute_on = self._compute_on, nullcontext
        try:
            with weights():
                yield
        finally:
            self._compute_on = weights


def model_fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """Hash of the architecture config and a strided sample of every parameter and buffer.

    Cheap (milliseconds for small models, seconds for 7B), and changes when the weights change:
    two checkpoints with the same name but different weights get different fingerprints.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = config.to_dict()
        for volatile in ("_name_or_path", "transformers_version", "quantization_config"):
            cfg.pop(volatile, None)
        digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // samples_per_tensor)
            sample = flat[::step][:samples_per_tensor].to("cpu", torch.float32).contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:20]
