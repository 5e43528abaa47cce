"""Linear CKA and mean cosine similarity (lmtune.report.similarity) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmtune.report.similarity import linear_cka, mean_cosine_similarity


def _cka_by_loops(x: list[list[float]], y: list[list[float]]) -> float:
    """The definition written out: centre each column, then
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), every sum an explicit loop."""
    n = len(x)

    def centred(m: list[list[float]]) -> list[list[float]]:
        cols = len(m[0])
        means = [sum(m[i][c] for i in range(n)) / n for c in range(cols)]
        return [[m[i][c] - means[c] for c in range(cols)] for i in range(n)]

    def cross_norm_sq(a: list[list[float]], b: list[list[float]]) -> float:
        """||A^T B||_F^2 = sum over column pairs (p, q) of (sum_i a[i][p] b[i][q])^2."""
        total = 0.0
        for p in range(len(a[0])):
            for q in range(len(b[0])):
                s = 0.0
                for i in range(n):
                    s += a[i][p] * b[i][q]
                total += s * s
        return total

    xc, yc = centred(x), centred(y)
    return cross_norm_sq(yc, xc) / (math.sqrt(cross_norm_sq(xc, xc)) * math.sqrt(cross_norm_sq(yc, yc)))


def _cka_by_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s HSIC form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X X^T, HSIC(K, L) = tr(K H L H)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h))

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_of_a_matrix_with_itself_is_one() -> None:
    rng = np.random.default_rng(0)
    for shape in ((20, 5), (5, 20)):  # both the feature-space and the Gram-matrix paths
        x = rng.normal(size=shape)
        assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling() -> None:
    rng = np.random.default_rng(1)
    for n, d in ((30, 8), (6, 16)):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(n, 1))
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        base = linear_cka(x, y)
        assert 0.0 < base < 1.0
        assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
        assert linear_cka(x, y @ q) == pytest.approx(base, rel=1e-10)
        assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(base, rel=1e-10)
        # Not invariant to an arbitrary (non-orthogonal, anisotropic) map: the check can fail.
        assert linear_cka(x * np.arange(1, d + 1), y) != pytest.approx(base, rel=1e-3)


def test_cka_agrees_with_the_formula_written_out_and_with_the_hsic_form() -> None:
    x = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0], [3.0, 1.0, 1.0], [-2.0, 0.5, 0.0], [1.5, 1.5, -1.0]]
    y = [[0.5, 1.0], [2.0, -1.0], [1.0, 3.0], [-1.0, 0.0], [0.0, 2.5]]
    expected = _cka_by_loops(x, y)
    assert linear_cka(np.array(x), np.array(y)) == pytest.approx(expected, rel=1e-12)
    assert _cka_by_hsic(np.array(x), np.array(y)) == pytest.approx(expected, rel=1e-12)
    # More dims than examples (the Gram-matrix path), against the loops too.
    rng = np.random.default_rng(2)
    wide_x, wide_y = rng.normal(size=(4, 9)), rng.normal(size=(4, 7))
    assert linear_cka(wide_x, wide_y) == pytest.approx(_cka_by_loops(wide_x.tolist(), wide_y.tolist()), rel=1e-12)


def test_cka_of_two_columns_is_their_squared_correlation() -> None:
    x = np.array([[1.0], [2.0], [4.0], [7.0]])
    y = np.array([[2.0], [1.0], [5.0], [6.0]])
    # By hand: centred x = (-2.5, -1.5, 0.5, 3.5), y = (-1.5, -2.5, 1.5, 2.5);
    # sum xy = 3.75 + 3.75 + 0.75 + 8.75 = 17, sum x^2 = 21, sum y^2 = 17: r^2 = 17^2 / (21 * 17) = 17/21.
    assert linear_cka(x, y) == pytest.approx(17 / 21, rel=1e-12)


def test_cka_in_float64_from_float16_input() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8)).astype(np.float16)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)  # float16 products would lose this


def test_cka_of_a_constant_side_is_nan() -> None:
    assert math.isnan(linear_cka(np.ones((4, 3)), np.arange(12.0).reshape(4, 3)))


def test_mean_cosine_similarity_by_hand() -> None:
    x = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    y = np.array([[0.0, 2.0], [2.0, 2.0], [4.0, 3.0]])
    # cos: 0 (orthogonal), 1 (parallel), (12 + 12) / (5 * 5) = 0.96; mean 1.96 / 3.
    assert mean_cosine_similarity(x, y) == pytest.approx(1.96 / 3, rel=1e-12)
    assert mean_cosine_similarity(x, -x) == pytest.approx(-1.0)
    # A zero vector has no direction: that example is left out.
    assert mean_cosine_similarity(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 1.0], [1.0, 0.0]])) == pytest.approx(1.0)
