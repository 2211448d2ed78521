"""Corpus statistics (issue #13): ``attviz stats`` on a store of N MiniLM documents, against reading it.

Run: ``python benchmarks/corpus_stats.py [--docs 5000] [--rounds 3] [--json OUT]``, or ``--quick`` (CI:
60 documents, 2 rounds).

The store: N documents recombining the demo sentences (``attviz/demo/texts.jsonl``, split into 221
sentences; 3–6 per document, seeded, so about 60–150 tokens; the label of a document is its first sentence's),
extracted once with the bundled all-MiniLM-L6-v2 as matrices (``attention="matrices"``, the default
float16 lz4 store) and cached in the benchmarks cache folder (``$ATTVIZ_CACHE`` or ``~/.cache/attviz``,
``bench-stats-<N>-<digest>.zarr``; ``--store-dir`` elsewhere). The extraction is timed when it runs, but
it is no target.

Every measurement is a fresh ``python`` process (this script with ``--child``; the stats step calls the
command line's ``main``): its wall time seen from the parent (interpreter start and imports included) and its
peak RSS (``VmHWM``, which it reports itself). In every round, in
this order:

a. **read** (the I/O bound, baseline): open the store and ``np.asarray(doc.attention.values)`` for every
   document, nothing kept;
b. **stats, cold**: the store's ``stats/`` group is removed (not timed), then ``attviz stats STORE -o
   tables/`` (the whole command: statistics of every document, written to the store's cache, and every
   CSV table of the default grouping, the gold labels);
c. **stats, cached**: the same command again (the statistics come from ``stats/``; the tables are
   computed again).

Targets (issue #13): (b) peak RSS < 1/4 of the store's decompressed attention (float16 L·H·T²·2 summed
over documents) and < 2 GB; (b) wall time ≤ 2× (a); (c) ≤ 5 s. The per-round ratio (b)/(a) gives the
median and min–max; a target is **met** only when every round is on its right side, **missed** when every
round is on the wrong side, else **within noise** (``(1 round)`` is added when there is no spread).
The disk here is the page cache: the store is read right after it was written or read (it fits in memory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RSS_SHARE, RSS_LIMIT, TIME_RATIO, CACHED_SECONDS = 0.25, 2e9, 2.0, 5.0
SEED = 0


def say(line: str = "") -> None:
    print(line, flush=True)


def plan(args: argparse.Namespace) -> dict[str, int]:
    return {
        "docs": args.docs or (60 if args.quick else 5000),
        "rounds": args.rounds or (2 if args.quick else 3),
    }


# -- the store --------------------------------------------------------------------------------------
def sentences() -> list[tuple[str, str]]:
    """The demo texts split into sentences ``(sentence, its record's label)``: 221, 28 tokens on average."""
    from attviz.demo import demo_records

    return [
        (sentence, record["label"])
        for record in demo_records()
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"“])", record["text"].strip())
        if sentence
    ]


def documents(n: int, seed: int = SEED) -> list[dict[str, str]]:
    """``n`` records (id, text, label): 3–6 demo sentences each, seeded; the label is the first one's."""
    pool = sentences()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        picks = rng.choice(len(pool), size=int(rng.integers(3, 7)), replace=False)
        out.append({"id": f"b{i:06d}", "text": " ".join(pool[p][0] for p in picks), "label": pool[picks[0]][1]})
    return out


def cache_folder() -> Path:
    from attviz.demo import cache_dir

    return cache_dir()


