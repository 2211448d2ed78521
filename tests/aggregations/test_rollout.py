"""Attention rollout on 2 layers × 2 heads × 2 tokens, multiplied out by hand."""

import numpy as np
import pytest

from attviz import aggregations

# layer 0: heads [[1,0],[0,1]] and [[0,1],[1,0]] → mean A_1 = [[.5,.5],[.5,.5]]
# layer 1: both heads [[1,0],[1,0]]              → mean A_2 = [[1,0],[1,0]]
VALUES = [
    [[[1, 0], [0, 1]], [[0, 1], [1, 0]]],
    [[[1, 0], [1, 0]], [[1, 0], [1, 0]]],
]
# residual .5: Ã_1 = .5·A_1 + .5·I = [[.75,.25],[.25,.75]];  Ã_2 = .5·A_2 + .5·I = [[1,0],[.5,.5]]
# R_1 = Ã_1
# R_2 = Ã_2 · R_1 = [[1·.75, 1·.25], [.5·.75 + .5·.25, .5·.25 + .5·.75]] = [[.75,.25],[.5,.5]]
# (the other order, R_1 · Ã_2, would give [[.875,.125],[.625,.375]])
R1 = [[0.75, 0.25], [0.25, 0.75]]
R2 = [[0.75, 0.25], [0.5, 0.5]]


@pytest.fixture
def doc(make_attention):
    return make_attention(VALUES, ["[CLS]", "ok"], special=[True, False])


def test_cumulative_rollout(doc):
    out = aggregations.get("rollout")(doc)
    assert out.dims == ("layer", "query", "key")
    assert out["layer"].values.tolist() == [0, 1]
    assert list(out["key_text"].values) == ["[CLS]", "ok"]
    np.testing.assert_allclose(out.values, [R1, R2], atol=1e-6)


def test_final_layer_only(doc):
    out = aggregations.get("rollout", cumulative=False)(doc)
    assert out.dims == ("query", "key")
    np.testing.assert_allclose(out.values, R2, atol=1e-6)


def test_without_residual(doc):
    # r = 0: R_2 = A_2 · A_1 = [[1,0],[1,0]] · [[.5,.5],[.5,.5]] = [[.5,.5],[.5,.5]]
    out = aggregations.get("rollout", residual=0.0, cumulative=False)(doc)
    np.testing.assert_allclose(out.values, [[0.5, 0.5], [0.5, 0.5]], atol=1e-6)


def test_rows_are_renormalised(make_attention):
    # rows summing to .5: A = [[.25,.25],[0,.5]]; .5·A + .5·I = [[.625,.125],[0,.75]]
    # → rows / (.75, .75) = [[5/6, 1/6], [0, 1]]
    out = aggregations.get("rollout", cumulative=False)(make_attention([[0.25, 0.25], [0, 0.5]], ["a", "b"]))
    np.testing.assert_allclose(out.values, [[5 / 6, 1 / 6], [0, 1]], atol=1e-6)


def test_layers_are_taken_in_coordinate_order(doc):
    reversed_layers = doc.isel(layer=[1, 0])  # same data, stored in the other order
    out = aggregations.get("rollout")(reversed_layers)
    np.testing.assert_allclose(out.sel(layer=1).values, R2, atol=1e-6)


def test_head_fusion_max(make_attention):
    # heads [[1,0],[0,1]] and [[0,1],[1,0]], max → [[1,1],[1,1]]; + I·.5 mix: .5·[[1,1],[1,1]] + .5·I
    # = [[1,.5],[.5,1]] → rows / 1.5 = [[2/3,1/3],[1/3,2/3]]
    out = aggregations.get("rollout", head_fusion="max", cumulative=False)(make_attention(VALUES[:1], ["a", "b"]))
    np.testing.assert_allclose(out.values, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]], atol=1e-6)


def test_residual_is_bounded():
    with pytest.raises(ValueError):
        aggregations.get("rollout", residual=1.5)
