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

from kedit.data import loaders, multi_edit
from kedit.env import default_data_dir
from kedit.types import EditCase

Converter = Callable[[loaders.Record, int], EditCase]


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset. ``convert`` turns one record into a case; ``prepare``, when set instead,
    builds that converter from the data file's folder (for side files such as relation
    prompts)."""

    name: str
    relpath: str  # under the data dir ("" + bundled=True for package data)
    convert: Converter | None
    description: str
    bundled: bool = False
    prepare: Callable[[Path], Converter] | None = None

    def converter(self, path: Path) -> Converter:
        if self.prepare is not None:
            return self.prepare(path.parent)
        assert self.convert is not None
        return self.convert


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
        "CounterFact, full ROME schema (EVOKE): paraphrases, 10 neighbours, distracting "
        "neighbours, one-hop question, generation prompts",
    ),
    DatasetSpec(
        "counterfact-subj-spec",
        "evoke/evoke_subj_spec.json",
        loaders.counterfact_subject_specificity,
        "EVOKE subject specificity: edits with another relation of the same subject",
    ),
    DatasetSpec(
        "mquake",
        "mquake/MQuAKE-CF.json",
        None,
        "MQuAKE-CF subset: up to 4 edits per case, multi-hop questions, the benchmark's prompts",
        prepare=multi_edit.mquake,
    ),
    DatasetSpec(
        "mquake-cloze",
        "mquake/MQuAKE-CF.json",
        multi_edit.mquake_cloze,
        "MQuAKE-CF subset, kedit's earlier variant: every hop by its cloze, its own prompts",
    ),
    *[
        DatasetSpec(
            f"conflict-{mode}",
            f"pitfalls/GPT-J/{mode}_edit.json",
            None,
            f"ConflictEdit {mode} conflict (GPT-J split): two edits in sequence"
            + (", and the second alone" if mode == "coverage" else ""),
            prepare=multi_edit.conflict_edit,
        )
        for mode in ("coverage", "reverse", "composite")
    ],
    DatasetSpec(
        "reversed-relation",
        "pitfalls/GPT-J/reverse_edit.json",
        None,
        "Reversed Relation portability: ConflictEdit's reverse edits, first edit only, asked "
        "through the inverse relation",
        prepare=multi_edit.reversed_relation,
    ),
    *[
        DatasetSpec(
            f"roundedit-{level}",
            f"pitfalls/GPT-J/{level}.json",
            None,
            f"RoundEdit {level} (GPT-J split): o -> o* -> o on 1-to-N relations",
            prepare=multi_edit.round_edit,
        )
        for level in ("easy", "hard")
    ],
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
        raise KeyError(
            f"unknown dataset {name!r}: not a file and not one of {', '.join(DATASETS)} "
            "(kedit ls datasets)"
        )
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
    if name in DATASETS:
        convert = DATASETS[name].converter(path)
    else:
        try:
            convert = detect_format(records[0], path)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return loaders.build_cases(records, convert, str(path), limit)


def detect_format(record: loaders.Record, path: Path) -> Converter:
    """The converter for a file of unknown origin, by its first record's keys."""
    keys = set(record)
    if "true_objects" in keys and "edit" in keys:
        return multi_edit.round_edit(path.parent)
    if "edits" in keys and "triples" in keys:
        return multi_edit.conflict_edit(path.parent)
    if "questions" in keys and isinstance(record.get("requested_rewrite"), list):
        return multi_edit.mquake(path.parent)
    return loaders.detect_format(record)


__all__ = ["DATASETS", "DatasetSpec", "dataset_path", "load_dataset"]
