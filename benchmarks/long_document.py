"""Opening a long document in the explorer (issue #11): wall time and peak RSS, against the old head summary.

Run: ``python benchmarks/long_document.py [--tokens 2048 4096] [--rounds 3] [--json OUT]``, or ``--quick``
(1,024 tokens, 1 round: CI).

1. The document: seeded random attention of all-MiniLM-L6-v2's shape, 6 layers × 12 heads × T × T
   float16, each row the softmax of N(0, 2²) logits (computed one head at a time), with a
   ``[CLS] w0 … [SEP]`` token table, saved with attviz's own API (``Document`` / ``attention_array`` /
   ``token_frame`` → ``Corpus.save``) as a zarr store. It is built once per size and seed and reused
   while it exists (``--store-dir``, default the temporary folder; ``--rebuild`` to build it again).
2. Each measurement runs in a fresh ``python`` process (``--child``), through the explorer's public
   API only: ``e = attviz.explore(store)``, then ``e.matrix`` and ``e.token_vector`` (**open**), then
   ``e.head_summary`` (**head summary**). Where the explorer derives only the outputs in ``needed``,
   the open asks for everything but the head summary and the summary is then asked for (what showing
   the model view does); otherwise the summary is computed at open and "open" includes it. Wall
   times by ``time.perf_counter``; peak RSS is the process's ``ru_maxrss`` (a high-water mark: the
   summary's peak includes the open's).
3. The baseline (``--child --baseline``) is the same process with ``HeadSummary.apply`` computing as
   before issue #11, kept below (:func:`old_head_statistics`): the whole array upcast to
   float32, then whole-array formulas. Everything else is today's attviz, so the ratio isolates the
   head summary. The two processes alternate for ``--rounds`` rounds (new then baseline, then baseline
   then new: the first run of a round may find the store less cached); the table gives the medians
   and the median and min–max of the per-round ratio new / baseline, and checks that both computed
   the very same head summary (bit for bit).

The old head summary needs about 4× the document in float32 (19.1 GB at 4,096 tokens, issue #11):
its run is skipped, and says so, where that is more than 80 % of the memory available
(``MemAvailable``), so the benchmark never takes a shared machine's memory from under others.

Targets (issue #11): open ≤ 5 s and ≤ 2 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LAYERS, HEADS = 6, 12  # all-MiniLM-L6-v2
OPEN_TARGET_S, OPEN_TARGET_BYTES = 5.0, 2e9
#: What opening a document derives when the model view (the head summary) is hidden.
OPEN_OUTPUTS = ("table", "document", "attention", "layer_matrices", "matrix", "head_vectors", "token_vector")
ROOT = Path(__file__).resolve().parents[1]


# -- the document --------------------------------------------------------------------------------
def build_store(path: Path, tokens: int, seed: int = 0) -> Path:
    """The seeded random MiniLM-shaped document (see the module docstring), saved at ``path``."""
    from attviz import Corpus, Document, attention_array, token_frame

    rng = np.random.default_rng(seed)
    values = np.empty((LAYERS, HEADS, tokens, tokens), dtype=np.float16)
    for layer in range(LAYERS):
        for head in range(HEADS):  # one head at a time: 4 bytes × T² of float32 temporaries
            x = rng.standard_normal((tokens, tokens), dtype=np.float32)
            x *= np.float32(2)
            x -= x.max(-1, keepdims=True)
            np.exp(x, out=x)
            x /= x.sum(-1, keepdims=True)
            values[layer, head] = x
    words = [f"w{i}" for i in range(tokens - 2)]
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]]).tolist()
    table = token_frame(
        ["[CLS]", *words, "[SEP]"],
        word=[-1, *range(len(words)), -1],
        start=[0, *starts, 0],
        end=[0, *(s + len(w) for s, w in zip(starts, words, strict=True)), 0],
        special=[True, *[False] * len(words), True],
    )
    doc = Document(id="long", text=" ".join(words), arrays={"self": attention_array(values, table)})
    attrs = {"name": f"random {LAYERS}x{HEADS} softmax attention, {tokens} tokens, seed {seed}"}
    Corpus([doc], attrs=attrs).save(path, overwrite=True)
    return path


def store_for(tokens: int, seed: int, folder: Path, rebuild: bool) -> tuple[Path, float | None]:
    """The store of ``tokens`` tokens (built when missing or ``rebuild``) and the seconds building took."""
    path = folder / f"attviz-long-document-{LAYERS}x{HEADS}-{tokens}-seed{seed}.zarr"
    if path.exists() and not rebuild:
        return path, None
    start = time.perf_counter()
    build_store(path, tokens, seed)
    return path, time.perf_counter() - start


# -- the old head summary (before issue #11), for --baseline ----------------------------------------
def old_head_statistics(a: np.ndarray, qpos: np.ndarray, kpos: np.ndarray, special: np.ndarray) -> dict:
    """attviz.aggregations.heads.head_statistics before issue #11, verbatim: whole-array float32."""
    out: dict[str, np.ndarray] = {}
    total = a.sum(-1, keepdims=True)
    p = a / np.where(total > 0, total, 1)
    logp = np.log(np.where(p > 0, p, 1))
    out["entropy"] = -np.einsum("...qk,...qk->...q", p, logp).mean(-1)
    distance = np.abs(qpos[:, None] - kpos[None, :]).astype(a.dtype)
    out["distance"] = np.einsum("...qk,qk->...q", a, distance).mean(-1)
    out["special"] = (a @ special.astype(a.dtype)).mean(-1)
    square = a.shape[-1] == a.shape[-2]
    for name, offset in (("previous", -1), ("next", 1), ("self", 0)):
        if square and a.shape[-1] > abs(offset):
            out[name] = np.diagonal(a, offset=offset, axis1=-2, axis2=-1).mean(-1)
        else:
            out[name] = np.full(a.shape[:-2], np.nan, dtype=a.dtype)
    return out


