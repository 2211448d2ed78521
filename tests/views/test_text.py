"""TextView: colours, offsets-based text, word grouping, escaping, selection, in-place updates, windows."""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest
import xarray as xr

from attviz.corpus import token_coords, token_frame
from attviz.views.text import (
    TextView,
    TokenText,
    clean_token,
    css_colors,
    layout_units,
    row_alpha,
    scale_values,
    unit_starts,
)

ORANGE = "rgba(249, 130, 44, {:.3f})"


def vectors(values, tokens, heads=None, dim="head") -> xr.DataArray:
    values = np.asarray(values, dtype=float)
    values = values[None] if values.ndim == 1 else values
    labels = list(range(len(values))) if heads is None else heads
    coords = {dim: labels, **token_coords(tokens, "token")}
    return xr.DataArray(values, dims=(dim, "token"), coords=coords, name="attention_received")


@pytest.fixture
def hello():
    """'Hello, world' as [CLS] hello , world [SEP] with offsets."""
    return token_frame(
        ["[CLS]", "hello", ",", "world", "[SEP]"],
        word=[-1, 0, 1, 2, -1],
        start=[0, 0, 5, 7, 0],
        end=[0, 5, 6, 12, 0],
        special=[True, False, False, False, True],
    )


def shown(view: TextView) -> TokenText:
    return view._component


# -- colours ------------------------------------------------------------------------------------
def test_scaling_by_hand():
    np.testing.assert_allclose(scale_values([0, 0.5, 1], "max"), [0, 0.5, 1])
    np.testing.assert_allclose(scale_values([0, 0.25, 0.5], "max"), [0, 0.5, 1])
    np.testing.assert_allclose(scale_values([0, 0.25, 0.5], "absolute"), [0, 0.25, 0.5])
    np.testing.assert_allclose(scale_values([0, 2.0, np.nan], "absolute"), [0, 1, 0])
    np.testing.assert_allclose(scale_values([0, 0], "max"), [0, 0])  # no division by zero
    np.testing.assert_allclose(row_alpha([0, 0.5, 1]), [0.125, 0.5625, 1.0])
    assert css_colors(np.array([0, 0.5, 1])) == [ORANGE.format(0), ORANGE.format(0.5), ORANGE.format(1)]
    with pytest.raises(ValueError):
        scale_values([1], "log")


@pytest.mark.parametrize(
    ("scale", "highlight", "rows"),
    [
        ("max", [0, 0.5, 1], [0.125, 0.5625, 1.0]),  # divided by the max (0.5)
        ("absolute", [0, 0.25, 0.5], [0.125, 0.34375, 0.5625]),  # 7/8·v + 1/8
    ],
)
def test_view_colours(scale, highlight, rows):
    tokens = token_frame(["a", "b", "c"])
    data = vectors([0, 0.25, 0.5], tokens)
    view = TextView(mode="both", scale=scale)
    view.param.update(data=data, aggregate=data.isel(head=0, drop=True))
    assert shown(view).colors == [ORANGE.format(a) for a in highlight]
    np.testing.assert_allclose(shown(view).row_alpha, [rows])
    np.testing.assert_allclose(shown(view).values, [0, 0.25, 0.5])
    assert shown(view).head_names == ["H0"] and shown(view).head_rgb == ["31, 119, 180"]
    full = "0.5 (the document's maximum)" if scale == "max" else "1 (absolute"
    assert full in shown(view).legend


def test_modes_send_only_what_they_draw():
    data = vectors([[0, 0.5], [1, 0]], token_frame(["a", "b"]))
    view = TextView(mode="rows", data=data)
    assert shown(view).colors == [] and shown(view).row_alpha.shape == (2, 2)
    assert "alpha = 7/8·v + 1/8" in shown(view).legend
    view.mode = "highlight"
    assert len(shown(view).colors) == 2 and shown(view).row_alpha.size == 0


