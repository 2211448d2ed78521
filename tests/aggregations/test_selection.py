"""Layer/head selection by number, list, slice and string."""

import numpy as np
import pytest

from attviz import aggregations
from attviz.corpus import attention_array, token_frame


@pytest.fixture
def doc():
    # 3 layers × 4 heads × 1 × 1, value = 10·layer + head, so each cell says where it came from
    values = (10 * np.arange(3)[:, None] + np.arange(4)[None, :])[:, :, None, None]
    return attention_array(values.astype(np.float32), token_frame(["x"]))


def cells(out):
    return out.values[:, :, 0, 0].tolist()


def test_single_number_keeps_the_dim(doc):
    out = aggregations.get("select", layers=1)(doc)
    assert out.dims == doc.dims and out["layer"].values.tolist() == [1]
    assert cells(out) == [[10, 11, 12, 13]]


def test_list_keeps_its_order(doc):
    out = aggregations.get("select", layers=[2, 0], heads=[3, 1])(doc)
    assert cells(out) == [[23, 21], [3, 1]]


@pytest.mark.parametrize(
    "heads, expected",
    [
        (slice(0, 4, 2), [0, 2]),  # Python slice over head numbers 0..3, stop excluded
        ("1:3", [1, 2]),
        ("-2:", [2, 3]),  # negative counts from the end
        ("1,3", [1, 3]),
        ("2", [2]),
        (None, [0, 1, 2, 3]),
    ],
)
def test_slices_and_strings(doc, heads, expected):
    out = aggregations.get("select", heads=heads)(doc)
    assert out["head"].values.tolist() == expected


def test_numbers_are_labels_not_positions(doc):
    first = aggregations.get("select", layers="1:3")(doc)  # layers 1, 2
    again = aggregations.get("select", layers=2)(first)  # layer number 2, i.e. position 1 here
    assert cells(again) == [[20, 21, 22, 23]]
    with pytest.raises(KeyError, match=r"no layer \[0\]"):
        aggregations.get("select", layers=0)(first)


def test_keeps_the_quantity_label(doc):
    out = aggregations.get("select", heads=0)(doc)
    assert out.name == "attention" and out.attrs["long_name"] == "attention weight"
    assert '"aggregation": "select"' in out.attrs["aggregation"]


def test_spec_round_trip(doc):
    out = aggregations.get("select", layers=slice(0, 3, 2), heads=[3, 1])(doc)
    rebuilt = aggregations.from_spec(out.attrs["aggregation"])
    assert rebuilt.id == "select"
    assert cells(rebuilt(doc)) == cells(out) == [[3, 1], [23, 21]]


def test_rejects_bad_values():
    with pytest.raises(ValueError):
        aggregations.get("select", layers="a:b")
    with pytest.raises(ValueError):
        aggregations.get("select", heads=1.5)
