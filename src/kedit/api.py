"""The public verbs: ``load_model``, ``edit``, ``evaluate``.

Example::

    import kedit

    model, tok = kedit.load_model("smollm2-135m")
    request = kedit.EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome", "Paris")
    with kedit.edit(model, tok, request, method="rome") as e:
        ...  # e.model is the edited model
    # the model is restored here, bit for bit
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from kedit.bench import BenchPlan, run_bench
from kedit.env import Environment
from kedit.eval.runner import EvalReport
from kedit.eval.runner import evaluate as _evaluate
from kedit.eval.sequential import evaluate_sequential
from kedit.methods import EditMethod, make_method
from kedit.methods.base import Edit
from kedit.model.loading import load_model
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
    env: Environment | None = None,
    **overrides: Any,
) -> Edit:
    """Apply ``method`` to ``model`` for one request or a batch; returns the :class:`Edit`.

    ``overrides`` set hyperparameters (``layer=5``); unknown names raise ``ValueError``.
    """
    if isinstance(method, EditMethod):
        if overrides:
            raise ValueError("pass hyperparameter overrides with a method name, not an object")
        editor = method
    else:
        editor = make_method(method, model, overrides, env)
    return editor.edit(model, tok, as_requests(requests))


def evaluate(
    model: Any,
    tok: PreTrainedTokenizerBase,
    dataset: str | Sequence[EditCase] = "demo",
    method: str | EditMethod = "rome",
    **kwargs: Any,
) -> EvalReport:
    """Edit and audit every case of ``dataset``.

    With ``n_edits=N`` (and optionally ``batch_size``, ``checkpoints``, ``scoring``) the first
    N cases are edited in sequence (:func:`kedit.eval.sequential.evaluate_sequential`);
    otherwise each case is edited on the unedited model (:func:`kedit.eval.runner.evaluate`).
    """
    if "n_edits" in kwargs:
        limit = kwargs.pop("limit", None)
        if limit is not None and limit != kwargs["n_edits"]:
            raise ValueError(
                f"limit={limit} with n_edits={kwargs['n_edits']}: a sequential run edits and "
                "scores the first n_edits cases; leave limit out"
            )
        return evaluate_sequential(model, tok, dataset, method, **kwargs)
    return _evaluate(model, tok, dataset, method, **kwargs)


__all__ = ["BenchPlan", "as_requests", "edit", "evaluate", "load_model", "run_bench"]
