"""attention_received, attention_from and diagonal on one 3-token matrix."""

import numpy as np
import pytest

from attviz import aggregations

MATRIX = [
    [0.5, 0.25, 0.25],
    [0.25, 0.5, 0.25],
    [0.0, 0.25, 0.75],
]
TOKENS = ["[CLS]", "cats", "[SEP]"]


@pytest.fixture
def doc(make_attention):
    return make_attention(MATRIX, TOKENS, special=[True, False, True])


def check_vector(out, expected):
    assert out.dims == ("layer", "head", "token")
    assert list(out["token_text"].values) == TOKENS
    assert out["token_special"].values.tolist() == [True, False, True]
    assert not any(c.startswith(("query", "key")) for c in out.coords)
    np.testing.assert_allclose(out.values[0, 0], expected, atol=1e-6)


def test_attention_received(doc):
    # column means: (.5 + .25 + 0)/3 = .25, (.25 + .5 + .25)/3 = 1/3, (.25 + .25 + .75)/3 = 5/12
    check_vector(aggregations.get("attention_received")(doc), [0.25, 1 / 3, 5 / 12])


@pytest.mark.parametrize("query, row", [(0, [0.5, 0.25, 0.25]), (-1, [0.0, 0.25, 0.75])])
def test_attention_from_one_query(doc, query, row):
    check_vector(aggregations.get("attention_from", query=query)(doc), row)


def test_attention_from_out_of_range(doc):
    with pytest.raises(IndexError, match="query 3 is out of range for 3"):
        aggregations.get("attention_from", query=3)(doc)


def test_diagonal(doc):
    # A[0,0], A[1,1], A[2,2]
    check_vector(aggregations.get("diagonal")(doc), [0.5, 0.5, 0.75])


def test_output_dims_without_data():
    dims = ("layer", "head", "query", "key")
    for name in ("attention_received", "attention_from", "diagonal"):
        assert aggregations.get(name).output_dims(dims) == ("layer", "head", "token")
