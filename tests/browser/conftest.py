"""Browser tests: Panel apps served in-process and driven with Playwright's Chromium.

No pytest-playwright and no ``playwright install``: the system Chromium (``$ATTVIZ_CHROMIUM`` or
``/usr/bin/chromium``) is launched directly. Without it the tests skip, unless
``ATTVIZ_REQUIRE_BROWSER=1`` (CI) makes that a failure.

Fixtures: ``chromium`` (session browser), ``page`` (fresh context; console messages, page errors and
request URLs go to ``page_log``; any console error or page error fails the test), ``serve_app``
(serve a factory, get its URL), ``open_app`` (serve, open and wait until Panel has rendered),
``wait_for_panel``, ``wait_until`` and ``screenshot`` (PNG into ``tests/browser/artifacts/`` or
``$ATTVIZ_ARTIFACTS``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from benchmarks.pages import CHROMIUM, CHROMIUM_ARGS  # one browser setup for the tests and the benchmarks

HERE = Path(__file__).parent
# Console errors that say nothing about the app. Empty so far: add (substring, why) pairs here.
HARMLESS_CONSOLE_ERRORS: list[tuple[str, str]] = []
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """The system Chromium, launched headless once per session through Playwright."""
    executable = CHROMIUM
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        message = f"no Chromium at {executable} (set ATTVIZ_CHROMIUM to its path)"
        if os.environ.get("ATTVIZ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}; ATTVIZ_REQUIRE_BROWSER=1 requires the browser tests to run")
        pytest.skip(message)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("ATTVIZ_REQUIRE_BROWSER") == "1":
            raise
        pytest.skip("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageLog:
    """What a page reported: console messages ``(type, text)``, uncaught errors, requested URLs."""

    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        return [
            text
            for kind, text in self.console
            if kind == "error" and not any(pattern in text for pattern, _ in HARMLESS_CONSOLE_ERRORS)
        ]


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


def offline_page(chromium: Any, log: PageLog, viewport: tuple[int, int] = (1280, 900), timeout_ms: int = 15_000) -> Any:
    """A page in a fresh context that records its console, errors and requests in ``log``, and aborts
    (and records in ``log.blocked``) every request not to this machine: the app must work offline."""
    context = chromium.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    context.set_default_timeout(timeout_ms)

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if urlparse(url).hostname in LOCAL_HOSTS or url.startswith(("data:", "blob:")):
            request_route.continue_()
        else:
            log.blocked.append(url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda message: log.console.append((message.type, message.text)))
    page.on("pageerror", lambda error: log.errors.append(str(error)))
    page.on("request", lambda request: log.requests.append(request.url))
    return page


@pytest.fixture
def page(chromium: Any, page_log: PageLog, serve_app: Any) -> Iterator[Any]:
    """A fresh browser context and page; fails the test on console errors or page errors.

    It depends on ``serve_app`` so that the page closes before any server it opened stops. Requests
    to anything but this machine are recorded in ``page_log.blocked`` and aborted (the app must work
    offline).
    """
    page = offline_page(chromium, page_log)
    try:
        yield page
    finally:
        page.context.close()
    problems = [f"page error: {e}" for e in page_log.errors]
    problems += [f"console error: {e}" for e in page_log.console_errors()]
    problems += [f"blocked external request: {url}" for url in page_log.blocked]
    if problems:
        pytest.fail("the page reported problems:\n" + "\n".join(problems))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(
    url: str, timeout: float = 20.0, *, what: str = "the Panel server", process: Any = None, log: Path | None = None
) -> None:
    """Poll ``url`` until it answers 200; fail after ``timeout`` s, or at once when ``process`` (a Popen)
    has exited (``log``: the file whose tail the error shows)."""
    tail = (lambda: ":\n" + log.read_text()[-3000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer at {url} within {timeout} s{tail()}")
        time.sleep(0.05)


def start_server(factory: Callable[[], Any], **kwargs: Any) -> tuple[str, Any]:
    """Serve ``factory`` (one call per browser session) on a free port; return its URL and thread."""
    import panel as pn

    port = free_port()
    thread = pn.serve(
        {"app": factory},
        port=port,
        address="127.0.0.1",
        websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"],
        threaded=True,
        show=False,
        start=True,
        liveness=True,
        **kwargs,
    )
    wait_for_http(f"http://127.0.0.1:{port}/liveness")
    return f"http://127.0.0.1:{port}/app", thread


def stop_server(thread: Any) -> None:
    """Stop a server from :func:`start_server` and forget it in Panel's registries."""
    import panel as pn

    thread.stop()
    thread.join(timeout=10)
    for registry in (getattr(pn.state, "_servers", {}), getattr(pn.state, "_threads", {})):
        registry.pop(getattr(thread, "server_id", None), None)
    # Its sessions are gone without being destroyed: forget their busy indicators (as Panel's own test
    # fixtures do with state.reset()), or the next server's busy state writes into their documents.
    getattr(pn.state, "_indicators", []).clear()


@pytest.fixture
def serve_app() -> Iterator[Callable[[Callable[[], Any]], str]]:
    """``serve_app(factory) -> url``: serve a Panel app (one ``factory()`` call per browser session)."""
    threads: list[Any] = []

    def serve(factory: Callable[[], Any]) -> str:
        url, thread = start_server(factory)
        threads.append(thread)
        return url

    yield serve
    for thread in threads:
        stop_server(thread)
    if alive := [thread for thread in threads if thread.is_alive()]:
        pytest.fail(f"{len(alive)} Panel server thread(s) did not stop")


def _wait_for_panel(page: Any, timeout: float = 20_000) -> None:
    """Wait until Bokeh has rendered the document's roots and the page's requests have settled."""
    page.wait_for_function(
        "() => window.Bokeh && Bokeh.documents && Bokeh.documents.length > 0"
        " && Bokeh.documents[0].roots().length > 0 && Bokeh.index && Object.keys(Bokeh.index).length > 0",
        timeout=timeout,
    )
    page.wait_for_load_state("networkidle")


@pytest.fixture
def wait_for_panel() -> Callable[[Any], None]:
    return _wait_for_panel


@pytest.fixture
def open_app(page: Any, serve_app: Callable[[Callable[[], Any]], str]) -> Callable[[Callable[[], Any]], str]:
    """``open_app(factory) -> url``: serve the app, open it in ``page`` and wait until it has rendered."""

    def open_(factory: Callable[[], Any]) -> str:
        url = serve_app(factory)
        page.goto(url)
        _wait_for_panel(page)
        return url

    return open_


def _wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` (server-side state changes arrive on another thread) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {getattr(condition, '__name__', condition)}")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    return _wait_until


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    """``screenshot(page, name) -> path``: a full-page PNG in ``$ATTVIZ_ARTIFACTS`` or ``tests/browser/artifacts``."""
    folder = Path(os.environ.get("ATTVIZ_ARTIFACTS") or HERE / "artifacts")

    def take(page: Any, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def server_log() -> Iterator[Any]:
    """Errors and tracebacks the server logs during the test (it runs in this process)."""
    from tests.test_state_space import Errors

    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        yield errors
    finally:
        logging.getLogger().removeHandler(errors)
    assert not errors.records, "the server logged:\n" + "\n".join(errors.records)


def idle(page: Any) -> None:
    """Wait until Panel's busy spinner is gone."""
    page.locator(".loader.spin").wait_for(state="detached")
