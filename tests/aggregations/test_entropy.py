"""Entropy per query row and per head, worked by hand (ln 2 = .693147, ln 3 = 1.098612)."""

import numpy as np
import pytest

from attviz import aggregations

LN2, LN3 = np.log(2), np.log(3)
MATRIX = [
    [0.5, 0.25, 0.25],  # H = −(.5 ln .5 + 2·.25 ln .25) = .5 ln 2 + ln 2 = 1.5 ln 2 = 1.039721
    [0.25, 0.5, 0.25],  # the same numbers in another order: 1.5 ln 2
    [0.0, 0.25, 0.75],  # H = .25 ln 4 + .75 ln(4/3) = .346574 + .215762 = .562335 (0 ln 0 = 0)
]
ROWS = [1.039721, 1.039721, 0.562335]


@pytest.fixture
def doc(make_attention):
    return make_attention(MATRIX, ["a", "b", "c"])


def test_entropy_in_nats(doc):
    out = aggregations.get("entropy")(doc)
    assert out.dims == ("layer", "head", "token")
    assert list(out["token_text"].values) == ["a", "b", "c"]
    assert out.attrs["units"] == "nat"
    np.testing.assert_allclose(out.values[0, 0], ROWS, atol=1e-5)


def test_normalised_by_ln_keys(doc):
    # divide by ln 3: 1.039721/1.098612 = .946395, .562335/1.098612 = .511858
    out = aggregations.get("entropy", normalised=True)(doc)
    assert out.attrs["units"] == "1"
    np.testing.assert_allclose(out.values[0, 0], [0.946395, 0.946395, 0.511858], atol=1e-5)


def test_normalised_causal(make_attention):
    # causal rows: query q sees q + 1 keys, so divide by ln(q + 1); the first row is 0 by definition
    #   row 0 [1, 0, 0]       H = 0                       → 0
    #   row 1 [.5, .5, 0]     H = ln 2                    → ln 2 / ln 2 = 1
    #   row 2 [.25, .25, .5]  H = 2·.25 ln 4 + .5 ln 2 = 1.5 ln 2 = 1.039721 → / ln 3 = .946395
    causal = make_attention([[1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5]], ["a", "b", "c"])
    out = aggregations.get("entropy", normalised=True, causal=True)(causal)
    np.testing.assert_allclose(out.values[0, 0], [0.0, 1.0, 0.946395], atol=1e-5)


def test_rows_are_renormalised(make_attention):
    # a row [.25, .25] (sum .5) is the distribution [.5, .5]: H = ln 2
    out = aggregations.get("entropy")(make_attention([[0.25, 0.25], [1, 0]], ["a", "b"]))
    np.testing.assert_allclose(out.values[0, 0], [LN2, 0.0], atol=1e-6)


def test_head_entropy_is_the_mean_over_queries(doc):
    # (1.039721 + 1.039721 + .562335) / 3 = 2.641777 / 3 = .880592
    out = aggregations.get("head_entropy")(doc)
    assert out.dims == ("layer", "head")
    assert out.values[0, 0] == pytest.approx(0.880592, abs=1e-5)
    # normalised: .880592 / ln 3 = .801550
    out = aggregations.get("head_entropy", normalised=True)(doc)
    assert out.values[0, 0] == pytest.approx(0.880592 / LN3, abs=1e-5)
