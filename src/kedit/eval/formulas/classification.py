"""Classification scores of predictions against labels, from a confusion matrix (the
downstream tasks' accuracy, F1 and MCC, as sklearn computes them).

Every score takes one matrix ``m[true][pred]`` and gives a float, or a stack of matrices
``(..., k, k)`` and gives an array: the bootstrap (:mod:`kedit.eval.formulas.uncertainty`)
scores thousands of resamples at once with the same formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Matrix = Sequence[Sequence[int]] | np.ndarray


def confusion_matrix(
    labels: Sequence[int], preds: Sequence[int], k: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """``m[true][pred]`` counts over ``k`` classes, ``(k, k)``; with ``rows`` (index rows of a
    resample, ``(R, n)``) one matrix per row, ``(R, k, k)``."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    codes = np.asarray(labels, dtype=np.int64) * k + np.asarray(preds, dtype=np.int64)
    if rows is None:
        return np.bincount(codes, minlength=k * k).reshape(k, k)
    picked = codes[rows] + (np.arange(len(rows)) * k * k)[:, None]  # (R, n), offset per row
    return np.bincount(picked.ravel(), minlength=len(rows) * k * k).reshape(len(rows), k, k)


def _scalar(x: np.ndarray) -> Any:
    return float(x) if np.ndim(x) == 0 else x


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b``, 0 where ``b`` is 0 (sklearn's convention for undefined scores)."""
    b = np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def accuracy(m: Matrix) -> Any:
    m = np.asarray(m, dtype=np.float64)
    return _scalar(_divide(np.trace(m, axis1=-2, axis2=-1), m.sum((-2, -1))))


def _class_f1(m: np.ndarray, c: int) -> np.ndarray:
    tp = m[..., c, c]
    fp = m[..., :, c].sum(-1) - tp
    fn = m[..., c, :].sum(-1) - tp
    return _divide(2 * tp, 2 * tp + fp + fn)


def class_f1(m: Matrix, c: int) -> Any:
    """F1 of class ``c``: 2TP / (2TP + FP + FN), 0 when the class never occurs."""
    return _scalar(_class_f1(np.asarray(m, dtype=np.float64), c))


def weighted_f1(m: Matrix) -> Any:
    """Per-class F1 averaged with the true-class supports as weights (sklearn's
    ``average="weighted"``, what AlphaEdit reports)."""
    m = np.asarray(m, dtype=np.float64)
    support = m.sum(-1)  # (..., k)
    f1 = np.stack([_class_f1(m, c) for c in range(m.shape[-1])], -1)  # (..., k)
    return _scalar(_divide((support * f1).sum(-1), support.sum(-1)))


def mcc(m: Matrix) -> Any:
    """Matthews correlation (Gorodkin's multi-class form; the usual one for two classes), 0 when
    a marginal is constant, as in sklearn."""
    m = np.asarray(m, dtype=np.float64)
    s = m.sum((-2, -1))
    c = np.trace(m, axis1=-2, axis2=-1)
    t = m.sum(-1)  # (..., k) true counts
    p = m.sum(-2)  # (..., k) predicted counts
    denom = np.sqrt((s * s - (p * p).sum(-1)) * (s * s - (t * t).sum(-1)))
    return _scalar(_divide(c * s - (t * p).sum(-1), denom))


#: a downstream task's headline metric by name
METRICS = {
    "accuracy": accuracy,
    "f1": lambda m: class_f1(m, 1),
    "f1_weighted": weighted_f1,
    "mcc": mcc,
}
