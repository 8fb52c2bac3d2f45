"""Evaluation as the MEIJU 2025 baseline does it (reference/meiju.md §3).

Track I: weighted F1 per head (scikit-learn ``f1_score(average="weighted")``) and the joint score,
the harmonic mean ``2·E·I / (E + I + 1e-6)`` (baseline ``train_baseline.py``, function ``eval``).
Track II uses micro F1; pass ``average="micro"``.

Notation: N samples, K classes of a head. Labels are int64 class indices; ``-1`` marks a missing
label and is dropped before scoring. Classes with no samples never break anything: they get
support 0 and F1 0, and are left out of the weighted average by their zero weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

JOINT_EPS = 1e-6


def _valid(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has {y_pred.shape}")
    keep = y_true >= 0
    return y_true[keep], y_pred[keep]


def head_f1(y_true: np.ndarray, y_pred: np.ndarray, *, average: str = "weighted") -> float:
    """Weighted (Track I) or micro (Track II) F1 of one head.

    Args:
        y_true: (N,) int64 gold class indices, ``-1`` for missing.
        y_pred: (N,) int64 predicted class indices.
    Returns:
        F1 in [0, 1]; 0.0 when no sample has a gold label.
    """
    t, p = _valid(y_true, y_pred)
    if t.size == 0:
        return 0.0
    return float(f1_score(t, p, average=average, zero_division=0))


def joint_score(emotion_f1: float, intent_f1: float) -> float:
    """Harmonic mean of the two heads' F1, with the baseline's epsilon: 2EI/(E+I+1e-6)."""
    return 2.0 * emotion_f1 * intent_f1 / (emotion_f1 + intent_f1 + JOINT_EPS)


def per_class(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of every class (K rows, in schema order)."""
    t, p = _valid(y_true, y_pred)
    if t.size == 0:  # a head with no gold labels: every class has support 0
        return [
            {"class": c, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for c in classes
        ]
    labels = list(range(len(classes)))
    prec, rec, f1, sup = precision_recall_fscore_support(
        t, p, labels=labels, average=None, zero_division=0
    )
    return [
        {
            "class": c,
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "support": int(sup[k]),
        }
        for k, c in enumerate(classes)
    ]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; rows are gold classes, columns predicted classes."""
    t, p = _valid(y_true, y_pred)
    if t.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    return confusion_matrix(t, p, labels=list(range(num_classes))).astype(np.int64)


def evaluate(
    y_true: dict[str, np.ndarray],
    y_pred: dict[str, np.ndarray],
    schema_heads: Mapping[str, Sequence[str]],
    *,
    average: str = "weighted",
) -> dict[str, Any]:
    """Full report over all heads.

    Args:
        y_true, y_pred: head -> (N,) int64 indices (``-1`` = missing gold label).
        schema_heads: head -> class names in index order.
    Returns:
        ``{"<head>_f1": float, ..., "joint": float, "per_class": {head: [...]},
        "confusion": {head: K x K list}}``. ``joint`` is the harmonic mean of the first two heads
        (emotion, intent), as the challenge scores it.
    """
    report: dict[str, Any] = {"per_class": {}, "confusion": {}}
    f1s = []
    for head, classes in schema_heads.items():
        f1 = head_f1(y_true[head], y_pred[head], average=average)
        report[f"{head}_f1"] = f1
        f1s.append(f1)
        report["per_class"][head] = per_class(y_true[head], y_pred[head], classes)
        report["confusion"][head] = confusion(y_true[head], y_pred[head], len(classes)).tolist()
    report["joint"] = joint_score(f1s[0], f1s[1]) if len(f1s) >= 2 else f1s[0]
    return report
