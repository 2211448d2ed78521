"""The queries-and-keys payload of an exported page: the browser computes the weights it shows.

A document kept as queries and keys (:class:`attviz.qk.QKAttention`) is exported as its ``q`` and
``k`` instead of ``T × T`` matrices where that is smaller (from a few hundred tokens on: ``2·T·d``
numbers a head instead of ``T²``), and without a window up to :data:`QK_MAX_TOKENS` tokens.

Payload of one layer (one ``<script type="application/octet-stream">`` element, base64, deflated
like the matrix payload): the bytes of

* ``lse``: float32 ``heads × queries``, each row's log-sum-exp of the logits computed from the
  float16 values below (so that the weights the page computes sum to 1 a row);
* ``bias``: float32 ``heads × (2·T - 1)`` (offset ``j - i + T - 1``), only when the entry says so;
* ``q`` (float16 ``heads × queries × dim``) then ``k`` (float16 ``key heads × keys × dim``), their
  bytes shuffled: every value's low byte first, then every high byte (deflate finds the similar
  high bytes together: ~7 % smaller).

Keys are centred per key head (their mean over the keys subtracted) unless the layer soft-caps its
logits: that adds one constant to each row's logits, which the softmax ignores, and keeps float16's
relative error small against the keys' spread. A weight is ``exp(logit(i, j) - lse[i])`` with
``logit = scaling · q_i · k_j`` (soft-capped when the rule says so) ``+ bias`` where the rule
``(scaling, left, right, softcap)`` allows ``i - j ≤ left`` and ``j - i ≤ right`` (``-1``:
unlimited), else 0.

Why float16: on real MiniLM attention (512 tokens) int8 with a scale a vector is 40 % smaller but
its weights are off by up to 0.047; float16 stays within 0.0018 (under the matrix payload's
1/510 ≈ 0.00196) at 4.1 MB deflated against 7.9 MB of uint8 matrices. The error is measured, not
estimated: every exported weight computed as the page does (float64 from the float16 values) is
compared with the weights of the stored float32 queries and keys; the page states the largest.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attviz.qk import QKAttention, Rule
from attviz.quantize import quantize_rows

#: Documents up to this many tokens are exported whole as queries and keys (no window).
QK_MAX_TOKENS = 8192
#: Logit elements computed at once when measuring (32 MB of float64).
BLOCK_ELEMENTS = 1 << 22
#: Rows sampled a head to estimate the deflated size of the matrix payload.
SAMPLE_ROWS = 256
F16_MAX = 65504.0


def _deflate(raw: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return packer.compress(raw) + packer.flush()


def shuffle16(values: np.ndarray) -> bytes:
    """float16 ``values`` as bytes: all low bytes, then all high bytes (little-endian halves)."""
    pairs = np.ascontiguousarray(values, dtype="<f2").view(np.uint8).reshape(-1, 2)
    return pairs.T.tobytes()


def unshuffle16(raw: bytes, count: int) -> np.ndarray:
    """The inverse of :func:`shuffle16`: ``count`` float16 values."""
    planes = np.frombuffer(raw, dtype=np.uint8, count=2 * count).reshape(2, count)
    return np.ascontiguousarray(planes.T).view("<f2").reshape(-1)


@dataclass
class QKLayer:
    """One layer as the page has it: float32 ``query`` (head, T, dim), ``key`` (key head, T, dim),
    ``lse`` (head, T), ``bias`` (head, 2T-1) or None, and the layer's :class:`Rule`."""

    query: np.ndarray
    key: np.ndarray
    lse: np.ndarray
    bias: np.ndarray | None
    rule: Rule
    key_heads: list[int]

    def logits(self, head: int, rows: np.ndarray, cols: slice | None = None) -> np.ndarray:
        cols = cols or slice(0, self.key.shape[1])
        bias = None if self.bias is None else self.bias[head]
        return block_logits(self.query[head, rows], self.key[self.key_heads[head], cols], self.rule, bias, rows, cols)

    def weights(self, head: int, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of one head's weights (float64, ``len(rows) × T``), computed as the page does."""
        n = self.query.shape[1]
        rows = np.arange(n)[rows if rows is not None else slice(None)]
        scores = self.logits(head, rows)
        return np.exp(scores - self.lse[head, rows, None].astype(np.float64))


def block_logits(
    q: np.ndarray, k: np.ndarray, rule: Rule, bias: np.ndarray | None, rows: np.ndarray, cols: slice
) -> np.ndarray:
    """float64 logits of queries ``q`` (positions ``rows``) against keys ``k`` (positions ``cols``),
    ``-inf`` where the rule masks; ``bias`` is one head's (2T-1) offsets of a ``T``-token window."""
    scores = q.astype(np.float64) @ k.astype(np.float64).T
    scores *= rule.scaling
    if rule.softcap:
        scores = np.tanh(scores / rule.softcap) * rule.softcap
    i = np.asarray(rows)[:, None]
    j = np.arange(cols.start, cols.stop)[None, :]
    if bias is not None:
        scores += bias[j - i + (len(bias) + 1) // 2 - 1]
    if rule.left >= 0:
        scores[(i - j) > rule.left] = -np.inf
    if rule.right >= 0:
        scores[(j - i) > rule.right] = -np.inf
    return scores


def encode_qk_layer(layer: QKLayer, encoding: str = "deflate") -> str:
    """One layer's q/k payload as base64 text (see the module docstring)."""
    raw = np.ascontiguousarray(layer.lse, dtype="<f4").tobytes()
    if layer.bias is not None:
        raw += np.ascontiguousarray(layer.bias, dtype="<f4").tobytes()
    raw += shuffle16(np.concatenate([layer.query.ravel(), layer.key.ravel()]).astype(np.float16))
    if encoding == "deflate":
        raw = _deflate(raw)
    return base64.b64encode(raw).decode("ascii")


def decode_qk_layer(text: str, entry: dict, layer: int, encoding: str = "deflate") -> QKLayer:
    """Decode one layer's q/k payload text with its manifest ``entry`` (the page's reference decoder)."""
    raw = base64.b64decode(text)
    if encoding == "deflate":
        raw = zlib.decompress(raw)
    n, heads, dim = len(entry["tokens"]), len(entry["heads"]), entry["qk"]["dim"]
    key_heads, has_bias = entry["qk"]["n_key_heads"], entry["qk"]["bias"]
    n_bias = heads * (2 * n - 1) if has_bias else 0
    n_vectors = (heads + key_heads) * n * dim
    expected = 4 * (heads * n + n_bias) + 2 * n_vectors
    if len(raw) != expected:
        raise ValueError(f"payload holds {len(raw)} bytes, expected {expected}")
    lse = np.frombuffer(raw, dtype="<f4", count=heads * n).reshape(heads, n)
    offset = 4 * heads * n
    bias = None
    if has_bias:
        bias = np.frombuffer(raw, dtype="<f4", count=n_bias, offset=offset).reshape(heads, 2 * n - 1)
        offset += 4 * n_bias
    values = unshuffle16(raw[offset:], n_vectors).astype(np.float32)
    query = values[: heads * n * dim].reshape(heads, n, dim)
    key = values[heads * n * dim :].reshape(key_heads, n, dim)
    rule = Rule.from_json(entry["qk"]["rules"][layer])
    return QKLayer(query, key, lse.astype(np.float32), None if bias is None else bias.astype(np.float32), rule,
                   list(entry["qk"]["key_heads"]))  # fmt: skip


# -- building a layer ------------------------------------------------------------------------------
@dataclass
class BuiltLayer:
    """A layer ready to encode, with the largest weight error measured while building it."""

    layer: QKLayer
    max_error: float
    max_row_sum_error: float


def build_layer(qk: QKAttention, layer: int, heads: Sequence[int], start: int, stop: int) -> BuiltLayer | None:
    """The page's float16 queries and keys of one stored layer (positions ``heads``, tokens
    ``start:stop``), their log-sum-exp over every key of the document, and the measured error of the
    weights computed from them against the stored float32 queries and keys; None when a value does
    not fit float16."""
    n_doc = qk.shape[2]
    rule = qk.rules[layer]
    query = qk._layer("query", layer)
    key = qk._layer("key", layer)
    bias_all = qk._layer("bias", layer) if qk.bias is not None else None
    key_heads = sorted({qk.key_head(h) for h in heads})
    position = {kh: i for i, kh in enumerate(key_heads)}
    q16 = query[list(heads)].astype(np.float16)
    kept = key[key_heads]
    if not rule.softcap:  # a constant per row of logits: the softmax ignores it
        kept = kept - kept.mean(axis=1, keepdims=True)
    k16 = kept.astype(np.float16)
    if not (np.isfinite(q16).all() and np.isfinite(k16).all()):
        return None
    q_page, k_page = q16.astype(np.float32), k16.astype(np.float32)
    n = stop - start
    lse = np.empty((len(heads), n), dtype=np.float32)
    worst = row_worst = 0.0
    step = max(1, BLOCK_ELEMENTS // max(n_doc, 1))
    for p, h in enumerate(heads):
        bias = None if bias_all is None else bias_all[h]
        kh = qk.key_head(h)
        for r0 in range(start, stop, step):
            rows = np.arange(r0, min(stop, r0 + step))
            cols = _span(rule, rows, n_doc)
            mine = block_logits(q_page[p, rows], k_page[position[kh], cols], rule, bias, rows, cols)
            top = mine.max(axis=1, keepdims=True)
            total = np.exp(mine - top).sum(axis=1, keepdims=True)
            row_lse = top + np.log(total)
            lse[p, rows - start] = row_lse[:, 0]
            got = np.exp(mine - lse[p, rows - start, None].astype(np.float64))
            ref = block_logits(query[h, rows], key[kh, cols], rule, bias, rows, cols)
            ref = np.exp(ref - ref.max(axis=1, keepdims=True))
            ref /= ref.sum(axis=1, keepdims=True)
            worst = max(worst, float(np.abs(got - ref).max(initial=0.0)))
            row_worst = max(row_worst, float(np.abs(got.sum(axis=1) - 1).max(initial=0.0)))
    bias_window = None
    if bias_all is not None:  # offsets -(n-1)..n-1 of the window, from the document's -(n_doc-1)..
        bias_window = bias_all[list(heads), n_doc - n : n_doc + n - 1].astype(np.float32)
    page = QKLayer(
        q16[:, start:stop], k16[:, start:stop], lse, bias_window, rule, [position[qk.key_head(h)] for h in heads]
    )
    return BuiltLayer(page, worst, row_worst)


def _span(rule: Rule, rows: np.ndarray, n: int) -> slice:
    lo = max(0, int(rows[0]) - rule.left) if rule.left >= 0 else 0
    hi = min(n, int(rows[-1]) + rule.right + 1) if rule.right >= 0 else n
    return slice(lo, max(lo, hi))


def matrix_layer_estimate(qk: QKAttention, layer: int, heads: Sequence[int], start: int, stop: int,
                          quantization: str = "row") -> float:  # fmt: skip
    """Estimated deflated bytes of the uint8 matrix payload of one layer (window ``start:stop``), from
    up to :data:`SAMPLE_ROWS` evenly spaced rows a head (exact when the window has no more rows)."""
    n_doc, n = qk.shape[2], stop - start
    rows = np.unique(np.linspace(start, stop - 1, min(n, SAMPLE_ROWS)).round().astype(int))
    rule = qk.rules[layer]
    bias_all = qk._layer("bias", layer) if qk.bias is not None else None
    query, key = qk._layer("query", layer), qk._layer("key", layer)
    parts = []
    for h in heads:
        bias = None if bias_all is None else bias_all[h]
        scores = block_logits(query[h, rows], key[qk.key_head(h)], rule, bias, rows, slice(0, n_doc))
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        parts.append(weights[:, start:stop].astype(np.float32))
    q, scale = quantize_rows(np.stack(parts), per=quantization)
    sampled = len(_deflate(np.ascontiguousarray(scale, "<f4").tobytes() + q.tobytes()))
    return sampled * n / len(rows)


def qk_layer_bytes(n_heads: int, n_key_heads: int, n: int, dim: int, bias: bool) -> int:
    """Bytes of one layer's q/k payload before compression."""
    return 4 * n_heads * n + (4 * n_heads * (2 * n - 1) if bias else 0) + 2 * (n_heads + n_key_heads) * n * dim
