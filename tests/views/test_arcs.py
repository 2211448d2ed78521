"""HeadView: which links are drawn (threshold, top-k, selection, heads), their style, clicks, escaping."""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.models import CustomJSHover, GlyphRenderer, HoverTool, Plot, Quad, Segment, Text, WheelZoomTool

from attviz.corpus import attention_array, token_frame
from attviz.views.arcs import HEAD_COLORS, LEFT, RIGHT, HeadView, head_color, head_links

hv.extension("bokeh")

# (head, query, key): two heads, three tokens; rows sum to 1.
VALUES = [
    [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9]],
    [[0.1, 0.1, 0.8], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]],
]
TOKENS = ["<img src=x onerror=alert(1)>", "&amp;", "the"]
# Every (head, query, key, weight) with weight >= 0.3, worked out from VALUES.
ABOVE_03 = {
    (0, 0, 0, 0.6), (0, 0, 1, 0.3), (0, 1, 1, 0.5), (0, 1, 2, 0.3), (0, 2, 2, 0.9),
    (1, 0, 2, 0.8), (1, 1, 0, 0.5), (1, 1, 1, 0.4), (1, 2, 0, 0.3), (1, 2, 1, 0.3), (1, 2, 2, 0.4),
}  # fmt: skip


def layer(values=VALUES, tokens=TOKENS):
    values = np.asarray(values, dtype=np.float32)
    return attention_array(values[None], token_frame(tokens)).isel(layer=0)


def render(view):
    return pn.panel(view).get_root()


def segments(root) -> GlyphRenderer:
    (renderer,) = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, Segment)]
    return renderer


def links(root) -> set[tuple[int, int, int, float]]:
    data = segments(root).data_source.data
    return {
        (int(h), int(q), int(k), round(float(w), 4))
        for h, q, k, w in zip(data["head"], data["y0"], data["y1"], data["weight"], strict=True)
    }


def title(root) -> str:
    """The links summary: the part of the title after what is shown ("attention weight · layer 0: ")."""
    (plot,) = root.select({"type": Plot})
    shown, _, summary = plot.title.text.partition(": ")
    assert shown == "attention weight · layer 0"
    return summary


def test_threshold_keeps_exactly_the_links_above_it_with_their_style():
    root = render(HeadView(data=layer(), threshold=0.3, top_k=0))
    assert links(root) == ABOVE_03
    renderer = segments(root)
    data = renderer.data_source.data
    assert set(np.round(data["x0"], 6)) == {LEFT + 0.03} and set(np.round(data["x1"], 6)) == {RIGHT - 0.03}
    np.testing.assert_allclose(data["alpha"], data["weight"])  # alpha = weight (at least 0.1)
    np.testing.assert_allclose(data["line_width"], 1 + 3 * np.asarray(data["weight"]))
    # Colour: the head through a linear mapper whose bins are exactly one palette entry per head.
    spec = renderer.glyph.line_color
    mapper = spec.transform
    assert spec.field == "color" and list(mapper.palette) == HEAD_COLORS
    for head, value in zip(data["head"], data[spec.field], strict=True):
        index = math.floor((value - mapper.low) / (mapper.high - mapper.low) * len(mapper.palette))
        assert mapper.palette[index] == head_color(head)
    assert head_color(0) != head_color(1)
    assert title(root) == "all tokens: 11 links ≥ 0.3 shown (2 heads)"


def test_top_k_keeps_the_strongest_link_per_query_and_head():
    root = render(HeadView(data=layer(), threshold=0.0, top_k=1))
    expected = {(0, 0, 0, 0.6), (0, 1, 1, 0.5), (0, 2, 2, 0.9), (1, 0, 2, 0.8), (1, 1, 0, 0.5), (1, 2, 2, 0.4)}
    assert links(root) == expected
    assert title(root) == "all tokens: 6 links ≥ 0 shown, 12 more hidden by top-1 (2 heads)"


def test_head_links_counts_before_the_top_k_cut():
    h, q, k, weight, n_above = head_links(np.asarray(VALUES, dtype=np.float32), 0.3, 2)
    assert n_above == 11 and len(h) == 10  # head 1, query 2 has three links >= 0.3: 0.3 and 0.3 tie for second
    assert {(0, 0, 0), (0, 0, 1), (1, 2, 2)} <= set(zip(h, q, k, strict=True))
    assert weight.min() >= np.float32(0.3)


def test_selection_draws_only_the_selected_tokens_links():
    view = HeadView(data=layer(), threshold=0.3, top_k=0)
    root = render(view)
    renderer = segments(root)
    view.selected_token = 1
    assert links(root) == {link for link in ABOVE_03 if link[1] == 1}
    assert segments(root) is renderer  # updated in place
    (highlight,) = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, Quad)]
    assert list(highlight.data_source.data["bottom"]) == [0.5] and list(highlight.data_source.data["top"]) == [1.5]
    assert title(root) == "token 1: 4 links ≥ 0.3 shown (2 heads)"


def test_heads_input_filters_heads():
    view = HeadView(data=layer(), threshold=0.3, top_k=0, heads=[1])
    root = render(view)
    assert links(root) == {link for link in ABOVE_03 if link[0] == 1}
    view.heads = []
    assert links(root) == ABOVE_03


