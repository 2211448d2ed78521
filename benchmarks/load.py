"""Many browser sessions at once against ``attviz serve`` (issue #14, part 4): errors, leaks, memory, latency.

Run::

    python benchmarks/load.py                 # 20 sessions, 4 rounds of interactions each
    python benchmarks/load.py --quick         # CI: 4 sessions, 2 rounds (about a minute)
    python benchmarks/load.py --sessions 30 --rounds 6 --json out.json

``attviz serve`` (the demo corpus, its defaults: loopback, Host and Origin checks) runs in a subprocess
with its own temporary folder. One headless Chromium opens ``--sessions`` pages at once, each in a fresh
context (empty cache) in which **every request to anything but the server is aborted and counted**. Once
every page shows the explorer, all sessions interact at the same time for ``--rounds`` rounds; in a round
session *i* moves the Head slider ``1 + i % 3`` steps with the keyboard, clicks ▶ (next document) when
*i* is odd, and clicks a token of the text view. The rounds stop early after ``--max-seconds``.

Measured:

- **latency** of each interaction, in the page: from the key or pointer press to the paint after the
  last change in the main area (:data:`benchmarks.explorer.PROBE_JS`), done when a websocket message
  came after the press, the main area changed, and nothing arrived or changed for 300 ms; p50 / p95 / max
  over all interactions of all sessions;
- **errors**: page errors, console errors, interactions that timed out, and every line of the server's
  log with a traceback or ``ERROR``;
- **cross-session leaks**: at the end each page's Head slider and Document select must show what *that*
  session chose (its own steps and clicks from its own start), whatever the others did;
- **memory**: the server's RSS (with its child processes) sampled every 0.5 s: before the sessions, peak,
  and 5 s after every page closed;
- **non-local requests**: every request a page made to a host other than the server's.

The run fails (exit 1) on any error, leak or non-local request, or a peak RSS over ``--max-rss-mb``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.explorer import PROBE_JS  # noqa: E402  (the latency probe of the explorer benchmark)
from benchmarks.pages import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

QUIET_MS = 300
DONE_JS = f"""() => {{
  const B = window.__bench;
  return B.t0 !== null && B.lastMsg > B.t0 && B.activity > B.t0 && B.quiet({QUIET_MS});
}}"""
RESULT_JS = "() => { const B = window.__bench; return {ms: B.paint - B.t0}; }"
READY_JS = "() => window.Bokeh && Bokeh.documents.length > 0 && Bokeh.documents[0].is_idle"
#: Server log lines that are errors (Tornado, Bokeh and Panel log through ``logging``).
LOG_ERROR = re.compile(r"Traceback|^ERROR|:ERROR:|\bERROR:|Exception", re.M)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    quick = {"sessions": 4, "rounds": 2, "max_seconds": 20.0}
    full = {"sessions": 20, "rounds": 4, "max_seconds": 300.0}
    base = quick if args.quick else full
    return {key: getattr(args, key, None) if getattr(args, key, None) is not None else v for key, v in base.items()}


# -- the server ------------------------------------------------------------------------------------------
class Server:
    """``attviz serve`` in a subprocess on a free port, with its own temporary folder and log."""

    def __init__(self, args: list[str] = ()) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.tmp = Path(tempfile.mkdtemp(prefix="attviz-load-"))
        self.log = self.tmp / "server.log"
        env = {**os.environ, "TMPDIR": str(self.tmp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env["TOKENIZERS_PARALLELISM"] = "false"
        command = [sys.executable, "-m", "attviz.cli", "serve", "--port", str(self.port), *args]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.stop_s: float | None = None

    def wait(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"attviz serve exited with {self.process.returncode}:\n{self.text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}liveness", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"attviz serve did not answer in {timeout_s} s:\n{self.text()[-3000:]}")
            time.sleep(0.3)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def errors(self) -> list[str]:
        text = self.text()
        return [line for line in text.splitlines() if LOG_ERROR.search(line)]

    def stop(self) -> int | None:
        """SIGTERM (the server removes its uploads and exits 0), then SIGKILL after 60 s."""
        if self.process.poll() is None:
            start = time.monotonic()
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
                self.stop_s = time.monotonic() - start
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class Memory:
    """The RSS of a process and its children, sampled every ``interval`` s in a thread (MB)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def now(self) -> float:
        import psutil

        try:
            processes = [self.process, *self.process.children(recursive=True)]
            return sum(p.memory_info().rss for p in processes if p.is_running()) / 1e6
        except psutil.Error:
            return 0.0

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append((time.monotonic(), self.now()))

    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# -- one session ------------------------------------------------------------------------------------------
