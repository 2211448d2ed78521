"""The Corpus area of ``attviz serve`` in Chromium (issue #13): opening it, and a head click's top documents.

Run: ``python benchmarks/corpus_app.py [STORE] [--rounds 5] [--json OUT]``, or ``--quick`` (CI: the demo
corpus, 2 rounds). STORE defaults to the bundled demo store (built on first use).

Before anything is timed the store's corpus statistics are made sure to be cached in the store
(``corpus_statistics(attviz.open_corpus(STORE))`` computes and writes them the first time only), and the
same statistics give the expected first top document of every head clicked
(``stats.top_documents(layer, head, "entropy", n=10)["id"].iloc[0]``, the grid's default metric).

``attviz serve STORE --port P`` runs in a subprocess with its own temporary folder and log (as in
``benchmarks/load.py``). One headless Chromium opens, per round, a fresh page in a fresh context (empty
cache) in which every request to anything but the server is aborted and counted; once the explorer shows
its text view and Panel's spinner is gone:

1. **open**: from the click on the "Corpus" tab until the head grid (the Bokeh figure
   ``attviz-corpus-grid``) is drawn with its glyphs and the "Colour by" control is visible;
2. **head click**: three grid cells (layer, head) at fixed positions, (1, 2), (3, 5) and (5, 11) clipped to
   the store's layers and heads, each clicked with the mouse and timed until the head's caption ("Layer L,
   head H") is shown and the first row of the top-documents table (the table with a ``rank`` column) has
   the expected document id in its ``id`` cell.

Times are ``time.monotonic()`` in this process around Playwright calls, polled every 20 ms: they include
Playwright's round trips to the browser (a few to tens of ms) and the polling step, so they slightly
overstate what a user waits. Round 1 is the server's first Corpus area on the store (it loads the cached
statistics); later rounds are fresh sessions of the same server.

Targets (issue #13): open ≤ 3 s, head click ≤ 500 ms. Reported: median and min–max of each; a target is
**met** only when every measurement is on its right side, **missed** when every one is on the wrong side,
else **within noise** (``(1 round)`` is added when there is no spread). The server's RSS (with its child
processes) is printed at the end. The run fails (exit 1) on page errors, console errors, a step that timed
out, a non-local request, or a server log line with a traceback or ``ERROR``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.corpus_stats import verdict  # noqa: E402  (met / missed / within noise, as there)
from benchmarks.load import Server as LoadServer  # noqa: E402
from benchmarks.pages import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

OPEN_SECONDS, CLICK_SECONDS = 3.0, 0.5
CELLS = [(1, 2), (3, 5), (5, 11)]  # (layer, head) grid positions, clipped to the store's
METRIC = "entropy"  # the grid's default metric
POLL_S = 0.02
GRID = "attviz-corpus-grid"
READY_JS = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"

# The figure named ``name`` that is drawn now (a replaced figure may linger in the document unshown).
SHOWN_FIGURE = """const shown = (name) => [...Bokeh.documents[0].all_models].filter(
  (m) => m.name === name && Bokeh.index.find_one_by_id(m.id) != null).pop();"""
# The page position of a data point (x, y) of the figure named ``name``.
POINT_JS = f"""([name, x, y]) => {{
  {SHOWN_FIGURE}
  const fig = shown(name), view = Bokeh.index.find_one_by_id(fig.id);
  const box = view.canvas_view.el.getBoundingClientRect();
  return [box.left + view.frame.x_scale.compute(x), box.top + view.frame.y_scale.compute(y)];
}}"""
# Whether the figure named ``name`` is drawn (-1: not), and how many points its first glyph has.
FIGURE_JS = f"""(name) => {{
  {SHOWN_FIGURE}
  const fig = shown(name);
  if (fig == null) return -1;
  const renderer = fig.renderers.find((r) => r.data_source != null);
  return renderer == null ? 0 : renderer.data_source.get_length();
}}"""


def say(line: str = "") -> None:
    print(line, flush=True)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    from attviz.demo import demo_store_path

    store = None if args.quick else args.store
    return {"store": Path(store) if store else demo_store_path(), "rounds": args.rounds or (2 if args.quick else 5)}


# -- the store's statistics and the expected top documents ----------------------------------------------
def expectations(store: Path) -> dict[str, Any]:
    """Cache the store's corpus statistics (computed the first time only); the clicked cells and the first
    top document each should list."""
    import attviz
    from attviz.analysis.engine import corpus_statistics

    if not store.exists() and store.name.startswith("demo-"):
        from attviz.demo import demo_corpus

        say("building the demo store (once) ...")
        demo_corpus(progress=False)
    start = time.monotonic()
    stats = corpus_statistics(attviz.open_corpus(str(store)))
    seconds = time.monotonic() - start
    layers = [int(v) for v in stats.heads["layer"].values]
    heads = [int(v) for v in stats.heads["head"].values]
    cells = []
    for layer_pos, head_pos in CELLS:
        cell = (min(layer_pos, len(layers) - 1), min(head_pos, len(heads) - 1))
        if cell not in cells:
            cells.append(cell)
    clicks = []
    for layer_pos, head_pos in cells:
        layer, head = layers[layer_pos], heads[head_pos]
        top = stats.top_documents(layer, head, METRIC, n=10)
        clicks.append({"pos": (layer_pos, head_pos), "layer": layer, "head": head, "top": str(top["id"].iloc[0])})
    return {
        "stats_seconds": seconds,
        "documents": len(stats.documents),
        "layers": len(layers),
        "heads": len(heads),
        "clicks": clicks,
    }


# -- the server (as in benchmarks/load.py) ---------------------------------------------------------------
class Server(LoadServer):
    """``attviz serve STORE`` in a subprocess (the load benchmark's server), and its RSS."""

    def __init__(self, store: Path) -> None:
        super().__init__([str(store)])

    def rss(self) -> dict[str, float]:
        """The server's RSS in MB (``with_children`` too when psutil is there)."""
        pid = self.process.pid
        try:
            import psutil
        except ImportError:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return {"server": int(line.split()[1]) * 1024 / 1e6}
            return {}
        try:
            process = psutil.Process(pid)
            children = process.children(recursive=True)
            own = process.memory_info().rss
            total = own + sum(c.memory_info().rss for c in children if c.is_running())
        except psutil.Error:
            return {}
        return {"server": own / 1e6, "with_children": total / 1e6}


# -- one round in the browser ------------------------------------------------------------------------------
def poll(condition: Callable[[], Any], timeout_s: float) -> bool:
    """Poll ``condition`` every ``POLL_S`` until it is truthy (True) or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)


def visible(locator: Any) -> bool:
    try:
        return locator.first.is_visible()
    except Exception:  # a node replaced between the query and the check
        return False


def first_id(page: Any) -> str | None:
    """The id in the first row of the top-documents table (the table with a ``rank`` column), or None."""
    rows = page.locator(".tabulator-row", has=page.locator(".tabulator-cell[tabulator-field='rank']"))
    try:
        texts = rows.first.locator(".tabulator-cell[tabulator-field='id']").all_inner_texts()
    except Exception:  # a row replaced between the query and the read
        return None
    return texts[0].strip() if texts else None


def one_round(browser: Any, url: str, clicks: list[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
    """A fresh page: open the Corpus area, then click each cell; seconds, errors and non-local requests."""
    host = urlparse(url).netloc
    errors: list[str] = []
    remote: list[str] = []
    notes: list[str] = []

    def route(r: Any) -> None:
        if urlparse(r.request.url).netloc == host or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            remote.append(r.request.url)
            r.abort()

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(timeout_s * 1000)
    context.route("**/*", route)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda m: m.type == "error" and errors.append(f"console error: {m.text}"))
    out: dict[str, Any] = {"open": None, "clicks": [], "errors": errors, "remote": remote, "notes": notes}
    try:
        page.goto(url)
        page.wait_for_function(READY_JS)
        page.locator(".attviz-token").first.wait_for()
        page.locator(".loader.spin").wait_for(state="detached")

        colour = page.get_by_label("Colour by")
        start = time.monotonic()
        page.locator(".bk-tab", has_text="Corpus").first.click()
        if not poll(lambda: page.evaluate(FIGURE_JS, GRID) > 0 and visible(colour), timeout_s):
            errors.append(f"open: the head grid was not drawn within {timeout_s} s")
            return out
        out["open"] = time.monotonic() - start
        page.locator(".loader.spin").wait_for(state="detached")

        for click in clicks:
            layer_pos, head_pos = click["pos"]
            caption = page.get_by_text(f"Layer {click['layer']}, head {click['head']}", exact=True)
            if visible(caption):
                notes.append(f"layer {click['layer']}, head {click['head']} was selected before its click")
            x, y = page.evaluate(POINT_JS, [GRID, head_pos, layer_pos])  # x: head position, y: layer position
            start = time.monotonic()
            page.mouse.click(x, y)
            if not poll(
                lambda caption=caption, top=click["top"]: visible(caption) and first_id(page) == top, timeout_s
            ):
                errors.append(
                    f"head click ({click['layer']}, {click['head']}): {click['top']!r} not listed within {timeout_s} s"
                )
                continue
            out["clicks"].append(time.monotonic() - start)
            page.locator(".loader.spin").wait_for(state="detached")
    except Exception as exc:  # a Playwright timeout or a closed page: reported, and the run fails
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        context.close()
    return out


# -- verdicts ------------------------------------------------------------------------------------------------
def spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "–"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def table(result: dict[str, Any]) -> str:
    opens, clicks = result["open_seconds"], result["click_seconds"]
    rss = result["rss_mb"]
    rss_text = ", ".join(f"{k.replace('_', ' ')} {v:,.0f} MB" for k, v in rss.items()) or "unknown"
    lines = [
        f"store: {result['store']} ({result['documents']:,} documents, {result['layers']} × {result['heads']} heads); "
        f"statistics ready in {result['stats_seconds']:.2f} s; {result['rounds']} round(s)",
        "",
        "| step | n | median (min–max) | target | verdict |",
        "|---|---:|---:|---:|---|",
        f"| open the Corpus area (tab click → head grid drawn), s | {len(opens)} | {spread(opens)} | "
        f"≤ {OPEN_SECONDS:g} s | {result['verdicts']['open']} |",
        f"| head click → its top documents listed, ms | {len(clicks)} | {spread(clicks, 1000, 0)} | "
        f"≤ {CLICK_SECONDS * 1000:g} ms | {result['verdicts']['head click']} |",
        "",
        f"server RSS at the end: {rss_text}",
        f"errors: {len(result['errors'])}; non-local requests: {result['remote_requests']}",
    ]
    lines += [f"  {e}" for e in result["errors"][:20]]
    lines += [f"  note: {n}" for n in result["notes"][:10]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", nargs="?", default=None, help="the store to serve (default: the demo store)")
    parser.add_argument("--quick", action="store_true", help="CI: the demo corpus, 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds, a fresh page each (default 5)")
    parser.add_argument("--timeout", type=float, default=120, help="s to wait for a page or a step")
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    settings = plan(args)
    store: Path = settings["store"]
    expected = expectations(store)
    say(
        f"statistics of {store.name} ready in {expected['stats_seconds']:.2f} s; cells (layer, head) → first top "
        "document: " + ", ".join(f"({c['layer']}, {c['head']}) → {c['top']}" for c in expected["clicks"])
    )
    from playwright.sync_api import sync_playwright

    rounds: list[dict[str, Any]] = []
    server = Server(store)
    try:
        server.wait()
        say(f"server up on port {server.port}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for i in range(settings["rounds"]):
                    done = one_round(browser, server.url, expected["clicks"], args.timeout)
                    rounds.append(done)
                    opened = "–" if done["open"] is None else f"{done['open']:.2f} s"
                    clicked = ", ".join(f"{s * 1000:.0f}" for s in done["clicks"]) or "–"
                    say(f"round {i + 1}: open {opened}; head clicks {clicked} ms; errors {len(done['errors'])}")
            finally:
                browser.close()
        time.sleep(0.5)
        rss = server.rss()
        server_errors = server.errors()
    finally:
        server.stop()
        server.cleanup()
    opens = [r["open"] for r in rounds if r["open"] is not None]
    clicks = [s for r in rounds for s in r["clicks"]]
    errors = [f"round {i + 1}: {e}" for i, r in enumerate(rounds) for e in r["errors"]]
    errors += [f"server log: {line}" for line in server_errors]
    remote = [u for r in rounds for u in r["remote"]]
    result = {
        "store": str(store),
        "rounds": settings["rounds"],
        **expected,
        "open_seconds": opens,
        "click_seconds": clicks,
        "verdicts": {"open": verdict(opens, OPEN_SECONDS), "head click": verdict(clicks, CLICK_SECONDS)},
        "rss_mb": rss,
        "errors": errors,
        "notes": [f"round {i + 1}: {n}" for i, r in enumerate(rounds) for n in r["notes"]],
        "remote_requests": len(remote),
        "remote_urls": sorted(set(remote))[:10],
        "cpus": os.cpu_count(),
    }
    say()
    say(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    problems = []
    if errors:
        problems.append(f"{len(errors)} errors")
    if remote:
        problems.append(f"{len(remote)} non-local requests")
    if not opens or not clicks:
        problems.append("nothing measured")
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
