"""Time every built-in aggregation on one random 6×12×512×512 float16 document (and flow by length).

Run: ``python benchmarks/aggregations.py [--tokens 512] [--repeat 3]``. Prints a table of the best
of ``repeat`` wall times. The document is row-stochastic float16 (as stored), a numpy array in
memory; legacy AttViz aggregates run on its 72 per-head diagonals as ``(vector, token)``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import xarray as xr

from attviz import aggregations
from attviz.corpus import attention_array, token_frame, vector_array


def random_document(layers: int, heads: int, tokens: int, seed: int = 0) -> xr.DataArray:
    """Row-stochastic float16 attention with a [CLS] ... [SEP] token table and 2-piece words."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((layers, heads, tokens, tokens), dtype=np.float32) * 2
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
    text = ["[CLS]", *[f"w{i}" if i % 2 else f"##w{i}" for i in range(tokens - 2)], "[SEP]"]
    word = [-1, *[i // 2 for i in range(tokens - 2)], -1]
    special = [True, *[False] * (tokens - 2), True]
    return attention_array(weights.astype(np.float16), token_frame(text, word=word, special=special))


def minilm_document(tokens: int) -> xr.DataArray:
    """The real attention of the bundled MiniLM on demo texts joined up to ``tokens`` tokens."""
    from attviz.demo import demo_records
    from attviz.extract import extract

    text = " ".join(r["text"] for r in demo_records())
    return extract([text], max_length=tokens, progress=False)[0].attention.load()


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flow-tokens", type=int, nargs="*", default=[32, 64, 128, 256])
    parser.add_argument("--minilm", action="store_true", help="a real all-MiniLM-L6-v2 document instead of random")
    args = parser.parse_args()

    doc = minilm_document(args.tokens) if args.minilm else random_document(6, 12, args.tokens)
    diag = aggregations.get("diagonal")(doc).stack(vector=("layer", "head"))
    vectors = vector_array(
        diag.transpose("vector", "token").values,
        token_frame(list(doc["query_text"].values)),
        names=[f"{layer}/{head}" for layer, head in diag["vector"].values],
    )
    rows = []
    kind = "all-MiniLM-L6-v2" if args.minilm else "random"
    print(f"{kind} document: 6 layers x 12 heads x {args.tokens} x {args.tokens} float16, best of {args.repeat}")
    for name in aggregations.available():
        agg = aggregations.get(name)
        if name == "flow" or not type(agg).__module__.startswith("attviz."):  # flow below; built-ins only
            continue
        data = vectors if name.startswith("attviz_") else doc
        rows.append((name, f"{tuple(data.shape)}", best_of(lambda agg=agg, data=data: agg(data), args.repeat)))
    pipeline = aggregations.Pipeline(
        [aggregations.get("drop_special"), aggregations.get("mean"), aggregations.get("attention_received")]
    )
    rows.append(
        ("drop_special|mean|attention_received", f"{tuple(doc.shape)}", best_of(lambda: pipeline(doc), args.repeat))
    )
    flow = aggregations.get("flow", max_tokens=10_000)
    for n in args.flow_tokens:
        small = random_document(6, 12, n, seed=n)
        rows.append((f"flow ({n} tokens)", f"{tuple(small.shape)}", best_of(lambda s=small: flow(s), 1)))

    width = max(len(r[0]) for r in rows)
    print(f"{'aggregation':<{width}}  {'input shape':<22} {'seconds':>8}")
    for name, shape, seconds in rows:
        print(f"{name:<{width}}  {shape:<22} {seconds:8.3f}")


if __name__ == "__main__":
    main()
