"""What an exported page carries per document: quantised attention and the token layout.

Payload format (one ``<script type="application/octet-stream">`` element per document and layer,
its text base64): the bytes of ``scales`` (float32, little-endian, ``heads × queries``) followed by
``q`` (uint8, ``heads × queries × keys``, C order), deflated (zlib container, what the browser's
``DecompressionStream("deflate")`` reads) when the page's encoding is ``"deflate"``. A value is
``q × scale`` of its row. With the default ``"row"`` quantisation ``scale = row maximum / 255``, so a
value differs from the stored attention by at most ``scale / 2`` (≤ 1/510 for rows whose maximum is
≤ 1); with ``"matrix"`` every row of a head's matrix shares ``scale = matrix maximum / 255`` (the same
absolute bound and ~2.2× less deflated attention on real MiniLM documents of 512 tokens, but rows far
below the matrix's maximum keep few levels). The format is the same either way. :func:`decode_layer` reads it back.
The quantisation is :mod:`attviz.quantize`'s, the store's own: a row holding NaN or inf has scale NaN
(the page shows it as missing, never as zeros) and negative values are refused.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from attviz.corpus import Document, tokens_of
from attviz.export.qkpayload import (
    QK_MAX_TOKENS,
    build_layer,
    encode_qk_layer,
    matrix_layer_estimate,
    qk_layer_bytes,
)
from attviz.qk import QKAttention
from attviz.quantize import error_bound, quantize_rows

ENCODINGS = ("deflate", "raw")
#: What a document kept as queries and keys is exported as (see :func:`document_payload`).
PAYLOADS = ("auto", "qk", "matrix")


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 values a page shows for ``q`` and ``scale`` (what the browser computes)."""
    return (q * scale[..., None].astype(np.float64)).astype(np.float32)


def encode_layer(q: np.ndarray, scale: np.ndarray, encoding: str = "deflate") -> str:
    """One layer's payload as base64 text (see the module docstring for the byte layout)."""
    raw = np.ascontiguousarray(scale, dtype="<f4").tobytes() + np.ascontiguousarray(q, dtype=np.uint8).tobytes()
    if encoding == "deflate":
        # Z_RLE: as small as the default strategy on attention (long runs of small values), 5× faster.
        packer = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        raw = packer.compress(raw) + packer.flush()
    elif encoding != "raw":
        raise ValueError(f"unknown encoding {encoding!r} (expected one of {ENCODINGS})")
    return base64.b64encode(raw).decode("ascii")


def decode_layer(text: str, n_heads: int, n_query: int, n_key: int, encoding: str = "deflate") -> np.ndarray:
    """Decode one layer's payload text into float32 values ``(heads, queries, keys)``."""
    raw = base64.b64decode(text)
    if encoding == "deflate":
        raw = zlib.decompress(raw)
    expected = n_heads * n_query * (4 + n_key)
    if len(raw) != expected:
        raise ValueError(f"payload holds {len(raw)} bytes, expected {expected}")
    split = 4 * n_heads * n_query
    scale = np.frombuffer(raw[:split], dtype="<f4").reshape(n_heads, n_query)
    q = np.frombuffer(raw[split:], dtype=np.uint8).reshape(n_heads, n_query, n_key)
    return dequantize(q, scale)


# -- what is exported of a document ------------------------------------------------------------
def pick_window(n: int, max_tokens: int, window: tuple[int, int] | None) -> tuple[int, int]:
    """The token range ``[start, stop)`` exported of an ``n``-token document (at most ``max_tokens``)."""
    if window is not None:
        start = min(max(int(window[0]), 0), n)
        stop = min(max(int(window[1]), start), n)
        if stop > start:
            return start, min(stop, start + max_tokens)
    return 0, min(n, max_tokens)


