"""Downstream-task metrics in plain numpy (nothing is downloaded: `evaluate.load` would reach the Hub).

Conventions shared by every function:

- `scores` is an `(n, n_classes)` array (logits, probabilities or any monotone score); higher is better.
- A label of -100 (or any value outside `0..n_classes-1`) means "the true class is not among the candidates" (e.g. a
  test destination never seen in training): the example counts as wrong for accuracy@k and contributes 0 to MRR.
- Ties in scores are broken pessimistically for ranks (a tie with the true class counts as ranked above it), so a
  constant scorer cannot look good. A NaN score counts as -inf (the lowest), never as a hit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tokenization_trajfm.h3cells import haversine_km


def _valid(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return (labels >= 0) & (labels < n_classes)


def true_class_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of the true class for each row (ties counted against it); `inf` when the label is unknown."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be (n, n_classes) with n = len(labels); got {scores.shape} and {labels.shape}.")
    scores = np.where(np.isnan(scores), -np.inf, scores)  # NaN compares False to everything: it would rank 0
    ranks = np.full(labels.shape[0], np.inf)
    valid = _valid(labels, scores.shape[1])
    if valid.any():
        rows = np.flatnonzero(valid)
        true = scores[rows, labels[rows]][:, None]
        others = scores[rows]
        ranks[rows] = 1 + (others > true).sum(axis=1) + ((others == true).sum(axis=1) - 1)
    return ranks


def accuracy_at_k(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """`{"accuracy@k": share of rows whose true class is among the top k}` for each k."""
    ranks = true_class_ranks(scores, labels)
    if ranks.size == 0:
        return {f"accuracy@{k}": 0.0 for k in ks}
    return {f"accuracy@{k}": float((ranks <= k).mean()) for k in ks}


def mean_reciprocal_rank(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = true_class_ranks(scores, labels)
    return float((1.0 / ranks).mean()) if ranks.size else 0.0


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if labels.size else 0.0


def binary_f1(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (0 when there are no true and no predicted positives)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    tp = int(((predictions == positive) & (labels == positive)).sum())
    fp = int(((predictions == positive) & (labels != positive)).sum())
    fn = int(((predictions != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def f1_threshold(similarities: Sequence[float], labels: Sequence[int], also_try: Sequence[float] = ()) -> float:
    """The threshold `t` (predict 1 when similarity >= t) with the best `binary_f1` on these pairs, among the
    similarities themselves and `also_try`; the lowest on ties, 0 without candidates."""
    similarities, labels = np.asarray(similarities, dtype=np.float64), np.asarray(labels)
    best, best_f1 = 0.0, -1.0
    for t in np.unique(np.concatenate([similarities, np.asarray(also_try, dtype=np.float64)])):
        f1 = binary_f1((similarities >= t).astype(np.int64), labels)
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    """Unweighted mean of per-class F1 over every class that occurs in `labels` or `predictions` (sklearn's default).

    Labels may be any hashable values (e.g. H3 cells), so a true class that the model cannot predict (an unseen
    destination) is a class of its own with F1 = 0.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if labels.size == 0:
        return 0.0
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true, pred = codes[: labels.size], codes[labels.size :]
    k = classes.size
    tp = np.bincount(true[true == pred], minlength=k).astype(np.float64)
    support = np.bincount(true, minlength=k)
    predicted = np.bincount(pred, minlength=k)
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    return float(f1.mean())


def distance_errors_km(predicted_centers: np.ndarray, true_centers: np.ndarray) -> dict[str, float]:
    """Mean and median great-circle distance (km) between predicted and true (lat, lon) cell centres."""
    predicted_centers = np.asarray(predicted_centers, dtype=np.float64).reshape(-1, 2)
    true_centers = np.asarray(true_centers, dtype=np.float64).reshape(-1, 2)
    if predicted_centers.shape != true_centers.shape:
        raise ValueError(f"Got {len(predicted_centers)} predicted but {len(true_centers)} true centres.")
    if true_centers.size == 0:
        return {"distance_km_mean": 0.0, "distance_km_median": 0.0}
    distances = haversine_km(predicted_centers, true_centers)
    return {"distance_km_mean": float(distances.mean()), "distance_km_median": float(np.median(distances))}


def binary_metrics(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    return {"accuracy": accuracy(predictions, labels), "f1": binary_f1(predictions, labels)}


def ranking_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    class_values: Sequence | None = None,
    true_values: Sequence | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """accuracy@k, MRR and macro-F1 of the top-1 prediction for a multi-class / candidate-ranking task.

    For macro-F1, `class_values[i]` names class i and `true_values` the true class of each row (defaults: the label
    indices), so rows whose true class is outside the candidates keep their own identity.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isnan(scores), -np.inf, scores)  # as in `true_class_ranks`: argmax must not pick a NaN
    labels = np.asarray(labels, dtype=np.int64)
    out = accuracy_at_k(scores, labels, ks)
    out["mrr"] = mean_reciprocal_rank(scores, labels)
    top1 = scores.argmax(axis=1) if scores.shape[0] else np.empty(0, dtype=np.int64)
    if class_values is None:
        out["macro_f1"] = macro_f1(top1, labels)
    else:
        class_values = np.asarray(class_values)
        truth = np.asarray(true_values) if true_values is not None else class_values[labels]
        out["macro_f1"] = macro_f1(class_values[top1], truth)
    return out


__all__ = [
    "accuracy",
    "accuracy_at_k",
    "binary_f1",
    "binary_metrics",
    "distance_errors_km",
    "f1_threshold",
    "macro_f1",
    "mean_reciprocal_rank",
    "ranking_metrics",
    "true_class_ranks",
]
