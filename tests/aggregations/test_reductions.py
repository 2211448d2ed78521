"""Reductions over heads/layers on TWO_BY_TWO (conftest), worked by hand."""

import json

import numpy as np
import pytest

from attviz import aggregations

# TWO_BY_TWO, cell by cell:
#   layer 0: head 0 [[1, 0], [.5, .5]]     head 1 [[.5, .5], [0, 1]]
#   layer 1: head 0 [[.25, .75], [1, 0]]   head 1 [[.75, .25], [.5, .5]]
OVER_HEAD = {
    # mean of the two heads:  L0 [[(1+.5)/2, (0+.5)/2], [(.5+0)/2, (.5+1)/2]]
    "mean": [[[0.75, 0.25], [0.25, 0.75]], [[0.5, 0.5], [0.75, 0.25]]],
    "max": [[[1.0, 0.5], [0.5, 1.0]], [[0.75, 0.75], [1.0, 0.5]]],
    "min": [[[0.5, 0.0], [0.0, 0.5]], [[0.25, 0.25], [0.5, 0.0]]],
    # median of two values = their mean
    "median": [[[0.75, 0.25], [0.25, 0.75]], [[0.5, 0.5], [0.75, 0.25]]],
    # population std of two values a, b = |a − b| / 2: every pair differs by .5
    "std": [[[0.25, 0.25], [0.25, 0.25]], [[0.25, 0.25], [0.25, 0.25]]],
    "range": [[[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]],
}


@pytest.mark.parametrize("name", list(OVER_HEAD))
def test_over_heads(small, name):
    out = aggregations.get(name, over="head")(small)
    assert out.dims == ("layer", "query", "key")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.values, OVER_HEAD[name], atol=1e-6)
    # token coords survive; the result is labelled
    assert list(out["query_text"].values) == ["[CLS]", "hi"]
    assert out.name == name and out.attrs["units"] == "1" and out.attrs["long_name"]
    assert json.loads(out.attrs["aggregation"]) == [{"aggregation": name, "over": "head"}]


def test_over_layers(small):
    # query 0, key 1: layer 0 (0, .5) and layer 1 (.75, .25) → per head: max(0, .75), max(.5, .25)
    out = aggregations.get("max", over="layer")(small)
    assert out.dims == ("head", "query", "key")
    np.testing.assert_allclose(out.sel(query=0, key=1).values, [0.75, 0.5])


# Over layer and head, four values per cell:
#   cell (0, 0): 1, .5, .25, .75  → mean 2.5/4 = .625; median (.5 + .75)/2 = .625; range 1 − .25 = .75
#     std: deviations .375, −.125, −.375, .125 → squares sum .140625·2 + .015625·2 = .3125,
#          /4 = .078125, sqrt = .2795085
#   cell (0, 1): 0, .5, .75, .25  → sorted 0, .25, .5, .75: median .375
#   cell (1, 1): .5, 1, 0, .5     → mean .5; std: deviations 0, .5, −.5, 0 → .5/4 = .125 → .3535534
@pytest.mark.parametrize(
    "name, cell, expected",
    [
        ("mean", (0, 0), 0.625),
        ("median", (0, 0), 0.625),
        ("median", (0, 1), 0.375),
        ("range", (0, 0), 0.75),
        ("std", (0, 0), 0.2795085),
        ("std", (1, 1), 0.3535534),
        ("mean", (1, 1), 0.5),
    ],
)
def test_over_layers_and_heads(small, name, cell, expected):
    out = aggregations.get(name, over="layer+head")(small)
    assert out.dims == ("query", "key")
    assert out.values[cell] == pytest.approx(expected, abs=1e-6)


def test_needs_the_reduced_dim(small):
    with pytest.raises(aggregations.DimsError, match=r"'mean' needs dims \(head\) but got \(layer, query, key\)"):
        aggregations.get("mean")(small.isel(head=0))


def test_lazy_dask_input_gives_the_same_numbers(small):
    lazy = small.chunk({"layer": 1})
    for name in OVER_HEAD:
        out = aggregations.get(name)(lazy)
        np.testing.assert_allclose(out.values, OVER_HEAD[name], atol=1e-6)
