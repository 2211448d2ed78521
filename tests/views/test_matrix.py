"""MatrixView: integer axes (no merged duplicate tokens), orientation, ticks, tap, in-place updates, rasterising."""

from __future__ import annotations

import time

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.models import (
    BasicTicker,
    BoxAnnotation,
    CustomJSHover,
    CustomJSTickFormatter,
    FixedTicker,
    GlyphRenderer,
    HoverTool,
    LinearColorMapper,
    LogColorMapper,
    Plot,
    WheelZoomTool,
)
from bokeh.models import Image as ImageGlyph

from attviz.corpus import attention_array, token_frame
from attviz.views.matrix import MatrixView

hv.extension("bokeh")

VALUES = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]]


def matrix(values, tokens=None):
    """A labelled (query, key) matrix of one layer and head."""
    values = np.asarray(values, dtype=np.float32)
    tokens = tokens or [f"t{i}" for i in range(values.shape[0])]
    return attention_array(values[None, None], token_frame(tokens)).isel(layer=0, head=0)


def render(view):
    return pn.panel(view).get_root()


def figure(root) -> Plot:
    (plot,) = root.select({"type": Plot})
    return plot


def image_renderer(root) -> GlyphRenderer:
    (renderer,) = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, ImageGlyph)]
    return renderer


def selection_box(root) -> BoxAnnotation:
    (box,) = [b for b in root.select({"type": BoxAnnotation}) if b.visible]
    return box


def test_duplicate_tokens_stay_apart_with_values_in_their_cells():
    root = render(MatrixView(data=matrix(VALUES, ["the", "cat", "the"])))
    source = image_renderer(root).data_source.data
    image = np.asarray(source["image"][0])
    assert image.shape == (3, 3)  # a categorical HeatMap would merge the two "the" rows into 2×2
    np.testing.assert_allclose(image, np.asarray(VALUES, dtype=np.float32))  # row = query, column = key
    assert (source["x"][0], source["y"][0], source["dw"][0], source["dh"][0]) == (-0.5, -0.5, 3.0, 3.0)
    # Row 0 of a Bokeh image is drawn at y = -0.5; the inverted y range puts it on top.
    plot = figure(root)
    assert (plot.y_range.start, plot.y_range.end) == (2.5, -0.5)
    assert (plot.x_range.start, plot.x_range.end) == (-0.5, 2.5)


def test_tick_labels_and_hover_show_the_tokens():
    tokens = ["<img src=x onerror=alert(1)>", "&amp;", "the"]
    plot = figure(render(MatrixView(data=matrix(VALUES, tokens))))
    for axis in (plot.xaxis[0], plot.yaxis[0]):
        assert isinstance(axis.ticker, FixedTicker) and list(axis.ticker.ticks) == [0, 1, 2]
        assert isinstance(axis.formatter, CustomJSTickFormatter)
        assert axis.formatter.args["labels"] == tokens  # plain strings drawn as canvas text
    (hover,) = [t for t in plot.tools if isinstance(t, HoverTool)]
    assert hover.tooltips[:2] == [("query", "$y{custom}"), ("key", "$x{custom}")]
    assert not any("{safe}" in value for _, value in hover.tooltips)  # Bokeh escapes formatted values
    assert isinstance(hover.formatters["$y"], CustomJSHover)
    assert hover.formatters["$y"].args["labels"] == tokens
    assert hover.formatters["$x"].args["labels"] == tokens


def test_tokens_not_at_their_index_show_their_position():
    data = matrix(np.eye(4), ["[CLS]", "a", "b", "[SEP]"]).isel(query=[1, 2], key=[1, 2])
    plot = figure(render(MatrixView(data=data)))
    assert plot.yaxis[0].formatter.args["labels"] == ["a (1)", "b (2)"]


def test_long_matrices_get_position_ticks():
    plot = figure(render(MatrixView(data=matrix(np.eye(5)), max_labels=3)))
    assert type(plot.xaxis[0].ticker) is BasicTicker and plot.xaxis[0].ticker.min_interval == 1