def install_baseline() -> None:
    """Make ``HeadSummary.apply`` compute as before issue #11: its ``head_statistics`` replaced by the
    whole array upcast to float32, then :func:`old_head_statistics` (the rest of ``apply`` is unchanged)."""
    from attviz.aggregations import heads

    def whole_array(a: Any, qpos: np.ndarray, kpos: np.ndarray, special: np.ndarray, **_: Any) -> dict:
        return old_head_statistics(np.asarray(a, dtype=np.float32), qpos, kpos, special)

    heads.head_statistics = whole_array


# -- one measurement (in a fresh process) -------------------------------------------------------------
def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(path: str, baseline: bool) -> dict[str, Any]:
    """Open the document as the explorer does and read its outputs (see the module docstring)."""
    import attviz
    from attviz.explorer import Explorer

    if baseline:
        install_baseline()
    out: dict[str, Any] = {"baseline": baseline, "import_peak_bytes": peak_rss()}
    lazy = "needed" in Explorer.param  # the explorer derives only what visible views need
    params = {"needed": set(OPEN_OUTPUTS)} if lazy else {}
    start = time.perf_counter()
    explorer = attviz.explore(path, **params)
    matrix, vector = explorer.matrix, explorer.token_vector
    out["open_s"] = time.perf_counter() - start
    out["open_peak_bytes"] = peak_rss()
    if matrix is None or vector is None:
        raise RuntimeError(f"the explorer showed no matrix or token colour: {explorer.message or explorer.notice}")
    out["matrix_shape"], out["token_vector_shape"] = list(matrix.shape), list(vector.shape)
    start = time.perf_counter()
    if lazy:
        explorer.needed = {*OPEN_OUTPUTS, "head_summary"}
    summary = explorer.head_summary
    out["summary_s"] = time.perf_counter() - start
    out["summary_peak_bytes"] = peak_rss()
    out["summary_at_open"] = not lazy
    if summary is None:
        raise RuntimeError(f"the explorer computed no head summary: {explorer.message}")
    out["summary_shape"] = list(summary.shape)
    out["summary"] = np.asarray(summary.values, dtype=np.float64).ravel().tolist()  # exact for float32
    return out


def measure(path: Path, baseline: bool) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter; its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(path)]
    if baseline:
        command.append("--baseline")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def baseline_need(tokens: int) -> int:
    """About what the old head summary takes: the float16 document read, its float32 copy and three
    float32 temporaries of the same size (19.1 GB measured at 4,096 tokens in issue #11)."""
    float32 = LAYERS * HEADS * tokens * tokens * 4
    return int(4.5 * float32) + (1 << 30)


# -- the report ------------------------------------------------------------------------------------
FIGURES = (  # (label, key, unit)
    ("open: wall time (matrix + token colour)", "open_s", "s"),
    ("open: peak RSS", "open_peak_bytes", "bytes"),
    ("head summary: wall time", "summary_s", "s"),
    ("open + head summary: wall time", "total_s", "s"),
    ("open + head summary: peak RSS", "summary_peak_bytes", "bytes"),
)


def describe(run: dict[str, Any]) -> str:
    """One run in a line."""
    return (
        f"{'baseline' if run['baseline'] else 'new':<8} open {run['open_s']:.2f} s "
        f"(peak {run['open_peak_bytes'] / 1e9:.2f} GB), head summary {run['summary_s']:.2f} s "
        f"(peak {run['summary_peak_bytes'] / 1e9:.2f} GB)"
    )


def fmt(value: float, unit: str) -> str:
    return f"{value:.2f} s" if unit == "s" else f"{value / 1e9:.2f} GB"


