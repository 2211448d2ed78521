"""The whole explorer app in Chromium: the demo corpus, driven like a user.

One server for the module (``create_app()`` with no inputs: the demo corpus and the bundled MiniLM
for live input); every test opens its own page, i.e. its own session, and reads that session's
server-side :class:`~attviz.explorer.Explorer` from the templates the factory keeps.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.browser.conftest import LOCAL_HOSTS, _wait_for_panel, _wait_until, start_server, stop_server

# Every token span of the text view: (data-index, text, inline background colour, classes).
SPANS_JS = """els => els.map(e => [Number(e.dataset.index), e.textContent, e.style.backgroundColor, e.className])"""
COLORS_JS = "els => els.map(e => e.style.backgroundColor)"
# Every element of the page, looking into shadow roots (Bokeh and Panel render in them).
FIND_JS = """const find = (root) => [...root.querySelectorAll("*")].flatMap(
  (e) => [e, ...(e.shadowRoot ? find(e.shadowRoot) : [])]);"""
# Times (performance.now) of the next key press and of the first recolouring of the spans after it.
WATCH_JS = f"""(before) => {{
  {FIND_JS}
  window.__keyAt = null; window.__colorAt = null;
  document.addEventListener("keydown", () => {{ window.__keyAt = performance.now(); }}, {{capture: true, once: true}});
  const spans = find(document).filter((e) => e.classList.contains("attviz-token"));
  const observer = new MutationObserver(() => {{
    if (spans.map((s) => s.style.backgroundColor).join("|") === before) return;
    window.__colorAt = performance.now();
    observer.disconnect();
  }});
  spans.forEach((s) => observer.observe(s, {{attributes: true, attributeFilter: ["style"]}}));
}}"""
# How many Bokeh figures, Tabulator tables and token spans are visible now.
SHOWN_JS = f"""() => {{
  {FIND_JS}
  const shown = (e) => {{ const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; }};
  const all = find(document).filter((e) => e.classList);
  const count = (cls) => all.filter((e) => e.classList.contains(cls) && shown(e)).length;
  return {{figures: count("bk-Figure"), tables: count("tabulator"), tokens: count("attviz-token")}};
}}"""
# The matrix view's selection overlay (an hv.HSpan drawn as a Bokeh BoxAnnotation; numbers only).
OVERLAYS_JS = """() => {
  const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    if (m.type !== "BoxAnnotation" || String(m.fill_color) !== "orange") continue;
    const num = (v) => (typeof v === "number" ? v : null);
    out.push({bottom: num(m.bottom), top: num(m.top), visible: m.visible});
  }
  return out;
}"""


@dataclass
class ExplorerServer:
    url: str
    apps: list[Any] = field(default_factory=list)


@pytest.fixture(scope="module")
def server() -> Iterator[ExplorerServer]:
    """The explorer app served once for the module; ``apps`` holds one template per session."""
    from attviz.app import create_app, load_corpora

    load_corpora()  # read (or on a first run build, ~10 s) the demo corpus before a page waits for it
    yield from serve_explorer(create_app)


def serve_explorer(make_template: Any) -> Iterator[ExplorerServer]:
    """Serve ``make_template()`` (one template per browser session) until the generator is closed."""
    from attviz.app import MAX_MESSAGE_BYTES

    apps: list[Any] = []

    def factory() -> Any:
        template = make_template()
        apps.append(template)
        return template

    url, thread = start_server(factory, websocket_max_message_size=MAX_MESSAGE_BYTES)
    try:
        yield ExplorerServer(url, apps)
    finally:
        stop_server(thread)


def open_explorer(page: Any, server: ExplorerServer) -> Any:
    """Open a new session in ``page``; returns its explorer once the text view shows tokens."""
    before = len(server.apps)
    page.goto(server.url)
    _wait_for_panel(page)
    explorer = _wait_until(lambda: len(server.apps) > before and server.apps[-1].explorer)
    page.locator(".attviz-token").first.wait_for()
    return explorer


def spans(page: Any) -> list[list[Any]]:
    return page.eval_on_selector_all(".attviz-token", SPANS_JS)


def colors(page: Any) -> list[str]:
    return page.eval_on_selector_all(".attviz-token", COLORS_JS)


def alpha(color: str) -> float:
    """The alpha of a CSS ``rgb(...)``/``rgba(...)`` colour (the text view's intensity)."""
    parts = re.findall(r"[\d.]+", color)
    return float(parts[3]) if len(parts) == 4 else 1.0


def wait_for_colors_other_than(page: Any, old: list[str], timeout: float = 10.0) -> list[str]:
    return _wait_until(lambda: (new := colors(page)) != old and new, timeout=timeout)


def tab(page: Any, title: str) -> Any:
    return page.locator(".bk-tab", has_text=title)


def test_demo_loads(page, page_log, server, screenshot):
    explorer = open_explorer(page, server)
    doc = explorer.document
    assert explorer.source == "demo" and doc is not None and doc.id == explorer.doc_id
    tokens = doc.token_table()
    words = tokens[~tokens["special"]]
    shown = [s for s in spans(page) if "attviz-special" not in s[3]]
    # One span per non-special token, in order, each showing its piece of the original text.
    assert [index for index, *_ in shown] == list(words.index)
    for index, text, *_ in shown:
        assert text == doc.text[words.loc[index, "start"] : words.loc[index, "end"]]
    badges = [text for _, text, _, cls in spans(page) if "attviz-special" in cls]
    assert badges == list(tokens[tokens["special"]]["text"])
    # The predictions caption of the first document.
    caption = page.locator("p.caption").first
    assert caption.inner_text().startswith("Class with the highest probability of")
    assert doc.prediction in caption.inner_text()
    screenshot(page, "explorer-text")
    assert not page_log.blocked
    assert all(urlparse(url).hostname in LOCAL_HOSTS for url in page_log.requests if "://" in url)


def test_changing_the_head_changes_the_colours(page, server, record_property):
    explorer = open_explorer(page, server)
    mean_colors = colors(page)
    reduction = page.get_by_label("Combine heads")
    options = reduction.locator("option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
    only_head = [label for value, label in options if value == "head" or "selected head" in label.lower()]
    assert len(only_head) == 1, options
    reduction.select_option(label=only_head[0])
    _wait_until(lambda: explorer.head_reduction == "head")
    before = wait_for_colors_other_than(page, mean_colors)  # head 0 alone differs from the mean

    handle = page.locator(".bk-Slider").filter(has_text="Head:").locator(".noUi-handle")
    assert handle.get_attribute("aria-valuenow").startswith("0")
    latencies = []
    for head in (1, 2, 3):
        page.evaluate(WATCH_JS, "|".join(before))
        handle.focus()
        handle.press("ArrowRight")
        _wait_until(lambda head=head: explorer.head == head)
        assert handle.get_attribute("aria-valuenow").startswith(str(head))
        after = wait_for_colors_other_than(page, before)
        key_at, color_at = _wait_until(lambda: (v := page.evaluate("[window.__keyAt, window.__colorAt]"))[1] and v)
        latencies.append(color_at - key_at)
        assert after != before
        # The strongest colour is on the token the selected head's vector ranks first.
        _wait_until(lambda: explorer.token_vector is not None)
        vector = explorer.token_vector.values
        assert len(after) == len(vector)
        assert max(range(len(after)), key=lambda i: alpha(after[i])) == int(vector.argmax())
        before = after
    median = statistics.median(latencies)
    record_property("head_change_ms", median)
    print(f"\nhead change, key press -> new colours: {[round(t) for t in latencies]} ms (median {median:.0f})")


def test_clicking_a_token_selects_it_everywhere(page, server, screenshot):
    explorer = open_explorer(page, server)
    assert explorer.selected_token is None
    token = page.locator(".attviz-token[data-index='3']")
    token.click()
    _wait_until(lambda: explorer.selected_token == 3)
    page.locator(".attviz-token.attviz-selected[data-index='3']").wait_for()
    assert page.locator(".attviz-token.attviz-selected").count() == 1
    name = explorer.document.tokens[3]
    page.get_by_text(f"Selected: {name} (position 3)").wait_for()

    tab(page, "Matrix").click()
    page.locator(".bk-tab.bk-active", has_text="Matrix").wait_for()
    # The matrix's selection overlay covers query row 3 (cell centres on integer positions).
    overlay = _wait_until(lambda: (o := page.evaluate(OVERLAYS_JS)) and o[0]["bottom"] is not None and o)
    assert len(overlay) == 1
    assert (overlay[0]["bottom"], overlay[0]["top"], overlay[0]["visible"]) == (2.5, 3.5, True)
    screenshot(page, "explorer-matrix")

    # A selection made elsewhere (the server) moves the overlay.
    explorer.selected_token = 5
    _wait_until(lambda: page.evaluate(OVERLAYS_JS)[0]["bottom"] == 4.5)


def test_live_input(page, server, screenshot):
    TEXT = "Traders in Zanzibar sold cloves at dawn."
    explorer = open_explorer(page, server)
    page.get_by_placeholder("Type or paste a text…").fill(TEXT)
    page.get_by_role("button", name="Run model").click()
    _wait_until(lambda: explorer.source == "live", timeout=90)
    _wait_until(lambda: explorer.document is not None and explorer.document.text == TEXT)
    assert explorer.doc_id == explorer.document.id == "live-1"

    # The pieces of "Zanzibar" (e.g. "za ##nz ##ibar") are spans that spell the word from the text.
    tokens = explorer.document.token_table()
    start = TEXT.index("Zanzibar")
    pieces = list(tokens[(tokens["start"] >= start) & (tokens["end"] <= start + len("Zanzibar"))].index)
    assert pieces

    def zanzibar_shown() -> bool:
        texts = {index: text for index, text, *_ in spans(page)}
        return "".join(texts.get(i, "?") for i in pieces) == "Zanzibar"

    _wait_until(zanzibar_shown, timeout=15)
    page.get_by_text("Added", exact=False).first.wait_for()
    screenshot(page, "explorer-live")


def test_malformed_upload_shows_an_error(page, server, tmp_path):
    explorer = open_explorer(page, server)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"text": 1}]))
    page.locator(".card-header", has_text="Open a file").click()
    page.locator("input[type=file]").set_input_files(str(broken))
    error = page.locator(".attviz-error")
    error.wait_for()
    assert "broken.json" in error.inner_text()
    assert explorer.source == "demo" and list(explorer.corpora) == ["demo"]

    # The session keeps working: the next-document button still moves on.
    first = explorer.doc_id
    page.get_by_role("button", name="▶").click()
    _wait_until(lambda: explorer.doc_id != first)
    assert explorer.doc_id == explorer.param.doc_id.objects[1]


