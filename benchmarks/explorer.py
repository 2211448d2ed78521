"""Explorer interaction latency: a head change on a long real document, server side and in Chromium.

Run: ``python benchmarks/explorer.py [--tokens 512] [--rounds 3] [--browser]``.

The document is the bundled MiniLM's attention over the demo texts joined up to ``--tokens``
tokens. *Server side*: the explorer's layout is rendered into a Bokeh document (so every change
reaches the Bokeh models, as in a served session) and ``explorer.head`` is stepped through all 12
heads with "Combine heads: selected head"; each step's wall time covers the explorer's recompute
and every visible view's update of its Bokeh models. It is timed per tab, since only the visible
tab's views are updated. Baseline in the same run: ``attention.isel(layer, head)`` alone (the
least any head change must do). *Browser* (``--browser``): the app is served, the Head slider is
moved with the keyboard in headless Chromium, and the time from the key press to the text view's
colours changing is measured in the page (``performance.now()``; a MutationObserver on the token
spans).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bokeh.document import Document

from attviz.corpus import Corpus


def long_corpus(tokens: int) -> Corpus:
    from attviz.demo import demo_records, label_descriptions
    from attviz.extract import extract

    text = " ".join(r["text"] for r in demo_records())
    return extract([text], ids=["long"], max_length=tokens, label_descriptions=label_descriptions(), progress=False)


def server_side(corpus: Corpus, rounds: int) -> dict[str, float]:
    from attviz.explorer import Explorer
    from attviz.layout import ExplorerLayout

    explorer = Explorer({"long": corpus}, head_reduction="head")
    layout = ExplorerLayout(explorer)
    layout.panel().get_root(Document())
    n_heads = explorer.attention.sizes["head"]
    out: dict[str, float] = {}
    for index, title in enumerate(layout.tabs._names):
        layout.tabs.active = index
        times = []
        for _ in range(rounds):
            for _head in range(n_heads):
                start = time.perf_counter()
                explorer.head = (explorer.head + 1) % n_heads
                times.append(time.perf_counter() - start)
        out[title] = statistics.median(times) * 1000
    attention = explorer.attention
    base = []
    for _ in range(rounds):
        for head in range(n_heads):
            start = time.perf_counter()
            attention.isel(layer=0, head=head).values.sum()
            base.append(time.perf_counter() - start)
    out["baseline: isel + sum"] = statistics.median(base) * 1000
    return out


def browser_side(corpus: Corpus, rounds: int, chromium: str = "/usr/bin/chromium") -> float:
    """Median ms from a key press on the Head slider to the text view's colours changing."""
    import socket

    import panel as pn
    from playwright.sync_api import sync_playwright

    from attviz.explorer import Explorer
    from attviz.layout import ExplorerLayout

    def app():
        pn.extension("tabulator")
        return ExplorerLayout(Explorer({"long": corpus}, head_reduction="head")).panel()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = pn.serve({"app": app}, port=port, address="127.0.0.1", threaded=True, show=False)
    time.sleep(1.0)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=args)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/app")
            try:
                page.wait_for_function(f"() => ({_DEEP})('.attviz-token').length > 0", timeout=30_000)
            except Exception:
                page.screenshot(path="/tmp/bench-explorer.png")
                raise
            page.wait_for_load_state("networkidle")
            handle = page.locator(".noUi-handle").nth(1)  # layer, head
            times = []
            for _ in range(rounds * 11):
                page.evaluate(_ARM)
                handle.press("ArrowRight" if len(times) % 22 < 11 else "ArrowLeft")
                page.wait_for_function("() => window.__attvizDone !== undefined", timeout=10_000)
                times.append(page.evaluate("() => window.__attvizDone - window.__attvizStart"))
                time.sleep(0.05)
            browser.close()
    finally:
        server.stop()
    return statistics.median(times)


# Panel renders components in shadow roots: search through them.
_DEEP = """(selector) => {
  const out = [];
  const walk = (root) => {
    root.querySelectorAll(selector).forEach(e => out.push(e));
    root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); });
  };
  walk(document);
  return out;
}"""
# Stamp the key press and the first change of any token span's style after it.
_ARM = (
    """() => {
  window.__attvizDone = undefined;
  const deep = """
    + _DEEP
    + """;
  const colours = () => deep('.attviz-token').map(s => s.style.backgroundColor).join('|');
  const before = colours();
  document.addEventListener('keydown', () => { window.__attvizStart = performance.now(); },
                            {capture: true, once: true});
  const check = () => {
    if (colours() !== before) { window.__attvizDone = performance.now(); } else { requestAnimationFrame(check); }
  };
  requestAnimationFrame(check);
}"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--browser", action="store_true", help="also measure in headless Chromium")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    corpus = long_corpus(args.tokens)
    n = corpus[0].n_tokens
    results = {"tokens": n, "server_ms": server_side(corpus, args.rounds)}
    print(f"head change on a {n}-token MiniLM document (median ms; target ≤ 100 server side, ≤ 500 in the browser)")
    for name, value in results["server_ms"].items():
        print(f"  server, {name:<22} {value:8.1f}")
    if args.browser:
        results["browser_ms"] = browser_side(corpus, args.rounds)
        print(f"  browser, key press → colours {results['browser_ms']:8.1f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
