"""Head–head similarity against scipy, brute-force loops and hand-computed FUJI curves."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from attviz.analysis.similarity import aufuji, aufuji_matrix, cluster_order, fuji_curve, js_distance


def brute_js(a: np.ndarray) -> np.ndarray:
    """Mean over query rows of scipy's JS distance (base 2) for every pair of heads, rows with weight only."""
    heads = a.reshape(-1, *a.shape[2:]).astype(np.float64)
    n = len(heads)
    out = np.zeros((n, n))
    for g in range(n):
        for h in range(n):
            rows = [i for i in range(heads.shape[1]) if heads[g, i].sum() > 0 and heads[h, i].sum() > 0]
            out[g, h] = np.mean([jensenshannon(heads[g, i], heads[h, i], base=2) for i in rows])
    return out


def test_js_distance_equals_scipy_per_row():
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.full(9, 0.4), size=(2, 3, 7))
    a *= rng.uniform(0.5, 2, size=(2, 3, 7, 1))  # rows that do not sum to 1 are re-normalised
    a[0, 1, 2] = 0  # a row without weight is left out of that head's pairs
    expected = brute_js(a)
    for block_rows in (64, 3, 1):
        got = js_distance(a, block_rows=block_rows)
        assert got.shape == (6, 6) and got.dtype == np.float64
        np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(js_distance(a.astype(np.float16)), brute_js(a.astype(np.float16)), atol=1e-9)


def test_js_distance_identical_and_disjoint_heads():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(8), size=5)
    disjoint = np.zeros((5, 16))
    disjoint[:, 8:] = rng.dirichlet(np.ones(8), size=5)
    a = np.stack([np.pad(p, ((0, 0), (0, 8))), np.pad(p, ((0, 0), (0, 8))), disjoint])[None]  # heads 0 = 1, 2 apart
    d = js_distance(a)
    np.testing.assert_allclose(np.diag(d), 0, atol=1e-7)
    assert d[0, 1] == pytest.approx(0, abs=1e-7)
    assert d[0, 2] == pytest.approx(1) and d[2, 1] == pytest.approx(1)
    np.testing.assert_array_equal(d, d.T)


def test_fuji_identical_rankings():
    scores = [0.3, 0.9, 0.1, 0.5, 0.0, 0.7]
    np.testing.assert_array_equal(fuji_curve(scores, scores), np.ones(6))
    assert aufuji(scores, scores) == 1
    assert aufuji(scores, np.multiply(scores, 3)) == 1  # only the order and score ratios matter


def test_fuji_by_hand():
    # items A..E; a = 5 4 3 2 1 ranks A B C D E; b = 4 5 1 3 2 ranks B A D E C.
    # k=1: T_a={A} m_a=5, T_b={B} m_b=5; A only in T_a counts min(1, s_b(A)/m_b)=4/5, B likewise 4/5:
    #      (0.8 + 0.8) / |{A, B}| = 0.8
    # k=2: T_a = T_b = {A, B}: 1
    # k=3: T_a={A,B,C} m_a=3, T_b={A,B,D} m_b=3; C: s_b(C)/m_b = 1/3, D: s_a(D)/m_a = 2/3: (2 + 1/3 + 2/3) / 4 = 0.75
    # k=4: T_a={A,B,C,D} m_a=2, T_b={A,B,D,E} m_b=2; C: 1/2, E: 1/2: (3 + 1) / 5 = 0.8
    # k=5: everything: 1
    a, b = [5, 4, 3, 2, 1], [4, 5, 1, 3, 2]
    np.testing.assert_allclose(fuji_curve(a, b), [0.8, 1, 0.75, 0.8, 1])
    # trapezoids of unit width: 0.9 + 0.875 + 0.775 + 0.9 = 3.45 over 4
    assert aufuji(a, b) == pytest.approx(3.45 / 4)
    assert aufuji(b, a) == pytest.approx(3.45 / 4)
    np.testing.assert_allclose(fuji_curve(a, b, step="squared"), [0.8, 0.8, 1])  # k = 1, 4, 5
    assert aufuji(a, b, step="squared") == pytest.approx((0.8 + 0.9) / 2)
    np.testing.assert_allclose(fuji_curve(a, b, step="exp"), [0.8, 1, 0.8, 1])  # k = 1, 2, 4, 5
    np.testing.assert_allclose(fuji_curve(a, b, step=2), [0.8, 0.75, 1])  # k = 1, 3, 5


def test_fuji_disjoint_top_sets_ties_and_eps():
    # a's top set {0, 1} (tied, both ranked 1st), b's {2, 3}; outside its top set an item scores 0 by the
    # other ranking: k = 1, 2 give 0; from k = 3 the k-th score is 0, every item ties into both sets: 1
    np.testing.assert_allclose(fuji_curve([1, 1, 0, 0], [0, 0, 1, 1]), [0, 0, 1, 1])
    assert aufuji([1, 1, 0, 0], [0, 0, 1, 1]) == pytest.approx((0 + 0.5 + 1) / 3)
    # k=2: T_a = {0, 1}, T_b = {0, 2}, items 1 and 2 score 0 by the other ranking: 1 / 3
    a, b = [1, 0.1, 0, 0], [1, 0, 0.1, 0]
    np.testing.assert_allclose(fuji_curve(a, b), [1, 1 / 3, 1, 1])
    np.testing.assert_allclose(fuji_curve(a, b, eps=0.2), [1, 1, 1, 1])  # both 2nd scores ≤ eps
    # ties within 1e-12 share a rank: k=1 takes both tied items of a
    np.testing.assert_allclose(fuji_curve([2, 2 + 1e-13, 1], [2, 1, 0.5]), [1 / 2 + 1 / 4, 1, 1])
    assert aufuji([3.0], [0.0]) == 1  # one point: its value
    with pytest.raises(ValueError, match="negative"):
        fuji_curve([1, -1], [1, 1])
    with pytest.raises(ValueError):
        fuji_curve([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        fuji_curve([1, 2], [1, 2], step="linear")


def test_aufuji_matrix():
    rng = np.random.default_rng(2)
    values = rng.exponential(size=(5, 12))
    values[3] = values[0] * 2
    m = aufuji_matrix(values)
    assert m.shape == (5, 5)
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m), 1)
    assert m[0, 3] == 1
    for i in range(5):
        for j in range(5):
            if i != j:
                assert m[i, j] == pytest.approx(aufuji(values[i], values[j]))
    assert aufuji_matrix(values, step="exp")[1, 2] == pytest.approx(aufuji(values[1], values[2], step="exp"))


def test_cluster_order_groups_clusters():
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(0, 0.1, size=(4, 2)), rng.normal(5, 0.1, size=(4, 2))])
    shuffle = rng.permutation(8)
    points = points[shuffle]
    distance = np.linalg.norm(points[:, None] - points[None, :], axis=-1)
    order = cluster_order(distance)
    assert sorted(order.tolist()) == list(range(8))
    groups = (shuffle[order] >= 4).astype(int)  # which cluster each leaf came from
    assert np.abs(np.diff(groups)).sum() == 1  # the two clusters are contiguous
    distance[0, 1] = distance[1, 0] = np.nan  # unknown distances count as far
    assert sorted(cluster_order(distance).tolist()) == list(range(8))
    assert cluster_order(np.ones((4, 4))).tolist() == [0, 1, 2, 3]
    assert cluster_order(np.full((3, 3), np.nan)).tolist() == [0, 1, 2]
    assert cluster_order(np.zeros((2, 2))).tolist() == [0, 1]
