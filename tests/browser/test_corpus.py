"""The Corpus tab in Chromium on the demo corpus: head atlas, similarity, contrasts, query–key space,
and a head click that the document views follow; no error in the page or the server log."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from benchmarks.corpus_app import FIGURE_JS, POINT_JS, SHOWN_FIGURE  # the Corpus area's benchmark uses them too
from tests.browser.conftest import _wait_until, idle
from tests.browser.test_explorer import ExplorerServer, open_explorer, serve_explorer, tab

# The glyph types of the figure named ``name``.
GLYPHS_JS = f"""(name) => {{
  {SHOWN_FIGURE}
  const fig = shown(name);
  return fig == null ? [] : fig.renderers.filter((r) => r.glyph != null).map((r) => r.glyph.type);
}}"""
TITLES_JS = """() => [...Bokeh.documents[0].all_models].filter((m) => m.type === "Title").map((m) => m.text)"""


@pytest.fixture(scope="module")
def server() -> Iterator[ExplorerServer]:
    from attviz.analysis.engine import corpus_statistics
    from attviz.app import create_app, load_corpora

    corpus_statistics(load_corpora()["demo"])  # cached in the demo store (~30 s the first time only)
    yield from serve_explorer(lambda: create_app(live=False))


def test_the_corpus_tab(page, page_log, server, server_log, screenshot, record_property, monkeypatch):
    explorer = open_explorer(page, server)
    start = time.monotonic()
    tab(page, "Corpus").click()
    _wait_until(lambda: page.evaluate(FIGURE_JS, "attviz-corpus-grid") > 0, timeout=60)
    page.get_by_label("Colour by").first.wait_for()
    opened = time.monotonic() - start
    idle(page)
    screenshot(page, "corpus-heads")

    # A click on the cell of layer 3, head 5 selects that head and lists its top documents.
    x, y = page.evaluate(POINT_JS, ["attviz-corpus-grid", 5, 3])
    start = time.monotonic()
    page.mouse.click(x, y)
    _wait_until(lambda: (explorer.layer, explorer.head) == (3, 5))
    page.get_by_text("Layer 3, head 5").wait_for()
    top = explorer.corpus_statistics.top_documents(3, 5, "entropy", n=10)
    page.locator(".tabulator-cell", has_text=str(top["id"].iloc[0])).first.wait_for()
    clicked = time.monotonic() - start
    # A click on a top document opens it, with the token that head attends to most selected.
    second = str(top["id"].iloc[1])
    page.locator(".tabulator-cell[tabulator-field='id']", has_text=second).first.click()
    _wait_until(lambda: explorer.doc_id == second and explorer.selected_token is not None)
    idle(page)
    record_property("corpus_tab_s", opened)
    record_property("head_click_s", clicked)
    print(f"\ncorpus tab open {opened:.2f} s; head click -> top documents {clicked:.2f} s")

    tab(page, "Similarity").click()
    _wait_until(lambda: page.evaluate(FIGURE_JS, "attviz-corpus-similarity") > 0, timeout=20)
    idle(page)
    screenshot(page, "corpus-similarity")

    tab(page, "Contrasts").click()
    cells = page.locator(".tabulator-cell[tabulator-field='p_mannwhitney']")
    _wait_until(lambda: cells.count() > 0, timeout=30)
    idle(page)
    screenshot(page, "corpus-contrasts")

    tab(page, "Query–key space").click()
    page.get_by_role("button", name="Compute").click()
    _wait_until(lambda: page.evaluate(FIGURE_JS, "attviz-corpus-qk") > 100, timeout=60)
    idle(page)
    screenshot(page, "corpus-qk")
    # Over DATASHADE_ABOVE points the map is rasterized by datashader (served: the server re-renders it).
    monkeypatch.setattr("attviz.views.corpus.DATASHADE_ABOVE", 1000)
    page.get_by_label("Colour by").last.select_option(label="class")
    _wait_until(lambda: "ImageStack" in page.evaluate(GLYPHS_JS, "attviz-corpus-qk"), timeout=30)
    idle(page)
    screenshot(page, "corpus-qk-rasterized")

    # The document views follow the head picked in the corpus area.
    tab(page, "Matrix").click()
    page.locator(".bk-tab.bk-active", has_text="Matrix").wait_for()
    _wait_until(lambda: any("layer 3" in t and "head 5" in t for t in page.evaluate(TITLES_JS)), timeout=20)
    idle(page)
    screenshot(page, "corpus-then-matrix")
    assert not page_log.console_errors() and not page_log.errors