def test_heads_pick_rows_and_aggregate_is_used_as_given():
    data = vectors([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], token_frame(["a", "b"]), heads=[4, 5, 6])
    aggregate = xr.DataArray([9.0, 1.0], dims="token")
    view = TextView(mode="rows")
    view.param.update(data=data, aggregate=aggregate, heads=[6, 4])
    assert shown(view).head_names == ["H4", "H6"]  # in the data's order
    np.testing.assert_allclose(shown(view).head_values, [[0.1, 0.2], [0.5, 0.6]])
    np.testing.assert_allclose(shown(view).values, [9, 1])  # not recomputed from the heads


def test_legacy_vectors_are_named_rows():
    data = vectors([[1, 2], [3, 4]], token_frame(["a", "b"]), heads=["mean", "max"], dim="vector")
    view = TextView(data=data)
    assert shown(view).head_names == ["mean", "max"]
    np.testing.assert_allclose(shown(view).values, [2, 3])  # no aggregate given: mean over rows


# -- text layout ----------------------------------------------------------------------------------
def test_offsets_rebuild_the_original_text(hello):
    view = TextView(show_special=False)
    view.param.update(data=vectors([0, 0.1, 0.2, 0.3, 0], hello), text="Hello, world")
    c = shown(view)
    assert c.labels == ["Hello", ",", "world"]  # original casing, from the text
    assert c.gaps == ["", "", " "] and c.tail == ""
    view.text = "Hello, world!"  # text after the last token (here before a hidden [SEP]) is kept
    assert c.tail == "!"
    assert c.first == [1, 2, 3] and c.badges == [False, False, False]


def test_special_tokens_are_badges_at_their_place(hello):
    view = TextView()
    view.param.update(data=vectors([0.5, 0.1, 0.2, 0.3, 1.0], hello), text="Hello, world!\n")
    c = shown(view)
    assert c.labels == ["[CLS]", "Hello", ",", "world", "[SEP]"]
    assert c.badges == [True, False, False, False, True]
    assert c.gaps == ["", "", "", " ", ""] and c.tail == "!\n"
    assert c.colors[-1] == ORANGE.format(1)  # [SEP] holds the maximum
    view.show_special = False  # hidden specials leave the scale: world (0.3) is now full
    assert c.colors[-1] == ORANGE.format(1) and c.labels[-1] == "world"


def test_fallback_without_offsets():
    tokens = token_frame(["[CLS]", "the", "runn", "##ing", "dog", "[SEP]"], special=[1, 0, 0, 0, 0, 1])
    view = TextView(data=vectors(np.ones(6), tokens), text="")
    c = shown(view)
    assert c.labels == ["[CLS]", "the", "runn", "ing", "dog", "[SEP]"]
    assert c.gaps == ["", " ", " ", "", " ", " "]  # spaces, none before a ## piece
    assert c.badges == [True, False, False, False, False, True]
    gpt2 = token_frame(["<|endoftext|>", "Ġthe", "Ġcaf", "Ã©", "Ċ"], special=[1, 0, 0, 0, 0])
    assert shown(TextView(data=vectors(np.ones(5), gpt2))).labels == ["<|endoftext|>", "the", "caf", "é", "↵"]
    t5 = token_frame(["▁The", "▁dog", "</s>"], special=[0, 0, 1])
    assert shown(TextView(data=vectors(np.ones(3), t5))).labels == ["The", "dog", "</s>"]
    assert clean_token("##") == "##" and clean_token("Ġ") == "·" and clean_token("▁") == "·"


def test_word_level_groups_pieces_with_their_max():
    tokens = token_frame(
        ["[CLS]", "un", "##believ", "##able", "results", "[SEP]"],
        word=[-1, 0, 0, 0, 1, -1],
        start=[0, 0, 2, 8, 13, 0],
        end=[0, 2, 8, 12, 20, 0],
        special=[True, False, False, False, False, True],
    )
    np.testing.assert_array_equal(unit_starts(tokens, "word"), [0, 1, 4, 5])
    data = vectors([[0.0, 0.1, 0.4, 0.2, 0.3, 0.0], [0.0, 0.5, 0.1, 0.1, 0.2, 0.0]], tokens)
    view = TextView(level="word")
    view.param.update(data=data, aggregate=data.isel(head=0, drop=True), text="unbelievable results")
    c = shown(view)
    assert c.labels == ["[CLS]", "unbelievable", "results", "[SEP]"]
    assert c.first == [0, 1, 4, 5] and c.last == [0, 3, 4, 5]
    assert c.pieces[1] == "un | ##believ | ##able"
    np.testing.assert_allclose(c.values, [0, 0.4, 0.3, 0])  # max of the pieces
    np.testing.assert_allclose(c.head_values, [[0, 0.4, 0.3, 0], [0, 0.5, 0.2, 0]])
    view.selected_token = 2  # a piece of the word: the word's span is outlined (client maps first..last)
    assert c.selected_token == 2


