"""Two runs scored on the same examples: the difference B - A, its paired bootstrap interval and a p-value.

Pairing is what makes a small difference visible: each resample draws the same example
indices for both runs, so the examples both get right (or wrong) cancel out. The p-value of a
score whose per-example value is 0 or 1 (accuracy, exact match) is McNemar's exact test: under
"no difference" the examples only one run gets right split between A and B as fair coin
flips, a two-sided binomial test. Other scores (F1s) get the paired bootstrap p-value:
twice the smaller share of resampled differences on either side of 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lmtune.score.bootstrap import (
    LEVEL,
    RESAMPLES,
    SEED,
    percentile_interval,
    resampled_statistics,
)
from lmtune.score.confusion_scores import ScorePath
from lmtune.score.example_scores import ExampleScores


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: P(Binomial(a_only + b_only, 1/2) at least as far from the middle)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = term = 1  # C(n, 0); each next term from the last: C(n, k + 1) = C(n, k) (n - k) / (k + 1), exactly
    for k in range(min(a_only, b_only)):
        term = term * (n - k) // (k + 1)
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided: twice the smaller share (counting the observed sample, so never 0) of resampled differences at or past 0."""
    b = len(differences)
    below = (np.count_nonzero(differences <= 0) + 1) / (b + 1)
    above = (np.count_nonzero(differences >= 0) + 1) / (b + 1)
    return float(min(1.0, 2 * min(below, above)))


@dataclass(kw_only=True)
class ScoreDifference:
    a: float
    b: float
    difference: float
    """b - a"""
    interval: tuple[float, float]
    """The paired bootstrap percentile interval of the difference."""
    p_value: float
    test: str
    """mcnemar_exact or paired_bootstrap."""
    a_only: int | None = None
    """McNemar: examples A gets right and B wrong."""
    b_only: int | None = None


def compare_scores(a: ExampleScores, b: ExampleScores, *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> dict[ScorePath, ScoreDifference]:
    """Every score of the task, B - A, with the same resampled indices for both runs."""
    assert a.num_examples == b.num_examples and a.task == b.task

    def differences(indices: np.ndarray) -> dict[ScorePath, np.ndarray]:
        sa, sb = a.statistics(indices), b.statistics(indices)
        return {path: sb[path] - sa[path] for path in sa}

    resampled = resampled_statistics(differences, a.num_examples, resamples, seed)
    score_a, score_b = a.scores(), b.scores()
    out: dict[ScorePath, ScoreDifference] = {}
    for path in score_a:
        diffs = resampled[path]
        found = ScoreDifference(a=score_a[path], b=score_b[path], difference=score_b[path] - score_a[path], interval=percentile_interval(diffs, level), p_value=bootstrap_p(diffs), test="paired_bootstrap")
        if path in a.binary:
            right_a, right_b = a.means[path] > 0.5, b.means[path] > 0.5
            found.a_only, found.b_only = int(np.count_nonzero(right_a & ~right_b)), int(np.count_nonzero(right_b & ~right_a))
            found.p_value, found.test = mcnemar_exact_p(found.a_only, found.b_only), "mcnemar_exact"
        out[path] = found
    return out
