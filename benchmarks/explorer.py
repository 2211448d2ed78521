"""Explorer interaction latency on long real documents: server side, and end to end in Chromium.

Run::

    python benchmarks/explorer.py                     # server side only (per tab, in-process)
    python benchmarks/explorer.py --browser           # end to end in Chromium, against the baseline
    python benchmarks/explorer.py --browser --quick   # CI size: 128 tokens, one round, two steps
    python benchmarks/explorer.py --browser --no-baseline --json out.json

The documents are the bundled MiniLM's attention over the demo texts joined (in order, and in
reverse order for the second document) up to ``--tokens`` tokens (:func:`long_corpus`).

*Server side* (:func:`server_side`): the explorer's layout is rendered into a Bokeh document (so every
change reaches the Bokeh models, as in a served session) and ``explorer.head`` is stepped through all
heads with "Combine heads: selected head"; each step's wall time covers the explorer's recompute and
every visible view's update of its Bokeh models, per tab (only the visible tab's views update).

*End to end* (``--browser``, :func:`end_to_end`): the app (``attviz.app.create_app`` on a store of two
documents, "Combine heads: selected head") is served by a subprocess and driven in headless Chromium:

- **head change**: ArrowRight/ArrowLeft on the focused Head slider handle, on the Text, Matrix and
  Heads tabs;
- **document switch**: a click on ▶ (two documents: it alternates between them), on the Text and
  Matrix tabs.

Latency is measured in the page, from the key press or the pointer press (``performance.now()`` in
a capture-phase ``keydown``/``pointerdown`` listener) to the paint after the **last** change of any
view in the main area: every DOM mutation there (MutationObservers on the document and on every
shadow root) and every canvas draw call there (Bokeh's plots) is stamped, and two animation frames
after the last one is the repaint. A step ends when the server is done (its busy indicator turned
off: both apps run with the indicator's 500 ms minimum spin set to 0, so the off message marks the
end of the server's work), no websocket message and no view change came for 300 ms, every Bokeh
document is idle and the last paint is stamped. A step that changes no view (the head view shows
every head: a head change leaves it as it is) is done when the server is: its latency is the
server's. Bytes are what the server sent over the websocket during the step (Playwright's
``framereceived`` payloads).

The **baseline** is the pre-#11 code (commit ``189b02d``), checked out as a git worktree
(``--baseline-dir``) and served by a subprocess that puts that folder first on ``sys.path`` (it
prints the ``attviz.__file__`` it imported; the run stops if it is not the worktree's). Each app
extracts its own store with its own code (same texts, same model). Rounds alternate which app goes
first; per tab and action the table gives each app's median latency, the median of the per-round
ratios new/baseline with their min–max, bytes per step, and the target: *met* / *missed* only when
every round's median is on the same side of it (else *unclear*).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # attviz is imported late: a baseline subprocess must import the worktree's
    from attviz.corpus import Corpus

ROOT = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "189b02d"
DEFAULT_BASELINE_DIR = Path(tempfile.gettempdir()) / "attviz-base"
#: Tabs on which a head change is measured, and those on which a document switch is.
HEAD_TABS = ("Text", "Matrix", "Heads")
SWITCH_TABS = ("Text", "Matrix")
#: Targets of issue #11 (ms, key press or click → last visible view repainted).
TARGETS = {"head": 250.0, "document": 500.0}
ACTIONS = {"head": "head change (Head slider, arrow key)", "document": "document switch (▶)"}
QUIET_MS = 300


# -- documents -------------------------------------------------------------------------------------
def long_texts(documents: int = 1) -> list[str]:
    """The demo texts joined: in order, then in reverse order (then rotated), one string per document."""
    from attviz.demo import demo_records

    texts = [r["text"] for r in demo_records()]
    out = []
    for i in range(documents):
        order = texts if i % 2 == 0 else texts[::-1]
        shift = i // 2
        out.append(" ".join(order[shift:] + order[:shift]))
    return out


def long_corpus(tokens: int, documents: int = 1, store: str | os.PathLike | None = None) -> Corpus:
    """The bundled MiniLM over :func:`long_texts`, each truncated to ``tokens`` tokens (ids ``long``,
    ``long-2``, ...), with zero-shot predictions; in memory, or written to ``store``."""
    from attviz.demo import label_descriptions
    from attviz.extract import extract

    ids = ["long"] + [f"long-{i + 1}" for i in range(1, documents)]
    return extract(
        long_texts(documents),
        ids=ids,
        max_length=tokens,
        label_descriptions=label_descriptions(),
        progress=False,
        **({"store": store} if store is not None else {}),
    )


# -- server side -----------------------------------------------------------------------------------
def server_side(corpus: Corpus, rounds: int) -> dict[str, float]:
    """Median ms of a head change per tab, the layout rendered into a Bokeh document (no browser)."""
    from bokeh.document import Document

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


# -- in the page ------------------------------------------------------------------------------------
#: Installed before the page's own scripts (``add_init_script``): see the module docstring.
PROBE_JS = """
(() => {
  const B = window.__bench = {armed: false, t0: null, activity: 0, paint: 0, pending: false, lastMsg: 0,
                              busy: false, busyOff: null, count: 0};
  const now = () => performance.now();
  const inMain = (node) => {  // inside the template's main area (through shadow roots)?
    for (let n = node; n; n = n.parentNode || n.host) {
      if (n.nodeType === 1 && n.id === 'main') return true;
    }
    return false;
  };
  function schedule() {  // stamp the paint after the latest activity: two animation frames later
    if (B.pending) return;
    B.pending = true;
    let first = 0;
    requestAnimationFrame(() => {
      first = now();
      requestAnimationFrame(() => {
        B.pending = false; B.paint = now();
        if (B.activity > first) schedule();
      });
    });
  }
  const touch = () => { B.activity = now(); B.count++; schedule(); };
  const observer = new MutationObserver((records) => { if (records.some(r => inMain(r.target))) touch(); });
  const options = {subtree: true, childList: true, attributes: true, characterData: true};
  const attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (...args) {
    const root = attach.apply(this, args);
    observer.observe(root, options);
    return root;
  };
  observer.observe(document, options);
  const canvasMain = new WeakMap();
  const proto = CanvasRenderingContext2D.prototype;
  for (const name of ['clearRect', 'fillRect', 'drawImage', 'putImageData', 'fill', 'stroke', 'fillText']) {
    const original = proto[name];
    proto[name] = function (...args) {
      let main = canvasMain.get(this.canvas);
      if (main === undefined || !main) { main = inMain(this.canvas); canvasMain.set(this.canvas, main); }
      if (main) touch();
      return original.apply(this, args);
    };
  }
  const Socket = window.WebSocket;
  window.WebSocket = function (...args) {
    const ws = new Socket(...args);
    ws.addEventListener('message', (ev) => {
      B.lastMsg = now();
      const data = ev.data;
      const small = typeof data === 'string' && data.length < 400;
      if (small && data.includes('"css_classes"') && data.includes('"loader"')) {
        B.busy = data.includes('spin');
        if (!B.busy) B.busyOff = now();
      }
    });
    return ws;
  };
  window.WebSocket.prototype = Socket.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
  const start = () => { if (B.armed) { B.armed = false; B.t0 = now(); } };
  document.addEventListener('keydown', start, {capture: true});
  document.addEventListener('pointerdown', start, {capture: true});
  B.arm = () => { B.armed = true; B.t0 = null; B.busyOff = null; };
  B.quiet = (ms) => {
    const t = now();
    return t - B.lastMsg > ms && t - B.activity > ms && !B.pending
      && window.Bokeh !== undefined && Bokeh.documents.every(d => d.is_idle);
  };
})();
"""
_DONE_JS = f"""() => {{
  const B = window.__bench;
  return B.t0 !== null && B.busyOff !== null && B.busyOff > B.t0 && !B.busy && B.quiet({QUIET_MS});
}}"""
_RESULT_JS = """() => {
  const B = window.__bench;
  const changed = B.activity > B.t0;  // no view changed: done when the server is
  return {ms: changed ? B.paint - B.t0 : B.busyOff - B.t0, server_ms: B.busyOff - B.t0, changed: changed};
}"""


class Frames:
    """Bytes the server sent over a page's websockets (Playwright ``framereceived``)."""

    def __init__(self, page: Any) -> None:
        self.bytes = 0
        self.frames = 0
        page.on("websocket", lambda ws: ws.on("framereceived", self._add))

    def _add(self, payload: Any) -> None:
        self.frames += 1
        self.bytes += len(payload.encode("utf-8")) if isinstance(payload, str) else len(payload)

    def reset(self) -> None:
        self.bytes = self.frames = 0


