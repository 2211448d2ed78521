"""Head-level summaries (entropy, distance, special/previous/next/self shares) by hand."""

import numpy as np
import pytest

from attviz import aggregations

MATRIX = [
    [0.5, 0.25, 0.25],
    [0.5, 0.5, 0.0],
    [0.0, 0.25, 0.75],
]
EXPECTED = {
    # rows: 1.5 ln 2 = 1.039721, ln 2 = .693147, .25 ln 4 + .75 ln 4/3 = .562335 → mean .765068
    "entropy": 0.765068,
    # Σ_k a |q − k|: row 0 .25·1 + .25·2 = .75; row 1 .5·1 = .5; row 2 .25·1 = .25 → mean .5
    "distance": 0.5,
    # key 0 is [CLS]: .5, .5, 0 → mean 1/3
    "special": 1 / 3,
    # A[1,0] = .5, A[2,1] = .25 → .375
    "previous": 0.375,
    # A[0,1] = .25, A[1,2] = 0 → .125
    "next": 0.125,
    # .5, .5, .75 → 1.75 / 3
    "self": 1.75 / 3,
}


@pytest.fixture
def doc(make_attention):
    return make_attention(MATRIX, ["[CLS]", "a", "b"], special=[True, False, False])


def test_all_statistics(doc):
    out = aggregations.get("head_summary")(doc)
    assert out.dims == ("layer", "head", "statistic")
    assert out["statistic"].values.tolist() == list(EXPECTED)
    assert out["statistic_units"].values.tolist() == ["nat", "token", "1", "1", "1", "1"]
    np.testing.assert_allclose(out.values[0, 0], list(EXPECTED.values()), atol=1e-5)


@pytest.mark.parametrize("statistic", list(EXPECTED))
def test_one_statistic(doc, statistic):
    out = aggregations.get("head_summary", statistic=statistic)(doc)
    assert out.dims == ("layer", "head")
    assert out.values[0, 0] == pytest.approx(EXPECTED[statistic], abs=1e-5)


def test_distance_uses_original_positions(doc):
    # without [CLS]: queries/keys 1, 2 with raw rows [.5, 0] and [.25, .75]
    # distance: row a 0, row b .25·1 = .25 → mean .125; previous: A[b, a] = .25
    dropped = aggregations.get("drop_special", renormalise=False)(doc)
    out = aggregations.get("head_summary")(dropped)
    assert out.sel(statistic="distance").item() == pytest.approx(0.125)
    assert out.sel(statistic="previous").item() == pytest.approx(0.25)
    assert out.sel(statistic="special").item() == 0