def summarize(tokens: int, new: list[dict], old: list[dict]) -> list[dict[str, Any]]:
    """One row per figure: median new, median baseline, median and min–max of the per-round ratio."""
    rows = []
    for runs in (new, old):
        for run in runs:
            run["total_s"] = run["open_s"] + run["summary_s"]
    for label, key, unit in FIGURES:
        row: dict[str, Any] = {"tokens": tokens, "figure": label, "unit": unit}
        row["new"] = statistics.median(r[key] for r in new)
        row["new_spread"] = [min(r[key] for r in new), max(r[key] for r in new)]
        if old:
            ratios = [n[key] / o[key] for n, o in zip(new, old, strict=False)]
            row["baseline"] = statistics.median(r[key] for r in old)
            row["ratio"] = statistics.median(ratios)
            row["ratio_spread"] = [min(ratios), max(ratios)]
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'tokens':>6}  {'figure':<42} {'new (min–max)':>24} {'baseline':>10} {'ratio new/base (min–max)':>26}",
    ]
    for r in rows:
        low, high = (fmt(v, r["unit"]) for v in r["new_spread"])
        spread = f"{fmt(r['new'], r['unit'])} ({low}–{high})"
        base = fmt(r["baseline"], r["unit"]) if "baseline" in r else "—"
        ratio = f"{r['ratio']:.3f} ({r['ratio_spread'][0]:.3f}–{r['ratio_spread'][1]:.3f})" if "ratio" in r else "—"
        lines.append(f"{r['tokens']:>6}  {r['figure']:<42} {spread:>24} {base:>10} {ratio:>26}")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], tokens: int) -> list[str]:
    """The issue's targets for the open of the ``tokens``-token document, met or missed."""
    out = []
    for key, target, unit in (("open: wall time", OPEN_TARGET_S, "s"), ("open: peak RSS", OPEN_TARGET_BYTES, "bytes")):
        row = next(r for r in rows if r["tokens"] == tokens and r["figure"].startswith(key))
        verdict = "met" if row["new"] <= target else "MISSED"
        what = key.split(": ")[1]
        out.append(f"target {what} of the open ≤ {fmt(target, unit)}: {fmt(row['new'], unit)} — {verdict}")
    return out


def plan(args: argparse.Namespace) -> tuple[list[int], int]:
    """The document sizes and the number of rounds: ``--quick`` is 1,024 tokens, 1 round."""
    return args.tokens or ([1024] if args.quick else [2048, 4096]), args.rounds or (1 if args.quick else 3)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help="document lengths (default 2048 4096)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1,024 tokens, 1 round (CI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--rebuild", action="store_true", help="build the stores again even if they exist")
    parser.add_argument("--no-baseline", action="store_true", help="measure today's code only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", metavar="STORE", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.baseline)
        print(json.dumps(result))
        return result

    sizes, rounds = plan(args)
    args.store_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"rounds": rounds, "cpus": os.cpu_count(), "sizes": {}, "rows": []}
    print(f"Long document, {LAYERS} layers x {HEADS} heads, float16 random softmax attention; {rounds} round(s), "
          f"fresh process per run; {os.cpu_count()} CPUs")  # fmt: skip
    for tokens in sizes:
        path, built = store_for(tokens, args.seed, args.store_dir, args.rebuild)
        note = f"built in {built:.1f} s" if built is not None else "reused"
        print(f"\n{tokens:,} tokens: store {path} ({note})")
        run_baseline = not args.no_baseline
        available, need = available_bytes(), baseline_need(tokens)
        if run_baseline and available is not None and need > 0.8 * available:
            run_baseline = False
            print(f"  baseline skipped: the old head summary needs about {need / 1e9:.1f} GB, "
                  f"{available / 1e9:.1f} GB are available")  # fmt: skip
        new: list[dict] = []
        old: list[dict] = []
        for i in range(rounds):
            # which goes first alternates: the first run of a round may find the store less cached
            for baseline in (False, True) if i % 2 == 0 else (True, False):
                if baseline and not run_baseline:
                    continue
                (old if baseline else new).append(measure(path, baseline=baseline))
                print(f"  round {i + 1}: {describe((old if baseline else new)[-1])}")
            if run_baseline:
                same = np.array_equal(np.array(new[-1]["summary"]), np.array(old[-1]["summary"]), equal_nan=True)
                if not same:
                    raise AssertionError(f"{tokens} tokens: the new and the old head summary differ")
        rows = summarize(tokens, new, old)
        results["rows"].extend(rows)
        results["sizes"][str(tokens)] = {
            "store": str(path),
            "built_s": built,
            "baseline_skipped": not run_baseline and not args.no_baseline,
            "summary_at_open": new[0]["summary_at_open"],
            "same_summary": bool(old),
            "runs": [{k: v for k, v in r.items() if k != "summary"} for r in new + old],
        }
    print()
    print(render(results["rows"]))
    if any(s["summary_at_open"] for s in results["sizes"].values()):
        print("(this explorer computes the head summary at open: 'open' includes it)")
    if any(s["same_summary"] for s in results["sizes"].values()):
        print("new and baseline computed the same head summary, bit for bit")
    results["targets"] = targets(results["rows"], max(sizes))
    print("\n".join(results["targets"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
