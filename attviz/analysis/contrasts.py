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
- :func:`ks_test`: the KS statistic with scipy's p-value; :func:`wilcoxon_paired`: the signed-rank test for
  the same documents under two models;
- :func:`weighted_log_odds`: words that separate two groups (Monroe et al. 2008);
- :func:`benjamini_hochberg`: false-discovery-rate adjusted p-values across the family (Benjamini &
  Hochberg 1995).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.special import ndtr


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
    from scipy.stats import rankdata  # (scipy.stats takes ~0.5 s to import: only where a test runs)

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
    ia, ib = rng.integers(0, n1, (resamples, n1)), rng.integers(0, n2, (resamples, n2))
    tail = (1 - level) / 2 * 100
    low, high = np.empty(a.shape[0]), np.empty(a.shape[0])
    for t in range(a.shape[0]):  # every resample of one test at once: the resamples are the rows
        draws = cliffs_delta(a[t][ia], b[t][ib])
        low[t], high[t] = np.percentile(draws, [tail, 100 - tail])
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


def ks_test(a: Any, b: Any, *, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``(D, two-sided p)`` of the two-sample Kolmogorov–Smirnov test per test (Smirnov 1939), as scipy's
    ``ks_2samp`` computes them (``method="auto"``: exact for small samples, asymptotic otherwise)."""
    from scipy import stats

    a, b = _groups(a, b)
    with warnings.catch_warnings():  # "exact calculation unsuccessful, switching to asymp": scipy's own choice
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ks_2samp(a, b, axis=1, method=method)
    return np.atleast_1d(result.statistic).astype(np.float64), np.atleast_1d(result.pvalue).astype(np.float64)


def wilcoxon_paired(a: Any, b: Any) -> np.ndarray:
    """Two-sided p of the Wilcoxon signed-rank test per test for paired samples (the same documents
    under two models; Wilcoxon 1945), as scipy's ``wilcoxon`` computes it; 1 where every pair is equal."""
    from scipy import stats

    a, b = _groups(a, b)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    p = np.ones(a.shape[0])
    differ = (a != b).any(axis=1)
    if differ.any():
        with np.errstate(all="ignore"):
            result = stats.wilcoxon(a[differ], b[differ], axis=1)
        p[differ] = np.nan_to_num(np.atleast_1d(result.pvalue), nan=1.0)
    return p


def weighted_log_odds(
    counts_a: Any, counts_b: Any, prior: Any, *, alpha0: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(δ, z)`` per word: the log-odds ratio with an informative Dirichlet prior and its z-score
    (Monroe, Colaresi & Quinn 2008, "Fightin' Words", eq. 22):

    δ_w = ln((y_aw + α_w) / (n_a + α₀ − y_aw − α_w)) − ln((y_bw + α_w) / (n_b + α₀ − y_bw − α_w)),
    σ²_w ≈ 1/(y_aw + α_w) + 1/(y_bw + α_w), z_w = δ_w / σ_w,

    with α_w = α₀ · prior_w / Σ prior (α₀ defaults to Σ prior: the prior counts as they are, e.g. the
    whole corpus's counts).
    """
    ya, yb, prior = (np.asarray(x, dtype=np.float64) for x in (counts_a, counts_b, prior))
    if not (ya.shape == yb.shape == prior.shape):
        raise ValueError("counts and prior need one value per word each")
    if (ya < 0).any() or (yb < 0).any() or (prior <= 0).any():
        raise ValueError("counts must be >= 0 and the prior > 0 for every word")
    total = prior.sum()
    alpha0 = total if alpha0 is None else float(alpha0)
    alpha = alpha0 * prior / total
    na, nb = ya.sum(), yb.sum()
    delta = np.log((ya + alpha) / (na + alpha0 - ya - alpha)) - np.log((yb + alpha) / (nb + alpha0 - yb - alpha))
    sigma = np.sqrt(1 / (ya + alpha) + 1 / (yb + alpha))
    return delta, delta / sigma


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
