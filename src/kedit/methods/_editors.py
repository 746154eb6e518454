"""Trained editors (hypernetworks) on disk: safetensors plus JSON, never pickle.

One folder per editor, keyed by what makes it valid::

    <cache>/editors/<method>/<model fingerprint>/<config hash>/
        editor.safetensors  editor.json        the best validated weights, what edits use
        checkpoint.safetensors checkpoint.json the latest training state (kedit train resumes)
        curve.png                              the validation curve

The config hash covers every hyperparameter that shapes the editor or its training
(:meth:`~kedit.methods._meta.MetaConfig.key_fields`), the training data's name among them;
``editor.json`` also records the training file's SHA-256, the steps trained and the validation
curve. Files are written to a temporary name and renamed, so a killed process never leaves a
half-written editor behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kedit.env import private_tmp

EDITOR = "editor"
CHECKPOINT = "checkpoint"


def config_hash(fields: Mapping[str, Any]) -> str:
    """A short hash of the fields that key an editor."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def editor_dir(cache_dir: Path, method: str, fingerprint: str, fields: Mapping[str, Any]) -> Path:
    """Where the editor of ``method`` for this model and these key fields lives."""
    return Path(cache_dir) / "editors" / method / fingerprint / config_hash(fields)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(folder: Path, name: str, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    """Write ``<name>.safetensors`` and ``<name>.json`` atomically (the JSON last: a folder
    whose JSON names a step has the tensors of that step)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights, info = folder / f"{name}.safetensors", folder / f"{name}.json"
    tmp_weights, tmp_info = private_tmp(weights), private_tmp(info)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp_weights))
    tmp_info.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    os.replace(tmp_weights, weights)
    os.replace(tmp_info, info)


def load_tensors(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``<name>.safetensors`` and its JSON; FileNotFoundError when either is missing."""
    weights, info = Path(folder) / f"{name}.safetensors", Path(folder) / f"{name}.json"
    if not weights.is_file() or not info.is_file():
        raise FileNotFoundError(f"no {name}.safetensors with its {name}.json in {folder}")
    return load_file(str(weights)), json.loads(info.read_text())


def resolve_editor_path(path: str | Path) -> Path:
    """The folder of an editor named by ``--editor``: the folder, or its editor.safetensors."""
    path = Path(path).expanduser()
    folder = path.parent if path.suffix == ".safetensors" else path
    if not (folder / f"{EDITOR}.safetensors").is_file():
        raise FileNotFoundError(
            f"--editor {path}: no {EDITOR}.safetensors there (kedit train writes one, and prints "
            "its folder)"
        )
    return folder
