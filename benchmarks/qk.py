"""Attention kept as queries and keys (issue #12): extraction speed, store size, rebuild error, peak RSS.

Run: ``python benchmarks/qk.py [--rounds 5] [--json OUT]``, or ``--quick`` (CI: 1 round, 16 demo
texts, 4 documents of 512 tokens, 1,024 instead of 4,096 tokens for the random-BERT rows).

1. **Speed.** The bundled all-MiniLM-L6-v2 on two text sets: 128 demo texts (the 64 demo records
   twice, as in ``benchmarks/extraction.py``) and 32 documents of 512 tokens (demo texts joined, cut
   at attviz's default ``max_length`` of 512; each is checked to have 512 tokens). In every round,
   each of these runs once on the same texts, in this order:

   - **SDPA forward** (baseline): the model's default forward pass, a second copy loaded with
     ``attn_implementation="sdpa"``, over the texts tokenized beforehand (not timed), in attviz's
     length-sorted batches (``make_batches``, ``pad_batch``, batch size 8; the 2-D padding mask only for
     a padded batch, as ``run_batch`` does), under ``torch.inference_mode``; nothing kept;
   - **eager forward**: the same loop with the eager model and ``output_attentions=True``;
   - ``attviz.extract(..., attention="qk" | "matrices" | "auto", store=...)`` (tokenization and the
     store's writes included; the previous round's store is removed and ``os.sync()`` flushes earlier
     writes before each run, neither timed).

   Reported per mode: median seconds, docs/s, and the median and min–max over rounds of the per-round
   ratio mode speed / SDPA-forward speed (and / eager-forward speed). A target is **met** only when
   every round's ratio is on the right side of it, **missed** when every one is on the wrong side,
   else **within noise**. Target: the ``qk`` store ≥ 0.9× the SDPA forward on both text sets.
2. **Store bytes per document** (the files of ``STORE/docs/d000000``), ``qk`` vs ``matrices``, one
   document of exactly 128, 512 (real MiniLM) and 4,096 tokens (a seeded random-weight BERT of MiniLM's
   shape with 4,096 positions, eager, with MiniLM's tokenizer), next to the raw float16 matrices
   (L·H·T²·2 bytes). Target: at 512 tokens the ``qk`` store ≥ 5× smaller than the ``matrices`` one.
3. **Rebuild error** at 512 tokens: max |``doc.attention.values`` of the ``qk`` store - the eager
   float32 weights of a direct ``model(**enc, output_attentions=True)`` call| (one document, no
   padding). Target ≤ 1e-3. ``corpus.attrs["qk_check"]`` (the check extraction made) is printed too.
4. **Peak RSS** of extracting the one random-BERT document (4,096 tokens) with ``qk`` and with
   ``matrices``, each in a fresh process that reports its own peak (``VmHWM``, see
   :func:`peak_rss_self`) after ``extract`` returned, and before it (imports, model, text).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks.extraction (the random BERT), run as a script or imported
    sys.path.insert(0, str(ROOT))
MODES = ("qk", "matrices", "auto")
BASELINES = ("SDPA forward", "eager forward")
SPEED_TARGET = 0.9  # qk store speed / SDPA forward speed
SIZE_TARGET = 5.0  # matrices store bytes / qk store bytes at 512 tokens
ERROR_TARGET = 1e-3
BATCH_SIZE = 8
RANDOM_BERT = "random BERT 6×12 (MiniLM shape)"


#: MiniLM's shape (benchmarks/extraction.py SHAPES["minilm"]).
def say(line: str) -> None:
    print(line, flush=True)


# -- texts ----------------------------------------------------------------------------------------
def demo_texts(n: int | None = None) -> list[str]:
    """``n`` demo texts: the 64 demo records, cycled as ``benchmarks/extraction.py`` does (its 128 demo
    texts, 12,638 tokens, are these twice); without ``n``, the 64 once."""
    from attviz.demo import demo_records

    texts = [r["text"] for r in demo_records()]
    return texts if n is None else [texts[i % len(texts)] for i in range(n)]


def long_texts(n: int) -> list[str]:
    """``n`` different texts of well over 4,096 tokens: every demo text joined, starting at text ``i``."""
    base = demo_texts()
    return [" ".join(base[i % len(base) :] + base[: i % len(base)]) for i in range(n)]


def token_counts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    return [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]


# -- models ---------------------------------------------------------------------------------------
def minilm():
    """The bundled MiniLM as attviz loads it (eager, CPU)."""
    from attviz.models import load_model

    return load_model(None, device="cpu")


def sdpa_minilm():
    """A second copy of the bundled MiniLM with the model's default fast attention (SDPA)."""
    from transformers import AutoModel

    from attviz.models import bundled_model_path

    model = AutoModel.from_pretrained(bundled_model_path(), attn_implementation="sdpa").eval()
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"the baseline model runs {model.config._attn_implementation!r}, not SDPA")
    return model