def test_tap_selects_the_query_row():
    view = MatrixView(data=matrix(VALUES, ["the", "cat", "the"]))
    render(view)
    view._tap.event(x=0.2, y=1.7)  # a click in row 2 (drawn third from the top)
    assert view.selected_token == 2
    view._tap.event(x=0.2, y=7.0)  # outside the matrix: no change
    assert view.selected_token == 2


def test_tap_selects_the_document_position_of_a_row():
    data = matrix(np.eye(4)).isel(query=[1, 3], key=[1, 3])  # dropped tokens leave gaps
    view = MatrixView(data=data)
    render(view)
    view._tap.event(x=0.0, y=1.0)
    assert view.selected_token == 3


def test_selection_moves_the_overlay_without_touching_the_image():
    view = MatrixView(data=matrix(VALUES))
    root = render(view)
    source = image_renderer(root).data_source
    image = source.data["image"][0]
    view.selected_token = 1
    box = selection_box(root)
    assert (box.bottom, box.top) == (0.5, 1.5)
    view.selected_token = 2
    assert selection_box(root) is box and (box.bottom, box.top) == (1.5, 2.5)
    assert source.data["image"][0] is image  # the image data was not sent again
    view.selected_token = None
    assert not [b for b in root.select({"type": BoxAnnotation}) if b.visible and np.isfinite(b.top)]


def test_new_data_of_another_shape_updates_the_same_figure():
    view = MatrixView(data=matrix(VALUES, ["the", "cat", "the"]))
    root = render(view)
    plot, renderer = figure(root), image_renderer(root)
    values = np.arange(25, dtype=np.float32).reshape(5, 5) / 25
    view.data = matrix(values, list("abcde"))
    assert figure(root) is plot and image_renderer(root) is renderer
    np.testing.assert_allclose(renderer.data_source.data["image"][0], values)
    assert (plot.x_range.start, plot.x_range.end) == (-0.5, 4.5)
    assert plot.xaxis[0].formatter.args["labels"] == list("abcde")
    assert list(plot.xaxis[0].ticker.ticks) == [0, 1, 2, 3, 4]


def test_placeholder_without_data():
    view = MatrixView()
    layout = view.__panel__()
    render(view)
    placeholder, plot = layout.objects
    assert placeholder.visible and not plot.visible
    view.data = matrix(VALUES)
    assert not placeholder.visible and plot.visible


def test_colour_map_and_log_scale():
    view = MatrixView(data=matrix([[0.9, 0.1], [0.01, 0.99]]))
    root = render(view)
    mapper = image_renderer(root).glyph.color_mapper
    assert isinstance(mapper, LinearColorMapper) and (mapper.low, mapper.high) == pytest.approx((0.0, 0.99))
    view.cmap = "viridis"
    assert image_renderer(root).glyph.color_mapper.palette[0] == "#440154"
    view.log_scale = True  # another mapper type: the figure is rebuilt
    mapper = image_renderer(view._plot_pane.get_root()).glyph.color_mapper
    assert isinstance(mapper, LogColorMapper) and (mapper.low, mapper.high) == pytest.approx((0.01, 0.99))


def test_height_setting():
    view = MatrixView(data=matrix(VALUES))
    render(view)
    view.height = 300  # a rare setting: rebuilds the figure
    assert figure(view._plot_pane.get_root()).height == 300


def test_large_matrices_are_rasterised_with_max():
    values = np.zeros((1000, 1000), dtype=np.float32)
    values[600, 250] = 1.0
    view = MatrixView(data=matrix(values))
    renderer = image_renderer(render(view))
    image = np.asarray(renderer.data_source.data["image"][0])
    assert image.shape[0] < 1000 and image.shape[1] < 1000  # rasterised to the plot size
    assert np.nanmax(image) == 1.0  # a mean would have spread the single cell to ≈ 0.16
    row, col = np.unravel_index(np.nanargmax(image), image.shape)
    assert row == int(600 / 1000 * image.shape[0]) and col == int(250 / 1000 * image.shape[1])
    view.rasterize_above = 1000  # now drawn as is
    assert np.asarray(renderer.data_source.data["image"][0]).shape == (1000, 1000)


