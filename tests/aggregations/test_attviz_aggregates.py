"""The original AttViz per-token aggregates on legacy (vector, token) data."""

import numpy as np
import pytest

from attviz import aggregations
from attviz.corpus import token_frame, vector_array

# 4 vectors × 4 tokens (float64, as JavaScript computes in doubles)
VALUES = np.array(
    [
        [0.10, 0.20, 0.001, 0.05],
        [0.105, 0.20, 0.002, 0.15],
        [0.30, 0.20, 0.003, 0.25],
        [0.50, 0.215, 0.004, 0.35],
    ]
)
EXPECTED = {
    # token 0: .1, .105, .3, .5          token 1: .2, .2, .2, .215
    # token 2: .001 .. .004              token 3: .05, .15, .25, .35
    "attviz_mean": [1.005 / 4, 0.815 / 4, 0.010 / 4, 0.8 / 4],
    # population std, token 0: deviations from .25125: −.15125, −.14625, .04875, .24875
    #   squares .0228766 + .0213891 + .0023766 + .0618766 = .1085188, /4 = .0271297, sqrt = .164711
    # token 1: deviations −.00375 ×3, .01125: 3·1.40625e-5 + 1.265625e-4 = 1.6875e-4, /4, sqrt = .0064952
    # token 2: deviations ±.0015, ±.0005: (2·2.25e-6 + 2·2.5e-7)/4 = 1.25e-6, sqrt = .0011180
    # token 3: deviations ±.15, ±.05: (2·.0225 + 2·.0025)/4 = .0125, sqrt = .1118034
    "attviz_std": [0.164711, 0.0064952, 0.0011180, 0.1118034],
    "attviz_max": [0.5, 0.215, 0.004, 0.35],
    "attviz_min": [0.1, 0.2, 0.001, 0.05],
    "attviz_max_min": [0.4, 0.015, 0.003, 0.3],
    # binned "entropy": bins floor(100 v), H = −Σ p ln p, divided by the number of occupied bins
    # token 0: bins 10, 10, 30, 50 → p = .5, .25, .25 → H = 1.5 ln 2 = 1.039721; 3 bins → .346574
    # token 1: bins 20, 20, 20, 21 → p = .75, .25 → H = .562335; 2 bins → .281167
    # token 2: all in bin 0 → H = 0 → 0
    # token 3: bins 5, 15, 25, 35 → p = .25 ×4 → H = ln 4 = 1.386294; 4 bins → .346574 (= ln V / V)
    "attviz_entropy": [0.346574, 0.281167, 0.0, 0.346574],
}


@pytest.fixture
def legacy():
    return vector_array(VALUES, token_frame(["w", "x", "y", "z"]), names=["0", "1", "2", "3"])


@pytest.mark.parametrize("name", list(EXPECTED))
def test_legacy_aggregate(legacy, name):
    out = aggregations.get(name)(legacy)
    assert out.dims == ("token",)
    assert list(out["token_text"].values) == ["w", "x", "y", "z"]
    np.testing.assert_allclose(out.values, EXPECTED[name], atol=1e-6)
    assert "(AttViz" in out.attrs["long_name"]


def test_entropy_is_labelled_as_the_attviz_variant(legacy):
    out = aggregations.get("attviz_entropy")(legacy)
    assert out.attrs["long_name"] == "binned entropy (AttViz variant)"


def test_over_heads_of_modern_vectors(make_attention):
    # diagonal vectors (layer, head, token) aggregated over heads, like AttViz over its vectors
    doc = make_attention(np.array([[np.eye(2), 0.5 * np.ones((2, 2))]]), ["a", "b"])
    diagonal = aggregations.get("diagonal")(doc)  # head 0: [1, 1], head 1: [.5, .5]
    out = aggregations.get("attviz_max_min", over="head")(diagonal)
    assert out.dims == ("layer", "token")
    np.testing.assert_allclose(out.values, [[0.5, 0.5]])


def test_matrices_are_refused(make_attention):
    with pytest.raises(aggregations.DimsError, match=r"needs dims \(vector, token\)"):
        aggregations.get("attviz_mean")(make_attention(np.eye(2), ["a", "b"]))