def test_token_text_is_data_never_markup():
    evil = ["<img src=x onerror=alert(1)>", "&amp;", "<b>"]
    view = TextView(data=vectors([1, 2, 3], token_frame(evil)))
    assert shown(view).labels == evil  # passed verbatim, as data
    esm = TokenText._esm
    assert "innerHTML" not in esm and "insertAdjacentHTML" not in esm
    assert "label.textContent = model.labels[i]" in esm and "createTextNode(model.gaps[i])" in esm
    layout = layout_units(token_frame(["<i>"], start=[0], end=[3]), "<i>", np.array([0]), np.array([0]))
    assert layout.labels == ["<i>"]


# -- linking and updates --------------------------------------------------------------------------
def _events(component: TokenText) -> list[str]:
    names: list[str] = []
    component.param.watch(lambda *events: names.extend(e.name for e in events), list(component.param))
    return names


def test_selection_from_outside_sends_only_the_selection(hello):
    view = TextView(text="Hello, world")
    view.data = vectors([0, 0.1, 0.2, 0.3, 0], hello)
    root = pn.panel(view).get_root()
    model = next(m for m in root.select({"type": pn.models.esm.ReactiveESM}))
    labels = model.data.labels
    names = _events(shown(view))
    view.selected_token = 3
    assert names == ["selected_token"]
    assert model.data.selected_token == 3 and model.data.labels is labels


def test_click_in_the_browser_sets_the_view(hello):
    view = TextView(data=vectors(np.ones(5), hello), text="Hello, world")
    shown(view)._process_events({"selected_token": 2})
    assert view.selected_token == 2


def test_new_values_recolour_in_place(hello):
    view = TextView(text="Hello, world")
    view.data = vectors([0, 0.1, 0.2, 0.3, 0], hello)
    root = pn.panel(view).get_root()
    model = next(m for m in root.select({"type": pn.models.esm.ReactiveESM}))
    names = _events(shown(view))
    view.param.update(data=vectors([0, 0.3, 0.2, 0.1, 0], hello))  # e.g. another head
    assert next(m for m in root.select({"type": pn.models.esm.ReactiveESM})) is model
    assert set(names) <= {"colors", "values", "head_values", "legend"}  # no structure change
    assert model.data.colors[1] == ORANGE.format(1)
    view.param.update(data=vectors([1, 1], token_frame(["new", "doc"])), text=None)  # a new document
    assert model.data.labels == ["new", "doc"]


def test_placeholder_without_data():
    view = TextView()
    assert "Nothing to show" in shown(view).note and shown(view).labels == []
    root = pn.panel(view).get_root()
    assert next(m for m in root.select({"type": pn.models.esm.ReactiveESM})).data.note == shown(view).note


def test_long_document_is_windowed():
    n = 4096
    tokens = token_frame([f"w{i}" for i in range(n)], start=np.arange(n) * 6, end=np.arange(n) * 6 + 5)
    text = " ".join(f"w{i:04d}" for i in range(n))
    view = TextView(text=text, data=vectors(np.linspace(0, 1, n), tokens))
    c = shown(view)
    assert len(c.labels) == 2048 and c.note == "tokens 1–2048 of 4096" and view._slider.visible
    assert c.labels[:2] == ["w0000", "w0001"] and c.tail == ""
    view.window_start = 2048
    assert c.first[0] == 2048 and c.last[-1] == n - 1 and c.note == "tokens 2049–4096 of 4096"
    assert c.gaps[0] == "" and c.labels[0] == "w2048"
    view.selected_token = 10  # outside the window: the window follows the selection
    assert view.window_start == 0 and c.selected_token == 10 and 10 in c.first
    view.data = vectors([1, 2], token_frame(["a", "b"]))  # a short document resets the window
    assert c.labels == ["a", "b"] and c.note == "" and not view._slider.visible