class AppPage:
    """One app open in a Chromium page, with the probe installed and the head position tracked."""

    def __init__(self, browser: Any, url: str, label: str, timeout_s: float = 120) -> None:
        self.label = label
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.add_init_script(PROBE_JS)
        self.frames = Frames(self.page)
        self.page.goto(url, timeout=timeout_s * 1000)
        self.page.wait_for_function(
            "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle",
            timeout=timeout_s * 1000,
        )
        self.page.locator(".attviz-token").first.wait_for(timeout=timeout_s * 1000)
        self.settle()
        self.head, self.direction = 0, 1
        self.n_heads = int(float(self.page.locator(".noUi-handle").nth(1).get_attribute("aria-valuemax") or 11)) + 1

    def settle(self, quiet_ms: int = 500, timeout_s: float = 60) -> None:
        """Wait until nothing arrives and nothing changes for ``quiet_ms`` (and the server is not busy)."""
        self.page.wait_for_function(
            f"() => !window.__bench.busy && window.__bench.quiet({quiet_ms})", timeout=timeout_s * 1000
        )

    def tab(self, title: str) -> None:
        self.page.locator(".bk-tab", has_text=title).first.click()
        self.page.wait_for_timeout(200)
        self.settle()

    def _measure(self, act: Callable[[], None], timeout_s: float = 60) -> dict[str, Any]:
        self.page.evaluate("() => window.__bench.arm()")
        self.frames.reset()
        act()
        self.page.wait_for_function(_DONE_JS, timeout=timeout_s * 1000, polling=20)
        result = self.page.evaluate(_RESULT_JS)
        result.update(bytes=self.frames.bytes, frames=self.frames.frames)
        return result

    def head_step(self) -> dict[str, Any]:
        """Move the Head slider one step with the keyboard (right until the last head, then left)."""
        handle = self.page.locator(".noUi-handle").nth(1)  # layer, head
        if not 0 <= self.head + self.direction < self.n_heads:
            self.direction = -self.direction
        handle.focus()
        result = self._measure(lambda: handle.press("ArrowRight" if self.direction > 0 else "ArrowLeft"))
        self.head += self.direction
        return result

    def next_document(self) -> dict[str, Any]:
        button = self.page.get_by_role("button", name="▶")
        return self._measure(lambda: button.click())

    def close(self) -> None:
        self.context.close()


