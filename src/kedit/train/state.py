"""A training run's resumable state, written as safetensors plus JSON (never pickle).

The checkpoint holds the editor's parameters and buffers, the optimiser's state, the sampler
(its generator and the current epoch's order) and the bookkeeping of early stopping and the
validation curve: enough that a run resumed from it ends exactly where an uninterrupted run on
the same seed ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kedit.methods._editors import CHECKPOINT, load_tensors, save_tensors


@dataclass
class Progress:
    """Where a run is: optimiser steps, the sampler's place, early stopping, the curve."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next batch start in the epoch's order
    best_loss: float = float("inf")
    best_step: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    stopped_early: bool = False


@dataclass
class Sampler:
    """Batches of training examples: a seeded permutation per epoch, consumed in order."""

    n: int
    batch_size: int
    generator: torch.Generator
    order: torch.Tensor

    @classmethod
    def start(cls, n: int, batch_size: int, seed: int) -> Sampler:
        generator = torch.Generator().manual_seed(seed)
        return cls(n, batch_size, generator, torch.randperm(n, generator=generator))

    def next(self, progress: Progress) -> list[int]:
        if progress.cursor + self.batch_size > self.n:
            self.order = torch.randperm(self.n, generator=self.generator)
            progress.epoch += 1
            progress.cursor = 0
        batch = self.order[progress.cursor : progress.cursor + self.batch_size].tolist()
        progress.cursor += self.batch_size
        return batch


def save_checkpoint(
    folder: Path,
    editor: nn.Module,
    optimiser: torch.optim.Optimizer,
    sampler: Sampler,
    progress: Progress,
    meta: dict[str, Any],
) -> None:
    tensors = {f"editor.{k}": v for k, v in editor.state_dict().items()}
    optim = optimiser.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["sampler.generator"] = sampler.generator.get_state()
    tensors["sampler.order"] = sampler.order
    info = {
        **meta,
        "progress": asdict(progress),
        "optim_groups": optim["param_groups"],
        "optim_scalars": scalars,
    }
    save_tensors(folder, CHECKPOINT, tensors, info)


def load_checkpoint(
    folder: Path, editor: nn.Module, optimiser: torch.optim.Optimizer, sampler: Sampler
) -> tuple[Progress, dict[str, Any]]:
    """Load a checkpoint into ``editor``, ``optimiser`` and ``sampler``; its progress and
    metadata."""
    tensors, info = load_tensors(folder, CHECKPOINT)
    editor.load_state_dict(
        {k[len("editor.") :]: v for k, v in tensors.items() if k.startswith("editor.")},
        strict=True,
    )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in info["optim_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimiser.load_state_dict({"state": state, "param_groups": info["optim_groups"]})
    sampler.generator.set_state(tensors["sampler.generator"])
    sampler.order = tensors["sampler.order"]
    return Progress(**info["progress"]), info
