"""The text view as a figure: the standalone SVG (tokens escaped, colours, layout) and the Bokeh plot (PNG)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import panel as pn
import pytest
import xarray as xr
from bokeh.document import Document
from bokeh.models import GlyphRenderer, Plot, Quad, SaveTool, Text

from attviz.corpus import token_coords, token_frame
from attviz.views.text import TextView
from attviz.views.text_figure import CHAR, MARGIN, PAD, TEXT_H, TITLE_H, columns

SVG = "{http://www.w3.org/2000/svg}"
EVIL = ["<b>&", "x\x00y", '"q"']


def vectors(values, texts) -> xr.DataArray:
    values = np.atleast_2d(np.asarray(values, dtype=float))
    coords = {"head": np.arange(len(values)), **token_coords(token_frame(texts), "token")}
    return xr.DataArray(values, dims=("head", "token"), coords=coords, name="attention_received")


@pytest.fixture
def view():
    # 2 heads × 3 tokens; aggregate [0, 0.25, 0.5] → highlight 0, 0.5, 1 (scaled by the max)
    v = TextView(mode="both", title="doc 1 · layer 0 · mean over heads")
    aggregate = xr.DataArray([0, 0.25, 0.5], dims="token")
    v.param.update(data=vectors([[0.0, 0.25, 0.5], [0.4, 0.2, 0.0]], EVIL), aggregate=aggregate)
    return v


def rects(root, height: float) -> list[dict[str, str]]:
    return [r.attrib for r in root.iter(f"{SVG}rect") if r.get("height") == f"{height:.1f}"]


def test_svg_has_the_tokens_escaped_and_the_colours(view):
    svg = view.svg()
    root = ET.fromstring(svg.split("\n", 1)[1])  # well-formed XML (a NUL in a token is replaced)
    assert root.find(f"{SVG}title").text == "doc 1 · layer 0 · mean over heads"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "doc 1 · layer 0 · mean over heads"
    assert texts[1:4] == ["<b>&", "x\ufffdy", '"q"']  # the tokens, as text
    assert "&lt;b&gt;&amp;" in svg and "<b>" not in svg and "&quot;q&quot;" in svg
    highlight = rects(root, TEXT_H)
    assert [r["fill"] for r in highlight] == ["rgb(249, 130, 44)"] * 3
    assert [r["fill-opacity"] for r in highlight] == ["0.000", "0.500", "1.000"]
    rows = rects(root, 3)  # head 0 then head 1 under each token; alpha = 7/8·v + 1/8, v scaled by the row max
    assert [r["fill"] for r in rows] == ["rgb(31, 119, 180)", "rgb(255, 127, 14)"] * 3
    assert [r["fill-opacity"] for r in rows] == ["0.125", "1.000", "0.562", "0.562", "1.000", "0.125"]
    # Monospaced layout: token boxes side by side from the left margin, a space (one character) between.
    x0 = MARGIN
    x1 = x0 + columns("<b>&") * CHAR + 2 * PAD + CHAR
    assert [float(r["x"]) for r in highlight[:2]] == pytest.approx([x0, x1], abs=0.05)
    assert float(highlight[0]["y"]) == MARGIN + TITLE_H


def test_svg_download_and_modes(view):
    download = next(w for w in view._card.objects if isinstance(w, pn.widgets.FileDownload))
    assert download.filename == "attviz-text.svg"
    assert download.callback().read().decode("utf-8") == view.svg()
    view.mode = "highlight"  # no head rows
    root = ET.fromstring(view.svg().split("\n", 1)[1])
    assert rects(root, 3) == [] and len(rects(root, TEXT_H)) == 3
    view.mode = "rows"  # no highlight
    root = ET.fromstring(view.svg().split("\n", 1)[1])
    assert rects(root, TEXT_H) == [] and len(rects(root, 3)) == 6


def test_long_text_wraps_within_the_width():
    texts = [f"word{i}" for i in range(60)]
    v = TextView(data=vectors(np.linspace(0, 1, 60), texts), figure_width=400)
    placed = v.placed()
    boxes = [b for b in placed.boxes if b.h == TEXT_H]
    assert len(boxes) == 60 and max(b.x + b.w for b in boxes) <= 400 - MARGIN
    lines = sorted({b.y for b in boxes})
    assert len(lines) > 5 and placed.height > lines[-1] + TEXT_H


def test_figure_is_a_bokeh_plot_with_the_save_tool(view):
    assert view._figure.object is None  # nothing drawn while the card is closed
    view._card.collapsed = False
    root = pn.panel(view).get_root(Document())
    (plot,) = root.select({"type": Plot})
    assert [type(t) for t in plot.toolbar.tools] == [SaveTool]  # PNG through the save tool
    assert plot.title.text == "doc 1 · layer 0 · mean over heads"
    quads = [r for r in plot.select({"type": GlyphRenderer}) if isinstance(r.glyph, Quad)]
    data = quads[0].data_source.data
    assert list(data["color"][:3]) == ["#f9822c", "#1f77b4", "#ff7f0e"]  # first token: highlight, two rows
    np.testing.assert_allclose(data["alpha"][:3], [0.0, 0.125, 1.0])
    texts = [r for r in plot.select({"type": GlyphRenderer}) if isinstance(r.glyph, Text)]
    tokens = [list(r.data_source.data["text"]) for r in texts]
    assert ["<b>&", "x\x00y", '"q"'] in tokens  # canvas text, never HTML
    view.data = vectors([[1.0, 0.0]], ["new", "doc"])
    (plot,) = view._figure.get_root(Document()).select({"type": Plot})
    texts = [r for r in plot.select({"type": GlyphRenderer}) if isinstance(r.glyph, Text)]
    assert ["new", "doc"] in [list(r.data_source.data["text"]) for r in texts]


def test_title_and_width_redraw_the_open_figure(view):
    view._card.collapsed = False
    view.param.update(title="doc 2 · layer 3 · head 1", figure_width=500)
    (plot,) = view._figure.get_root(Document()).select({"type": Plot})
    assert plot.title.text == "doc 2 · layer 3 · head 1" and plot.frame_width == 500
    assert "<title>doc 2 · layer 3 · head 1</title>" in view.svg() and 'width="500"' in view.svg()
