"""The public verbs: ``load_model``, ``edit``, ``evaluate``, ``run_bench``, ``trace``, ``train``.

Example::

    import kedit

    model, tok = kedit.load_model("smollm2-135m")
    request = kedit.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    with kedit.edit(model, tok, request, method="rome", overrides={"layer": 6}) as e:
        ...  # e.model is the edited model
    # the model is restored here, bit for bit
    report = kedit.evaluate(model, tok, "counterfact", "memit", protocol="sequential:1,10,20")
    traced = kedit.trace(model, tok, request)  # causal traces; kedit.trace(model, tok, cases)
    result = kedit.train(model, tok, "mend", steps=2000)  # MEND's editor, then method="mend"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from kedit.bench import BenchPlan, run_bench
from kedit.env import Environment
from kedit.eval.evaluate import EvalReport, EvalSetup, evaluate
from kedit.locate.facts import TracedFacts, TraceOptions, trace_facts
from kedit.methods import METHODS, EditMethod, make_method
from kedit.methods._trained import TrainedMethod
from kedit.methods.edit import Edit
from kedit.model.loading import load_model
from kedit.train import TrainResult, train_editor, training_data
from kedit.types import EditCase, EditRequest

RequestLike = EditRequest | Mapping[str, Any]


def as_requests(requests: RequestLike | Sequence[RequestLike]) -> list[EditRequest]:
    """Requests from ``EditRequest`` objects or mappings with the same fields."""
    items = [requests] if isinstance(requests, (EditRequest, Mapping)) else list(requests)
    out = []
    for item in items:
        if isinstance(item, EditRequest):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(EditRequest(**item))
        else:
            raise TypeError(f"an edit request is an EditRequest or a mapping, got {type(item)}")
    return out


def edit(
    model: Any,
    tok: PreTrainedTokenizerBase,
    requests: RequestLike | Sequence[RequestLike],
    method: str | EditMethod = "rome",
    *,
    overrides: dict[str, Any] | None = None,
    env: Environment | None = None,
) -> Edit:
    """Apply ``method`` to ``model`` for one request or a batch; returns the :class:`Edit`.

    ``overrides`` set hyperparameters (``{"layer": 5}``); unknown names raise ``ValueError``.
    """
    editor = make_method(method, model, overrides, env)
    return editor.edit(model, tok, as_requests(requests))


def trace(
    model: Any,
    tok: PreTrainedTokenizerBase,
    facts: RequestLike | Sequence[RequestLike] | Sequence[EditCase],
    options: TraceOptions | None = None,
    *,
    env: Environment | None = None,
) -> TracedFacts:
    """Causal traces (Meng et al. 2022) of one fact or many: requests (their prompt, subject and
    ``target_true``, else the model's own answer) or cases (their first request).
    ``kedit.locate.report.write_traces`` writes them as JSON, NPZ, heatmaps and a page."""
    if isinstance(facts, Sequence) and facts and isinstance(facts[0], EditCase):
        requests = [case.requests[0] for case in facts]
    else:
        requests = as_requests(facts)
    return trace_facts(model, tok, requests, env or Environment(), options or TraceOptions())


__all__ = [
    "BenchPlan",
    "EvalReport",
    "EvalSetup",
    "as_requests",
    "edit",
    "evaluate",
    "load_model",
    "run_bench",
    "trace",
]


def train(
    model: Any,
    tok: PreTrainedTokenizerBase,
    method: str = "mend",
    dataset: str | None = None,
    *,
    steps: int | None = None,
    val_every: int | None = None,
    overrides: dict[str, Any] | None = None,
    out: str | None = None,
    limit: int | None = None,
    env: Environment | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train the editor of ``method`` (``mend``, ``ke``, ``malmen``, ``serac``) for
    ``model`` on ``dataset`` (default: the config's ``train_data``), resuming a checkpoint of
    the same run; the editor lands in kedit's cache, where ``edit(..., method=...)`` finds it,
    or in ``out``. ``steps`` and ``val_every`` set ``max_steps`` and ``val_every``; ``limit``
    reads at most that many training examples; ``time_limit_s`` ends this run (validated and
    checkpointed: calling again continues it) after the step, or validation, that passes that
    many seconds."""
    if time_limit_s is not None and time_limit_s <= 0:
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s}")
    env = env if env is not None else Environment()
    overrides = dict(overrides or {})
    if dataset is not None:
        overrides["train_data"] = dataset
    if steps is not None:
        overrides["max_steps"] = steps
    if val_every is not None:
        overrides["val_every"] = val_every
    editor = make_method(method, model, overrides, env)
    if not isinstance(editor, TrainedMethod):
        raise ValueError(f"{editor.name} trains nothing; kedit train is for {meta_methods()}")
    cfg = editor.config
    data = training_data(
        cfg.train_data, env.data_dir, cfg.val_size, cfg.batch_size, env.seed, limit
    )
    return train_editor(editor, model, tok, data, env, out, progress, time_limit_s)


def meta_methods() -> str:
    """The registered methods that need a trained editor."""
    return ", ".join(n for n in METHODS.names() if METHODS[n].needs_training)
