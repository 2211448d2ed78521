"""Smoke test in Chromium: the document browser and the predictions view, served by Panel."""

from __future__ import annotations

import html
from typing import Any

import panel as pn
import pytest

from attviz.corpus import Corpus, Document
from attviz.views.documents import DocumentBrowser, Predictions

XSS = "<img src=x onerror=window.__xss=1>"
DOCUMENTS = [
    Document("world-01", "Coastal nations sign a fishing accord.", label="world", prediction="world",
             probabilities={"world": 0.7, "business": 0.2, "<b>sci</b>": 0.1}),
    Document("world-02", f"{XSS} Breaking: talks collapse.", label="world", prediction="business",
             probabilities={"world": 0.3, "business": 0.6, "<b>sci</b>": 0.1}),
    Document("business-01", "The central bank raised rates.", label="business", prediction="business",
             probabilities={"world": 0.1, "business": 0.8, "<b>sci</b>": 0.1}),
    Document("business-02", "Bank shares fell & recovered.", label="business", prediction="business",
             probabilities={"world": 0.2, "business": 0.5, "<b>sci</b>": 0.3}),
    Document("sci-01", "A new comet was seen.", label="<b>sci</b>", prediction="<b>sci</b>",
             probabilities={"world": 0.1, "business": 0.1, "<b>sci</b>": 0.8}),
    Document("<i>odd</i>-id", "No labels here."),
]  # fmt: skip


def make_app(created: list[DocumentBrowser]) -> Any:
    """A factory: the two views linked like the explorer links them, plus the current id."""
    corpus = Corpus(DOCUMENTS)

    def factory() -> pn.viewable.Viewable:
        browser = DocumentBrowser()
        predictions = Predictions()
        current = pn.pane.HTML("")

        def show(doc_id: str | None) -> None:
            predictions.data = corpus[doc_id] if doc_id else None
            current.object = f"current: {html.escape(doc_id or '')}"

        browser.param.watch(lambda event: show(event.new), "doc_id")
        browser.data = corpus.table
        browser.doc_id = "world-01"
        show(browser.doc_id)
        created.append(browser)
        return pn.Column(current, browser, predictions, width=1100)

    return factory


def rows(page: Any) -> Any:
    return page.locator(".tabulator-row")


def test_documents_and_predictions_in_browser(page, page_log, open_app, wait_until, screenshot):
    created: list[DocumentBrowser] = []
    url = open_app(make_app(created))
    browser = wait_until(lambda: created and created[0])

    # All six rows are shown, and the selection set on the server is visible.
    wait_until(lambda: rows(page).count() == 6)
    assert page.locator(".tabulator-row.tabulator-selected").inner_text().startswith("world-01")
    assert page.get_by_text("6 of 6 documents").is_visible()
    screenshot(page, "documents-initial")

    # Untrusted text is shown literally and never becomes markup.
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("img[src='x']").count() == 0
    assert page.get_by_text(XSS, exact=False).first.is_visible()
    assert page.get_by_text("<i>odd</i>-id", exact=True).is_visible()
    assert page.locator("i", has_text="odd").count() == 0
    assert page.get_by_text("Class with the highest probability of 70.0% is").is_visible()

    # Clicking a row selects that document on the server and the predictions follow.
    page.locator(".tabulator-cell[tabulator-field='id']", has_text="world-02").click()
    wait_until(lambda: browser.doc_id == "world-02")
    page.get_by_text("✗ predicted business, gold world").wait_for()
    page.get_by_text("current: world-02").wait_for()
    assert page.evaluate("() => window.__xss") is None
    screenshot(page, "documents-clicked")

    # Typing in the search box filters the rows (case-insensitive) and highlights the match.
    search = page.get_by_placeholder("Search id or text…")
    search.press_sequentially("BANK")
    wait_until(lambda: browser.search == "BANK")
    wait_until(lambda: rows(page).count() == 2)
    assert page.get_by_text("2 of 6 documents").is_visible()
    assert sorted(page.locator("mark").all_inner_texts()) == ["Bank", "bank"]
    screenshot(page, "documents-search")

    # A search that finds the payload shows it highlighted, still as text.
    search.fill("onerror")
    wait_until(lambda: rows(page).count() == 1)
    assert page.locator(".tabulator-row").inner_text().startswith("world-02")
    assert page.locator("mark").inner_text() == "onerror"
    assert page.evaluate("() => window.__xss") is None

    # Clearing the search brings back every row with the selection kept.
    search.fill("")
    wait_until(lambda: rows(page).count() == 6)
    assert page.locator(".tabulator-row.tabulator-selected").inner_text().startswith("world-02")

    # Setting doc_id on the server selects the row in the page without rebuilding the table.
    table_before = page.locator(".tabulator").element_handle()
    browser.doc_id = "sci-01"
    wait_until(lambda: page.locator(".tabulator-row.tabulator-selected").inner_text().startswith("sci-01"))
    assert page.locator(".tabulator").element_handle().evaluate("(a, b) => a === b", table_before)
    page.get_by_text("✓ predicted <b>sci</b>, gold <b>sci</b>").wait_for()
    screenshot(page, "documents-final")

    assert url.startswith("http://127.0.0.1:")
    assert page_log.requests and all(r.startswith(("http://127.0.0.1", "ws://127.0.0.1")) for r in page_log.requests)


@pytest.mark.parametrize("round_", [1, 2])
def test_serving_twice_frees_everything(page, open_app, wait_until, round_):
    """Two servers in a row (ports and threads are released between tests)."""
    created: list[DocumentBrowser] = []
    open_app(make_app(created))
    wait_until(lambda: rows(page).count() == 6)