class Session:
    """One page in its own browser context; its own expected state; what it reported."""

    def __init__(self, index: int, server_host: str) -> None:
        self.index = index
        self.host = server_host
        self.errors: list[str] = []
        self.remote: list[str] = []
        self.latencies: list[dict[str, Any]] = []
        self.open_s: float | None = None
        self.head = 0
        self.direction = 1
        self.n_heads = 12
        self.doc_ids: list[str] = []
        self.doc_index = 0
        self.rounds = 0
        self.context: Any = None
        self.page: Any = None

    async def open(self, browser: Any, url: str, timeout_s: float) -> None:
        self.context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(timeout_s * 1000)
        await self.context.route("**/*", self._route)
        self.page = page = await self.context.new_page()
        await page.add_init_script(PROBE_JS)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console error: {m.text}"))
        start = time.monotonic()
        await page.goto(url, timeout=timeout_s * 1000)
        await page.wait_for_function(READY_JS, timeout=timeout_s * 1000)
        await page.locator(".attviz-token").first.wait_for(timeout=timeout_s * 1000)
        self.open_s = time.monotonic() - start
        handle = page.locator(".noUi-handle").nth(1)  # layer, head
        self.n_heads = int(float(await handle.get_attribute("aria-valuemax") or 11)) + 1
        self.head = int(float(await handle.get_attribute("aria-valuenow") or 0))
        select = page.get_by_label("Document", exact=True).first
        self.doc_ids = [await o.get_attribute("value") for o in await select.locator("option").all()]
        self.doc_index = self.doc_ids.index(await select.input_value())

    async def _route(self, route: Any) -> None:
        url = route.request.url
        if urlparse(url).netloc == self.host or url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            self.remote.append(url)
            await route.abort()

    async def _measure(self, what: str, act: Any, timeout_s: float) -> None:
        page = self.page
        await page.evaluate("() => window.__bench.arm()")
        await act()
        try:
            await page.wait_for_function(DONE_JS, timeout=timeout_s * 1000, polling=20)
        except Exception as exc:
            self.errors.append(f"{what}: no repaint within {timeout_s} s ({type(exc).__name__})")
            return
        result = await page.evaluate(RESULT_JS)
        self.latencies.append({"action": what, "ms": result["ms"]})

    async def round(self, timeout_s: float) -> None:
        page = self.page
        handle = page.locator(".noUi-handle").nth(1)
        for _ in range(1 + self.index % 3):
            if not 0 <= self.head + self.direction < self.n_heads:
                self.direction = -self.direction
            key = "ArrowRight" if self.direction > 0 else "ArrowLeft"
            await handle.focus()
            await self._measure("head", lambda key=key: handle.press(key), timeout_s)
            self.head += self.direction
        if self.index % 2 and len(self.doc_ids) > 1:
            button = page.get_by_role("button", name="▶")
            await self._measure("document", button.click, timeout_s)
            self.doc_index = (self.doc_index + 1) % len(self.doc_ids)
        tokens = page.locator(".attviz-token")
        count = await tokens.count()
        if count:
            token = tokens.nth((3 * self.index + 1 + 5 * self.rounds) % min(count, 20))  # another one each round
            await self._measure("token", token.click, timeout_s)
        self.rounds += 1

    async def check_state(self) -> list[str]:
        """What this page shows against what this session chose (another session's change = a leak)."""
        page = self.page
        await page.wait_for_timeout(300)
        head = int(float(await page.locator(".noUi-handle").nth(1).get_attribute("aria-valuenow") or -1))
        doc = await page.get_by_label("Document", exact=True).first.input_value()
        leaks = []
        if head != self.head:
            leaks.append(f"session {self.index}: head {head}, but it chose {self.head}")
        if self.doc_ids and doc != self.doc_ids[self.doc_index]:
            leaks.append(f"session {self.index}: document {doc!r}, but it chose {self.doc_ids[self.doc_index]!r}")
        return leaks

    async def close(self) -> None:
        if self.context is not None:
            await self.context.close()


# -- the run ----------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


async def drive(url: str, sessions: int, rounds: int, max_seconds: float, timeout_s: float) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    host = urlparse(url).netloc
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = [Session(i, host) for i in range(sessions)]
        try:
            start = time.monotonic()
            opened = await asyncio.gather(*(s.open(browser, url, timeout_s) for s in pages), return_exceptions=True)
            for session, result in zip(pages, opened, strict=True):
                if isinstance(result, BaseException):
                    session.errors.append(f"open: {type(result).__name__}: {result}")
            open_all_s = time.monotonic() - start
            live = [s for s, r in zip(pages, opened, strict=True) if not isinstance(r, BaseException)]
            start = time.monotonic()
            done_rounds = 0
            for _ in range(rounds):
                if time.monotonic() - start > max_seconds:
                    break
                await asyncio.gather(*(s.round(timeout_s) for s in live))
                done_rounds += 1
            interact_s = time.monotonic() - start
            leaks = [leak for s in live for leak in await s.check_state()]
        finally:
            for session in pages:
                await session.close()
            await browser.close()
    return {
        "pages": pages,
        "open_all_s": open_all_s,
        "interact_s": interact_s,
        "rounds": done_rounds,
        "leaks": leaks,
    }


