"""How similar two sets of representations of the same examples are: linear CKA and mean cosine similarity.

X and Y are (examples x dim) matrices whose row i represents example i (the dims may differ).
Both are computed in float64, whatever the stored dtype.

Linear CKA (Kornblith et al., 2019) with column-centred Xc, Yc:

    CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

1 for X with itself, unchanged by an orthogonal transform or an isotropic scaling of either side,
in [0, 1]. ||A^T B||_F^2 equals trace(A A^T B B^T), so with fewer examples than dims the
(examples x examples) Gram matrices give the same value at less cost. A side with no variance
(every row the same) has no CKA: NaN.
"""

from __future__ import annotations

import numpy as np


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same examples: {x.shape[0]} rows against {y.shape[0]}")
    xc, yc = _centred(x), _centred(y)
    if xc.shape[0] < max(xc.shape[1], yc.shape[1]):
        kx, ky = xc @ xc.T, yc @ yc.T  # Gram matrices: the same value from (n x n) products
        cross = float(np.sum(kx * ky))
        norm_x, norm_y = float(np.linalg.norm(kx)), float(np.linalg.norm(ky))
    else:
        cross = float(np.linalg.norm(yc.T @ xc) ** 2)
        norm_x, norm_y = float(np.linalg.norm(xc.T @ xc)), float(np.linalg.norm(yc.T @ yc))
    if norm_x == 0.0 or norm_y == 0.0:
        return float("nan")
    return cross / (norm_x * norm_y)


def mean_cosine_similarity(x: np.ndarray, y: np.ndarray) -> float:
    """The mean over examples of cos(x_i, y_i) (same dims); an example whose vector is zero on either side is left out."""
    if x.shape != y.shape:
        raise ValueError(f"cosine similarity pairs rows of the same shape: {x.shape} against {y.shape}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    ok = norms > 0
    if not ok.any():
        return float("nan")
    return float(np.mean(np.sum(x[ok] * y[ok], axis=1) / norms[ok]))
