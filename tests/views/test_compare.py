"""CompareView: side by side on a shared colour range, difference, JS divergence, mismatches, hints."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.models import GlyphRenderer, Plot
from bokeh.models import Image as ImageGlyph

from attviz.corpus import attention_array, token_frame
from attviz.views.compare import HINT, CompareView, compare_summary, row_js_divergence

hv.extension("bokeh")

A = [[1.0, 0.0], [0.5, 0.5]]
B = [[0.5, 0.5], [0.5, 0.5]]
# JSD([1, 0], [0.5, 0.5]) in bits: M = [0.75, 0.25];
# KL(P||M) = log2(1/0.75) = 0.415037; KL(Q||M) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25) = 0.207519.
JSD_ROW0 = 0.5 * 0.4150375 + 0.5 * 0.2075187


def matrix(values, tokens=("a", "b")):
    values = np.asarray(values, dtype=np.float32)
    return attention_array(values[None, None], token_frame(list(tokens))).isel(layer=0, head=0)


def render(view):
    return pn.panel(view).get_root()


def images(view, root) -> dict[str, GlyphRenderer]:
    """The image renderer of each column (data, other, difference) in the rendered ``root``."""
    out = {}
    for side, column in view._columns.items():
        plot, _ = column.objects[1]._models[root.ref["id"]]
        assert isinstance(plot, Plot)
        (out[side],) = [r for r in plot.select({"type": GlyphRenderer}) if isinstance(r.glyph, ImageGlyph)]
    return out


def test_js_divergence_by_hand():
    assert row_js_divergence([[1, 0]], [[0.5, 0.5]])[0] == pytest.approx(JSD_ROW0, abs=1e-6)
    assert row_js_divergence([[1, 0]], [[0, 1]])[0] == pytest.approx(1.0)  # disjoint: 1 bit
    assert row_js_divergence([[2, 2]], [[0.5, 0.5]])[0] == pytest.approx(0.0)  # rows are normalised
    assert np.isnan(row_js_divergence([[0, 0]], [[0.5, 0.5]])[0])


def test_difference_and_summary_numbers():
    view = CompareView(data=matrix(A), other=matrix(B), label="left", other_label="right")
    shown = images(view, render(view))
    np.testing.assert_allclose(shown["difference"].data_source.data["image"][0], [[0.5, -0.5], [0.0, 0.0]])
    np.testing.assert_allclose(shown["data"].data_source.data["image"][0], A)
    np.testing.assert_allclose(shown["other"].data_source.data["image"][0], B)
    # One colour range for both matrices (B alone would give 0..0.5); symmetric for the difference.
    for side in ("data", "other"):
        mapper = shown[side].glyph.color_mapper
        assert (mapper.low, mapper.high) == (0.0, 1.0)
    mapper = shown["difference"].glyph.color_mapper
    assert (mapper.low, mapper.high) == (-0.5, 0.5) and mapper.palette[0].lower() != mapper.palette[-1].lower()
    summary = compare_summary(view.data, view.other)
    assert summary["max_abs_difference"] == pytest.approx(0.5)
    assert summary["mean_js_divergence_bits"] == pytest.approx(JSD_ROW0 / 2, abs=1e-6)  # row 1 is identical
    assert "0.5000" in view.message() and f"{JSD_ROW0 / 2:.4f} bits" in view.message()
    assert "log base 2" in view.message()
    assert all(column.visible for column in view._columns.values())


def test_mismatched_tokens_show_side_by_side_only():
    view = CompareView(data=matrix(A), other=matrix(B, tokens=("a", "c")))
    root = render(view)
    assert "do not have the same tokens" in view.message()
    assert view._columns["data"].visible and view._columns["other"].visible
    assert not view._columns["difference"].visible
    view.other = matrix(np.eye(3), tokens=("a", "b", "c"))  # another size
    assert "3×3 tokens" in view.message() and not view._columns["difference"].visible
    np.testing.assert_allclose(images(view, root)["other"].data_source.data["image"][0], np.eye(3))


def test_no_other_gives_the_hint():
    view = CompareView(data=matrix(A))
    render(view)
    assert HINT in view.message()
    assert view._columns["data"].visible
    assert not view._columns["other"].visible and not view._columns["difference"].visible


def test_labels_are_escaped():
    view = CompareView(data=matrix(A), other=matrix(B), label="<img src=x onerror=alert(1)>", other_label="&amp;")
    render(view)
    message = view.message()
    assert "<img" not in message and "&lt;img src=x onerror=alert(1)&gt;" in message
    assert "&amp;amp;" in message
    header = view._columns["data"].objects[0]
    assert "&lt;img" in header.object and "<img" not in header.object


def test_updates_keep_the_figures():
    view = CompareView(data=matrix(A), other=matrix(B))
    root = render(view)
    before = images(view, root)
    view.param.update(data=matrix(B), other=matrix(A))
    after = images(view, root)
    assert all(after[side] is before[side] for side in before)
    np.testing.assert_allclose(after["difference"].data_source.data["image"][0], [[-0.5, 0.5], [0.0, 0.0]])


def test_demo_documents():
    from attviz.demo import demo_corpus

    corpus = demo_corpus(progress=False)
    doc, other = corpus[0], corpus[1]
    view = CompareView()
    render(view)
    view.param.update(data=doc.attention.isel(layer=0, head=0), other=doc.attention.isel(layer=0, head=1))
    assert "bits" in view.message() and view._columns["difference"].visible
    view.param.update(other=other.attention.isel(layer=0, head=0), other_label=other.id)
    assert "do not have the same tokens" in view.message() and not view._columns["difference"].visible


def test_titles_name_each_plot_and_the_wheel_scrolls_the_page():
    view = CompareView(data=matrix(A, ("Ġa", "b")), other=matrix(B, ("Ġa", "b")), label="doc 1", other_label="doc 2")
    root = render(view)
    plots = {side: column.objects[1]._models[root.ref["id"]][0] for side, column in view._columns.items()}
    assert plots["data"].title.text == "doc 1 · attention weight · layer 0 · head 0"
    view.title = "layer 0 · mean over heads"
    assert {side: plot.title.text for side, plot in plots.items()} == {
        "data": "doc 1 · layer 0 · mean over heads",
        "other": "doc 2 · layer 0 · mean over heads",
        "difference": "doc 1 − doc 2 · layer 0 · mean over heads",
    }
    for plot in plots.values():
        assert plot.xaxis[0].formatter.args["labels"] == ["·a", "b"]
        assert plot.toolbar.active_scroll is None