def store_for(records: Sequence[dict[str, str]], folder: Path) -> tuple[Path, float | None]:
    """The cached store of ``records`` (extracted now when missing) and the extraction's seconds (None
    when it was cached)."""
    import attviz
    from attviz.store import QK_FORMAT_VERSION, is_store

    digest = hashlib.sha256(
        json.dumps([list(r.values()) for r in records]).encode() + f"{QK_FORMAT_VERSION}matrices".encode()
    ).hexdigest()[:12]
    path = folder / f"bench-stats-{len(records)}-{digest}.zarr"
    if is_store(path):
        return path, None
    folder.mkdir(parents=True, exist_ok=True)
    say(f"extracting {len(records)} documents to {path} (once; cached for later runs)")
    start = time.perf_counter()
    attviz.extract(
        [r["text"] for r in records],
        ids=[r["id"] for r in records],
        labels=[r["label"] for r in records],
        store=path,
        overwrite=path.exists(),
        attention="matrices",
        progress=sys.stderr.isatty(),
    )
    return path, time.perf_counter() - start


def attention_bytes(path: Path) -> tuple[int, int, int]:
    """``(decompressed float16 attention bytes, bytes on disk, tokens)`` of a store."""
    from attviz.store import open_store

    corpus = open_store(path)
    layers, heads = int(corpus.attrs["layers"]), int(corpus.attrs["heads"])
    tokens = corpus.table["n_tokens"].to_numpy(dtype=np.int64)
    disk = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and "stats" not in f.parts)
    return int((layers * heads * tokens**2 * 2).sum()), disk, int(tokens.sum())