# -- serving an app in a subprocess ---------------------------------------------------------------------
def serve_main(argv: Sequence[str]) -> None:
    """``explorer.py serve ROOT STORE TOKENS PORT``: serve ROOT's ``attviz.app.create_app`` (a subprocess)."""
    root, store, tokens, port = argv[0], argv[1], int(argv[2]), int(argv[3])
    sys.path.insert(0, root)
    import attviz

    print(json.dumps({"attviz": attviz.__file__}), flush=True)
    from attviz.store import is_store

    if not is_store(store):
        start = time.perf_counter()
        long_corpus(tokens, documents=2, store=store)
        print(json.dumps({"extracted_s": round(time.perf_counter() - start, 1)}), flush=True)
    import panel as pn

    from attviz.app import create_app, warm_rasterizer

    warm_rasterizer()

    def app() -> Any:
        template = create_app([store], live=False)
        template.explorer.head_reduction = "head"  # "Combine heads: selected head"
        if template.busy_indicator is not None:
            template.busy_indicator.throttle = 0  # its off message marks the end of the server's work
        return template

    pn.serve(
        {"app": app},
        port=port,
        address="127.0.0.1",
        websocket_origin=[f"127.0.0.1:{port}"],
        show=False,
        liveness=True,
        websocket_max_message_size=512 * 1024 * 1024,
    )


