"""The training loop of the meta-learning editors (``kedit train``).

Each optimiser step sums the gradients of ``accumulate`` batches of ``batch_size`` edits (the
method's objective: the edit loss after the edit, the locality KL), divides by ``accumulate``,
clips their norm at ``grad_clip`` and steps the method's optimiser. Every ``val_every`` steps
(and after the first, as the reference does, and at the last) the held-out examples are edited
with the current editor and scored with the same objective: the best validation loss so far is
written as the editor (what edits use), the run's state as the checkpoint, and the curve beside
them (redrawn at most once a minute, and at the end). Training stops at ``max_steps``, when the
validation loss has not improved for ``patience`` steps, or after the step (or validation) that
ends past the run's ``time_limit_s`` (validated and saved like any other stop). Run again with
the same arguments, it resumes from the checkpoint and ends where an uninterrupted run would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from kedit._version import __version__
from kedit.env import Environment
from kedit.methods._editors import CHECKPOINT, EDITOR, save_tensors
from kedit.methods._hypernet import TrainingExample
from kedit.methods._trained import TrainedMethod
from kedit.model.hooks import frozen
from kedit.model.lm import hf_module, model_device
from kedit.train.curve import write_curve
from kedit.train.data import TrainingData
from kedit.train.state import Progress, Sampler, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run left: where the editor is, how far it trained, its curve."""

    folder: Path
    steps: int
    best_step: int
    best: dict[str, float]
    curve: list[dict[str, Any]]
    stopped_early: bool
    resumed_from: int
    wall_s: float
    out_of_time: bool = False


def train_editor(
    method: TrainedMethod,
    model: Any,
    tok: PreTrainedTokenizerBase,
    data: TrainingData,
    env: Environment,
    out: Path | None = None,
    progress_bar: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train ``method``'s editor for ``model`` on ``data`` (resuming a checkpoint in the
    folder), and write it to ``out`` or kedit's cache (:meth:`TrainedMethod.editor_folder`).
    With ``time_limit_s``, this run stops (validated and checkpointed, so a rerun continues)
    after the first step, or validation, that ends past that many seconds from its start."""
    model = hf_module(model)
    cfg = method.config
    folder = Path(out) if out is not None else method.editor_folder(model)
    torch.manual_seed(env.seed)  # the editor's initialisation
    editor = method.build_editor(model).to(model_device(model))
    optimiser = method.optimiser(editor)
    sampler = Sampler.start(len(data.train), cfg.batch_size, env.seed)
    meta = _meta(method, model, data, env)
    progress, resumed = Progress(), 0
    if (folder / f"{CHECKPOINT}.safetensors").is_file():
        progress, saved = load_checkpoint(folder, editor, optimiser, sampler)
        _check_resumable(saved, meta, folder)
        resumed = progress.step
        log.info("resuming %s training from step %d in %s", method.name, resumed, folder)
    bar = tqdm(
        total=cfg.max_steps,
        initial=progress.step,
        desc=f"train {method.name}",
        disable=not progress_bar,
        unit="step",
    )
    running: dict[str, list[float]] = {}
    this_run = time.perf_counter()
    started = this_run - progress.wall_s
    drawn = this_run
    out_of_time = False
    with frozen(model):
        while progress.step < cfg.max_steps and not progress.stopped_early and not out_of_time:
            stats = _step(method, model, tok, data.train, editor, optimiser, sampler, progress)
            for key, value in stats.items():
                running.setdefault(key, []).append(value)
            progress.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{sum(v) / len(v):.3g}" for k, v in running.items() if k in SHOWN})
            out_of_time = past(time_limit_s, this_run)
            # the first step is validated too: the reference's validation at iteration 0
            last = progress.step in (1, cfg.max_steps) or out_of_time
            if progress.step % cfg.val_every == 0 or last:
                progress.wall_s = time.perf_counter() - started
                _validate_and_save(
                    method,
                    model,
                    tok,
                    data,
                    editor,
                    optimiser,
                    sampler,
                    progress,
                    running,
                    meta,
                    folder,
                )
                running = {}
                if time.perf_counter() - drawn > CURVE_EVERY_S:  # seconds a draw costs, not more
                    write_curve(
                        folder,
                        method.display_name,
                        progress.curve,
                        progress.best_step,
                        method.curve_panels,
                    )
                    drawn = time.perf_counter()
                # a validation that ends past the limit ends the run: the state is saved, and
                # one more step would cost another validation
                out_of_time = past(time_limit_s, this_run)
    bar.close()
    if progress.curve:
        write_curve(
            folder, method.display_name, progress.curve, progress.best_step, method.curve_panels
        )
    best = next((p["val"] for p in progress.curve if p["step"] == progress.best_step), {})
    return TrainResult(
        folder,
        progress.step,
        progress.best_step,
        best,
        progress.curve,
        progress.stopped_early,
        resumed,
        progress.wall_s,
        out_of_time,
    )


def past(limit_s: float | None, since: float) -> bool:
    """Whether ``limit_s`` seconds (if any) have passed since ``since``."""
    return limit_s is not None and time.perf_counter() - since >= limit_s


#: the curve is redrawn after a validation at most this often (and when the run ends)
CURVE_EVERY_S = 60.0

#: running statistics shown on the progress bar
SHOWN = ("loss", "edit_nll", "edit_acc", "loc_kl")


def _step(
    method: TrainedMethod,
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    editor: nn.Module,
    optimiser: torch.optim.Optimizer,
    sampler: Sampler,
    progress: Progress,
) -> dict[str, float]:
    """One optimiser step: ``accumulate`` batches' gradients, averaged, clipped, stepped."""
    cfg = method.config
    editor.train()
    optimiser.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for _ in range(cfg.accumulate):
        batch = [examples[i] for i in sampler.next(progress)]
        for key, value in method.train_step(model, tok, batch, editor).items():
            totals[key] = totals.get(key, 0.0) + value / cfg.accumulate
    params = [p for p in editor.parameters() if p.grad is not None]
    for p in params:
        p.grad /= cfg.accumulate
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if not torch.isfinite(norm):
        raise FloatingPointError(
            f"{method.name} training: the gradient norm is {norm.item()} at step "
            f"{progress.step + 1}; lower lr (--set lr=...) or check the data"
        )
    optimiser.step()
    method.after_step(editor, optimiser)
    return {**totals, "grad_norm": float(norm)}


