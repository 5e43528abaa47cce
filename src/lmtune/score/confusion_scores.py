"""Classification scores from confusion counts, for many confusion matrices at once.

One function serves the score of all examples and of each bootstrap resample (a stack of
matrices), so the interval is around exactly the number reported. Counts have shape
(..., K, K + 1): rows are the reference label, columns the predicted label and last the
completions that name no label (they count against recall, never for a label's precision).
A ratio with nothing to divide is 0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ScorePath = tuple[str, ...]
"""Where a score sits in scores.json: ("accuracy",), ("per_class", "World", "f1")."""


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b != 0)


def confusion_scores(counts: np.ndarray, labels: Sequence[str]) -> dict[ScorePath, np.ndarray]:
    """Accuracy, macro / micro / weighted F1 and per-label precision, recall and F1, each of shape counts.shape[:-2]."""
    k = len(labels)
    counts = counts.astype(np.float64)
    tp = np.diagonal(counts[..., :k], axis1=-2, axis2=-1)
    support = counts.sum(axis=-1)  # reference label i
    predicted = counts[..., :k].sum(axis=-2)  # predicted label i
    n = support.sum(axis=-1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)  # = 2PR / (P + R), and 0 when both are 0
    correct = tp.sum(axis=-1)
    scores: dict[ScorePath, np.ndarray] = {
        ("accuracy",): _ratio(correct, n),
        ("macro_f1",): f1.mean(axis=-1),
        # micro: tp, fp and fn summed over labels; P = correct / named a label, R = correct / n
        ("micro_f1",): _ratio(2 * correct, predicted.sum(axis=-1) + n),
        ("weighted_f1",): _ratio((f1 * support).sum(axis=-1), n),
    }
    for i, label in enumerate(labels):
        scores["per_class", label, "precision"] = precision[..., i]
        scores["per_class", label, "recall"] = recall[..., i]
        scores["per_class", label, "f1"] = f1[..., i]
    return scores
