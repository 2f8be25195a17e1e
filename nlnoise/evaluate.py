"""Evaluation metrics on host arrays: clean error, Q error, confusion matrices, outlier PR/AP.

Everything takes plain numpy arrays, so it works with any model (cleanlab style).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from nlnoise import noise


def error_rate(pred: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of (unmasked) examples with ``pred != labels``."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    keep = np.ones(pred.shape, bool) if mask is None else np.asarray(mask, bool)
    if not keep.any():
        raise ValueError("error_rate: no examples to evaluate (empty or fully masked).")
    return float(np.mean(pred[keep] != labels[keep]))


def confusion(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Column-normalised confusion ``c[pred, true]`` (nlnoise's orientation, like Q).

    Classes without examples get a zero column. ``noise.adversarial(c, level)`` builds the
    paper's adversarial Q* from it.
    """
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (np.asarray(pred), np.asarray(true)), 1.0)
    totals = counts.sum(0, keepdims=True)
    return counts / np.maximum(totals, 1.0)


def q_metrics(q: np.ndarray, q_true: np.ndarray | None) -> dict[str, float]:
    """``q_trace`` always; ``q_rel_l1`` and ``q_star_trace`` when Q* is known."""
    out = {"q_trace": float(np.trace(q))}
    if q_true is not None:
        out["q_rel_l1"] = noise.relative_l1(q, q_true)
        out["q_star_trace"] = float(np.trace(q_true))
    return out


def outlier_detection(scores: np.ndarray, is_outlier: np.ndarray) -> dict[str, object]:
    """Precision-recall of "outlier" by ``scores`` (higher = more outlying) and its AP.

    Returns ``average_precision`` and the curve (``precision``, ``recall``) for plots. The
    paper's score is the K+1-th softmax output for the outlier model and the softmax entropy
    for the normal model.
    """
    y = np.asarray(is_outlier, bool)
    if y.all() or not y.any():
        raise ValueError("outlier_detection: needs both inliers and outliers in the test set.")
    precision, recall, _ = skm.precision_recall_curve(y, scores)
    return {
        "average_precision": float(skm.average_precision_score(y, scores)),
        "precision": precision,
        "recall": recall,
        "outlier_fraction": float(y.mean()),
    }
