"""Text corpora for covariance statistics (and perplexity).

A corpus is named by a spec string:

* a path to a ``.txt`` file (one document per non-empty line) or a ``.jsonl`` file (a ``text``
  field per line);
* a named corpus under the data directory: ``wikitext-2`` (its ``valid.txt``, keeping
  ``test.txt`` for perplexity) or ``wikitext-2:test``;
* ``hf:<dataset>[:<config>[:<split>]]`` to stream a Hugging Face dataset (needs ``datasets`` and
  the Hub).

Each corpus has an ``id`` that changes when its content changes; caches are keyed by it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

#: named corpora: name -> (folder under the data dir, default file)
NAMED = {"wikitext-2": ("wikitext-2", "valid.txt")}


@dataclass(frozen=True)
class Corpus:
    """A list of documents with a content-derived id."""

    id: str
    documents: tuple[str, ...]

    def sample(self, n: int, seed: int) -> list[str]:
        """``n`` documents chosen at random (seeded), or all of them if there are fewer."""
        docs = list(self.documents)
        if n >= len(docs):
            return docs
        return random.Random(seed).sample(docs, n)


def load_corpus(spec: str, data_dir: Path | None = None) -> Corpus:
    """Resolve a corpus spec (see module docstring) into documents."""
    if spec.startswith("hf:"):
        return _load_hf(spec)
    name, _, split = spec.partition(":")
    if name in NAMED:
        if data_dir is None:
            raise FileNotFoundError(
                f"corpus {spec!r} lives in the data directory; set KEDIT_DATA_DIR or --data-dir "
                f"to the folder holding {NAMED[name][0]}/, or name a text file instead"
            )
        folder, default = NAMED[name]
        path = Path(data_dir) / folder / (f"{split}.txt" if split else default)
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus {spec!r}: no file at {path}. Name a .txt/.jsonl file, 'wikitext-2' with a "
            "data directory, or 'hf:dataset:config:split' when the Hub is reachable"
        )
    raw = path.read_bytes()
    if path.suffix == ".jsonl":
        docs = [json.loads(line)["text"] for line in raw.decode().splitlines() if line.strip()]
    else:
        docs = [line.strip() for line in raw.decode().splitlines()]
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError(f"corpus {path} has no text")
    digest = hashlib.sha256(raw).hexdigest()[:12]
    return Corpus(f"{path.stem}-{digest}", tuple(docs))


def _load_hf(spec: str) -> Corpus:
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "hf: corpora need the 'datasets' package: pip install 'kedit[hub]'"
        ) from err
    parts = spec[3:].split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
    split = parts[2] if len(parts) > 2 else "train"
    data = datasets.load_dataset(name, config, split=split)
    column = "text" if "text" in data.column_names else data.column_names[0]
    docs = tuple(t.strip() for t in data[column] if t and t.strip())
    fingerprint = getattr(data, "_fingerprint", "")
    safe = f"{name}-{config or ''}-{split}-{fingerprint}".replace("/", "_")
    return Corpus(f"hf-{safe}", docs)
