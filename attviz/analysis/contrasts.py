"""Two-group contrasts of per-document values, vectorised over a family of tests (issue #13).

The unit of every test is the document: each sample holds one value per document (e.g. the attention a
head puts on a token type, averaged within the document first), so repeated tokens do not inflate the
sample. For a family of tests (every head, every token type) with the same two groups of documents:

- :func:`mann_whitney`: the Mann–Whitney U test (Mann & Whitney 1947), two-sided, normal approximation
  with the tie correction and a continuity correction of 0.5 — scipy's ``mannwhitneyu(method="asymptotic")``;
- :func:`cliffs_delta`: Cliff's δ = P(a > b) − P(a < b) (Cliff 1993), equal to the rank-biserial
  correlation 2·U/(n₁n₂) − 1 (Kerby 2014), with a percentile bootstrap confidence interval
  (:func:`bootstrap_delta`, documents resampled within each group; Efron & Tibshirani 1993);
- :func:`ks_statistic`: the two-sample Kolmogorov–Smirnov statistic sup |F_a − F_b|;
- :func:`benjamini_hochberg`: false-discovery-rate adjusted p-values across the family (Benjamini &
  Hochberg 1995).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata


def _groups(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(tests, n_a)`` and ``(tests, n_b)`` float64 arrays (a 1-D sample is one test)."""
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} tests in the first group, {b.shape[0]} in the second")
    if a.shape[1] < 1 or b.shape[1] < 1:
        raise ValueError("each group needs at least one document")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("values must be finite (leave out documents without a value)")
    return a, b


def mann_whitney(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(U of a, two-sided p)`` per test; ``a``: ``(tests, n_a)``, ``b``: ``(tests, n_b)`` (or 1-D)."""
    a, b = _groups(a, b)
    n1, n2 = a.shape[1], b.shape[1]
    n = n1 + n2
    ranks = rankdata(np.concatenate([a, b], axis=1), axis=1)  # average ranks for ties
    u1 = ranks[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2
    u = np.maximum(u1, n1 * n2 - u1)
    ties = np.array([_tie_term(row) for row in np.concatenate([a, b], axis=1)])
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else np.zeros(len(u))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - n1 * n2 / 2 - 0.5) / np.sqrt(variance)
    p = np.where(variance > 0, np.clip(2 * ndtr(-z), 0.0, 1.0), 1.0)
    return u1, p


def _tie_term(values: np.ndarray) -> float:
    """Σ (t³ − t) over groups of t tied values."""
    _, counts = np.unique(values, return_counts=True)
    return float((counts.astype(np.float64) ** 3 - counts).sum())


def cliffs_delta(a: Any, b: Any) -> np.ndarray:
    """Cliff's δ per test: P(a > b) − P(a < b) over every pair (= the rank-biserial correlation)."""
    a, b = _groups(a, b)
    u1, _ = mann_whitney(a, b)
    return 2 * u1 / (a.shape[1] * b.shape[1]) - 1


def bootstrap_delta(
    a: Any, b: Any, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap confidence interval ``(low, high)`` of Cliff's δ per test: the documents of
    each group are resampled with replacement (the same draws for every test of the family)."""
    a, b = _groups(a, b)
    rng = np.random.default_rng(seed)
    n1, n2 = a.shape[1], b.shape[1]
    draws = np.empty((resamples, a.shape[0]))
    for r in range(resamples):
        ia, ib = rng.integers(0, n1, n1), rng.integers(0, n2, n2)
        draws[r] = cliffs_delta(a[:, ia], b[:, ib])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return low, high


def ks_statistic(a: Any, b: Any) -> np.ndarray:
    """The two-sample Kolmogorov–Smirnov statistic sup_x |F_a(x) − F_b(x)| per test."""
    a, b = _groups(a, b)
    out = np.empty(a.shape[0])
    for i, (x, y) in enumerate(zip(np.sort(a, axis=1), np.sort(b, axis=1), strict=True)):
        points = np.concatenate([x, y])
        fa = np.searchsorted(x, points, side="right") / len(x)
        fb = np.searchsorted(y, points, side="right") / len(y)
        out[i] = np.abs(fa - fb).max()
    return out


def benjamini_hochberg(p: Any) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values) of a family, in its order and shape."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat)
    scaled = flat[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(adjusted, 0.0, 1.0)
    return out.reshape(p.shape)
