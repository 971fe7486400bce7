"""Task metrics (GLUE's, and macro F1 for custom tasks of more than two labels) in plain numpy (no scikit-learn
or scipy at run time).

Correlations that are undefined (a constant input, e.g. a model that predicts one class) are 0.0 rather than
NaN, so that best-on-dev comparisons and logs stay meaningful.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tinybert_jax.task.spec import Task


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def _confusion(pred: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    """(true positives, true negatives, false positives, false negatives) of binary 0/1 arrays, as floats so
    that products of counts cannot overflow."""
    pred, labels = np.asarray(pred) == 1, np.asarray(labels) == 1
    return (float(np.sum(pred & labels)), float(np.sum(~pred & ~labels)), float(np.sum(pred & ~labels)),
            float(np.sum(~pred & labels)))


def f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1; 0.0 when there are no positives in either array."""
    tp, _, fp, fn = _confusion(pred, labels)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """The mean over classes (those in either array) of each class's one-vs-rest F1."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float(np.mean([f1(pred == k, labels == k) for k in np.union1d(pred, labels)]))


def matthews_corr(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation, for any number of classes (Gorodkin's R_K; the usual formula for two); 0.0 when either
    array has a single class."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes = np.union1d(pred, labels)
    predicted = np.array([np.sum(pred == k) for k in classes], np.float64)
    true = np.array([np.sum(labels == k) for k in classes], np.float64)
    total, correct = float(len(labels)), float(np.sum(pred == labels))
    denominator = np.sqrt((total ** 2 - predicted @ predicted) * (total ** 2 - true @ true))
    return float((correct * total - predicted @ true) / denominator) if denominator else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, np.float64) - np.mean(x, dtype=np.float64)
    y = np.asarray(y, np.float64) - np.mean(y, dtype=np.float64)
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator else 0.0


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they occupy."""
    _, inverse, counts = np.unique(np.asarray(x).ravel(), return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_average_ranks(x), _average_ranks(y))


def pearson_spearman_mean(x: np.ndarray, y: np.ndarray) -> float:
    return (pearson(x, y) + spearman(x, y)) / 2


_CLASSIFICATION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_corr": matthews_corr}
_REGRESSION: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pearson": pearson, "spearman": spearman, "pearson_spearman_mean": pearson_spearman_mean}


def task_metrics(task: Task, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{metric: value} for `task.metrics`, from logits [N, num_labels] (classification: argmax) or scores [N] or
    [N, 1] (regression) and the canonical labels [N]."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    count = len(labels)
    if task.is_regression:
        if predictions.shape == (count, 1):
            predictions = predictions[:, 0]
        if predictions.shape != (count,):
            raise ValueError(f"{task.name} predictions have shape {predictions.shape}, expected [{count}] or "
                             f"[{count}, 1] scores")
        functions = _REGRESSION
    else:
        if predictions.shape != (count, task.num_labels):
            raise ValueError(f"{task.name} predictions have shape {predictions.shape}, expected logits "
                             f"[{count}, {task.num_labels}]")
        predictions, functions = np.argmax(predictions, axis=-1), _CLASSIFICATION
    return {name: functions[name](predictions, labels) for name in task.metrics}


def chance_score(task: Task, labels: np.ndarray) -> float:
    """The best main-metric score of a model that ignores its input: the best constant class (accuracy: the
    majority class's share, at least 1/num_labels; F1: everything positive; Matthews: 0), or 0 correlation."""
    if task.is_regression:
        return 0.0
    constant_logits = np.eye(task.num_labels, dtype=np.float32)[:, None, :].repeat(len(labels), axis=1)
    return max(task_metrics(task, logits, labels)[task.main_metric] for logits in constant_logits)