def random_bert(positions: int):
    """``(model, tokenizer)``: the seeded random-weight eager BERT of MiniLM's shape that
    benchmarks/extraction.py builds, with ``positions`` positions and MiniLM's tokenizer."""
    from benchmarks.extraction import random_bert as shaped

    return shaped("minilm", positions)


# -- 1. speed -------------------------------------------------------------------------------------
def forward_loop(model: Any, batches: list[list[list[int]]], pad_id: int, output_attentions: bool) -> None:
    """Batched forward passes over pre-tokenized, length-sorted batches; nothing kept."""
    from attviz.tokenization import pad_batch

    for batch in batches:
        ids, mask = pad_batch(batch, pad_id, torch.device("cpu"))
        kwargs: dict[str, Any] = {"input_ids": ids}
        if len({len(s) for s in batch}) > 1:  # as attviz's run_batch: a mask only where there is padding
            kwargs["attention_mask"] = mask
        with torch.inference_mode():
            out = model(**kwargs, output_attentions=output_attentions, return_dict=True)
        if output_attentions and len(out.attentions) != model.config.num_hidden_layers:
            raise RuntimeError("the eager forward returned no attention weights")


def batches_for(loaded: Any, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[list[int]]]:
    """The token ids of attviz's batches for ``texts`` (its tokenizer call and its batching)."""
    from attviz.tokenization import make_batches, tokenize

    units = tokenize(loaded, texts, [str(i) for i in range(len(texts))], None, max_length=512)
    return [[u.input_ids for u in batch] for batch in make_batches(units, batch_size)]


def extract_store(loaded: Any, texts: Sequence[str], mode: str, store: Path, **kwargs: Any):
    from attviz.extract import extract

    kwargs.setdefault("batch_size", BATCH_SIZE)
    return extract(texts, model=loaded, attention=mode, store=store, overwrite=True, progress=False, **kwargs)


def verdict(ratios: Sequence[float], target: float) -> str:
    """``met`` when every round's ratio is ≥ ``target``, ``missed`` when every one is below, else
    ``within noise``; ``(1 round)`` is added when there is no spread to judge."""
    ratios = [r for r in ratios if r == r]
    if not ratios:
        return "no data"
    if min(ratios) >= target:
        out = "met"
    elif max(ratios) < target:
        out = "missed"
    else:
        out = "within noise"
    return f"{out} (1 round)" if len(ratios) == 1 else out


