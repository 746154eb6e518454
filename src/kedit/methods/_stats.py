"""Second-moment statistics C = E[k k^T] of the keys entering a module, over a text corpus.

ROME, MEMIT and their successors weigh their updates by C so that the keys of other facts keep
their values. C is computed by streaming corpus documents through the model up to the module
(the pass stops there), with a progress bar, and cached on disk by model fingerprint, module,
corpus id, sample count and dtype. Several modules are served by one pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from kedit.corpus import load_corpus
from kedit.env import Environment
from kedit.model.hooks import TraceDict, eval_mode, run_until_stopped
from kedit.model.lm import model_device
from kedit.model.tokens import pad, pad_id

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def second_moments(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    module_paths: Sequence[str],
    env: Environment,
    n_samples: int,
    dtype: str = "float32",
    max_length: int = 1024,
    batch_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """``{path: C}`` with ``C`` of shape ``(d_in, d_in)`` on the CPU, for each module input."""
    if dtype not in DTYPES:
        raise ValueError(f"statistics dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    corpus = load_corpus(env.stats_corpus, env.data_dir)
    fingerprint = env.fingerprint(model)
    files = {
        p: _cache_file(env.cache_dir, fingerprint, p, corpus.id, n_samples, dtype, max_length)
        for p in module_paths
    }

    def load(path: str) -> torch.Tensor | None:
        file = files[path]
        if not file.is_file():
            return None
        return env.memo(("mom2", str(file)), lambda: load_file(str(file))["mom2"])

    result = {p: load(p) for p in module_paths}
    missing = [p for p, c in result.items() if c is None]
    if missing:
        docs = corpus.sample(n_samples, env.seed)
        computed = _accumulate(
            model, tok, missing, docs, DTYPES[dtype], max_length, batch_tokens, env.progress
        )
        for path, mom2 in computed.items():
            _save(files[path], mom2, {"corpus": corpus.id, "documents": str(len(docs))})
            result[path] = env.memo(("mom2", str(files[path])), lambda m=mom2: m)
    return result  # type: ignore[return-value]


def _cache_file(
    cache_dir: Path,
    fingerprint: str,
    module: str,
    corpus_id: str,
    n: int,
    dtype: str,
    max_length: int,
) -> Path:
    return (
        cache_dir
        / "stats"
        / fingerprint
        / module
        / f"{corpus_id}_n{n}_len{max_length}_{dtype}.safetensors"
    )


def _save(path: Path, mom2: torch.Tensor, meta: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"mom2": mom2.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)


@torch.no_grad()
def _accumulate(
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    paths: list[str],
    docs: list[str],
    dtype: torch.dtype,
    max_length: int,
    batch_tokens: int | None,
    progress: bool,
) -> dict[str, torch.Tensor]:
    device = model_device(model)
    budget = batch_tokens or (16384 if device.type == "cuda" else 4096)
    encoded = [tok(d, add_special_tokens=True)["input_ids"][:max_length] for d in docs]
    encoded = sorted((e for e in encoded if e), key=len, reverse=True)
    sums: dict[str, torch.Tensor] = {}
    count = 0
    bar = tqdm(
        total=sum(map(len, encoded)),
        unit="tok",
        disable=not progress,
        desc=f"key statistics ({len(paths)} module{'s' * (len(paths) > 1)})",
    )
    with eval_mode(model), bar:
        start = 0
        while start < len(encoded):
            width = len(encoded[start])
            stop = start + max(1, budget // width)
            rows = encoded[start:stop]
            start = stop
            batch = pad(rows, pad_id(tok), left=False).to(device)
            with TraceDict(model, paths, retain_input=True, stop=True) as traces:
                run_until_stopped(model, **batch.model_inputs(), use_cache=False)
            mask = batch.attention_mask.bool()  # (batch, seq)
            for path in paths:
                keys = traces[path].input[mask].to(dtype)  # (tokens, d_in)
                total = keys.T @ keys  # (d_in, d_in)
                sums[path] = total if path not in sums else sums[path] + total
            count += int(mask.sum())
            bar.update(int(mask.sum()))
    log.info("key statistics for %s from %d documents, %d tokens", paths, len(docs), count)
    return {p: (s / count).cpu() for p, s in sums.items()}
