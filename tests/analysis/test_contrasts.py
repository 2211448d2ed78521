"""Contrasts per document against scipy on the same samples, and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from attviz.analysis import benjamini_hochberg, bootstrap_delta, cliffs_delta, ks_statistic, mann_whitney


@pytest.fixture
def family():
    """40 tests of 23 vs 17 documents, with ties (values rounded) and shifts of every size."""
    rng = np.random.default_rng(0)
    shift = np.linspace(0, 1.5, 40)[:, None]
    a = np.round(rng.normal(size=(40, 23)) + shift, 1)
    b = np.round(rng.normal(size=(40, 17)), 1)
    return a, b


def test_mann_whitney_equals_scipy_asymptotic_with_ties(family):
    a, b = family
    u, p = mann_whitney(a, b)
    for i in range(len(a)):
        expected = stats.mannwhitneyu(a[i], b[i], alternative="two-sided", method="asymptotic", use_continuity=True)
        assert u[i] == pytest.approx(expected.statistic, abs=1e-9)
        assert p[i] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-15)


def test_cliffs_delta_by_hand_and_as_rank_biserial(family):
    # by hand: a = [1, 2, 3], b = [2, 2]: pairs (a>b) 2, (a<b) 2, ties 2 -> (2 - 2) / 6 = 0; [3, 4] vs [1]: 1
    assert cliffs_delta([1, 2, 3], [2, 2])[0] == pytest.approx(0.0)
    assert cliffs_delta([3, 4], [1])[0] == pytest.approx(1.0)
    a, b = family
    pairs = np.sign(a[:, :, None] - b[:, None, :]).mean(axis=(1, 2))  # every pair counted
    np.testing.assert_allclose(cliffs_delta(a, b), pairs, atol=1e-12)
    assert (
        stats.spearmanr(np.arange(len(a)), cliffs_delta(a, b)).statistic > 0.7
    )  # larger shifts, larger effects (seeded: 0.80)


def test_ks_statistic_equals_scipy(family):
    a, b = family
    expected = [stats.ks_2samp(a[i], b[i]).statistic for i in range(len(a))]
    np.testing.assert_allclose(ks_statistic(a, b), expected, atol=1e-12)


def test_benjamini_hochberg_equals_scipy(family):
    _, p = mann_whitney(*family)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    # by hand: p = (0.01, 0.04, 0.03) -> sorted 0.01·3/1 = 0.03, 0.03·3/2 = 0.045, 0.04·3/3 = 0.04 -> monotone 0.04
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.04, 0.03]), [0.03, 0.04, 0.04])


def test_bootstrap_interval_covers_the_effect_and_is_reproducible(family):
    a, b = family
    low, high = bootstrap_delta(a[[0, -1]], b[[0, -1]], resamples=400, seed=1)
    delta = cliffs_delta(a[[0, -1]], b[[0, -1]])
    assert (low <= delta).all() and (delta <= high).all()
    assert low[1] > 0.2 and low[0] < 0 < high[0]  # a shift of 1.5 sd is clearly positive; no shift straddles 0
    again = bootstrap_delta(a[[0, -1]], b[[0, -1]], resamples=400, seed=1)
    np.testing.assert_array_equal(low, again[0])


def test_bad_samples_are_clear_errors():
    with pytest.raises(ValueError, match="finite"):
        mann_whitney([1.0, np.nan], [2.0])
    with pytest.raises(ValueError, match="at least one document"):
        mann_whitney(np.zeros((2, 0)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2 tests in the first group, 3"):
        mann_whitney(np.zeros((2, 3)), np.zeros((3, 3)))


def test_ks_test_and_paired_wilcoxon_equal_scipy(family):
    from attviz.analysis import ks_test, wilcoxon_paired

    a, b = family
    d, p = ks_test(a, b)
    for i in (0, 20, 39):
        expected = stats.ks_2samp(a[i], b[i])
        assert d[i] == pytest.approx(expected.statistic) and p[i] == pytest.approx(expected.pvalue)
    paired = a[:, :17]
    p = wilcoxon_paired(paired, b)
    for i in (5, 30):
        assert p[i] == pytest.approx(stats.wilcoxon(paired[i], b[i]).pvalue)
    assert wilcoxon_paired(b, b).tolist() == [1.0] * len(b)  # nothing changed: no evidence of a change


def test_weighted_log_odds_by_hand():
    from attviz.analysis import weighted_log_odds

    # y_a = (10, 0), y_b = (0, 10), prior (10, 10), alpha0 = 20 -> alpha_w = 10, n_a = n_b = 10:
    # delta_0 = ln(20 / 10) - ln(10 / 20) = 2 ln 2; sigma^2 = 1/20 + 1/10 = 0.15
    delta, z = weighted_log_odds([10, 0], [0, 10], [10, 10])
    np.testing.assert_allclose(delta, [2 * np.log(2), -2 * np.log(2)])
    np.testing.assert_allclose(z, [2 * np.log(2) / np.sqrt(0.15), -2 * np.log(2) / np.sqrt(0.15)])
    with pytest.raises(ValueError):
        weighted_log_odds([1, -1], [0, 1], [1, 1])