def speed(
    loaded: Any, sdpa: Any, texts: Sequence[str], rounds: int, workdir: Path, log: Callable[[str], None] = say
) -> dict[str, Any]:
    """Interleaved rounds of every baseline and mode on ``texts``; medians and per-round ratios."""
    batches = batches_for(loaded, texts)
    pad_id = loaded.tokenizer.pad_token_id
    n_tokens = sum(len(s) for b in batches for s in b)
    runs: dict[str, Callable[[], Any]] = {
        "SDPA forward": lambda: forward_loop(sdpa, batches, pad_id, False),
        "eager forward": lambda: forward_loop(loaded.model, batches, pad_id, True),
    }
    stores = {mode: workdir / f"speed-{mode}.zarr" for mode in MODES}
    checks: dict[str, Any] = {}

    def store_run(mode: str) -> None:
        corpus = extract_store(loaded, texts, mode, stores[mode])
        checks[mode] = {k: corpus.attrs.get(k) for k in ("qk_check", "attention_fallback") if k in corpus.attrs}

    for mode in MODES:
        runs[f"{mode} store"] = lambda mode=mode: store_run(mode)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            mode = name.removesuffix(" store")
            if mode in stores:  # not timed: the previous store, and earlier writes still in the page cache
                shutil.rmtree(stores[mode], ignore_errors=True)
            os.sync()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    for mode, path in stores.items():  # how the last round's store kept each document
        kinds = [_doc_kind(folder) for folder in sorted((path / "docs").glob("d*")) if folder.is_dir()]
        checks.setdefault(mode, {})["kept"] = {kind: kinds.count(kind) for kind in sorted(set(kinds))}
        shutil.rmtree(path, ignore_errors=True)
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        row: dict[str, Any] = {"seconds": median, "rounds_s": values, "docs_per_s": len(texts) / median}
        for base, key in (("SDPA forward", "vs_sdpa"), ("eager forward", "vs_eager")):
            ratios = [b / v for b, v in zip(times[base], values, strict=True)]
            row[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        if name == "qk store":
            row["target"] = f"≥ {SPEED_TARGET}× SDPA forward"
            row["verdict"] = verdict([b / v for b, v in zip(times["SDPA forward"], values, strict=True)], SPEED_TARGET)
        rows[name] = row
    return {"documents": len(texts), "tokens": n_tokens, "rounds": rounds, "modes": rows, "checks": checks}


# -- 2. and 3. bytes and rebuild error -------------------------------------------------------------
def document_bytes(store: Path, index: int = 0) -> int:
    """Bytes on disk of one document's group (``STORE/docs/d000000``: every file under it)."""
    folder = Path(store) / "docs" / f"d{index:06d}"
    if not folder.is_dir():
        raise RuntimeError(f"no document folder {folder}")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def stored_tokens(corpus: Any) -> int:
    return int(corpus.table["n_tokens"].iloc[0])


def store_sizes(loaded: Any, tokens: int, workdir: Path) -> dict[str, Any]:
    """One real-MiniLM document of exactly ``tokens`` tokens stored as ``qk`` and as ``matrices``."""
    (text,) = long_texts(1)
    row: dict[str, Any] = {"tokens": tokens, "model": "all-MiniLM-L6-v2"}
    for mode in ("qk", "matrices"):
        store = workdir / f"bytes-{tokens}-{mode}.zarr"
        corpus = extract_store(loaded, [text], mode, store, max_length=tokens)
        if stored_tokens(corpus) != tokens:
            raise RuntimeError(f"the document has {stored_tokens(corpus)} tokens, not {tokens}")
        row[mode] = document_bytes(store)
        row["layers"], row["heads"] = int(corpus.attrs["layers"]), int(corpus.attrs["heads"])
        if mode == "qk":
            row["qk_check"] = corpus.attrs.get("qk_check")
        shutil.rmtree(store, ignore_errors=True)
    return finish_size_row(row)


def finish_size_row(row: dict[str, Any]) -> dict[str, Any]:
    row["raw_float16"] = row["layers"] * row["heads"] * row["tokens"] ** 2 * 2
    row["matrices_over_qk"] = row["matrices"] / row["qk"]
    return row


def rebuild_error(loaded: Any, tokens: int, workdir: Path) -> dict[str, Any]:
    """Max abs difference of the ``qk`` store's weights from the eager weights of a direct model call."""
    from attviz.corpus import Corpus

    (text,) = long_texts(1)
    store = workdir / f"error-{tokens}.zarr"
    corpus = extract_store(loaded, [text], "qk", store, max_length=tokens)
    check = corpus.attrs.get("qk_check")
    opened = Corpus.open(store)
    doc = opened[0]
    rebuilt = np.asarray(doc.attention.values, dtype=np.float32)
    enc = loaded.tokenizer(text, truncation=True, max_length=tokens, return_tensors="pt")
    implementation = getattr(loaded.model.config, "_attn_implementation", None)
    if implementation != "eager":
        raise RuntimeError(f"the reference model runs {implementation!r}, not eager")
    with torch.inference_mode():
        out = loaded.model(**enc, output_attentions=True, return_dict=True)
    eager = torch.stack([a[0] for a in out.attentions]).float().numpy()
    if rebuilt.shape != eager.shape:
        raise RuntimeError(f"rebuilt {rebuilt.shape} vs eager {eager.shape}")
    kept = _doc_kind(store)
    error = float(np.abs(rebuilt - eager).max())
    del opened, doc
    shutil.rmtree(store, ignore_errors=True)
    return {
        "tokens": int(enc["input_ids"].shape[1]),
        "shape": list(rebuilt.shape),
        "max_abs_error": error,
        "target": ERROR_TARGET,
        "verdict": "met" if error <= ERROR_TARGET else "missed",  # NaN: missed
        "qk_check": check,
        "stored_as": kept,
    }


def _doc_kind(folder: Path) -> str:
    """``qk`` or ``matrices``: how the document at ``folder`` (a store, then its first) keeps attention."""
    if (folder / "docs").is_dir():
        folder = folder / "docs" / "d000000"
    names = {p.name for p in folder.iterdir()}
    return "qk" if any(n.endswith("_qk") for n in names) else "matrices"


# -- 2. and 4. the random BERT in a fresh process ---------------------------------------------------
def peak_rss_self() -> int:
    """This process's peak resident set size so far, in bytes: ``VmHWM`` of /proc/self/status (the
    high-water mark of this process's own memory since it started, exec included), else ``ru_maxrss``.

    Not ``ru_maxrss``/``wait4`` where /proc is there: Linux carries a process's ``ru_maxrss`` over
    fork and exec, so a child started from the benchmark (≈ 1.3 GB with two models loaded) would
    report at least the benchmark's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(mode: str, tokens: int, store: str) -> dict[str, Any]:
    """One random-BERT document of ``tokens`` tokens extracted with ``mode`` into ``store``."""
    model, tokenizer = random_bert(tokens)
    (text,) = long_texts(1)
    before = peak_rss_self()
    from attviz.extract import extract

    start = time.perf_counter()
    corpus = extract([text], model=model, tokenizer=tokenizer, attention=mode, store=store, overwrite=True,
                     progress=False, max_length=tokens, device="cpu")  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "tokens": stored_tokens(corpus),
        "layers": int(corpus.attrs["layers"]),
        "heads": int(corpus.attrs["heads"]),
        "bytes": document_bytes(Path(store)),
        "stored_as": _doc_kind(Path(store)),
        "seconds": seconds,
        "peak_before_extract_bytes": before,
        "peak_rss_bytes": peak_rss_self(),
        "qk_check": corpus.attrs.get("qk_check"),
    }


def measure_child(mode: str, tokens: int, workdir: Path) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter; its JSON result (with its own peak RSS at the end)."""
    store = workdir / f"random-{tokens}-{mode}.zarr"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(tokens), str(store)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    shutil.rmtree(store, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def random_bert_rows(tokens: int, workdir: Path) -> dict[str, Any]:
    runs = {mode: measure_child(mode, tokens, workdir) for mode in ("qk", "matrices")}
    for mode, run in runs.items():
        if run["tokens"] != tokens or run["stored_as"] != mode:
            raise RuntimeError(f"{mode}: {run['tokens']} tokens stored as {run['stored_as']}")
    row = {"tokens": tokens, "model": RANDOM_BERT, "layers": runs["qk"]["layers"],
           "heads": runs["qk"]["heads"], "qk": runs["qk"]["bytes"], "matrices": runs["matrices"]["bytes"],
           "qk_check": runs["qk"]["qk_check"]}  # fmt: skip
    return {"size": finish_size_row(row), "runs": runs}


# -- the report -----------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> dict[str, Any]:
    """What a run measures: ``--quick`` is 1 round, 16 demo texts, 4 × 512 tokens, 1,024-token random BERT."""
    quick = args.quick
    return {
        "rounds": args.rounds or (1 if quick else 5),
        "demo_texts": args.documents or (16 if quick else 128),
        "long_documents": args.long_documents or (4 if quick else 32),
        "long_tokens": 512,
        "size_tokens": [128, 512],
        "random_tokens": args.random_tokens or (1024 if quick else 4096),
    }


def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})"


