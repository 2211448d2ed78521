"""Extraction throughput: attviz vs a bare batched forward pass vs a naive one-document loop.

All modes run in one process on the same texts with the same model, interleaved over several
rounds; the medians and their ratios are reported (absolute times drift on a shared machine).

    python benchmarks/extraction.py            # 128 documents, 3 rounds
    python benchmarks/extraction.py --quick    # 32 documents, 1 round (CI)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

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
    stored_bytes = raw_bytes = 0

    def attviz_store() -> None:
        nonlocal stored_bytes, raw_bytes
        store = tmp / "bench.zarr"
        corpus = extract(texts, model=loaded, batch_size=args.batch_size, store=store, overwrite=True, progress=False)
        stored_bytes = directory_bytes(store)
        raw_bytes = sum(6 * 12 * t * t * 2 for t in corpus.table["n_tokens"])

    modes = {
        "attviz extract (store)": attviz_store,
        "attviz extract (store, no zstd)": lambda: extract(
            texts,
            model=loaded,
            batch_size=args.batch_size,
            store=tmp / "raw.zarr",
            overwrite=True,
            progress=False,
            compression="none",
        ),
        "attviz extract (memory)": lambda: extract(texts, model=loaded, batch_size=args.batch_size, progress=False),
        "bare batched forward": lambda: bare_forward(loaded, texts, args.batch_size),
        "naive one-doc loop, 2 passes": lambda: naive_loop(loaded, texts),
    }
    bare_forward(loaded, texts[:8], args.batch_size)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, run in modes.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
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
                "docs_per_s": round(n / value, 1),
                "tokens_per_s": round(n_tokens / value),
                "vs_bare_forward": round(bare / value, 3),
                "vs_naive_loop": round(naive / value, 3),
            }
            for name, value in median.items()
        },
        "store_bytes_per_doc": round(stored_bytes / n),
        "raw_float16_bytes_per_doc": round(raw_bytes / n),
    }
    print(f"{n} documents, {n_tokens} tokens, median of {rounds} round(s), {results['threads']} threads")
    print(f"{'mode':<32}{'s':>8}{'docs/s':>9}{'tok/s':>9}{'x bare':>9}{'x naive':>9}")
    for name, row in results["modes"].items():
        print(
            f"{name:<32}{row['seconds']:>8.2f}{row['docs_per_s']:>9.1f}{row['tokens_per_s']:>9}"
            f"{row['vs_bare_forward']:>9.2f}{row['vs_naive_loop']:>9.2f}"
        )
    print(
        f"store: {results['store_bytes_per_doc']} bytes/doc vs raw float16 {results['raw_float16_bytes_per_doc']}"
        f" ({raw_bytes / max(stored_bytes, 1):.2f}x)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