def test_clicking_a_query_token_selects_it():
    view = HeadView(data=layer())
    render(view)
    view._tap.event(x=LEFT - 0.3, y=2.2)
    assert view.selected_token == 2
    view._tap.event(x=RIGHT + 0.3, y=0.0)  # the key column: no change
    assert view.selected_token == 2
    view._tap.event(x=LEFT - 0.3, y=1.9)  # the selected token again: deselect
    assert view.selected_token is None


def test_token_labels_are_plain_canvas_text():
    root = render(HeadView(data=layer()))
    texts = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, Text)]
    columns = sorted(tuple(r.data_source.data[r.glyph.text]) for r in texts)  # the field name
    assert columns == [tuple(TOKENS), tuple(TOKENS)]  # drawn verbatim on the canvas, never parsed as HTML
    hover = next(t for t in root.select_one({"type": Plot}).tools if isinstance(t, HoverTool))
    assert not any("{safe}" in value for _, value in hover.tooltips)
    fields = dict(hover.tooltips)
    assert fields["query"] == "@{y0}{custom}" and fields["key"] == "@{y1}{custom}"
    assert isinstance(hover.formatters["@{y0}"], CustomJSHover)  # keyed exactly as the field is spelled
    assert hover.formatters["@{y0}"].args["labels"] == TOKENS


def test_height_grows_with_the_tokens_and_many_tokens_need_a_selection():
    view = HeadView(data=layer(), all_links_up_to=20)
    root = render(view)
    (plot,) = root.select({"type": Plot})
    assert plot.height == 240  # the minimum
    assert plot.sizing_mode == "stretch_width" and plot.min_width == 420  # as wide as the page
    n = 40
    rng = np.random.default_rng(0)
    values = rng.dirichlet(np.full(n, 0.1), size=(2, n)).astype(np.float32)
    view.data = layer(values, [f"w{i}" for i in range(n)])
    assert root.select_one({"type": Plot}) is plot and plot.height == 14 * n + 80
    assert (plot.y_range.start, plot.y_range.end) == (n - 0.5, -0.5)
    assert len(segments(root).data_source.data["y0"]) == 0  # 40 > all_links_up_to
    assert title(root).startswith("40 tokens (more than 20): click a token")
    view.selected_token = 7
    assert set(segments(root).data_source.data["y0"]) == {7.0}


def test_title_readable_tokens_and_the_wheel_scrolls_the_page():
    tokens = ["<s>", "ĠHel", "lo", "Ċ", "</s>"]  # RoBERTa/GPT-2 byte-level markers
    values = np.full((2, 5, 5), 0.2, dtype=np.float32)
    view = HeadView(data=layer(values, tokens), threshold=0.3)
    root = render(view)
    plot = root.select_one({"type": Plot})
    shown = "attention weight · layer 0"  # read from the data without a title
    assert plot.title.text == f"{shown}: all tokens: 0 links ≥ 0.3 shown, 0 more hidden by top-5 (2 heads)"
    view.title = "doc 7 · layer 0 · all heads"  # from the explorer
    assert plot.title.text.startswith("doc 7 · layer 0 · all heads: all tokens: 0 links")
    texts = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, Text)]
    columns = [list(r.data_source.data[r.glyph.text]) for r in texts]
    assert columns == [["<s>", "·Hel", "lo", "↵", "</s>"]] * 2
    hover = next(t for t in plot.tools if isinstance(t, HoverTool))
    assert hover.formatters["@{y0}"].args["labels"][1] == "·Hel (raw: ĠHel)"  # the raw token stays in the hover
    assert any(isinstance(t, WheelZoomTool) for t in plot.toolbar.tools) and plot.toolbar.active_scroll is None


@pytest.mark.parametrize("n", [512])
def test_a_long_document_stays_fast(n):
    import time

    rng = np.random.default_rng(1)
    arrays = [layer(rng.dirichlet(np.full(n, 0.05), size=(12, n)).astype(np.float32), [f"w{i}" for i in range(n)])]
    arrays.append(layer(rng.dirichlet(np.full(n, 0.05), size=(12, n)).astype(np.float32), [f"w{i}" for i in range(n)]))
    view = HeadView(data=arrays[0])
    root = render(view)
    start = time.perf_counter()
    view.data = arrays[1]
    elapsed = time.perf_counter() - start
    assert 0 < len(segments(root).data_source.data["y0"]) <= 12 * n * view.top_k
    assert elapsed < 1.5, elapsed  # measured ≈ 0.1 s


def test_demo_document():
    from attviz.demo import demo_corpus

    doc = demo_corpus(progress=False)[0]
    view = HeadView()
    root = render(view)
    view.data = doc.attention.isel(layer=2)
    n_heads, n_tokens = doc.attention.sizes["head"], doc.attention.sizes["query"]
    drawn = links(root)
    assert drawn and all(w >= view.threshold - 1e-3 for *_, w in drawn)
    assert len(drawn) <= n_heads * n_tokens * view.top_k
    view.heads = [0]
    assert {h for h, *_ in links(root)} == {0}