def pick_layers(n_layers: int, layer_bytes: int, max_bytes: int) -> list[int]:
    """Layer indices that fit ``max_bytes``: all, or evenly spaced ones with the first and the last."""
    fit = max(1, max_bytes // max(layer_bytes, 1))
    if fit >= n_layers:
        return list(range(n_layers))
    if fit == 1:
        return [0]
    return sorted({round(float(i)) for i in np.linspace(0, n_layers - 1, fit)})


@dataclass
class TextLayout:
    """The original text around each token of a window: ``gaps[i]`` precedes token ``i``."""

    labels: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    badges: list[bool] = field(default_factory=list)
    tail: str = ""


def text_layout(tokens: pd.DataFrame, text: str, start: int, stop: int) -> TextLayout:
    """Labels and in-between text of tokens ``start..stop-1`` from their character offsets.

    Like :func:`attviz.views.text.layout_units` at token level: a label is ``text[start:end]`` (the
    part not already shown by an overlapping token), special and empty tokens are badges, and without
    usable offsets (legacy data) the token strings are joined by spaces.
    """
    ends, begins = tokens["end"].to_numpy(), tokens["start"].to_numpy()
    raw, special = tokens["text"].tolist(), tokens["special"].to_numpy()
    usable = bool(text) and len(tokens) > 0 and 0 < ends.max() <= len(text) and bool((begins <= ends).all())
    out = TextLayout()
    cursor = 0 if start == 0 else None
    for i in range(start, stop):
        badge = bool(special[i] or (usable and begins[i] >= ends[i]))
        if usable and not badge:
            s, e = int(begins[i]), int(ends[i])
            gap = "" if cursor is None else text[cursor:s]
            label = text[max(s, cursor or 0) : e] or raw[i]
            cursor = max(e, cursor or 0)
        else:
            gap = "" if usable or not out.labels or raw[i].startswith("##") else " "
            label = raw[i][2:] if raw[i].startswith("##") and len(raw[i]) > 2 else raw[i]
        out.labels.append(label)
        out.gaps.append(gap)
        out.badges.append(badge)
    if usable and cursor is not None and stop == len(tokens):
        out.tail = text[cursor:]
    return out


@dataclass
class DocumentPayload:
    """One document as the page carries it: manifest entry (JSON) and layer payloads (base64)."""

    entry: dict[str, Any]
    blobs: dict[str, str]
    max_error: float
    #: ``"matrix"`` (uint8 rows, ``max_error`` the quantisation bound) or ``"qk"`` (float16 queries and
    #: keys, ``max_error`` the measured largest error of a weight the page computes).
    kind: str = "matrix"


def document_payload(
    doc: Document,
    index: int,
    *,
    max_tokens: int,
    window: tuple[int, int] | None,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    max_bytes: int,
    encoding: str,
    attention: bool = True,
    quantization: str = "row",
    payload: str = "auto",
) -> DocumentPayload:
    """Quantise and encode one document (windowed, layers picked to fit ``max_bytes``).

    ``payload``: ``"auto"`` carries a document kept as queries and keys as q/k where that is smaller
    than its uint8 matrices (or where the matrices would need a window), ``"qk"`` whenever it is kept
    so, ``"matrix"`` never (see :mod:`attviz.export.qkpayload`)."""
    notes: list[str] = []
    if payload not in PAYLOADS:
        raise ValueError(f"unknown payload {payload!r} (expected one of {PAYLOADS})")
    kept = doc.qk() if attention and payload != "matrix" and doc.has_matrices else None
    if kept is not None and kept.shape[2] == kept.shape[3]:
        built = _qk_payload(doc, kept, index, window=window, layers=layers, heads=heads, max_bytes=max_bytes,
                            encoding=encoding, quantization=quantization, force=payload == "qk",
                            max_tokens=max_tokens)  # fmt: skip
        if built is not None:
            return built
    array: xr.DataArray | None = None
    if attention and doc.has_matrices:
        array = doc.attention
        tokens = tokens_of(array, "query")
    elif attention:
        notes.append("This document stores no attention matrices: text and predictions only.")
    if array is None:
        tokens = doc.token_table("source") if doc.arrays else pd.DataFrame(columns=["text", "start", "end", "special"])
    n = len(tokens)
    start, stop = pick_window(n, max_tokens, window)
    _window_note(notes, start, stop, n, max_tokens)
    blobs: dict[str, str] = {}
    layer_labels: list[int] = []
    head_labels: list[int] = []
    max_error = 0.0
    if array is not None:
        array = array.isel(query=slice(start, stop), key=slice(start, stop))
        if heads is not None:
            array = array.isel(head=list(heads))
            notes.append(f"Only heads {', '.join(map(str, array['head'].values))} are exported.")
        chosen = _choose_layers(array, layers, max_bytes, notes)
        if hasattr(array.data, "dask"):  # read once; in-memory arrays are indexed as views instead
            array, chosen = _load(array.isel(layer=chosen)), list(range(len(chosen)))
        for j, i in enumerate(chosen):
            q, scale = quantize_rows(array.data[i], per=quantization)
            blobs[f"attviz-d{index}-l{j}"] = encode_layer(q, scale, encoding)
            max_error = max(max_error, error_bound(scale))
            layer_labels.append(int(array["layer"].values[i]))
        head_labels = [int(h) for h in array["head"].values]
    entry = _entry(doc, tokens, start, stop, layer_labels, head_labels, blobs, notes)
    return DocumentPayload(entry, blobs, max_error)


def _window_note(notes: list[str], start: int, stop: int, n: int, max_tokens: int) -> None:
    if (start, stop) != (0, n):
        notes.append(
            f"Tokens {start + 1:,}–{stop:,} of {n:,} are exported (at most {max_tokens:,} tokens a document; "
            "choose another window with window=(start, stop)). Attention to tokens outside the window is left "
            "out, so rows do not sum to 1."
        )


def _finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _entry(
    doc: Document,
    tokens: pd.DataFrame,
    start: int,
    stop: int,
    layer_labels: list[int],
    head_labels: list[int],
    blobs: dict[str, str],
    notes: list[str],
) -> dict[str, Any]:
    """The manifest entry of a document (its ``payload`` is ``"matrix"``; a q/k entry adds ``qk``)."""
    n = len(tokens)
    layout = text_layout(tokens, doc.text, start, stop)
    # a class without a probability (NaN: a gold label outside a zero-shot model's labels) is null in JSON
    probabilities = [[str(k), _finite_or_none(v)] for k, v in (doc.probabilities or {}).items()]
    wrong = doc.label is not None and doc.prediction is not None and doc.label != doc.prediction
    option = " · ".join(str(v) for v in (doc.id, doc.label) if v) + (f" → {doc.prediction}" if doc.prediction else "")
    entry = {
        "id": doc.id,
        "option": option + (" ✗" if wrong else ""),
        "label": doc.label,
        "prediction": doc.prediction,
        "probabilities": probabilities,
        "n_tokens": n,
        "start": start,
        "tokens": tokens["text"].tolist()[start:stop],
        **vars(layout),
        "lead": "… " if start > 0 else "",
        "trail": " …" if stop < n else "",
        "layers": layer_labels,
        "heads": head_labels,
        "blobs": list(blobs),
        "notes": notes,
        "payload": "matrix",
    }
    return entry


def _choose_layers(array: xr.DataArray, layers: Sequence[int] | None, max_bytes: int, notes: list[str]) -> list[int]:
    """Positions of the layers to export: those asked for, or as many as fit ``max_bytes``."""
    n_heads, n = array.sizes["head"], array.sizes["query"]
    labels = [int(v) for v in array["layer"].values]
    return _pick(labels, layers, n_heads * n * (n + 4), max_bytes, notes)


def _pick(labels: list[int], layers: Sequence[int] | None, layer_bytes: int, max_bytes: int,
          notes: list[str]) -> list[int]:  # fmt: skip
    n_layers = len(labels)
    if layers is not None:
        chosen = sorted({int(i) % n_layers for i in layers if -n_layers <= int(i) < n_layers})
        if not chosen:
            raise ValueError(f"none of the layers {list(layers)} exists (the model has {n_layers})")
    else:
        chosen = pick_layers(n_layers, layer_bytes, max_bytes)
    if len(chosen) < n_layers:
        shown = ", ".join(str(labels[i]) for i in chosen)
        why = "as asked" if layers is not None else f"to stay under {max_bytes / 2**20:.0f} MiB a document"
        notes.append(f"Layers {shown} of {n_layers} are exported ({why}).")
    return chosen


def _qk_payload(
    doc: Document,
    kept: QKAttention,
    index: int,
    *,
    max_tokens: int,
    window: tuple[int, int] | None,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    max_bytes: int,
    encoding: str,
    quantization: str,
    force: bool,
) -> DocumentPayload | None:
    """The document as queries and keys, or None where the matrix payload is smaller (unless
    ``force``) or a value does not fit float16. Up to ``max(QK_MAX_TOKENS, max_tokens)`` tokens are
    exported whole; the matrix payload would keep the first ``max_tokens``."""
    notes: list[str] = []
    tokens = tokens_of(doc.attention, "query")
    n_doc = len(tokens)
    limit = max(QK_MAX_TOKENS, max_tokens)
    start, stop = pick_window(n_doc, limit, window)
    n_heads = kept.shape[1]
    positions = list(range(n_heads)) if heads is None else [int(p) for p in np.arange(n_heads)[list(heads)]]
    if heads is not None:
        notes.append(f"Only heads {', '.join(str(kept.head_ids[p]) for p in positions)} are exported.")
    dim = int(kept.query.shape[3])
    n_key_heads = len({kept.key_head(h) for h in positions})
    layer_bytes = qk_layer_bytes(len(positions), n_key_heads, stop - start, dim, kept.bias is not None)
    chosen = _pick(kept.layer_ids, layers, layer_bytes, max_bytes, notes)
    blobs: dict[str, str] = {}
    errors, row_errors = [], []
    for j, layer in enumerate(chosen):
        built = build_layer(kept, layer, positions, start, stop)
        if built is None:
            return None
        text = encode_qk_layer(built.layer, encoding)
        if j == 0 and not force and pick_window(n_doc, max_tokens, window) == (start, stop):
            # The matrix payload would show the same tokens: keep whichever is smaller.
            estimate = matrix_layer_estimate(kept, layer, positions, start, stop, quantization)
            if encoding == "raw":
                estimate = len(positions) * (stop - start) * (stop - start + 4)
            if 4 * estimate / 3 <= len(text):
                return None
        blobs[f"attviz-d{index}-l{j}"] = text
        errors.append(built.max_error)
        row_errors.append(built.max_row_sum_error)
        key_heads = built.layer.key_heads
    if (start, stop) != (0, n_doc):
        notes.append(
            f"Tokens {start + 1:,}–{stop:,} of {n_doc:,} are exported (at most {limit:,} tokens a document as "
            "queries and keys; choose another window with window=(start, stop)). Attention to tokens outside the "
            "window is left out, so rows do not sum to 1."
        )
    layer_labels = [kept.layer_ids[i] for i in chosen]
    head_labels = [kept.head_ids[p] for p in positions]
    entry = _entry(doc, tokens, start, stop, layer_labels, head_labels, blobs, notes)
    max_error = max(errors, default=0.0)
    entry["payload"] = "qk"
    entry["qk"] = {
        "dim": dim,
        "n_key_heads": n_key_heads,
        "key_heads": key_heads,
        "rules": [kept.rules[i].as_json() for i in chosen],
        "bias": kept.bias is not None,
        "max_error": max_error,
        "row_sum_error": max(row_errors, default=0.0),
        "store_error": kept.error,
    }
    return DocumentPayload(entry, blobs, max_error, kind="qk")


def _load(array: xr.DataArray) -> xr.DataArray:
    """Read a dask-backed array in one go, on this thread (many small chunks read faster so)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return array.load()
