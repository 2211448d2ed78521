"""Page-ready timing in headless Chromium, and a static file server for the pages.

``page_ready`` opens a URL in a fresh browser context (empty cache), waits until a JavaScript
predicate holds (polled every animation frame, in the page) and then two more animation frames (the
frame is painted); times are ``performance.now()`` in the page, i.e. from the navigation start, so
they include the HTML download and parse. Every request the page makes is recorded.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
from typing import Any
from urllib.parse import urlparse

CHROMIUM = os.environ.get("ATTVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
READY_DEFINITION = {
    "attviz": "the export's window.attviz.ready (set after the first layer is decoded and drawn) and every Bokeh "
    "document idle (Bokeh.documents[i].is_idle: all root views rendered), then two animation frames (painted)",
    "BertViz": "the layer's T×T×heads attention <line>s and the head checkboxes are in the SVG, then two "
    "animation frames",
}
_PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


class StaticServer:
    """Serve a folder on ``http://127.0.0.1:<free port>`` from a thread (a context manager)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def page_ready(browser, url: str, ready_js: str, arg: Any = None, timeout_s: float = 300) -> dict[str, Any]:
    """Open ``url`` in a fresh context (empty cache); ms from navigation start until ready and painted."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(url, wait_until="commit", timeout=timeout_s * 1000)
        check = (
            f"(arg) => {{ const ok = ({ready_js})(arg); if (ok && window.__benchReady === undefined) "
            "window.__benchReady = performance.now(); return ok; }"
        )
        page.wait_for_function(check, arg=arg, polling="raf", timeout=timeout_s * 1000)
        painted = page.evaluate(_PAINTED)
        ready = page.evaluate("() => window.__benchReady")
    finally:
        context.close()
    host = urlparse(url).netloc
    # data: and blob: URLs are the page's own in-memory objects, not network requests
    remote = [u for u in requests if urlparse(u).netloc != host and not u.startswith(("data:", "blob:"))]
    return {
        "ready_ms": ready,
        "painted_ms": painted,
        "requests": len(requests),
        "remote_requests": len(remote),
        "remote_urls": remote[:5],
    }


def exported_layers(html: str) -> str:
    """ "k/n layers" exported of the page's first document, read from its manifest ("" if unreadable)."""
    match = re.search(r"id='attviz-manifest'>(.*?)</script>", html, re.S)
    try:
        doc = json.loads(match.group(1))["docs"][0]
        shown = len(doc["layers"])
        counts = [int(m) for note in doc.get("notes", []) for m in re.findall(r"of (\d+) are exported", note)]
        total = counts[0] if counts else shown
    except Exception:
        return ""
    return f"{shown}/{total} layers"


BOKEH_IDLE_JS = "window.Bokeh !== undefined && Bokeh.documents.length > 0 && Bokeh.documents.every(d => d.is_idle)"


def attviz_ready_js(html: str) -> str:
    """The export's own flag (``window.attviz.ready``: first render done) and every Bokeh document idle."""
    if "window.attviz" in html:
        return f"() => window.attviz !== undefined && window.attviz.ready === true && {BOKEH_IDLE_JS}"
    return f"() => {BOKEH_IDLE_JS}"
