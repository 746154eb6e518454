"""Benchmark datasets by name, or any file in a known format.

``load_dataset("counterfact", data_dir)`` reads ``<data_dir>/counterfact/counterfact-edit.json``;
``load_dataset("path/to/file.json")`` detects the format from the records' keys; ``demo`` is
bundled with kedit and needs no data directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kedit.data import loaders
from kedit.env import default_data_dir
from kedit.types import EditCase


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    relpath: str  # under the data dir ("" + bundled=True for package data)
    convert: Callable[[loaders.Record, int], EditCase]
    description: str
    bundled: bool = False


_SPECS = [
    DatasetSpec(
        "demo",
        "demo_facts.json",
        loaders.demo,
        "52 counterfactual edits written for kedit (bundled)",
        bundled=True,
    ),
    DatasetSpec(
        "counterfact",
        "counterfact/counterfact-edit.json",
        loaders.counterfact_flat,
        "CounterFact, flat schema, 10,000 edits (rephrase + one neighbour)",
    ),
    DatasetSpec(
        "counterfact-train",
        "counterfact/counterfact-train.json",
        loaders.counterfact_flat,
        "CounterFact training split, flat schema",
    ),
    DatasetSpec(
        "counterfact-full",
        "evoke/evoke_main.json",
        loaders.counterfact_rome,
        "CounterFact, full ROME schema (2 paraphrases, 10 neighbours)",
    ),
    DatasetSpec(
        "zsre",
        "zsre/zsre_mend_eval_portability_gpt4.json",
        loaders.zsre_mend,
        "ZsRE question answering edits, MEND schema",
    ),
    DatasetSpec(
        "zsre-train",
        "zsre/zsre_mend_train-1k.json",
        loaders.zsre_mend,
        "ZsRE training subset, MEND schema",
    ),
    DatasetSpec(
        "knowedit-counterfact",
        "knowedit/wiki_counterfact/train_cf.json",
        loaders.knowedit,
        "KnowEdit WikiData_counterfact",
    ),
    DatasetSpec(
        "knowedit-zsre", "knowedit/ZsRE/ZsRE-test-all.json", loaders.knowedit, "KnowEdit ZsRE test"
    ),
]
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}


def dataset_path(name: str, data_dir: str | Path | None = None) -> Path:
    """Where dataset ``name`` (or a file path) is read from."""
    if name not in DATASETS:
        path = Path(name).expanduser()
        if path.is_file():
            return path
        raise KeyError(f"unknown dataset {name!r}: not a file and not one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    if spec.bundled:
        return Path(str(resources.files("kedit.data") / spec.relpath))
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if root is None:
        raise FileNotFoundError(
            f"dataset {name!r} is read from a data directory: pass --data-dir DIR or set "
            f"KEDIT_DATA_DIR to the folder that holds {spec.relpath.split('/')[0]}/"
        )
    path = root / spec.relpath
    if not path.is_file():
        raise FileNotFoundError(f"dataset {name!r}: no file at {path}")
    return path


def load_dataset(
    name: str, data_dir: str | Path | None = None, limit: int | None = None
) -> list[EditCase]:
    """Cases of a named dataset or a file, at most ``limit`` of them."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    path = dataset_path(name, data_dir)
    records = loaders.read_json_records(path)
    if not records:
        raise ValueError(f"{path} holds no records")
    convert = DATASETS[name].convert if name in DATASETS else loaders.detect_format(records[0])
    return loaders.build_cases(records, convert, str(path), limit)


__all__ = ["DATASETS", "DatasetSpec", "dataset_path", "load_dataset"]
