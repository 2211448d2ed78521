"""The `attviz stats` report in Chromium: opened from file:// with every network request refused, the
plots drawn, the metric picker working, token text shown as text."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attviz.analysis.engine import corpus_statistics
from attviz.analysis.report import write_report
from tests.analysis.synthetic import synthetic_corpus
from tests.analysis.test_report import TAG, _relabelled
from tests.browser.conftest import PageLog

WAIT_RENDERED = """() => window.Bokeh && Bokeh.documents.length > 0 &&
  Object.values(Bokeh.index).length > 0 && Bokeh.documents[0].get_model_by_name("attviz-atlas") !== null"""


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = _relabelled(synthetic_corpus(), good=TAG)
    stats = corpus_statistics(corpus)
    return write_report(stats, tmp_path_factory.mktemp("report") / "report.html", corpus=corpus)


@pytest.fixture
def file_page(chromium: Any, page_log: PageLog, report_file: Path) -> Iterator[Any]:
    """A page that may load the report's own file:// URL (and data:/blob:) and nothing else."""
    allowed = report_file.as_uri()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url == allowed or url.startswith(("data:", "blob:")):
            request_route.continue_()
        else:
            page_log.blocked.append(url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda message: page_log.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: page_log.errors.append(str(error)))
    page.on("request", lambda request: page_log.requests.append(request.url))
    try:
        yield page
    finally:
        context.close()
    assert page_log.errors == [], page_log.errors
    assert page_log.console_errors() == [], page_log.console_errors()


def test_report_renders_offline_from_file(file_page: Any, page_log: PageLog, report_file: Path) -> None:
    url = report_file.as_uri()
    file_page.goto(url)
    file_page.wait_for_function(WAIT_RENDERED)
    file_page.wait_for_function("() => document.querySelectorAll('.bk-Figure, .bk-Column, .bk-Row').length > 0")
    file_page.locator("canvas").first.wait_for(state="attached")  # Playwright's locators pierce shadow roots
    assert file_page.locator("canvas").count() >= 4  # atlas, scatter, similarity, the per-class plots
    assert page_log.requests == [url] and page_log.blocked == []
    # the token is drawn as text in the contrast table, never parsed as markup
    cells = file_page.locator("td", has_text=TAG)
    assert cells.count() >= 1
    assert file_page.locator("td b").count() == 0
    # the metric picker swaps the atlas's colours, range and title in the browser
    file_page.evaluate('() => { Bokeh.documents[0].get_model_by_name("attviz-atlas-metric").value = "sink"; }')
    file_page.wait_for_function(  # (CustomJS callbacks run asynchronously)
        """() => {
      const doc = Bokeh.documents[0];
      const source = doc.get_model_by_name("attviz-atlas-source");
      const same = Array.from(source.data.value).every((v, i) => v === source.data.sink[i]);
      return same && doc.get_model_by_name("attviz-atlas").title.text.startsWith("sink:");
    }"""
    )
    if os.environ.get("ATTVIZ_ARTIFACTS"):
        file_page.screenshot(path=str(Path(os.environ["ATTVIZ_ARTIFACTS"]) / "stats-report.png"), full_page=True)