@pytest.mark.parametrize("n", [2048, 4096])
def test_huge_matrices_stay_responsive(n):
    rng = np.random.default_rng(0)
    arrays = [matrix(rng.random((n, n), dtype=np.float32)) for _ in range(2)]
    view = MatrixView(data=arrays[0])
    start = time.perf_counter()
    renderer = image_renderer(render(view))
    build = time.perf_counter() - start
    start = time.perf_counter()
    view.data = arrays[1]
    update = time.perf_counter() - start
    assert max(np.asarray(renderer.data_source.data["image"][0]).shape) <= 1000
    assert build < 10 and update < 2, (build, update)  # measured ≈ 0.1 s per update (numba compiles once)


def test_demo_document():
    from attviz.demo import demo_corpus

    doc = demo_corpus(progress=False)[0]
    data = doc.attention.isel(layer=0, head=0)
    view = MatrixView()
    root = render(view)
    view.data = data
    plot = figure(root)
    assert plot.yaxis[0].formatter.args["labels"][0] == "[CLS]"
    image = np.asarray(image_renderer(root).data_source.data["image"][0])
    np.testing.assert_allclose(image, np.asarray(data.values, dtype=np.float32))


def test_byte_level_tokens_get_readable_labels_with_the_raw_token_in_the_hover():
    tokens = ["<s>", "ĠHel", "lo", "Ċ", "Ġcaf", "Ã©"]  # GPT-2/RoBERTa: space Ġ, newline Ċ, UTF-8 bytes
    plot = figure(render(MatrixView(data=matrix(np.eye(6), tokens))))
    readable = ["<s>", "·Hel", "lo", "↵", "·caf", "é"]
    assert plot.xaxis[0].formatter.args["labels"] == readable == plot.yaxis[0].formatter.args["labels"]
    (hover,) = [t for t in plot.tools if isinstance(t, HoverTool)]
    assert hover.formatters["$x"].args["labels"] == [
        "<s>", "·Hel (raw: ĠHel)", "lo", "↵ (raw: Ċ)", "·caf (raw: Ġcaf)", "é (raw: Ã©)"
    ]  # fmt: skip
    sentencepiece = figure(render(MatrixView(data=matrix(np.eye(3), ["▁The", "▁cat", "</s>"]))))
    assert sentencepiece.yaxis[0].formatter.args["labels"] == ["·The", "·cat", "</s>"]
    wordpiece = figure(render(MatrixView(data=matrix(np.eye(3), ["[CLS]", "play", "##ing"]))))
    assert wordpiece.yaxis[0].formatter.args["labels"] == ["[CLS]", "play", "##ing"]  # as before


def test_title_and_the_wheel_scrolls_the_page():
    data = attention_array(np.full((2, 3, 2, 2), 0.5, np.float32), token_frame(["a", "b"])).isel(layer=1, head=2)
    view = MatrixView(data=data)
    root = render(view)
    plot = figure(root)
    assert plot.title.text == "attention weight · layer 1 · head 2"  # read from the data without a title
    view.title = "doc 3 · layer 1 · head 2 · $$x$$"  # from the explorer
    assert plot.title.text == "doc 3 · layer 1 · head 2 · $\u200b$x$\u200b$"  # shown as text, not TeX
    view.selected_token = 1
    view.data = data.copy()
    assert figure(root).title.text.startswith("doc 3 ·")
    assert any(isinstance(t, WheelZoomTool) for t in plot.toolbar.tools)
    assert plot.toolbar.active_scroll is None  # the wheel scrolls the page until the tool is picked
