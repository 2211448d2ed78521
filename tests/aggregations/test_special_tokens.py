"""drop_special: dropping [CLS]/[SEP] with and without re-normalising."""

import numpy as np
import pytest

from attviz import aggregations

TOKENS = ["[CLS]", "a", "b", "[SEP]"]
MATRIX = [
    [0.25, 0.25, 0.25, 0.25],
    [0.5, 0.25, 0.125, 0.125],  # a: .25 + .125 = .375 left on the words a, b
    [0.5, 0.0, 0.25, 0.25],  # b: 0 + .25 = .25 left
    [0.25, 0.5, 0.25, 0.0],
]


@pytest.fixture
def doc(make_attention):
    return make_attention(MATRIX, TOKENS, special=[True, False, False, True])


def test_drop_keeps_raw_weights(doc):
    out = aggregations.get("drop_special", renormalise=False)(doc)
    assert out.dims == doc.dims
    assert list(out["query_text"].values) == ["a", "b"] == list(out["key_text"].values)
    assert out["key"].values.tolist() == [1, 2]  # original positions
    np.testing.assert_allclose(out.values[0, 0], [[0.25, 0.125], [0.0, 0.25]])


def test_drop_and_renormalise(doc):
    # row a: [.25, .125] / .375 = [2/3, 1/3];  row b: [0, .25] / .25 = [0, 1]
    out = aggregations.get("drop_special")(doc)
    np.testing.assert_allclose(out.values[0, 0], [[2 / 3, 1 / 3], [0, 1]], atol=1e-6)


def test_extra_tokens_without_flags(make_attention):
    unflagged = make_attention(MATRIX, TOKENS)  # e.g. legacy data: no special flags at all
    assert aggregations.get("drop_special")(unflagged).sizes["key"] == 4
    out = aggregations.get("drop_special", extra_tokens=["[CLS]", "[SEP]"])(unflagged)
    np.testing.assert_allclose(out.values[0, 0], [[2 / 3, 1 / 3], [0, 1]], atol=1e-6)


def test_token_vectors_are_only_filtered(doc):
    received = aggregations.get("attention_received")(doc)
    out = aggregations.get("drop_special")(received)
    # column means of a and b: (.25 + .25 + 0 + .5)/4 = .25, (.25 + .125 + .25 + .25)/4 = .21875
    assert out.dims == ("layer", "head", "token")
    np.testing.assert_allclose(out.values[0, 0], [0.25, 0.21875])
    assert out.name == "attention_received"  # still the same quantity


def test_needs_a_token_dim(make_attention):
    with pytest.raises(aggregations.DimsError, match=r"needs dims \(query, key\) or \(token\)"):
        aggregations.get("drop_special")(make_attention(MATRIX, TOKENS).isel(query=0, key=0))
