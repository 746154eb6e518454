"""Classification scores of predictions against labels, from a confusion matrix (the
downstream tasks' accuracy, F1 and MCC, as sklearn computes them)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], k: int) -> list[list[int]]:
    """``m[true][pred]`` counts over ``k`` classes."""
    m = [[0] * k for _ in range(k)]
    for t, p in zip(labels, preds, strict=True):
        m[t][p] += 1
    return m


def accuracy(m: list[list[int]]) -> float:
    total = sum(map(sum, m))
    return sum(m[i][i] for i in range(len(m))) / total if total else 0.0


def class_f1(m: list[list[int]], c: int) -> float:
    """F1 of class ``c``: 2TP / (2TP + FP + FN), 0 when the class never occurs."""
    tp = m[c][c]
    fp = sum(m[t][c] for t in range(len(m))) - tp
    fn = sum(m[c]) - tp
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def weighted_f1(m: list[list[int]]) -> float:
    """Per-class F1 averaged with the true-class supports as weights (sklearn's
    ``average="weighted"``, what AlphaEdit reports)."""
    total = sum(map(sum, m))
    return sum(sum(m[c]) * class_f1(m, c) for c in range(len(m))) / total if total else 0.0


def mcc(m: list[list[int]]) -> float:
    """Matthews correlation (Gorodkin's multi-class form; the usual one for two classes), 0 when
    a marginal is constant, as in sklearn."""
    k = len(m)
    s = sum(map(sum, m))
    c = sum(m[i][i] for i in range(k))
    t = [sum(m[i]) for i in range(k)]  # true counts
    p = [sum(m[i][j] for i in range(k)) for j in range(k)]  # predicted counts
    denom = math.sqrt((s * s - sum(x * x for x in p)) * (s * s - sum(x * x for x in t)))
    return (c * s - sum(a * b for a, b in zip(t, p))) / denom if denom else 0.0
