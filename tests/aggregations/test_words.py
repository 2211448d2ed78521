"""merge_words: sum over key pieces, mean over query pieces."""

import numpy as np
import pytest

from attviz import aggregations
from attviz.aggregations.words import word_units
from attviz.corpus import attention_array, token_frame, vector_array

TOKENS = token_frame(
    ["[CLS]", "play", "##ing", "now", "[SEP]"],
    word=[-1, 0, 0, 1, -1],
    start=[0, 0, 4, 8, 0],
    end=[0, 4, 7, 11, 0],
    special=[True, False, False, False, True],
)
MATRIX = np.array(
    [
        [0.2, 0.2, 0.2, 0.2, 0.2],
        [0.1, 0.3, 0.2, 0.3, 0.1],  # play
        [0.1, 0.5, 0.1, 0.2, 0.1],  # ##ing
        [0.4, 0.1, 0.1, 0.2, 0.2],
        [0.0, 0.5, 0.25, 0.25, 0.0],
    ]
)
# keys: sum columns 1 and 2 ("play" + "##ing"):
#   [CLS] [.2, .4, .2, .2]   play [.1, .5, .3, .1]   ##ing [.1, .6, .2, .1]
#   now   [.4, .2, .2, .2]   [SEP] [0, .75, .25, 0]
# queries: mean of the rows play and ##ing: [(.1+.1)/2, (.5+.6)/2, (.3+.2)/2, (.1+.1)/2]
EXPECTED = [
    [0.2, 0.4, 0.2, 0.2],
    [0.1, 0.55, 0.25, 0.1],
    [0.4, 0.2, 0.2, 0.2],
    [0.0, 0.75, 0.25, 0.0],
]


@pytest.fixture
def doc():
    return attention_array(MATRIX[None, None], TOKENS)


def test_merge_matrix(doc):
    out = aggregations.get("merge_words")(doc)
    assert out.dims == doc.dims
    np.testing.assert_allclose(out.values[0, 0], EXPECTED, atol=1e-6)
    np.testing.assert_allclose(out.values[0, 0].sum(-1), 1.0, atol=1e-6)  # rows stay distributions
    for dim in ("query", "key"):
        assert out[dim].values.tolist() == [0, 1, 2, 3]
        assert list(out[f"{dim}_text"].values) == ["[CLS]", "playing", "now", "[SEP]"]
        assert out[f"{dim}_word"].values.tolist() == [-1, 0, 1, -1]
        assert out[f"{dim}_start"].values.tolist() == [0, 0, 8, 0]
        assert out[f"{dim}_end"].values.tolist() == [0, 7, 11, 0]
        assert out[f"{dim}_special"].values.tolist() == [True, False, False, True]


def test_merge_token_vectors():
    vector = vector_array(np.array([[0.1, 0.2, 0.3, 0.4, 0.0]]), TOKENS, names=["v"])
    # sum: play + ##ing = .2 + .3 = .5;  mean: .25
    summed = aggregations.get("merge_words")(vector)
    np.testing.assert_allclose(summed.values[0], [0.1, 0.5, 0.4, 0.0])
    mean = aggregations.get("merge_words", token_reduce="mean")(vector)
    np.testing.assert_allclose(mean.values[0], [0.1, 0.25, 0.4, 0.0])
    assert list(mean["token_text"].values) == ["[CLS]", "playing", "now", "[SEP]"]


def test_units_are_runs_of_one_word():
    # a sentence pair restarts word ids: [CLS] a ##b [SEP] c ##d [SEP] with words -1 0 0 -1 0 0 -1
    word = np.array([-1, 0, 0, -1, 0, 0, -1])
    special = np.array([1, 0, 0, 1, 0, 0, 1], dtype=bool)
    assert word_units(word, special).tolist() == [0, 1, 1, 2, 3, 3, 4]


def test_lazy_input(doc):
    out = aggregations.get("merge_words")(doc.chunk({"layer": 1}))
    np.testing.assert_allclose(out.values[0, 0], EXPECTED, atol=1e-6)