def run(sessions: int, rounds: int, max_seconds: float, timeout_s: float = 300, log: Any = print) -> dict[str, Any]:
    server = Server()
    try:
        server.wait()
        memory = Memory(server.process.pid)
        time.sleep(1.0)
        rss_before = memory.now()
        log(f"server up on port {server.port} (RSS {rss_before:.0f} MB); opening {sessions} sessions ...")
        driven = asyncio.run(drive(server.url, sessions, rounds, max_seconds, timeout_s))
        time.sleep(5.0)
        rss_after = memory.now()
        memory.stop()
        server_errors = server.errors()
        code = server.stop()
        leftover = sorted(p.name for p in server.tmp.iterdir() if p.name.startswith("attviz-upload-"))
    finally:
        server.stop()
        server.cleanup()
    pages: list[Session] = driven["pages"]
    latencies = [entry["ms"] for s in pages for entry in s.latencies]
    by_action: dict[str, list[float]] = {}
    for s in pages:
        for entry in s.latencies:
            by_action.setdefault(entry["action"], []).append(entry["ms"])
    opens = [s.open_s for s in pages if s.open_s is not None]
    page_errors = [f"session {s.index}: {e}" for s in pages for e in s.errors]
    remote = [u for s in pages for u in s.remote]
    return {
        "sessions": sessions,
        "rounds": driven["rounds"],
        "interactions": len(latencies),
        "open_s": {"median": statistics.median(opens) if opens else None, "max": max(opens, default=None)},
        "open_all_s": driven["open_all_s"],
        "interact_s": driven["interact_s"],
        "latency_ms": {
            "p50": percentile(latencies, 0.5),
            "p95": percentile(latencies, 0.95),
            "max": max(latencies, default=None),
        },
        "latency_by_action_ms": {
            action: {"n": len(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95)}
            for action, v in by_action.items()
        },
        "errors": page_errors + [f"server log: {line}" for line in server_errors],
        "leaks": driven["leaks"],
        "remote_requests": len(remote),
        "remote_urls": sorted(set(remote))[:10],
        "sessions_with_remote": sum(1 for s in pages if s.remote),
        "rss_mb": {"before": rss_before, "peak": memory.peak(), "after": rss_after},
        "server_exit": code,
        "server_stop_s": server.stop_s,
        "upload_folders_left": leftover,
    }


def report(result: dict[str, Any]) -> str:
    lat, rss = result["latency_ms"], result["rss_mb"]
    fmt = lambda v: "–" if v is None else f"{v:,.0f}"  # noqa: E731
    lines = [
        f"sessions: {result['sessions']}, rounds: {result['rounds']}, interactions: {result['interactions']}",
        f"open: median {result['open_s']['median'] or 0:.1f} s, max {result['open_s']['max'] or 0:.1f} s "
        f"(all {result['sessions']} pages at once: {result['open_all_s']:.1f} s); interactions took "
        f"{result['interact_s']:.1f} s",
        f"latency ms: p50 {fmt(lat['p50'])}, p95 {fmt(lat['p95'])}, max {fmt(lat['max'])}",
    ]
    for action, v in result["latency_by_action_ms"].items():
        lines.append(f"  {action}: n={v['n']}, p50 {fmt(v['p50'])}, p95 {fmt(v['p95'])}")
    lines += [
        f"server RSS MB: before {rss['before']:.0f}, peak {rss['peak']:.0f}, 5 s after the pages closed "
        f"{rss['after']:.0f}",
        f"errors: {len(result['errors'])}; leaks: {len(result['leaks'])}; non-local requests: "
        f"{result['remote_requests']} (from {result['sessions_with_remote']} sessions); server exit: "
        f"{result['server_exit']} after SIGTERM ({result['server_stop_s'] or 0:.1f} s); upload folders left: "
        f"{len(result['upload_folders_left'])}",
    ]
    lines += [f"  {e}" for e in (result["errors"] + result["leaks"])[:20]]
    lines += [f"  non-local: {u}" for u in result["remote_urls"]]
    return "\n".join(lines)


def failures(result: dict[str, Any], max_rss_mb: float) -> list[str]:
    out = []
    if result["errors"]:
        out.append(f"{len(result['errors'])} errors")
    if result["leaks"]:
        out.append(f"{len(result['leaks'])} cross-session leaks")
    if result["remote_requests"]:
        out.append(f"{result['remote_requests']} non-local requests")
    if result["rss_mb"]["peak"] > max_rss_mb:
        out.append(f"peak RSS {result['rss_mb']['peak']:.0f} MB over {max_rss_mb:.0f} MB")
    if result["interactions"] == 0:
        out.append("no interaction measured")
    if result["server_exit"] != 0:
        out.append(f"the server exited with {result['server_exit']} on SIGTERM")
    if result["upload_folders_left"]:
        out.append(f"upload folders left after shutdown: {result['upload_folders_left']}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 4 sessions, 2 rounds, at most 20 s of rounds")
    parser.add_argument("--sessions", type=int, default=None, help="concurrent browser sessions (default 20)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of interactions per session (default 4)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop starting rounds after this long")
    parser.add_argument("--timeout", type=float, default=120, help="s to wait for a page or an interaction")
    parser.add_argument("--max-rss-mb", type=float, default=6000, help="fail above this peak server RSS")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    settings = plan(args)
    result = run(settings["sessions"], settings["rounds"], settings["max_seconds"], args.timeout)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    problems = failures(result, args.max_rss_mb)
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
