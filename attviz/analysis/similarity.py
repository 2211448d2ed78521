"""Head–head similarity (issue #13): how alike two heads attend, and how alike they rank things.

- :func:`js_distance`: per document, the Jensen–Shannon distance between two heads' attention rows over
  the same tokens, averaged over query rows (Clark et al. 2019, §6, compare heads by the JS divergence
  of their attention distributions);
- :func:`fuji_curve` / :func:`aufuji` / :func:`aufuji_matrix`: the FUJI curve (fuzzy Jaccard index of
  the top-k sets of two score rankings, for growing k) and the area under it (Petković, Škrlj, Kocev &
  Simidjievski 2021, "Fuzzy Jaccard Index: A robust comparison of ordered lists",
  https://arxiv.org/abs/2008.02216, https://github.com/Petkomat/fuji-score; the original AttViz's
  ``fuji_rankings.py``), e.g. to compare the token types two heads attend to most;
- :func:`cluster_order`: a leaf order of average-linkage clustering of a distance matrix, to sort a
  heatmap of either.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from scipy.special import xlogy

TIE = 1e-12  # scores closer than this share a rank in FUJI
BUDGET = 1 << 21  # float64 values per pair temporary of js_distance (16 MB; about three are alive at once)


def js_distance(a: Any, *, block_rows: int = 64) -> np.ndarray:
    """Mean Jensen–Shannon distance between every two heads of one document, float64 ``(L·H, L·H)``.

    ``a``: ``(layer, head, query, key)``; heads are numbered ``layer · H + head``. For heads g, h and
    query row i, with p = a_g[i] / Σ a_g[i] and q = a_h[i] / Σ a_h[i] (rows re-normalised) and m =
    (p + q) / 2, JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m) in bits, = ½ Σ_k [p_k log₂ p_k + q_k log₂ q_k −
    2 m_k log₂ m_k], and the distance is √JS ∈ [0, 1] (Lin 1991; Endres & Schindelin 2003; scipy's
    ``jensenshannon(p, q, base=2)``). The result is its mean over the query rows where both rows have
    weight (NaN if none). Clark et al. (2019, §6) compare BERT's heads by this divergence.

    Vectorised over head pairs (each pair once), ``block_rows`` query rows at a time or fewer, so that
    each temporary holds about :data:`BUDGET` float64 values at most (or one row of every head, if more)
    whatever the number of heads.
    """
    a = a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"attention must be (layer, head, query, key), got shape {tuple(a.shape)}")
    n_layer, n_head, n_query, n_key = (int(n) for n in a.shape)
    n = n_layer * n_head
    step = max(1, min(block_rows, n_query, BUDGET // max(n * n_key, 1)))
    total = np.zeros((n, n))
    count = np.zeros((n, n))
    for start in range(0, n_query, step):
        p = np.asarray(a[:, :, start : start + step], dtype=np.float64).reshape(n, -1, n_key)  # (head, rows, key)
        mass = p.sum(-1)
        valid = mass > 0
        p /= np.where(valid, mass, 1)[..., None]
        own = xlogy(p, p).sum(-1)  # Σ p ln p per head and row
        chunk = max(1, BUDGET // (p.shape[1] * n_key))  # second heads per temporary
        for g in range(n):
            for h in range(g, n, chunk):
                other = slice(h, min(h + chunk, n))
                s = p[g] + p[other]  # 2m for heads h..h+chunk-1
                mixed = xlogy(s, s / 2).sum(-1)  # Σ 2m ln m
                js = np.maximum((own[g] + own[other] - mixed) / (2 * np.log(2)), 0.0)
                both = valid[g] & valid[other]
                total[g, other] += np.where(both, np.sqrt(js), 0.0).sum(-1)
                count[g, other] += both.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
    upper = np.triu(out)
    return upper + np.triu(out, 1).T


def _prefixes(n: int, step: int | str) -> np.ndarray:
    """The top-k sizes of a FUJI curve over ``n`` items, ending at ``n``."""
    if step == "squared":
        ks = np.arange(1, math.isqrt(n) + 1) ** 2
    elif step == "exp":
        ks = 2 ** np.arange(0, n.bit_length())
    elif isinstance(step, int | np.integer) and not isinstance(step, bool) and step >= 1:
        ks = np.arange(1, n + 1, int(step))
    else:
        raise ValueError(f"step must be a positive int, 'squared' or 'exp', got {step!r}")
    ks = ks[ks <= n]
    return ks if ks[-1] == n else np.append(ks, n)


def _ranking(scores: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores, descending sorted scores, competition rank)`` of one ranking (ties share the best rank)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} has non-finite scores")
    if (s < 0).any():
        raise ValueError(f"{name} has negative scores; FUJI needs scores ≥ 0")
    ascending = np.sort(s)
    rank = 1 + s.size - np.searchsorted(ascending, s + TIE, side="right")  # 1 + #{scores > s + TIE}
    return s, ascending[::-1], rank


def _curve(one: tuple, two: tuple, ks: np.ndarray, eps: float) -> np.ndarray:
    (s1, sorted1, r1), (s2, sorted2, r2) = one, two
    m1, m2 = sorted1[ks - 1][:, None], sorted2[ks - 1][:, None]  # the k-th largest scores
    in1, in2 = r1[None, :] <= ks[:, None], r2[None, :] <= ks[:, None]  # the top-k sets (ties included)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1 = np.where(m1 > 0, np.minimum(1.0, s1[None, :] / np.where(m1 > 0, m1, 1)), 1.0)
        mu2 = np.where(m2 > 0, np.minimum(1.0, s2[None, :] / np.where(m2 > 0, m2, 1)), 1.0)
    score = np.where(in1 & in2, 1.0, np.where(in1 ^ in2, np.minimum(mu1, mu2), 0.0)).sum(-1)
    curve = score / (in1 | in2).sum(-1)
    curve[(m1[:, 0] <= eps) & (m2[:, 0] <= eps)] = 1.0  # both rankings are past their relevant items
    return curve


def fuji_curve(scores_a: Any, scores_b: Any, *, eps: float = 0.0, step: int | str = 1) -> np.ndarray:
    """The FUJI curve of two rankings of the same items by non-negative scores (Petković et al. 2021).

    Items are ranked by descending score (scores within 1e-12 share a rank). For each prefix size k
    (every k for ``step=1``, every ``step``-th from 1 for an int; 1, 4, 9, … for ``"squared"``; 1, 2, 4,
    8, … for ``"exp"``; always ending at n) with T_a, T_b the top-k sets (items ranked k or better, so
    ties with the k-th item are in) and m_a, m_b the k-th largest scores, the fuzzy Jaccard index

        FUJI_k = (|T_a ∩ T_b| + Σ_{x ∈ T_a △ T_b} min(min(1, s_a(x)/m_a), min(1, s_b(x)/m_b))) / |T_a ∪ T_b|,

    so an item just outside one top-k set still counts by how close its score is to that set's
    threshold. Where m_a ≤ ``eps`` and m_b ≤ ``eps`` both rankings have run out of relevant items and the
    point is 1. Values lie in [0, 1]; identical rankings give 1 everywhere. Negative scores raise
    ``ValueError``.
    """
    one, two = _ranking(scores_a, "scores_a"), _ranking(scores_b, "scores_b")
    if one[0].shape != two[0].shape:
        raise ValueError(f"the rankings score {one[0].size} and {two[0].size} items")
    return _curve(one, two, _prefixes(one[0].size, step), eps)


def _area(curve: np.ndarray) -> float:
    """Trapezoidal area with unit spacing over ``len - 1`` (a single point: its value)."""
    if len(curve) == 1:
        return float(curve[0])
    return float(((curve[:-1] + curve[1:]) / 2).sum() / (len(curve) - 1))


def aufuji(scores_a: Any, scores_b: Any, **kw: Any) -> float:
    """Area under :func:`fuji_curve` (``kw``: ``eps``, ``step``), normalised to [0, 1]: the trapezoidal
    area with unit spacing divided by (points − 1); one point gives its value. 1 for identical rankings."""
    return _area(fuji_curve(scores_a, scores_b, **kw))


def aufuji_matrix(values: np.ndarray, **kw: Any) -> np.ndarray:
    """:func:`aufuji` of every pair of rows of ``values`` ``(n_heads, n_items)``: symmetric float64
    ``(n_heads, n_heads)`` with 1 on the diagonal (``kw``: ``eps``, ``step``)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be (n_heads, n_items), got shape {values.shape}")
    rankings = [_ranking(row, f"values[{i}]") for i, row in enumerate(values)]
    eps, step = float(kw.pop("eps", 0.0)), kw.pop("step", 1)
    if kw:
        raise TypeError(f"unexpected keyword arguments {sorted(kw)}")
    ks = _prefixes(values.shape[1], step)
    n = len(rankings)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = _area(_curve(rankings[i], rankings[j], ks, eps))
    return out


