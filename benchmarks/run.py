"""All of attviz's benchmarks in one run, each next to its baseline: one table, one JSON file.

    python benchmarks/run.py                  # full run (by hand; BertViz at 512 tokens alone takes ~1 min)
    python benchmarks/run.py --quick          # small sizes (CI)
    python benchmarks/run.py --only export page --json out.json

Sections: ``extraction`` (benchmarks/extraction.py: attviz extract vs a bare batched forward pass vs
the original AttViz's naive loop), ``export`` (the static HTML export vs BertViz's ``head_view`` on
the identical attention), ``page`` (time until the page is ready in headless Chromium) and
``explorer`` (benchmarks/explorer.py: a head change at 512 tokens, server side and in Chromium).
A section whose tool is missing (bertviz, attviz.export, Chromium) is skipped with a line saying so;
a section that fails is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks import bertviz_baseline as bv  # noqa: E402
from benchmarks import pages  # noqa: E402
from benchmarks.pages import CHROMIUM, READY_DEFINITION  # noqa: E402

SECTIONS = ("extraction", "export", "page", "explorer")


class Skip(Exception):
    """A section cannot run here (a tool is missing); not a failure."""


# -- table ---------------------------------------------------------------------------------------
def fraction(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if ratio <= 0:
        return "0"
    return f"1/{1 / ratio:,.0f}" if ratio < 0.5 else f"{ratio:.2f}×"


def row(
    section: str, what: str, value: str, baseline: str = "—", ratio: str = "—", target: str = "", ok: bool | None = None
) -> dict[str, Any]:
    status = "" if ok is None else ("met" if ok else "MISSED")
    return {
        "section": section,
        "what": what,
        "attviz": value,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "status": status,
    }


def render_table(rows: list[dict[str, Any]]) -> str:
    columns = ["what", "attviz", "baseline", "ratio", "target", "status"]
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    lines: list[str] = []
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            lines += ["", f"[{section}]", "  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
        cells = [str(r[c]).ljust(widths[c]) if c == "what" else str(r[c]).rjust(widths[c]) for c in columns]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    out = ["| section | measurement | attviz | baseline | ratio | target | |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        out.append(
            f"| {r['section']} | {r['what']} | {r['attviz']} | {r['baseline']} | {r['ratio']} | {r['target']} "
            f"| {r['status']} |"
        )
    return "\n".join(out)


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB" if n < 1e8 else f"{n / 1e6:,.0f} MB"


def secs(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


# -- documents -------------------------------------------------------------------------------------
_CORPORA: dict[int, Any] = {}


def minilm_corpus(tokens: int):
    """The bundled MiniLM over the demo texts joined, truncated to ``tokens`` (benchmarks/explorer.py's)."""
    if tokens not in _CORPORA:
        from benchmarks.explorer import long_corpus

        _CORPORA[tokens] = long_corpus(tokens)
    return _CORPORA[tokens]


def random_bert_corpus(tokens: int):
    """A random-weight BERT of MiniLM's shape (6 layers × 12 heads) with ``tokens`` positions, same texts."""
    from attviz.demo import demo_records
    from attviz.extract import extract
    from benchmarks.extraction import random_bert

    model, tokenizer = random_bert("minilm", positions=tokens)
    text = " ".join(r["text"] for r in demo_records())
    return extract([text], model=model, tokenizer=tokenizer, ids=["long"], max_length=tokens, progress=False)


def export_module():
    import importlib
    import importlib.util

    if importlib.util.find_spec("attviz.export") is None:
        raise Skip("attviz.export not available yet")
    return importlib.import_module("attviz.export")  # an export that fails to import is a failure


# -- sections --------------------------------------------------------------------------------------
def run_extraction(quick: bool) -> tuple[dict, list[dict]]:
    from benchmarks import extraction

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        result = extraction.main(["--quick"] if quick else [])
    modes = result["modes"]

    def find(*words: str, without: str | None = None) -> tuple[str, dict]:
        for name, value in modes.items():
            if all(w in name for w in words) and (without is None or without not in name):
                return name, value
        raise KeyError(f"no extraction mode named like {words} in {list(modes)}")

    store_mode, store = find("store", without="no ")
    codec = result.get("default_compression")
    store_name = store_mode.replace("(store)", f"(store, default = {codec})") if codec else store_mode
    _, bare = find("bare")
    _, naive = find("naive")
    tag = f"{result['documents']} docs, {result['tokens']:,} tokens"
    rows = [
        row(
            "extraction",
            f"{store_name} vs bare batched forward ({tag})",
            f"{store['docs_per_s']} docs/s",
            f"{bare['docs_per_s']} docs/s",
            f"{store['vs_bare_forward']:.2f}×",
            "≥ 0.8×",
            store["vs_bare_forward"] >= 0.8,
        ),
        row(
            "extraction",
            f"{store_name} vs naive 1-doc loop, 2 passes",
            f"{store['docs_per_s']} docs/s",
            f"{naive['docs_per_s']} docs/s",
            f"{store['vs_naive_loop']:.2f}×",
            "≥ 3×",
            store["vs_naive_loop"] >= 3,
        ),
    ]
    for name, value in modes.items():
        if "token vectors" in name:
            rows.append(
                row(
                    "extraction",
                    f"{name} vs bare batched forward",
                    f"{value['docs_per_s']} docs/s",
                    f"{bare['docs_per_s']} docs/s",
                    f"{value['vs_bare_forward']:.2f}×",
                    "≥ 0.5× (GPU target)",
                    value["vs_bare_forward"] >= 0.5,
                )
            )
        elif name != store_mode and "bare" not in name and "naive" not in name:
            rows.append(
                row(
                    "extraction",
                    f"{name} vs bare / vs naive",
                    f"{value['docs_per_s']} docs/s",
                    "",
                    f"{value['vs_bare_forward']:.2f}× / {value['vs_naive_loop']:.2f}×",
                )
            )
    raw = result.get("raw_float16_bytes_per_doc")
    by_compression = result.get("store_bytes_per_doc_by_compression") or {"lz4": result.get("store_bytes_per_doc")}
    for compression, stored in by_compression.items():
        if stored and raw:
            rows.append(
                row(
                    "extraction",
                    f"store bytes per document ({compression}) vs raw float16",
                    mb(stored),
                    mb(raw),
                    fraction(stored / raw),
                )
            )
    if result.get("disk_bound_docs_per_s"):
        rows.append(
            row(
                "extraction",
                f"{store_name} vs the disk bound (store bytes/doc ÷ measured disk write rate "
                f"{result['disk_write_bytes_per_s'] / 1e9:.2f} GB/s)",
                f"{store['docs_per_s']} docs/s",
                f"{result['disk_bound_docs_per_s']} docs/s",
                f"{result['store_vs_disk_bound']:.2f}×",
                "≥ 0.8× (GPU target; the CPU is compute-bound)",
            )
        )
    if result.get("file_create_ms"):
        costs = result["file_create_ms"]
        rows.append(
            row(
                "extraction",
                "creating a folder + a file where the stores were written (a store makes 2 + 3 a document); "
                "other candidate folders",
                f"{costs[result['workdir']]:.3f} ms",
                ", ".join(f"{ms:.3f} ms" for where, ms in costs.items() if where != result["workdir"]) or "—",
            )
        )
    if result.get("uint8_max_abs_error") is not None:
        rows.append(
            row(
                "extraction",
                "uint8 store: max abs error vs float16 store (stated bound)",
                f"{result['uint8_max_abs_error']:.5f}",
                f"{result.get('uint8_error_bound', float('nan')):.5f}",
            )
        )
    return result, rows


def run_export(sizes: list[int], repeat: int) -> tuple[list[dict], list[dict]]:
    export = export_module()
    have_bertviz = bv.available()
    results, rows = [], []
    for tokens in sizes:
        corpus = minilm_corpus(tokens)
        attention = corpus[0].attention
        n = int(attention.sizes["query"])
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            html = export.export_html(corpus)
            times.append(time.perf_counter() - start)
        entry: dict[str, Any] = {"tokens": n, "attviz_bytes": len(html.encode()), "attviz_s": statistics.median(times)}
        start = time.perf_counter()
        entry["attviz_matrix_bytes"] = len(export.export_html(corpus, quantization="matrix").encode())
        entry["attviz_matrix_s"] = time.perf_counter() - start
        if have_bertviz:
            bv_times, size = [], 0
            for _ in range(1 if n >= 256 else repeat):
                page, seconds = bv.head_view_html(attention)
                size = len(page.encode())
                del page
                bv_times.append(seconds)
            entry.update(bertviz_bytes=size, bertviz_s=statistics.median(bv_times))
            entry["size_ratio"] = entry["attviz_bytes"] / size
            entry["time_ratio"] = entry["attviz_s"] / entry["bertviz_s"]
        results.append(entry)
        at512 = n == 512 and have_bertviz
        for what, key, show, ratio, limit in (
            (f"file size, {n} tokens (MiniLM 6×12)", "bytes", mb, "size_ratio", 50),
            (f"generation time, {n} tokens", "s", secs, "time_ratio", 20),
        ):
            baseline = show(entry[f"bertviz_{key}"]) if have_bertviz else "bertviz not installed"
            target, ok = (f"≤ 1/{limit}", entry[ratio] <= 1 / limit) if at512 else ("", None)
            rows.append(
                row("export", what, show(entry[f"attviz_{key}"]), baseline, fraction(entry.get(ratio)), target, ok)
            )
        matrix_bytes = entry["attviz_matrix_bytes"]
        rows.append(
            row(
                "export",
                f"file size, {n} tokens, --quantization matrix (one scale per head's matrix)",
                mb(matrix_bytes),
                mb(entry["bertviz_bytes"]) if have_bertviz else "bertviz not installed",
                fraction(matrix_bytes / entry["bertviz_bytes"]) if have_bertviz else None,
            )
        )
    if not have_bertviz:
        print("  export: bertviz is not installed (pip install bertviz): attviz measured alone", flush=True)
    return results, rows


def _browser():
    if not os.path.isfile(CHROMIUM):
        raise Skip(f"no Chromium at {CHROMIUM} (set ATTVIZ_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise Skip("playwright is not installed") from exc
    return sync_playwright


def run_page(attviz_sizes: list[int], bertviz_sizes: list[int], repeat: int) -> tuple[dict, list[dict]]:
    sync_playwright = _browser()
    results: dict[str, Any] = {"definition": READY_DEFINITION, "attviz": [], "bertviz": []}
    rows: list[dict] = []
    site = Path(tempfile.mkdtemp(prefix="attviz-bench-site-"))
    todo: list[tuple[str, int, str, str, Any]] = []  # (who, tokens, file, ready_js, arg)
    notes: list[str] = []
    layers: dict[int, str] = {}
    try:
        try:
            export = export_module()
        except Skip as exc:
            notes.append(f"attviz page: {exc}")
            export = None
        for tokens in attviz_sizes if export else []:
            corpus = minilm_corpus(tokens) if tokens <= 512 else random_bert_corpus(tokens)
            html = export.export_html(corpus)
            name = f"attviz-{tokens}.html"
            (site / name).write_text(html, encoding="utf-8")
            todo.append(("attviz", tokens, name, pages.attviz_ready_js(html), None))
            layers[tokens] = pages.exported_layers(html)
        if bertviz_sizes and not bv.available():
            notes.append("BertViz page: bertviz is not installed (pip install bertviz)")
        elif bertviz_sizes:
            try:
                vendor = bv.fetch_scripts()
            except RuntimeError as exc:
                notes.append(f"BertViz page: {exc}")
                vendor = None
            for tokens in bertviz_sizes if vendor else []:
                for file in vendor.iterdir():
                    shutil.copy(file, site / file.name)
                attention = minilm_corpus(tokens)[0].attention
                fragment, _ = bv.head_view_html(attention)
                name = f"bertviz-{tokens}.html"
                (site / name).write_text(bv.page(bv.localize(fragment, "BASE_URL")), encoding="utf-8")
                arg = {"lines": int(attention.sizes["head"]) * tokens * tokens, "heads": int(attention.sizes["head"])}
                todo.append(("BertViz", tokens, name, bv.BERTVIZ_READY_JS, arg))
        for note in notes:
            print("  " + note, flush=True)
        if not todo:
            raise Skip("; ".join(notes) or "nothing to load")
        with pages.StaticServer(site) as server, sync_playwright() as p:
            for file in site.glob("bertviz-*.html"):
                file.write_text(file.read_text(encoding="utf-8").replace("BASE_URL", server.url), encoding="utf-8")
            browser = p.chromium.launch(executable_path=CHROMIUM, args=pages.CHROMIUM_ARGS)
            try:
                for who, tokens, name, ready_js, arg in todo:
                    runs = [pages.page_ready(browser, f"{server.url}/{name}", ready_js, arg) for _ in range(repeat)]
                    entry = {
                        "tokens": tokens,
                        "bytes": (site / name).stat().st_size,
                        "painted_ms": statistics.median(r["painted_ms"] for r in runs),
                        "ready_ms": statistics.median(r["ready_ms"] for r in runs),
                        "requests": runs[0]["requests"],
                        "remote_requests": runs[0]["remote_requests"],
                    }
                    if who == "attviz":
                        entry["layers"] = layers.get(tokens, "")
                    results["attviz" if who == "attviz" else "bertviz"].append(entry)
                    print(f"  page: {who} {tokens} tokens ready in {entry['painted_ms'] / 1000:.2f} s", flush=True)
            finally:
                browser.close()
    finally:
        shutil.rmtree(site, ignore_errors=True)
    bertviz_by_tokens = {e["tokens"]: e for e in results["bertviz"]}
    for e in results["attviz"]:
        target = {512: 3.0, 2048: 10.0}.get(e["tokens"])
        model = "MiniLM" if e["tokens"] <= 512 else "random BERT 6×12"
        base = bertviz_by_tokens.get(e["tokens"])
        shown = f", {e['layers']}" if e.get("layers") else ""
        rows.append(
            row(
                "page",
                f"attviz export ready, {e['tokens']} tokens ({model}{shown}, {mb(e['bytes'])}, "
                f"{e['requests']} request{'s' if e['requests'] != 1 else ''})",
                secs(e["painted_ms"] / 1000),
                f"BertViz {secs(base['painted_ms'] / 1000)}" if base else "",
                fraction(e["painted_ms"] / base["painted_ms"]) if base else "",
                f"< {target:.0f} s" if target else "",
                e["painted_ms"] / 1000 < target if target else None,
            )
        )
    for e in results["bertviz"]:
        rows.append(
            row(
                "page",
                f"BertViz head_view ready, {e['tokens']} tokens ({mb(e['bytes'])}, "
                f"{e['requests']} requests, scripts local)",
                "",
                secs(e["painted_ms"] / 1000),
            )
        )
    results["notes"] = notes
    return results, rows


def run_explorer(tokens: int, rounds: int, browser: bool) -> tuple[dict, list[dict]]:
    from benchmarks import explorer

    corpus = minilm_corpus(tokens)
    n = corpus[0].n_tokens
    server = explorer.server_side(corpus, rounds)
    result: dict[str, Any] = {"tokens": n, "server_ms": server}
    baseline = server.get("baseline: isel + sum")
    rows = []
    for tab, ms in server.items():
        if tab.startswith("baseline"):
            continue
        rows.append(
            row(
                "explorer",
                f"head change, {n} tokens, server side, tab {tab!r} (median)",
                f"{ms:.1f} ms",
                f"{baseline:.2f} ms" if baseline is not None else "",
                "",
                "≤ 100 ms",
                ms <= 100,
            )
        )
    if browser:
        _browser()
        result["browser_ms"] = explorer.browser_side(corpus, rounds, chromium=CHROMIUM)
        rows.append(
            row(
                "explorer",
                f"head change, {n} tokens, key press → text view recoloured in Chromium",
                f"{result['browser_ms']:.0f} ms",
                "",
                "",
                "≤ 500 ms",
                result["browser_ms"] <= 500,
            )
        )
    return result, rows


# -- main ------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    return {
        "date": _dt.date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def plan(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    return {
        "export_sizes": args.export_tokens or ([64] if quick else [64, 128, 256, 512]),
        "export_repeat": 1 if quick else 3,
        "page_attviz": args.page_tokens or ([128] if quick else [128, 512, 2048]),
        "page_bertviz": args.bertviz_page_tokens
        if args.bertviz_page_tokens is not None
        else ([64] if quick else [64, 128]),
        "page_repeat": 1 if quick else 3,
        "explorer_tokens": args.explorer_tokens,
        "explorer_rounds": 1 if quick else 3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (CI)")
    parser.add_argument("--json", type=Path, default=None, help="write every result here")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run these sections")
    parser.add_argument("--export-tokens", type=int, nargs="+", default=None)
    parser.add_argument("--page-tokens", type=int, nargs="+", default=None, help="attviz export pages")
    parser.add_argument("--bertviz-page-tokens", type=int, nargs="*", default=None)
    parser.add_argument("--explorer-tokens", type=int, default=512)
    parser.add_argument("--no-browser", action="store_true", help="skip everything that needs Chromium")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    settings = plan(args)
    began = time.perf_counter()
    info = machine()
    results: dict[str, Any] = {
        "machine": info,
        "quick": args.quick,
        "settings": settings,
        "skipped": {},
        "failed": {},
        "rows": [],
    }
    print(
        f"attviz benchmarks {'(quick) ' if args.quick else ''}— {info['date']}, {info['cores']} cores, "
        f"torch {info['torch']} ({info['threads']} threads), GPU: {info['gpu'] or 'none'}",
        flush=True,
    )
    runners = {
        "extraction": lambda: run_extraction(args.quick),
        "export": lambda: run_export(settings["export_sizes"], settings["export_repeat"]),
        "page": lambda: run_page(settings["page_attviz"], settings["page_bertviz"], settings["page_repeat"]),
        "explorer": lambda: run_explorer(settings["explorer_tokens"], settings["explorer_rounds"], not args.no_browser),
    }
    for name in SECTIONS:
        if name not in args.only:
            continue
        if name == "page" and args.no_browser:
            results["skipped"][name] = "--no-browser"
            continue
        start = time.perf_counter()
        print(f"running {name} ...", flush=True)
        try:
            results[name], rows = runners[name]()
            results["rows"] += rows
        except Skip as exc:
            results["skipped"][name] = str(exc)
            print(f"  skipped {name}: {exc}", flush=True)
        except Exception as exc:
            results["failed"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        results.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 1)
    results["duration_s"] = round(time.perf_counter() - began, 1)
    print(render_table(results["rows"]))
    print()
    if "page" in results:
        print(
            f"page ready, from navigation start — attviz: {READY_DEFINITION['attviz']}; "
            f"BertViz: {READY_DEFINITION['BertViz']}"
        )
    for name, why in {**results["skipped"], **{k: "FAILED " + v for k, v in results["failed"].items()}}.items():
        print(f"{name}: {why}")
    per_section = ", ".join(f"{k} {v:.0f} s" for k, v in results.get("section_s", {}).items())
    print(f"total {results['duration_s']:.0f} s ({per_section})")
    if args.markdown:
        print("\n" + markdown_table(results["rows"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
