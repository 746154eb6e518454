"""Training data of the meta-learning editors: a named training split (or a file), turned into
:class:`~kedit.methods._meta.TrainingExample` s, split into training and held-out validation
examples with the environment's seed.

Editors never train on an evaluation split: only the datasets in :data:`TRAINING_SETS` are
accepted by name, and a file given by path is refused when it is byte-identical to the file of
a dataset kedit evaluates on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kedit.data import DATASETS, dataset_path, load_dataset
from kedit.methods._editors import file_sha256
from kedit.methods._hypernet import TrainingExample

#: the named splits made for training editors (MEND's and EasyEdit's)
TRAINING_SETS = ("counterfact-train", "zsre-train")


@dataclass
class TrainingData:
    """Training and validation examples, and where they came from."""

    name: str
    path: Path
    sha256: str
    train: list[TrainingExample]
    val: list[TrainingExample]


def training_data(
    name: str,
    data_dir: Path | None,
    val_size: int,
    batch_size: int,
    seed: int,
    limit: int | None = None,
) -> TrainingData:
    """The examples of ``name`` (a training split, or a file), ``val_size`` of them held out
    (a seeded permutation); at most ``limit`` read."""
    path = dataset_path(name, data_dir)
    sha = file_sha256(path)
    if name in DATASETS and name not in TRAINING_SETS:
        raise ValueError(
            f"{name} is an evaluation dataset; editors train on a training split "
            f"({', '.join(TRAINING_SETS)}) or a file of your own"
        )
    if name not in DATASETS:
        _refuse_evaluation_file(path, sha, data_dir)
    cases = load_dataset(name, data_dir, limit)
    examples = [TrainingExample.from_case(c) for c in cases]
    if len(examples) < val_size + batch_size:
        raise ValueError(
            f"{name} has {len(examples)} examples: too few to hold out val_size={val_size} and "
            f"train on batches of {batch_size} (lower val_size with --set val_size=N)"
        )
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    val = [examples[i] for i in order[:val_size]]
    train = [examples[i] for i in order[val_size:]]
    return TrainingData(name, path, sha, train, val)


def _refuse_evaluation_file(path: Path, sha: str, data_dir: Path | None) -> None:
    for spec_name in DATASETS:
        if spec_name in TRAINING_SETS:
            continue
        try:
            evaluated = dataset_path(spec_name, data_dir)
        except (FileNotFoundError, KeyError):
            continue
        if evaluated.stat().st_size == path.stat().st_size and file_sha256(evaluated) == sha:
            raise ValueError(
                f"{path} is the evaluation dataset {spec_name} ({evaluated}); editors never "
                "train on an evaluation split"
            )