def table(header: Sequence[str], align: str, rows: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines; ``align`` holds one ``l`` or ``r`` per column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(map(str, line)) + " |" for line in (header, rule, *rows)]


def markdown(results: dict[str, Any]) -> str:
    speed_rows = []
    for label, entry in results["speed"].items():
        what = f"{label} ({entry['documents']} docs, {entry['tokens']:,} tokens)"
        for name, row in entry["modes"].items():
            target = f"{row['target']}: **{row['verdict']}**" if "verdict" in row else ""
            kept = entry["checks"].get(name.removesuffix(" store"), {}).get("kept")
            if kept:
                name += " (" + ", ".join(f"{n} as {kind}" for kind, n in kept.items()) + ")"
            speed_rows.append([what, name, f"{row['seconds']:.2f}", f"{row['docs_per_s']:.1f}",
                               fmt_ratio(row["vs_sdpa"]), fmt_ratio(row["vs_eager"]), target])  # fmt: skip
    header = [
        "text set",
        "run",
        "median s",
        "docs/s",
        "× SDPA forward (min–max)",
        "× eager forward (min–max)",
        "target",
    ]
    lines = table(header, "lrrrrrl", speed_rows)
    size_rows = []
    for row in results["sizes"]:
        target = f"≥ {SIZE_TARGET:g}×: **{row['verdict']}**" if "verdict" in row else ""
        size_rows.append([f"{row['tokens']:,}", row["model"], f"{row['qk']:,}", f"{row['matrices']:,}",
                          f"{row['raw_float16']:,}", f"{row['matrices_over_qk']:.1f}×", target])  # fmt: skip
    header = [
        "tokens",
        "model",
        "qk store B/doc",
        "matrices store B/doc",
        "raw float16 L·H·T²·2",
        "matrices / qk",
        "target",
    ]
    lines += ["", *table(header, "rlrrrrl", size_rows)]
    e = results["error"]
    lines += [
        "",
        f"Rebuild error, {e['tokens']} tokens (real MiniLM, qk store vs eager float32): max abs "
        f"{e['max_abs_error']:.3g} (target ≤ {ERROR_TARGET:g}: **{e['verdict']}**); "
        f"extraction's `qk_check` = {json.dumps(e['qk_check'])}",
    ]
    runs = results["random_bert"]["runs"]
    rss_rows = [[mode, f"{run['peak_rss_bytes'] / 1e6:,.0f} MB", f"{run['peak_before_extract_bytes'] / 1e6:,.0f} MB",
                 f"{run['seconds']:.2f}"] for mode, run in runs.items()]  # fmt: skip
    tokens = results["random_bert"]["size"]["tokens"]
    header = [f"one {tokens:,}-token document (random BERT)", "peak RSS", "peak before extract", "extract s"]
    lines += ["", *table(header, "lrrr", rss_rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="1 round, small sets, 1,024-token random BERT (CI)")
    parser.add_argument("--documents", type=int, default=None, help="demo texts (default 128, quick 16)")
    parser.add_argument("--long-documents", type=int, default=None, help="512-token documents (default 32, quick 4)")
    parser.add_argument(
        "--random-tokens", type=int, default=None, help="random-BERT document (default 4096, quick 1024)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where stores are written (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "TOKENS", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, tokens, store = args.child
        result = child(mode, int(tokens), store)
        print(json.dumps(result))
        return result

    settings = plan(args)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=".attviz-bench-qk-", dir=args.workdir))
    try:
        results = run_all(settings, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - started
    print()
    print(markdown(results))
    loads = ", ".join(f"{v:.2f}" for v in results["load_average"])
    after = ", ".join(f"{v:.2f}" for v in results["load_average_after"])
    print(f"\n{results['threads']} torch threads, {results['cpus']} CPUs; load average {loads} before, "
          f"{after} after; total {results['wall_s']:.0f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


def run_all(settings: dict[str, Any], workdir: Path, log: Callable[[str], None] = say) -> dict[str, Any]:
    import transformers

    loaded, sdpa = minilm(), sdpa_minilm()
    results: dict[str, Any] = {
        "settings": settings,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }
    log(f"attviz q/k benchmark: {settings}; torch {torch.__version__}, {results['threads']} threads")
    demo = demo_texts(settings["demo_texts"])
    long = long_texts(settings["long_documents"])
    counts = token_counts(loaded.tokenizer, long, settings["long_tokens"])
    if set(counts) != {settings["long_tokens"]}:
        raise RuntimeError(f"the long documents have {sorted(set(counts))} tokens, not {settings['long_tokens']}")
    # warm-up (not timed): every path once on a few short texts
    warm = demo_texts(4)
    forward_loop(sdpa, batches_for(loaded, warm), loaded.tokenizer.pad_token_id, False)
    for mode in MODES:
        extract_store(loaded, warm, mode, workdir / f"warm-{mode}.zarr")
        shutil.rmtree(workdir / f"warm-{mode}.zarr", ignore_errors=True)
    results["speed"] = {}
    for label, texts in (("demo texts", demo), (f"{settings['long_tokens']}-token documents", long)):
        log(f"speed: {label}")
        results["speed"][label] = speed(loaded, sdpa, texts, settings["rounds"], workdir, log)
    log("store sizes and rebuild error")
    sizes = [store_sizes(loaded, tokens, workdir) for tokens in settings["size_tokens"]]
    results["error"] = rebuild_error(loaded, settings["long_tokens"], workdir)
    del sdpa
    log(f"random BERT, {settings['random_tokens']} tokens, a fresh process per mode")
    results["random_bert"] = random_bert_rows(settings["random_tokens"], workdir)
    sizes.append(results["random_bert"]["size"])
    for row in sizes:
        if row["tokens"] == 512 and row["model"] == "all-MiniLM-L6-v2":
            row["verdict"] = "met" if row["matrices_over_qk"] >= SIZE_TARGET else "missed"
    results["sizes"] = sizes
    results["load_average_after"] = list(os.getloadavg())
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