def test_demo_document_text_is_reproduced_exactly():
    from attviz.aggregations.vectors import AttentionReceived
    from attviz.demo import demo_corpus

    doc = demo_corpus(progress=False)[0]
    received = AttentionReceived()(doc.attention.isel(layer=0)).compute()
    view = TextView(mode="both")
    view.param.update(data=received, aggregate=received.mean("head"), text=doc.text)
    c = shown(view)
    rebuilt = "".join(g + lab for g, lab, b in zip(c.gaps, c.labels, c.badges, strict=True) if not b) + c.tail
    assert rebuilt == doc.text
    assert c.badges[0] and c.badges[-1] and len(c.head_names) == received.sizes["head"]
    assert pn.panel(view).get_root() is not None


# -- words: one definition with merge_words --------------------------------------------------------
def _merged(tokens, values):
    """MergeWords on a (query, key) matrix with these tokens: (values, merged token texts)."""
    from attviz.aggregations.words import MergeWords

    array = xr.DataArray(np.asarray(values, dtype=np.float32), dims=("query", "key"))
    array = array.assign_coords({**token_coords(tokens, "query"), **token_coords(tokens, "key")})
    merged = MergeWords()(array)
    return merged.values, [str(t) for t in merged["query_text"].values]


@pytest.mark.parametrize("first_word", [-1, 0])  # <s> with word -1, or stored with the first word's index
def test_special_token_before_a_split_word_is_never_merged(first_word):
    from attviz.aggregations.words import word_units

    words = [first_word, 0, 0]
    tokens = token_frame(["<s>", "Hel", "lo"], word=words, start=[0, 0, 3], end=[0, 3, 5], special=[1, 0, 0])
    np.testing.assert_array_equal(word_units(tokens["word"].to_numpy(), tokens["special"].to_numpy()), [0, 1, 1])
    np.testing.assert_array_equal(unit_starts(tokens, "word"), [0, 1])  # the text view: the same units
    view = TextView(level="word")
    view.param.update(data=vectors([[0.5, 0.1, 0.4]], tokens), text="Hello")
    c = shown(view)
    assert c.labels == ["<s>", "Hello"] and c.badges == [True, False]
    assert c.first == [0, 1] and c.last == [0, 2]
    np.testing.assert_allclose(c.values, [0.5, 0.4])  # a word's value: the max of its pieces
    # merge_words by hand: keys summed ([1+2]), queries averaged (rows 1 and 2).
    values, texts = _merged(tokens, [[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
    np.testing.assert_allclose(values, [[1.0, 0.0], [0.3, 0.7]], atol=1e-6)
    assert texts == ["<s>", "Hello"]


def test_roberta_style_words_with_a_leading_space_marker():
    tokens = token_frame(
        ["<s>", "ĠHel", "lo", "Ġworld", "</s>"],
        word=[-1, 0, 0, 1, -1],
        start=[0, 0, 3, 6, 0],
        end=[0, 3, 5, 11, 0],
        special=[1, 0, 0, 0, 1],
    )
    view = TextView(level="word")
    view.param.update(data=vectors([[0.1, 0.2, 0.3, 0.4, 0.0]], tokens), text="Hello world")
    c = shown(view)
    assert c.labels == ["<s>", "Hello", "world", "</s>"] and c.gaps == ["", "", " ", ""]
    assert c.pieces[1] == "·Hel | lo\nraw: ĠHel lo"  # readable pieces, and the raw ones in the hover
    assert c.pieces[2] == "·world\nraw: Ġworld" and c.pieces[0] == "<s>"
    identity = np.eye(5, dtype=np.float32)
    values, texts = _merged(tokens, identity)
    assert texts == ["<s>", "ĠHello", "Ġworld", "</s>"]  # the same four units as the text view
    np.testing.assert_allclose(values[1], [0, 1, 0, 0])  # mean of the rows of ĠHel and lo, keys summed
    view.level = "token"
    assert shown(view).labels == ["<s>", "Hel", "lo", "world", "</s>"]
