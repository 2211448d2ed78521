"""Extraction throughput: attviz vs a bare batched forward pass vs a naive one-document loop.

Store modes: ``lz4`` (default: lossless float16, blosc lz4 + bitshuffle), ``zstd`` (lossless, level 1),
``none`` (raw float16) and ``uint8`` (uint8 per
row with a float32 scale); their bytes per document are reported against raw float16, and the uint8
store's largest error against the float16 one.

All modes run in one process on the same texts with the same model, interleaved over several
rounds; the medians and their ratios are reported (absolute times drift on a shared machine).

    python benchmarks/extraction.py            # 128 documents, 3 rounds
    python benchmarks/extraction.py --quick    # 32 documents, 1 round (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from attviz.corpus import Corpus
from attviz.demo import demo_records
from attviz.extract import extract
from attviz.info import directory_bytes
from attviz.models import load_model
from attviz.tokenization import make_batches, tokenize


def texts_for(n: int) -> list[str]:
    base = [r["text"] for r in demo_records()]
    return [base[i % len(base)] for i in range(n)]


def bare_forward(loaded, texts: list[str], batch_size: int) -> None:
    """The floor: the same length-sorted batches, eager attention returned, nothing kept."""
    units = tokenize(loaded, texts, [str(i) for i in range(len(texts))], None, max_length=512)
    pad = loaded.tokenizer.pad_token_id
    for batch in make_batches(units, batch_size):
        width = max(len(u.input_ids) for u in batch)
        ids = torch.full((len(batch), width), pad)
        mask = torch.zeros_like(ids)
        for i, unit in enumerate(batch):
            ids[i, : len(unit.input_ids)] = torch.tensor(unit.input_ids)
            mask[i, : len(unit.input_ids)] = 1
        with torch.inference_mode():
            out = loaded.model(input_ids=ids, attention_mask=mask, output_attentions=True)
        assert len(out.attentions) == loaded.config.num_hidden_layers


def naive_loop(loaded, texts: list[str]) -> None:
    """What the original AttViz did: one document at a time, a forward pass for the prediction and
    a second one for the attention, copied to numpy."""
    for text in texts:
        enc = loaded.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
        with torch.inference_mode():
            loaded.model(**enc)
            out = loaded.model(**enc, output_attentions=True)
        torch.stack(out.attentions).numpy()


def quantisation_error(exact: Path, quantised: Path) -> tuple[float, float]:
    """Largest |uint8-decoded - float16| over every stored value, and the bound the store states."""
    a, b = Corpus.open(exact), Corpus.open(quantised)
    pairs = zip(a, b, strict=True)
    error = max(float(np.abs(x.attention.values.astype(np.float32) - y.attention.values).max()) for x, y in pairs)
    return error, float(b.attrs["max_abs_error"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and fast (CI)")
    parser.add_argument("--documents", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    n = args.documents or (32 if args.quick else 128)
    rounds = args.rounds or (1 if args.quick else 3)
    torch.manual_seed(0)
    loaded = load_model(None, device="cpu")
    texts = texts_for(n)
    n_tokens = sum(len(loaded.tokenizer(t, truncation=True, max_length=512)["input_ids"]) for t in texts)
    tmp = Path(tempfile.mkdtemp(prefix="attviz-bench-"))
    raw_bytes = 0
    stored: dict[str, int] = {}

    def attviz_store(compression: str) -> None:
        nonlocal raw_bytes
        store = tmp / f"{compression}.zarr"
        corpus = extract(
            texts,
            model=loaded,
            batch_size=args.batch_size,
            store=store,
            overwrite=True,
            progress=False,
            compression=compression,
        )
        stored[compression] = directory_bytes(store)
        raw_bytes = sum(6 * 12 * t * t * 2 for t in corpus.table["n_tokens"])

    # the first "store" mode is the default (benchmarks/run.py reports it against the targets)
    modes = {
        "attviz extract (store)": lambda: attviz_store("lz4"),
        "attviz extract (store, zstd)": lambda: attviz_store("zstd"),
        "attviz extract (store, none)": lambda: attviz_store("none"),
        "attviz extract (store, uint8)": lambda: attviz_store("uint8"),
        "attviz extract (memory)": lambda: extract(texts, model=loaded, batch_size=args.batch_size, progress=False),
        "bare batched forward": lambda: bare_forward(loaded, texts, args.batch_size),
        "naive one-doc loop, 2 passes": lambda: naive_loop(loaded, texts),
    }
    bare_forward(loaded, texts[:8], args.batch_size)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    outputs = {
        "attviz extract (store)": tmp / "lz4.zarr",
        "attviz extract (store, zstd)": tmp / "zstd.zarr",
        "attviz extract (store, none)": tmp / "none.zarr",
        "attviz extract (store, uint8)": tmp / "uint8.zarr",
    }
    for _ in range(rounds):
        for name, run in modes.items():
            # not timed: removing the previous run's store, and the page-cache writeback of earlier modes
            if name in outputs:
                shutil.rmtree(outputs[name], ignore_errors=True)
            os.sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    error, bound = quantisation_error(tmp / "lz4.zarr", tmp / "uint8.zarr")
    shutil.rmtree(tmp, ignore_errors=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    bare = median["bare batched forward"]
    naive = median["naive one-doc loop, 2 passes"]
    results = {
        "documents": n,
        "tokens": n_tokens,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "modes": {
            name: {
                "seconds": round(value, 3),
                "cpu_seconds": round(statistics.median(cpu[name]), 3),
                "docs_per_s": round(n / value, 1),
                "tokens_per_s": round(n_tokens / value),
                "vs_bare_forward": round(bare / value, 3),
                "vs_naive_loop": round(naive / value, 3),
            }
            for name, value in median.items()
        },
        "store_bytes_per_doc": round(stored["lz4"] / n),
        "raw_float16_bytes_per_doc": round(raw_bytes / n),
        "store_bytes_per_doc_by_compression": {c: round(b / n) for c, b in stored.items()},
        "uint8_max_abs_error": error,
        "uint8_error_bound": bound,
    }
    print(f"{n} documents, {n_tokens} tokens, median of {rounds} round(s), {results['threads']} threads")
    print(f"{'mode':<32}{'s':>8}{'cpu s':>8}{'docs/s':>9}{'tok/s':>9}{'x bare':>9}{'x naive':>9}")
    for name, row in results["modes"].items():
        print(
            f"{name:<32}{row['seconds']:>8.2f}{row['cpu_seconds']:>8.2f}{row['docs_per_s']:>9.1f}"
            f"{row['tokens_per_s']:>9}{row['vs_bare_forward']:>9.2f}{row['vs_naive_loop']:>9.2f}"
        )
    for compression, size in results["store_bytes_per_doc_by_compression"].items():
        print(
            f"store ({compression}): {size} bytes/doc vs raw float16 {results['raw_float16_bytes_per_doc']}"
            f" ({raw_bytes / max(size * n, 1):.2f}x smaller)"
        )
    print(f"uint8: max abs error {error:.6f} against the float16 store (stated bound {bound:.6f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