def test_every_tab_renders(page, page_log, server, screenshot):
    open_explorer(page, server)
    titles = page.locator(".bk-tab").all_inner_texts()
    assert titles[:6] == ["Text", "Matrix", "Heads", "Model", "Documents", "Compare"]
    for title in titles:
        tab(page, title).click()
        page.locator(".bk-tab.bk-active", has_text=title).wait_for()
        # Rendered: a plot (the prediction card's chart is collapsed), the document table, or the text.
        _wait_until(lambda: (n := page.evaluate(SHOWN_JS))["figures"] >= 1 or n["tables"] or n["tokens"], timeout=15)
        page.locator(".loader.spin").wait_for(state="detached")  # Panel's busy indicator: the server is idle
        screenshot(page, f"explorer-tab-{title.lower().replace(' ', '-')}")
        assert not page_log.console_errors() and not page_log.errors, (title, page_log.console_errors())


def test_two_sessions_are_isolated(page, server, chromium):
    first = open_explorer(page, server)
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    problems: list[str] = []

    def route(request_route: Any) -> None:  # offline, as for ``page``
        url = request_route.request.url
        if urlparse(url).hostname in LOCAL_HOSTS or url.startswith(("data:", "blob:")):
            request_route.continue_()
        else:
            problems.append(f"external request: {url}")
            request_route.abort()

    context.route("**/*", route)
    try:
        other_page = context.new_page()
        other_page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
        other_page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        second = open_explorer(other_page, server)
        assert second is not first and second.corpora["demo"] is first.corpora["demo"]  # shared data
        start = first.doc_id
        assert second.doc_id == start

        other_page.get_by_role("button", name="▶").click()  # the second session moves on ...
        _wait_until(lambda: second.doc_id != start)
        page.wait_for_timeout(500)
        assert first.doc_id == start  # ... the first does not
        assert page.get_by_label("Document").first.input_value() == start

        page.get_by_role("button", name="◀").click()  # and the other way round
        _wait_until(lambda: first.doc_id == first.param.doc_id.objects[-1])
        other_page.wait_for_timeout(500)
        assert second.doc_id == second.param.doc_id.objects[1]
        assert other_page.get_by_label("Document").first.input_value() == second.doc_id
    finally:
        context.close()
    assert not problems, problems