class ServedApp:
    """An app served by ``explorer.py serve`` in a subprocess, from the code in ``root``."""

    def __init__(self, label: str, root: Path, store: Path, tokens: int) -> None:
        self.label, self.root = label, root
        self.port = _free_port()
        self.log = Path(tempfile.mkstemp(prefix=f"attviz-bench-{label}-", suffix=".log")[1])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)
        command = [sys.executable, str(Path(__file__).resolve()), "serve", str(root), str(store), str(tokens)]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([*command, str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}/app"
        self.attviz_file: str | None = None
        self.extracted_s: float | None = None

    def wait(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.label} app exited:\n{self.log.read_text()[-3000:]}")
            for line in self.log.read_text().splitlines():
                if line.startswith("{"):
                    info = json.loads(line)
                    self.attviz_file = info.get("attviz", self.attviz_file)
                    self.extracted_s = info.get("extracted_s", self.extracted_s)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/liveness", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                tail = self.log.read_text()[-3000:]
                raise RuntimeError(f"the {self.label} app did not start in {timeout_s} s:\n{tail}")
            time.sleep(0.5)
        expected = (self.root / "attviz" / "__init__.py").resolve()
        if self.attviz_file is None or Path(self.attviz_file).resolve() != expected:
            self.stop()
            raise RuntimeError(f"the {self.label} app imported attviz from {self.attviz_file}, not {expected}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def baseline_worktree(folder: Path, commit: str = BASELINE_COMMIT) -> Path:
    """``folder`` holding ``commit`` of this repository (``git worktree add`` unless it is there already)."""
    if not folder.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit],
            check=True,
            capture_output=True,
        )
    head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", commit], check=True, capture_output=True, text=True)
    if head.stdout.strip() != full.stdout.strip():
        raise RuntimeError(f"{folder} is at {head.stdout.strip()[:10]}, not {commit}")
    return folder


# -- end to end --------------------------------------------------------------------------------------
def run_round(page: AppPage, steps: int, switches: int) -> dict[str, list[dict[str, Any]]]:
    """One round on one app: ``steps`` head changes per head tab, ``switches`` document switches per switch tab."""
    out: dict[str, list[dict[str, Any]]] = {}
    for tab in HEAD_TABS:
        page.tab(tab)
        out[f"head/{tab}"] = [page.head_step() for _ in range(steps)]
        if tab in SWITCH_TABS and switches:
            out[f"document/{tab}"] = [page.next_document() for _ in range(switches)]
    page.tab(HEAD_TABS[0])
    return out