def cluster_order(distance: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage (UPGMA, Sokal & Michener 1958: the distance of two clusters is the
    mean distance of their members) hierarchical clustering of a square ``distance`` matrix, with
    the optimal leaf ordering of Bar-Joseph et al. 2001 (``scipy.cluster.hierarchy``), so similar items
    sit next to each other in a heatmap.

    The matrix is symmetrised ((D + Dᵀ)/2), negative values are clipped to 0, NaN/inf distances count as
    the largest finite one (0 if none) and the diagonal as 0. A constant matrix (no structure) and n ≤ 2
    keep the input order.
    """
    d = np.array(distance, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distance must be a square matrix, got shape {d.shape}")
    n = d.shape[0]
    if n <= 2:
        return np.arange(n)
    d = (d + d.T) / 2
    off = ~np.eye(n, dtype=bool)
    finite = np.isfinite(d)
    fill = d[finite & off].max() if (finite & off).any() else 0.0
    d = np.clip(np.where(finite, d, fill), 0.0, None)
    np.fill_diagonal(d, 0.0)
    if np.ptp(d[off]) == 0:
        return np.arange(n)
    tree = linkage(squareform(d, checks=False), method="average", optimal_ordering=True)
    return leaves_list(tree).astype(np.int64)


__all__ = ["aufuji", "aufuji_matrix", "cluster_order", "fuji_curve", "js_distance"]