def validate(
    method: TrainedMethod,
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    examples: Sequence[TrainingExample],
    editor: nn.Module,
) -> dict[str, float]:
    """The objective's statistics on held-out examples, edited in batches of ``batch_size``
    with the editor in evaluation mode (its running statistics frozen)."""
    size, totals, weight = method.config.batch_size, {}, 0
    editor.eval()
    with torch.no_grad():
        for start in range(0, len(examples), size):
            batch = examples[start : start + size]
            stats = method.objective(model, tok, batch, editor).stats
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value * len(batch)
            weight += len(batch)
    return {k: v / weight for k, v in totals.items()}


def _validate_and_save(
    method: TrainedMethod,
    model: nn.Module,
    tok: PreTrainedTokenizerBase,
    data: TrainingData,
    editor: nn.Module,
    optimiser: torch.optim.Optimizer,
    sampler: Sampler,
    progress: Progress,
    running: dict[str, list[float]],
    meta: dict[str, Any],
    folder: Path,
) -> None:
    cfg = method.config
    val = validate(method, model, tok, data.val, editor)
    train_means = {k: sum(v) / len(v) for k, v in running.items()}
    progress.curve.append(
        {"step": progress.step, "val": val, "train": train_means, "wall_s": progress.wall_s}
    )
    log.info("%s step %d: validation %s", method.name, progress.step, val)
    method.after_validation(editor, val)
    if val["loss"] < progress.best_loss:
        progress.best_loss, progress.best_step = val["loss"], progress.step
        editor_meta = {**meta, "steps": progress.step, "val": val, "curve": progress.curve}
        save_tensors(folder, EDITOR, editor.state_dict(), editor_meta)
    elif progress.step - progress.best_step >= cfg.patience:
        progress.stopped_early = True
        log.info("%s: no better validation loss for %d steps; stopping", method.name, cfg.patience)
    save_checkpoint(folder, editor, optimiser, sampler, progress, meta)


def _meta(
    method: TrainedMethod, model: nn.Module, data: TrainingData, env: Environment
) -> dict[str, Any]:
    """What the editor files record about their making."""
    config = getattr(model, "config", None)
    return {
        "method": method.name,
        "model": getattr(config, "_name_or_path", None),
        "model_fingerprint": env.fingerprint(model),
        "key_fields": method.config.key_fields(),
        "config": method.config.to_dict(),
        "train_data": data.name,
        "data_path": str(data.path),
        "data_sha256": data.sha256,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "seed": env.seed,
        "kedit": __version__,
        "torch": torch.__version__,
        "device": str(model_device(model)),
    }


def _check_resumable(saved: dict[str, Any], meta: dict[str, Any], folder: Path) -> None:
    for key in ("method", "model_fingerprint", "key_fields", "data_sha256", "seed"):
        if saved.get(key) != meta[key]:
            raise ValueError(
                f"the checkpoint in {folder} belongs to another run ({key}: {saved.get(key)!r} "
                f"there, {meta[key]!r} here); train into another folder (--out) or delete it"
            )