def end_to_end(
    tokens: int,
    rounds: int,
    steps: int,
    switches: int,
    baseline_dir: Path | None,
    chromium: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both apps served, driven in one Chromium in alternating rounds; raw steps and the summary."""
    from playwright.sync_api import sync_playwright

    from benchmarks.pages import CHROMIUM, CHROMIUM_ARGS

    work = Path(tempfile.mkdtemp(prefix="attviz-explorer-bench-"))
    apps = {"new": ServedApp("new", ROOT, work / "new.zarr", tokens)}
    if baseline_dir is not None:
        apps["baseline"] = ServedApp("baseline", baseline_dir, work / "baseline.zarr", tokens)
    results: dict[str, Any] = {"tokens": tokens, "rounds": rounds, "steps": steps, "switches": switches, "apps": {}}
    try:
        for app in apps.values():
            app.wait()
            results["apps"][app.label] = {"attviz": app.attviz_file, "extracted_s": app.extracted_s}
            log(f"  {app.label}: attviz from {app.attviz_file}")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium or CHROMIUM, args=CHROMIUM_ARGS)
            try:
                pages = {label: AppPage(browser, app.url, label) for label, app in apps.items()}
                for page in pages.values():  # warm-up, not measured: every tab and action once
                    run_round(page, 1, 1 if switches else 0)
                raw: dict[str, list[dict[str, Any]]] = {label: [] for label in pages}
                for r in range(rounds):
                    order = list(pages) if r % 2 == 0 else list(pages)[::-1]
                    for label in order:
                        raw[label].append(run_round(pages[label], steps, switches))
                    lines = "; ".join(_round_line(raw[label][-1], label) for label in pages)
                    log(f"  round {r + 1}/{rounds}: {lines}")
                for page in pages.values():
                    page.close()
            finally:
                browser.close()
    finally:
        for app in apps.values():
            app.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["raw"] = raw
    results["summary"] = summarise(raw)
    return results


def _round_line(round_: dict[str, list[dict[str, Any]]], label: str) -> str:
    parts = [f"{key} {_median_ms(steps):.0f}" for key, steps in round_.items()]
    return f"{label}: " + ", ".join(parts)


def _median_ms(steps: list[dict[str, Any]]) -> float:
    values = [s["ms"] for s in steps if s.get("ms") is not None]
    return statistics.median(values) if values else float("nan")


def verdict(values: Sequence[float], limit: float) -> str:
    """``met`` when every value is ≤ ``limit``, ``missed`` when every value is above it, else ``unclear``."""
    values = [v for v in values if v == v]
    if not values:
        return "no data"
    if max(values) <= limit:
        return "met"
    if min(values) > limit:
        return "missed"
    return "unclear"


def summarise(raw: dict[str, list[dict[str, list[dict[str, Any]]]]]) -> list[dict[str, Any]]:
    """Per (action, tab): each app's median, per-round medians, bytes per step; ratios new/baseline per round."""
    rows = []
    keys = list(raw["new"][0]) if raw.get("new") else []
    for key in keys:
        action, tab = key.split("/")
        row: dict[str, Any] = {"action": action, "tab": tab, "target_ms": TARGETS[action]}
        for label, rounds in raw.items():
            steps = [s for r in rounds for s in r.get(key, [])]
            per_round = [_median_ms(r.get(key, [])) for r in rounds]
            row[label] = {
                "median_ms": _median_ms(steps),
                "round_medians_ms": per_round,
                "server_ms": statistics.median([s["server_ms"] for s in steps]) if steps else float("nan"),
                "bytes_per_step": statistics.median([s["bytes"] for s in steps]) if steps else 0,
                "unchanged_steps": sum(1 for s in steps if not s["changed"]),
                "steps": len(steps),
                "target": verdict(per_round, TARGETS[action]) + (" (1 round)" if len(per_round) == 1 else ""),
            }
        if "baseline" in raw and "new" in raw:
            ratios = [
                n / b
                for n, b in zip(row["new"]["round_medians_ms"], row["baseline"]["round_medians_ms"], strict=True)
                if n == n and b == b and b > 0
            ]
            if ratios:
                row["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
                row["ratio"]["verdict"] = (
                    "one round: no spread"
                    if len(ratios) < 2
                    else "faster"
                    if max(ratios) < 1
                    else "slower"
                    if min(ratios) > 1
                    else "no clear difference"
                )
        rows.append(row)
    return rows


def _kb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def markdown(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table."""
    has_base = any("baseline" in r for r in summary)
    head = "| action | tab | new: median ms (round medians) | server ms | bytes/step |"
    if has_base:
        head += " baseline: median ms | server ms | bytes/step | ratio new/base: median (min–max) |"
    head += " target | verdict |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary:
        n = r["new"]
        rounds = ", ".join(f"{v:.0f}" for v in n["round_medians_ms"])
        unchanged = f" ({n['unchanged_steps']}/{n['steps']} changed no view)" if n["unchanged_steps"] else ""
        cells = [
            ACTIONS[r["action"]],
            r["tab"],
            f"**{n['median_ms']:.0f}** ({rounds}){unchanged}",
            f"{n['server_ms']:.0f}",
            _kb(n["bytes_per_step"]),
        ]
        if has_base:
            b = r.get("baseline")
            if b is None:
                cells += ["—"] * 4
            else:
                b_unchanged = f" ({b['unchanged_steps']}/{b['steps']} changed no view)" if b["unchanged_steps"] else ""
                ratio = r.get("ratio")
                cells += [
                    f"{b['median_ms']:.0f}{b_unchanged}",
                    f"{b['server_ms']:.0f}",
                    _kb(b["bytes_per_step"]),
                    f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f}), {ratio['verdict']}"
                    if ratio
                    else "—",
                ]
        cells += [f"≤ {r['target_ms']:.0f} ms", n["target"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the older in-process browser figure (benchmarks/run.py) --------------------------------------------
def browser_side(corpus: Corpus, rounds: int, chromium: str | None = None) -> float:
    """Median ms from a key press on the Head slider to the last repaint of the Text tab's views (the
    app served in this process; the latency definition of :func:`end_to_end`)."""
    import panel as pn
    from playwright.sync_api import sync_playwright

    from attviz.explorer import Explorer
    from attviz.layout import ExplorerLayout
    from benchmarks.pages import CHROMIUM, CHROMIUM_ARGS

    def app() -> Any:
        pn.extension("tabulator")
        layout = ExplorerLayout(Explorer({"long": corpus}, head_reduction="head"))
        template = pn.template.FastListTemplate(title="attviz", sidebar=[layout.controls], main=[layout.main])
        if template.busy_indicator is not None:
            template.busy_indicator.throttle = 0
        return template

    port = _free_port()
    server = pn.serve({"app": app}, port=port, address="127.0.0.1", threaded=True, show=False, liveness=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium or CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = AppPage(browser, f"http://127.0.0.1:{port}/app", "new")
                page.head_step()  # warm-up
                times = [page.head_step()["ms"] for _ in range(rounds * 11)]
                page.close()
            finally:
                browser.close()
    finally:
        server.stop()
    return statistics.median(t for t in times if t is not None)


# -- main --------------------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Sizes: ``--quick`` (CI) is 128 tokens, one round, two head steps and one switch per tab."""
    quick = args.quick
    return {
        "tokens": args.tokens or (128 if quick else 512),
        "rounds": args.rounds or (1 if quick else 3),
        "steps": args.steps or (2 if quick else 6),
        "switches": args.switches if args.switches is not None else (1 if quick else 4),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve_main(argv[1:])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=None, help="tokens per document (512; --quick 128)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="head changes per tab and round (6; --quick 2)")
    parser.add_argument("--switches", type=int, default=None, help="document switches per tab and round (4)")
    parser.add_argument("--quick", action="store_true", help="CI size")
    parser.add_argument("--browser", action="store_true", help="end to end in Chromium (else server side only)")
    parser.add_argument("--no-server-side", action="store_true", help="skip the in-process server-side figures")
    parser.add_argument("--no-baseline", action="store_true", help="measure the current code only")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT, help="its commit (189b02d: before #11)")
    parser.add_argument("--baseline-dir", type=Path, default=DEFAULT_BASELINE_DIR, help="its git worktree")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    sizes = plan(args)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {"plan": sizes}
    if not args.no_server_side:
        corpus = long_corpus(sizes["tokens"])
        n = corpus[0].n_tokens
        results["server_ms"] = server_side(corpus, sizes["rounds"])
        print(f"head change on a {n}-token MiniLM document, server side in process (median ms)")
        for name, value in results["server_ms"].items():
            print(f"  {name:<22} {value:8.1f}")
    if args.browser:
        baseline = None
        if not args.no_baseline:
            try:
                baseline = baseline_worktree(args.baseline_dir, args.baseline_commit)
            except (subprocess.CalledProcessError, RuntimeError) as exc:
                detail = getattr(exc, "stderr", b"") or b""
                detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
                print(f"baseline skipped: {exc} {detail}")
        print(
            f"end to end in Chromium: {sizes['tokens']} tokens, {sizes['rounds']} rounds, "
            f"{sizes['steps']} head changes and {sizes['switches']} document switches per tab and round"
        )
        e2e = end_to_end(sizes["tokens"], sizes["rounds"], sizes["steps"], sizes["switches"], baseline)
        results["end_to_end"] = e2e
        print(markdown(e2e["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