# -- the measured steps, each a fresh process ----------------------------------------------------------
def peak_rss_self() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` of /proc/self/status, else ``ru_maxrss``.

    Not ``ru_maxrss`` of ``wait4`` in the parent: Linux carries ``ru_maxrss`` over fork and exec, so a
    child would report at least the benchmark's own size (the model it extracted with); see
    ``benchmarks/qk.py``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run_child(*arguments: str) -> dict[str, Any]:
    """This script as a fresh process (``--child ...``): wall seconds seen from here, and the JSON its
    last stdout line reports (its peak RSS and its own timings)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


def read_step(store: Path) -> dict[str, Any]:
    return run_child("read", str(store))


def stats_step(store: Path, tables: Path) -> dict[str, Any]:
    return run_child("stats", str(store), str(tables))


def child(step: str, store: str, tables: str | None = None) -> None:
    """One step in this process; prints ``{"rss": ..., "step_seconds": ...}`` as the last stdout line.

    ``read``: every document's attention read from disk once (``np.asarray(doc.attention.values)``);
    ``stats``: ``attviz stats STORE -o TABLES --quiet`` through the command line's ``main``."""
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if step == "read":
        from attviz.store import open_store

        corpus = open_store(store)
        corpus.cache_size = 0
        values = 0
        for doc in corpus:
            values += np.asarray(doc.attention.values).size
        out["values"] = values
    else:
        from attviz.cli import main as attviz_main

        code = attviz_main(["stats", store, "-o", str(tables), "--quiet"])
        if code:
            raise SystemExit(code)
    out.update(step_seconds=time.perf_counter() - start, rss=peak_rss_self())
    print(json.dumps(out))


# -- verdicts and the table ------------------------------------------------------------------------
def verdict(values: Sequence[float], target: float, *, below: bool = True) -> str:
    """``met`` when every round's value is on the right side of ``target`` (≤ with ``below``), ``missed``
    when every one is on the wrong side, else ``within noise``; ``(1 round)`` without a spread."""
    values = [v for v in values if v == v]
    if not values:
        return "no data"
    good = [v <= target if below else v >= target for v in values]
    out = "met" if all(good) else "missed" if not any(good) else "within noise"
    return f"{out} (1 round)" if len(values) == 1 else out


def spread(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def summarise(rounds: list[dict[str, Any]], attention: int) -> dict[str, Any]:
    read = [r["read"]["seconds"] for r in rounds]
    cold = [r["cold"]["seconds"] for r in rounds]
    cached = [r["cached"]["seconds"] for r in rounds]
    rss = [r["cold"]["rss"] for r in rounds]
    ratios = [c / r for c, r in zip(cold, read, strict=True)]
    rss_target = min(RSS_SHARE * attention, RSS_LIMIT)
    return {
        "read_seconds": read,
        "cold_seconds": cold,
        "cached_seconds": cached,
        "cold_rss": rss,
        "read_rss": [r["read"]["rss"] for r in rounds],
        "cached_rss": [r["cached"]["rss"] for r in rounds],
        "ratio": ratios,
        "rss_target": rss_target,
        "verdicts": {
            "cold peak RSS < min(1/4 attention, 2 GB)": verdict(rss, rss_target),
            "cold time ≤ 2× read": verdict(ratios, TIME_RATIO),
            "cached time ≤ 5 s": verdict(cached, CACHED_SECONDS),
        },
    }


def table(result: dict[str, Any]) -> str:
    s = result["summary"]
    median = statistics.median
    lines = [
        f"store: {result['docs']:,} documents, {result['tokens']:,} tokens, attention {mb(result['attention_bytes'])} "
        f"decompressed (float16), {mb(result['disk_bytes'])} on disk; {result['rounds']} round(s)",
        "",
        "| step | wall s (median, min–max) | peak RSS (median) | × read |",
        "|---|---:|---:|---:|",
        f"| (a) read every document's attention | {spread(s['read_seconds'])} | {mb(median(s['read_rss']))} | 1.00 |",
        f"| (b) `attviz stats STORE -o tables/`, cold | {spread(s['cold_seconds'])} | {mb(median(s['cold_rss']))} "
        f"| {spread(s['ratio'])} |",
        f"| (c) the same again, cached | {spread(s['cached_seconds'])} | {mb(median(s['cached_rss']))} | "
        f"{median(s['cached_seconds']) / median(s['read_seconds']):.2f} |",
        "",
        "| target | measured | verdict |",
        "|---|---:|---|",
        f"| (b) peak RSS < {mb(s['rss_target'])} (min of 1/4 attention, 2 GB) | max {mb(max(s['cold_rss']))} | "
        f"{s['verdicts']['cold peak RSS < min(1/4 attention, 2 GB)']} |",
        f"| (b) ≤ 2× (a) | {spread(s['ratio'])} | {s['verdicts']['cold time ≤ 2× read']} |",
        f"| (c) ≤ 5 s | {spread(s['cached_seconds'])} | {s['verdicts']['cached time ≤ 5 s']} |",
    ]
    if result.get("extract_seconds") is not None:
        lines.append(f"\nextraction (once, not a target): {result['extract_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: 60 documents, 2 rounds")
    parser.add_argument("--docs", type=int, default=None, help="documents in the store (default 5000)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--store-dir", default=None, help="where the extracted store is cached")
    parser.add_argument("--json", default=None, help="write the figures as JSON here")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return {}
    settings = plan(args)
    records = documents(settings["docs"])
    store, extract_seconds = store_for(records, Path(args.store_dir) if args.store_dir else cache_folder())
    attention, disk, tokens = attention_bytes(store)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="attviz-bench-stats-") as scratch:
        tables = Path(scratch) / "tables"
        for i in range(settings["rounds"]):
            shutil.rmtree(store / "stats", ignore_errors=True)  # not timed: (b) starts without a cache
            read = read_step(store)
            cold = stats_step(store, tables)
            if not (store / "stats").is_dir():
                raise RuntimeError("attviz stats wrote no stats/ group into the store")
            cached = stats_step(store, tables)
            say(
                f"round {i + 1}: read {read['seconds']:.2f} s, stats cold {cold['seconds']:.2f} s "
                f"({mb(cold['rss'])} peak), cached {cached['seconds']:.2f} s"
            )
            rounds.append({"read": read, "cold": cold, "cached": cached})
        written = sorted(p.name for p in tables.glob("*.csv"))
    result = {
        "docs": settings["docs"],
        "rounds": settings["rounds"],
        "tokens": tokens,
        "attention_bytes": attention,
        "disk_bytes": disk,
        "extract_seconds": extract_seconds,
        "tables": written,
        "summary": summarise(rounds, attention),
        "cpus": os.cpu_count(),
    }
    say()
    say(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
