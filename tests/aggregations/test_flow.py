"""Attention flow (max-flow) on graphs small enough to see the answer."""

import numpy as np
import pytest

from attviz import aggregations

# 2 layers, 3 tokens, residual 0 (capacities are the attention itself), output token q = 0.
# Edges input j → layer-1 node i have capacity A1[i, j]; layer-1 node j → output 0 has A2[0, j].
A1 = [[1, 0, 0], [0, 0.5, 0.5], [0, 0.5, 0.5]]
A2 = [[0.25, 0.75, 0], [0, 1, 0], [0, 0, 1]]
# input 0: 0 → (1,0) cap 1 → out cap .25                          = .25
# input 1: 1 → (1,1) cap .5 → out cap .75: .5;  1 → (1,2) → out cap 0: 0   = .5
# input 2: 2 → (1,1) cap .5 → out .5 (+ via (1,2): 0)              = .5
# (rollout would give row 0 of A2·A1 = .25·[1,0,0] + .75·[0,.5,.5] = [.25,.375,.375])
RAW = [0.25, 0.5, 0.5]


@pytest.fixture
def doc(make_attention):
    return make_attention(np.array([[A1], [A2]]), ["x", "y", "z"])


def test_raw_max_flow(doc):
    out = aggregations.get("flow", residual=0.0, normalise=False)(doc)
    assert out.dims == ("token",)
    assert list(out["token_text"].values) == ["x", "y", "z"]
    np.testing.assert_allclose(out.values, RAW, atol=1e-5)


def test_normalised_like_the_authors(doc):
    # [.25, .5, .5] / 1.25 = [.2, .4, .4]
    out = aggregations.get("flow", residual=0.0)(doc)
    np.testing.assert_allclose(out.values, [0.2, 0.4, 0.4], atol=1e-5)


def test_one_layer_with_residual(make_attention):
    # A = [[0,1],[1,0]], r = .5: Ã = [[.5,.5],[.5,.5]]; to output 1 each input has one edge of .5
    out = aggregations.get("flow", query=-1, normalise=False)(make_attention([[0, 1], [1, 0]], ["a", "b"]))
    np.testing.assert_allclose(out.values, [0.5, 0.5], atol=1e-5)


def test_matches_networkx_on_a_random_graph(make_attention):
    nx = pytest.importorskip("networkx")
    rng = np.random.default_rng(3)
    a = rng.random((3, 2, 5, 5)) ** 3
    a /= a.sum(-1, keepdims=True)
    doc = make_attention(a, list("abcde"), dtype=np.float64)
    ours = aggregations.get("flow", query=2, normalise=False, precision=8)(doc).values
    mixed = 0.5 * a.mean(1) + 0.5 * np.eye(5)  # rows already sum to 1
    graph = nx.DiGraph()
    for layer in range(3):
        for i in range(5):
            for j in range(5):
                graph.add_edge((layer, j), (layer + 1, i), capacity=mixed[layer, i, j])
    expected = [nx.maximum_flow_value(graph, (0, j), (3, 2)) for j in range(5)]
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_refuses_long_documents(make_attention):
    doc = make_attention(np.eye(4), list("abcd"))
    with pytest.raises(ValueError, match="max_tokens=3"):
        aggregations.get("flow", max_tokens=3)(doc)
