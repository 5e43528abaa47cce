"""The statistics behind scores.json and ``lmtune compare``, against hand computations and simulation:
micro / weighted F1, bootstrap intervals (coverage, and equal to rescoring the resampled examples),
McNemar's exact test, the paired bootstrap."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from lmtune.score.bootstrap import (
    bootstrap_intervals,
    percentile_interval,
    resampled_indices,
    resampled_statistics,
)
from lmtune.score.confusion_scores import confusion_scores
from lmtune.score.example_scores import binary_scores
from lmtune.score.paired import bootstrap_p, compare_scores, mcnemar_exact_p
from lmtune.score.tasks import INVALID, example_scores, format_table, score

LABELS = ["a", "b"]
# (completion, reference); confusion by hand, rows = truth a, b; columns = a, b, invalid:
#   a  2 1 1
#   b  1 1 0
PAIRS = [("a", "a"), ("a", "a"), ("b", "a"), ("none of them", "a"), ("b", "b"), ("a", "b")]


def test_micro_and_weighted_f1_by_hand() -> None:
    s = score("classification", PAIRS, LABELS)
    assert s["confusion_matrix"]["counts"] == [[2, 1, 1], [1, 1, 0]] and s["confusion_matrix"]["columns"] == LABELS + [INVALID]
    # a: tp 2, predicted 3, support 4 -> P 2/3, R 1/2, F1 4/7;  b: tp 1, predicted 2, support 2 -> P R F1 1/2
    assert s["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(1 / 2), "f1": pytest.approx(4 / 7), "support": 4}
    assert s["per_class"]["b"] == {"precision": pytest.approx(1 / 2), "recall": pytest.approx(1 / 2), "f1": pytest.approx(1 / 2), "support": 2}
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["macro_f1"] == pytest.approx(float((Fraction(4, 7) + Fraction(1, 2)) / 2))  # 15/28
    # micro: 3 right; 5 completions name a label (P 3/5), 6 references (R 3/6): F1 = 2*3 / (5 + 6)
    assert s["micro_f1"] == pytest.approx(6 / 11)
    # weighted by support: (4 * 4/7 + 2 * 1/2) / 6
    assert s["weighted_f1"] == pytest.approx(23 / 42)


def test_confusion_scores_of_a_stack_equal_each_matrix_alone() -> None:
    rng = np.random.default_rng(3)
    stack = rng.integers(0, 5, size=(7, 3, 4))
    stack[2] = 0  # nothing at all: every ratio 0
    together = confusion_scores(stack, ["x", "y", "z"])
    for i in range(len(stack)):
        alone = confusion_scores(stack[i], ["x", "y", "z"])
        for path, values in together.items():
            assert values[i] == pytest.approx(float(alone[path])), path
    assert all(v[2] == 0 for v in together.values())


def test_every_score_has_an_interval_around_it() -> None:
    s = score("classification", PAIRS * 5, LABELS)
    intervals = s["confidence_intervals"]
    assert s["bootstrap"] == {"method": "percentile", "level": 0.95, "resamples": 1000, "seed": 0}
    for key in ("accuracy", "macro_f1", "micro_f1", "weighted_f1"):
        low, high = intervals[key]
        assert low <= s[key] <= high and low < high
    for label in LABELS:
        for key in ("precision", "recall", "f1"):
            low, high = intervals["per_class"][label][key]
            assert low <= s["per_class"][label][key] <= high
    table = format_table(s)  # as generate and score print it
    assert "accuracy [{:.4f}, {:.4f}]".format(*intervals["accuracy"]) in table
    assert "weighted F1 [{:.4f}, {:.4f}]".format(*intervals["weighted_f1"]) in table
    assert "[{:.4f}, {:.4f}]".format(*intervals["per_class"]["b"]["recall"]) in table.splitlines()[-1]
    assert score("classification", PAIRS * 5, LABELS)["confidence_intervals"] == intervals  # seeded
    assert score("classification", PAIRS * 5, LABELS, seed=1)["confidence_intervals"] != intervals
    assert "confidence_intervals" not in score("classification", PAIRS, LABELS, resamples=0)


def test_resampled_scores_equal_rescoring_the_resampled_examples() -> None:
    """The vectorised statistics against the plain path: score() on the examples each resample picks."""
    rng = np.random.default_rng(0)
    pairs = [(LABELS[int(rng.integers(2))] if rng.random() < 0.4 else ("?" if rng.random() < 0.1 else t), t) for t in (LABELS[int(i)] for i in rng.integers(0, 2, 40))]
    examples = example_scores("classification", pairs, LABELS)
    fast = resampled_statistics(examples.statistics, len(pairs), 30, seed=5)
    indices = np.concatenate(list(resampled_indices(len(pairs), 30, seed=5)))
    for r, row in enumerate(indices):
        s = score("classification", [pairs[i] for i in row], LABELS, resamples=0)
        assert fast["macro_f1",][r] == pytest.approx(s["macro_f1"])
        assert fast["weighted_f1",][r] == pytest.approx(s["weighted_f1"])
        assert fast["per_class", "b", "recall"][r] == pytest.approx(s["per_class"]["b"]["recall"])


def test_bootstrap_intervals_cover_the_true_accuracy() -> None:
    """200 simulated datasets of 100 Bernoulli(0.7) outcomes: the nominal 95% interval holds 0.7 in 90-99% of them."""
    rng = np.random.default_rng(2026)
    covered = 0
    for trial in range(200):
        outcomes = rng.random(100) < 0.7
        examples = binary_scores("exact_match", [""] * 100, outcomes)
        low, high = bootstrap_intervals(examples.statistics, 100, seed=trial)["accuracy",]
        covered += low <= 0.7 <= high
    assert 0.90 <= covered / 200 <= 0.99, covered


def test_percentile_interval() -> None:
    values = np.arange(1001, dtype=float)  # quantiles 2.5% and 97.5% of 0..1000
    assert percentile_interval(values) == pytest.approx((25.0, 975.0))


def test_mcnemar_exact_by_hand() -> None:
    # 7 discordant pairs split 1 / 6: P(X <= 1) = (C(7,0) + C(7,1)) / 2^7 = 8/128, two-sided 0.125
    assert mcnemar_exact_p(1, 6) == mcnemar_exact_p(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    expected = 2 * sum(comb(60, k) for k in range(21)) / 2**60
    assert mcnemar_exact_p(20, 40) == pytest.approx(expected)
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    assert mcnemar_exact_p(20, 40) == pytest.approx(binomtest(20, 60, 0.5).pvalue)


def test_bootstrap_p_by_hand() -> None:
    # all four above 0: twice (0 + 1) / (4 + 1)
    assert bootstrap_p(np.array([1.0, 2, 3, 4])) == pytest.approx(0.4)
    # 2 at or below 0, 4 at or above: twice (2 + 1) / 6 = 1
    assert bootstrap_p(np.array([-1.0, 0, 1, 2, 3])) == 1.0


def test_paired_comparison_by_hand() -> None:
    # A right on 0-59, B right on 10-79 of 100: A only 10, B only 20 -> McNemar on (10, 20)
    right_a = np.arange(100) < 60
    right_b = (np.arange(100) >= 10) & (np.arange(100) < 80)
    a, b = binary_scores("gsm8k", [str(x) for x in right_a], right_a), binary_scores("gsm8k", [str(x) for x in right_b], right_b)
    d = compare_scores(a, b)["accuracy",]
    assert (d.a, d.b, d.difference) == (pytest.approx(0.6), pytest.approx(0.7), pytest.approx(0.1))
    assert (d.a_only, d.b_only, d.test) == (10, 20, "mcnemar_exact")
    assert d.p_value == pytest.approx(2 * sum(comb(30, k) for k in range(11)) / 2**30)
    # the paired interval by hand: B - A over each resample is (B only - A only) among the picked examples
    indices = np.concatenate(list(resampled_indices(100, 1000, seed=0)))
    gain = right_b.astype(float) - right_a.astype(float)
    assert d.interval == pytest.approx(percentile_interval(gain[indices].mean(axis=1)))
    assert d.interval[0] < 0.1 < d.interval[1]

    same = compare_scores(a, a)["accuracy",]
    assert (same.difference, same.interval, same.p_value) == (0.0, (0.0, 0.0), 1.0)


def test_paired_interval_is_narrower_than_unpaired_when_runs_agree_mostly() -> None:
    """Pairing is the point: two runs that agree on 97 of 100 examples differ far less than two independent samples would."""
    rng = np.random.default_rng(1)
    right_a = rng.random(100) < 0.6
    right_b = right_a.copy()
    right_b[:3] = ~right_b[:3]
    a, b = binary_scores("gsm8k", [""] * 100, right_a), binary_scores("gsm8k", [""] * 100, right_b)
    low, high = compare_scores(a, b)["accuracy",].interval
    ia = bootstrap_intervals(a.statistics, 100, seed=1)["accuracy",]
    ib = bootstrap_intervals(b.statistics, 100, seed=2)["accuracy",]
    assert high - low < 0.5 * ((ia[1] - ia[0]) + (ib[1] - ib[0])) / 2
