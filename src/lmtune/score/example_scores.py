"""What each example contributes to a task's scores, and every score over any choice of examples.

A task's scores are computed from per-example outcomes (right or wrong, an F1, a reference and a
predicted label), never from the texts again; the same ``statistics`` gives the scores of all
examples, of each bootstrap resample (``score.bootstrap``) and of paired resamples of two runs
(``score.paired``). ``indices`` of shape (R, n) choose R sets of n examples (with repeats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmtune.score.confusion_scores import ScorePath, confusion_scores


@dataclass(kw_only=True)
class ExampleScores:
    task: str
    answers: list[str]
    """What each completion answers, as the task reads it (a number, a label, a normalised answer):
    two runs disagree on an example when these differ."""
    means: dict[ScorePath, np.ndarray]
    """Scores that are the mean of a per-example value: accuracy (0/1), qa's F1."""
    binary: set[ScorePath]
    """Those of ``means`` whose per-example value is 0 or 1 (McNemar's test applies)."""
    labels: list[str] | None = None
    cells: np.ndarray | None = None
    """Classification: reference index * (K + 1) + predicted index (K: no label) per example."""

    @property
    def num_examples(self) -> int:
        return len(self.answers)

    def statistics(self, indices: np.ndarray) -> dict[ScorePath, np.ndarray]:
        """Every score over each row of ``indices``: arrays of shape (R,)."""
        if self.cells is not None:
            assert self.labels is not None
            r, k = indices.shape[0], len(self.labels)
            size = k * (k + 1)
            offsets = np.arange(r, dtype=np.int64)[:, None] * size
            counts = np.bincount((self.cells[indices] + offsets).ravel(), minlength=r * size)
            return confusion_scores(counts.reshape(r, k, k + 1), self.labels)
        return {path: values[indices].mean(axis=1) for path, values in self.means.items()}

    def scores(self) -> dict[ScorePath, float]:
        """Every score over all examples."""
        everything = np.arange(self.num_examples)[None, :]
        return {path: float(v[0]) for path, v in self.statistics(everything).items()}


def binary_scores(task: str, answers: Sequence[str], correct: Sequence[bool]) -> ExampleScores:
    """gsm8k and exact_match: accuracy only."""
    return ExampleScores(task=task, answers=list(answers), means={("accuracy",): np.asarray(correct, dtype=np.float64)}, binary={("accuracy",)})


def qa_scores(answers: Sequence[str], exact: Sequence[float], f1: Sequence[float]) -> ExampleScores:
    """accuracy is the exact-match share, so that every task has one (training and ``demo`` read it)."""
    em = np.asarray(exact, dtype=np.float64)
    return ExampleScores(
        task="qa",
        answers=list(answers),
        means={("accuracy",): em, ("exact_match",): em, ("f1",): np.asarray(f1, dtype=np.float64)},
        binary={("accuracy",), ("exact_match",)},
    )


def classification_scores(answers: Sequence[str], truth: Sequence[int], predicted: Sequence[int], labels: Sequence[str]) -> ExampleScores:
    """``predicted`` holds len(labels) for a completion that names no label."""
    k = len(labels)
    t, p = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return ExampleScores(
        task="classification",
        answers=list(answers),
        means={("accuracy",): (t == p).astype(np.float64)},
        binary={("accuracy",)},
        labels=list(labels),
        cells=t * (k + 1) + p,
    )
