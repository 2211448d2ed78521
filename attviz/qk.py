"""Attention kept as queries and keys, and rebuilt exactly when it is needed.

A head's attention is a pure function of its queries and keys (Vaswani et al. 2017, "Attention is
all you need", eq. 1)::

    A = softmax(softcap(q · kᵀ · scale) + bias + mask)

so a store can keep the post-RoPE ``q`` (layer, head, query, dim) and ``k`` (layer, key head, key,
dim; grouped-query models keep fewer key heads, Ainslie et al. 2023) in float16 instead of every
``T × T`` matrix: ``2·T·d`` numbers a head instead of ``T²``. What else the rebuild needs is kept
with them: the scaling and logit soft-capping (Gemma 2) per layer, the mask as a rule per layer (a
band ``-left ≤ j - i ≤ right``: causal, sliding window or none, never a stored ``T × T`` mask), an
additive relative-position bias as one value per head and offset ``j - i`` (T5's bucketed bias,
Raffel et al. 2020; ALiBi, Press et al. 2022), and each row's log-sum-exp, so that a tile, a row or
a column sum is computed without the rest of its rows (the online-softmax identity of Milakov &
Gimelshein 2018, as in FlashAttention, Dao et al. 2022).

:class:`QKAttention` is one document's kind in this encoding (numpy or zarr-backed arrays, loaded
per layer); :meth:`QKAttention.to_dataarray` gives the ``(layer, head, query, key)`` DataArray the
rest of attviz reads, computed lazily per (layer, head) block with dask.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from attviz.corpus import attention_array, token_coords

#: The arrays of one kind in a store, by role: ``{kind}_{suffix}``.
QK_SUFFIXES = {
    "query": "_qk_query",
    "query_scale": "_qk_query_scale",
    "key": "_qk_key",
    "key_scale": "_qk_key_scale",
    "lse": "_qk_lse",
    "bias": "_qk_bias",
}
#: The one array a document's kind keeps in a store (``{kind}_qk``) and, where the model adds one, its bias.
QK_ARRAY, QK_BIAS_ARRAY = "_qk", "_qk_bias"
#: The parts packed in :data:`QK_ARRAY`'s rows (one row a layer), in order, and their dtypes.
PACKED = (("query", "<i2"), ("key", "<i2"), ("query_scale", "<f4"), ("key_scale", "<f4"), ("lse", "<f4"))
#: q and k as int16 with one float32 scale per vector (|x| max / 32767): the same two bytes a value as
#: float16 but 15 bits of precision for a vector's largest components instead of 11, which is what
#: a dot product's error follows (MiniLM, 488 tokens: rebuilt weights within 1.6e-4 of eager, against
#: 2.3e-3 from float16 q and k).
QK_ENCODING = "qk-int16-vector-scale"
INT16_MAX = 32767
#: Elements of one block of logits computed at once (64 MB of float32).
BLOCK_ELEMENTS = 1 << 24
UNLIMITED = -1


def pack(values: QKAttention) -> tuple[np.ndarray, list[list]]:
    """A document kind's q/k as one ``(layer, n)`` int16 array — a row a layer holding its query and key
    (int16), their scales and the row log-sum-exp (float32 as their little-endian bytes read as int16),
    each part padded to whole float32 words — and its layout ``[[name, dtype, shape, offset], ...]``
    (offset and length in int16 words). One array, so a store keeps a document in one shard, one
    inner chunk per layer."""
    parts, layout, offset = [], [], 0
    n_layers = int(values.query.shape[0])
    for name, dtype in PACKED:
        array = np.ascontiguousarray(np.asarray(getattr(values, name)), dtype=dtype).reshape(n_layers, -1)
        words = array.view("<i2")
        if words.shape[1] % 2:
            words = np.concatenate([words, np.zeros((n_layers, 1), dtype="<i2")], axis=1)
        layout.append([name, dtype, list(np.asarray(getattr(values, name)).shape[1:]), offset])
        parts.append(words)
        offset += words.shape[1]
    return np.concatenate(parts, axis=1), layout


class PackedPart:
    """One part (``query``, ``key``, a scale or the lse) of a stored :func:`pack` array, read a layer
    (one inner chunk) at a time; the rows read are kept, so q and k of a layer cost one read."""

    def __init__(self, array: Any, rows: dict[int, np.ndarray], dtype: str, shape: Sequence[int], offset: int):
        self.array, self._rows, self.dtype, self.part_shape, self.offset = (
            array,
            rows,
            np.dtype(dtype),
            tuple(shape),
            offset,
        )
        self.shape = (int(array.shape[0]), *self.part_shape)

    def _row(self, layer: int) -> np.ndarray:
        if layer not in self._rows:
            self._rows.clear()  # one layer at a time
            self._rows[layer] = np.asarray(self.array[layer], dtype="<i2")
        return self._rows[layer]

    def __getitem__(self, index: Any) -> np.ndarray:
        if index is Ellipsis:
            return np.stack([self[layer] for layer in range(self.shape[0])])
        words = int(np.prod(self.part_shape)) * self.dtype.itemsize // 2
        row = self._row(int(index))[self.offset : self.offset + words]
        return row.view(self.dtype).reshape(self.part_shape)


def unpack(array: Any, layout: Sequence[Sequence[Any]]) -> dict[str, PackedPart]:
    """The parts of a stored :func:`pack` array, each read lazily a layer at a time."""
    rows: dict[int, np.ndarray] = {}
    return {name: PackedPart(array, rows, dtype, shape, offset) for name, dtype, shape, offset in layout}


def band_mask(
    n: int, m: int, left: int, right: int, rows: slice | None = None, cols: slice | None = None
) -> np.ndarray:
    """``allowed[i, j]`` for the band rule ``i - j ≤ left`` and ``j - i ≤ right`` (``-1``: unlimited)."""
    i = np.arange(n)[rows if rows is not None else slice(None)][:, None]
    j = np.arange(m)[cols if cols is not None else slice(None)][None, :]
    allowed = np.ones((i.shape[0], j.shape[1]), dtype=bool)
    if left >= 0:
        allowed &= i - j <= left
    if right >= 0:
        allowed &= j - i <= right
    return allowed


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float32 logits, in place."""
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


def _bounded(part: slice, n: int) -> slice:
    """``part`` with explicit, non-negative start and stop within ``n`` (step 1)."""
    start, stop, _ = part.indices(n)
    return slice(start, max(start, stop))


def _mask(scores: np.ndarray, rule: Rule, rows: slice, cols: slice, n: int, m: int) -> None:
    """Set the block's cells that the rule masks to ``-inf``, touching only the columns where a cut can be."""
    if rule.right >= 0:  # j - i > right happens from column rows.start + right + 1 on
        start = max(cols.start, rows.start + rule.right + 1)
        if start < cols.stop:
            allowed = band_mask(n, m, UNLIMITED, rule.right, rows, slice(start, cols.stop))
            np.copyto(scores[:, start - cols.start :], -np.inf, where=~allowed)
    if rule.left >= 0:  # i - j > left happens up to column rows.stop - 2 - left
        stop = min(cols.stop, rows.stop - 1 - rule.left)
        if stop > cols.start:
            allowed = band_mask(n, m, rule.left, UNLIMITED, rows, slice(cols.start, stop))
            np.copyto(scores[:, : stop - cols.start], -np.inf, where=~allowed)


@dataclass
class Rule:
    """How one layer's logits are formed from ``q · kᵀ`` (see the module docstring)."""

    scaling: float
    left: int = UNLIMITED
    right: int = UNLIMITED
    softcap: float | None = None

    @property
    def causal(self) -> bool:
        return self.right == 0

    def as_json(self) -> list:
        return [
            float(self.scaling),
            int(self.left),
            int(self.right),
            None if self.softcap is None else float(self.softcap),
        ]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> Rule:
        scaling, left, right, softcap = value
        return cls(float(scaling), int(left), int(right), None if softcap is None else float(softcap))


@dataclass
class QKAttention:
    """One document's attention of one kind, kept as queries and keys.

    ``query``: (layer, head, query, dim), ``key``: (layer, key head, key, dim) (int16 with
    ``query_scale``/``key_scale`` (layer, head, token) float32, or float arrays without scales; numpy,
    or zarr arrays read one layer at a time); ``lse``: (layer, head, query) float32 row
    log-sum-exp; ``bias``: (layer, head, offset) float32 with offset ``j - i + n_query - 1``, or None;
    ``rules``: one :class:`Rule` per stored layer.
    """

    query: Any
    key: Any
    lse: Any
    rules: list[Rule]
    query_tokens: pd.DataFrame | None = None
    key_tokens: pd.DataFrame | None = None
    bias: Any = None
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    #: Query heads per key head of the model (grouped-query attention); ``key`` keeps every key head.
    groups: int = 1
    query_scale: Any = None
    key_scale: Any = None
    name: str = "attention"
    #: Max abs error of the rebuilt weights against the model's eager weights, where measured.
    error: float | None = None
    _cache: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    # -- shape -------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        n_layers, n_heads, n_query, _ = self.query.shape
        return n_layers, n_heads, n_query, int(self.key.shape[2])

    def key_head(self, head: int) -> int:
        """The stored key head that the query head at position ``head`` attends with."""
        model_head = int(self.heads[head]) if self.heads is not None else head
        return model_head // self.groups

    def with_tokens(self, query_tokens: pd.DataFrame, key_tokens: pd.DataFrame, name: str) -> QKAttention:
        """This attention labelled with its token tables (what a store or a sink adds)."""
        self.query_tokens, self.key_tokens, self.name = query_tokens, key_tokens, name
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (float16 q and k, float32 lse and bias)."""
        total = 0
        for value in (getattr(self, role) for role in QK_SUFFIXES):
            if value is not None:
                total += int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        return total

    def _layer(self, what: str, layer: int) -> np.ndarray:
        """One layer of ``query``/``key``/``lse``/``bias`` as float32 numpy (read once, kept)."""
        key = (what, layer)
        if key not in self._cache:
            values = np.asarray(getattr(self, what)[layer], dtype=np.float32)
            scale = getattr(self, f"{what}_scale", None)
            if scale is not None:
                values *= np.asarray(scale[layer], dtype=np.float32)[..., None]
            self._cache[key] = values
        return self._cache[key]

    # -- logits and weights --------------------------------------------------------------------------
    def logits(self, layer: int, head: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Masked logits of one head (float32, ``-inf`` where the rule masks), for a block of rows × cols."""
        n_query, n_key = self.shape[2:]
        rows, cols = _bounded(rows, n_query), _bounded(cols, n_key)
        rule = self.rules[layer]
        q = self._layer("query", layer)[head, rows]
        k = self._layer("key", layer)[self.key_head(head), cols]
        scores = q @ k.T
        scores *= np.float32(rule.scaling)
        if rule.softcap:
            scores /= np.float32(rule.softcap)
            np.tanh(scores, out=scores)
            scores *= np.float32(rule.softcap)
        if self.bias is not None:
            offsets = np.arange(cols.start, cols.stop)[None, :] - np.arange(rows.start, rows.stop)[:, None]
            scores += self._layer("bias", layer)[head][offsets + (n_query - 1)]
        _mask(scores, rule, rows, cols, n_query, n_key)
        return scores

    def span(self, layer: int, rows: slice) -> slice:
        """The keys that any query of ``rows`` may attend under the layer's rule (the rest weigh 0)."""
        n_query, n_key = self.shape[2:]
        rows = _bounded(rows, n_query)
        rule = self.rules[layer]
        start = max(0, rows.start - rule.left) if rule.left >= 0 else 0
        stop = min(n_key, rows.stop + rule.right) if rule.right >= 0 else n_key
        return slice(start, max(start, stop))

    def matrix(self, layer: int, head: int) -> np.ndarray:
        """One head's full ``(query, key)`` weights, float32 (a row-wise softmax of its logits)."""
        return self.rows(layer, head, slice(None))

    def rows(self, layer: int, head: int, rows: slice | int) -> np.ndarray:
        """Whole rows of one head's weights, each normalised by its own softmax (exact, like
        :meth:`matrix`); O(rows · T · d)."""
        single = isinstance(rows, int | np.integer)
        if single:
            row = int(rows) % self.shape[2]
            rows = slice(row, row + 1)
        rows = _bounded(rows, self.shape[2])
        out = np.zeros((rows.stop - rows.start, self.shape[3]), dtype=np.float32)
        span = self.span(layer, rows)
        if span.stop > span.start:
            out[:, span] = _softmax(self.logits(layer, head, rows, span))
        return out[0] if single else out

    def tile(self, layer: int, head: int, rows: slice, cols: slice) -> np.ndarray:
        """A block of one head's weights normalised by the stored row log-sum-exp, so that no other
        key of its rows is computed (the matrix view's tiles); keys outside the rows' :meth:`span` are
        0 without being computed. The log-sum-exp is the kernel's, of the model's float32 logits, so a
        tile differs from :meth:`rows` by the logits' rounding (MiniLM: ≤ 1e-3, the check's
        ``tile_error``), where rows renormalise it away."""
        n_query, n_key = self.shape[2:]
        rows, cols = _bounded(rows, n_query), _bounded(cols, n_key)
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=np.float32)
        span = self.span(layer, rows)
        inner = slice(max(cols.start, span.start), min(cols.stop, span.stop))
        if inner.stop > inner.start:
            out[:, inner.start - cols.start : inner.stop - cols.start] = self._weights(layer, head, rows, inner)
        return out

    def _weights(self, layer: int, head: int, rows: slice, cols: slice) -> np.ndarray:
        scores = self.logits(layer, head, rows, cols)
        scores -= self._layer("lse", layer)[head, rows][:, None]
        return np.exp(scores, out=scores)

    def pooled(self, layer: int, head: int, rows: slice, cols: slice, fr: int, fc: int) -> np.ndarray:
        """The max of every ``fr × fc`` block of one head's weights over ``rows × cols`` (what a matrix
        view draws at the screen's resolution), without the weights themselves: the max is taken over
        logits minus the row's log-sum-exp and exponentiated once per block (exp is monotonic); keys
        outside each block of rows' :meth:`span` are not computed. Block rows run on a thread per core."""
        n_query, n_key = self.shape[2:]
        rows, cols = _bounded(rows, n_query), _bounded(cols, n_key)
        out_rows = -(-(rows.stop - rows.start) // fr)
        out_cols = -(-(cols.stop - cols.start) // fc)
        out = np.full((out_rows, out_cols), -np.inf, dtype=np.float32)
        self._layer("query", layer), self._layer("key", layer), self._layer("lse", layer)
        if self.bias is not None:
            self._layer("bias", layer)
        step = fr * max(1, BLOCK_ELEMENTS // (fr * max(1, cols.stop - cols.start)))

        def block(start: int) -> None:
            part = slice(start, min(rows.stop, start + step))
            span = self.span(layer, part)
            lo = cols.start + max(0, (span.start - cols.start) // fc * fc)  # on the fc grid from cols.start
            hi = min(cols.stop, span.stop)
            if hi <= lo:
                return
            scores = self.logits(layer, head, part, slice(lo, hi))
            scores -= self._layer("lse", layer)[head, part][:, None]
            n_rows, n_cols = scores.shape
            pad_rows, pad_cols = -n_rows % fr, -n_cols % fc
            if pad_rows or pad_cols:
                scores = np.pad(scores, ((0, pad_rows), (0, pad_cols)), constant_values=-np.inf)
            pooled = scores.reshape(scores.shape[0] // fr, fr, scores.shape[1] // fc, fc).max(axis=(1, 3))
            r0, c0 = (part.start - rows.start) // fr, (lo - cols.start) // fc
            out[r0 : r0 + pooled.shape[0], c0 : c0 + pooled.shape[1]] = pooled

        starts = range(rows.start, rows.stop, step)
        workers = max(1, min(len(starts), os.cpu_count() or 1))
        if workers == 1:
            for start in starts:
                block(start)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(block, starts))
        return np.exp(out, out=out)

    def row_blocks(self, n_cols: int | None = None) -> int:
        """Rows per block so that one block of logits stays within :data:`BLOCK_ELEMENTS`."""
        return max(1, BLOCK_ELEMENTS // max(1, n_cols or self.shape[3]))

    def received(self, layer: int, head: int) -> np.ndarray:
        """Column sums of one head's weights (attention each key receives), block by block of rows over
        each block's :meth:`span`, in O(block) memory; the blocks run on a thread per core (numpy
        releases the GIL in the matrix product and the exponential)."""
        n_query, n_key = self.shape[2:]
        self._layer("query", layer), self._layer("key", layer), self._layer("lse", layer)  # read once, here
        if self.bias is not None:
            self._layer("bias", layer)
        step = self.row_blocks()
        blocks = [slice(start, min(n_query, start + step)) for start in range(0, n_query, step)]
        workers = max(1, min(len(blocks), os.cpu_count() or 1))

        def part(mine: Sequence[slice]) -> np.ndarray:
            total = np.zeros(n_key, dtype=np.float64)
            for rows in mine:
                span = self.span(layer, rows)
                if span.stop > span.start:
                    weights = self._weights(layer, head, rows, span)  # exp(logits - lse): rows sum to ~1
                    total[span] += (1.0 / weights.sum(axis=1)) @ weights  # each row renormalised, in one product
            return total

        if workers == 1:
            return part(blocks).astype(np.float32)
        with ThreadPoolExecutor(workers) as pool:  # interleaved: causal blocks grow with the row
            totals = list(pool.map(part, [blocks[i::workers] for i in range(workers)]))
        return np.sum(totals, axis=0).astype(np.float32)

    def layer(self, layer: int) -> np.ndarray:
        """Every head of one layer, ``(head, query, key)`` float32."""
        return np.stack([self.matrix(layer, h) for h in range(self.shape[1])])

    def loaded(self) -> QKAttention:
        """This attention with every array read into memory as numpy (stored dtypes kept)."""
        arrays = {name: None if getattr(self, name) is None else np.asarray(getattr(self, name)[...])
                  for name in QK_SUFFIXES}  # fmt: skip
        return dataclasses.replace(self, **arrays, _cache={})

    # -- xarray --------------------------------------------------------------------------------------
    def to_dataarray(self) -> xr.DataArray:
        """The ``(layer, head, query, key)`` DataArray, dask-backed: a (layer, head) block is rebuilt
        from q and k only when it is computed."""
        import dask
        import dask.array as da

        n_layers, n_heads, n_query, n_key = self.shape
        block = dask.delayed(self.matrix, pure=False)  # named below: hashing the arrays would cost more
        token = f"qk-{uuid.uuid4().hex}"

        def cell(layer: int, head: int) -> Any:
            key = f"{token}-{layer}-{head}"
            return da.from_delayed(block(layer, head, dask_key_name=key), shape=(n_query, n_key), dtype=np.float32)

        rows = [[cell(layer, head) for head in range(n_heads)] for layer in range(n_layers)]
        values = da.stack([da.stack(row) for row in rows])
        return attention_array(
            values, self.query_tokens, self.key_tokens, layers=self.layers, heads=self.heads, name=self.name
        )

    def head_array(self, layer: int, head: int, tile: tuple[int, int] = (1024, 4096)) -> xr.DataArray:
        """One head's ``(query, key)`` DataArray (layer and head are stored positions) whose dask blocks
        are :meth:`tile` s: a view computes only the blocks it draws, never the whole ``T × T``."""
        import dask
        import dask.array as da

        n_query, n_key = self.shape[2:]
        block = dask.delayed(self.tile, pure=False)
        token = f"qk-tile-{uuid.uuid4().hex}-{layer}-{head}"
        rows = []
        for r in range(0, n_query, tile[0]):
            rs = slice(r, min(n_query, r + tile[0]))
            cells = []
            for c in range(0, n_key, tile[1]):
                cs = slice(c, min(n_key, c + tile[1]))
                shape = (rs.stop - rs.start, cs.stop - cs.start)
                task = block(layer, head, rs, cs, dask_key_name=f"{token}-{r}-{c}")
                cells.append(da.from_delayed(task, shape=shape, dtype=np.float32))
            rows.append(cells)
        array = attention_array(
            da.block(rows)[None, None],
            self.query_tokens,
            self.key_tokens,
            layers=[self.layer_ids[layer]],
            heads=[self.head_ids[head]],
            name=self.name,
        )
        array = array.isel(layer=0, head=0)
        # the matrix view draws it through this (attviz.views.matrix): pooled without the weights
        array.attrs["attviz_pool"] = lambda rows, cols, fr, fc: self.pooled(layer, head, rows, cols, fr, fc)
        return array

    @property
    def layer_ids(self) -> list[int]:
        return [int(v) for v in self.layers] if self.layers is not None else list(range(self.shape[0]))

    @property
    def head_ids(self) -> list[int]:
        return [int(v) for v in self.heads] if self.heads is not None else list(range(self.shape[1]))

    def _position(self, layer: int, head: int) -> tuple[int, int]:
        layers, heads = self.layer_ids, self.head_ids
        if layer not in layers or head not in heads:
            raise KeyError(f"layer {layer}, head {head} is not stored (layers {layers}, heads {heads})")
        return layers.index(layer), heads.index(head)

    def queries(self, layer: int, head: int) -> xr.DataArray:
        """One head's queries ``(query, dim)`` as the model computed them (post-RoPE), float32."""
        i, h = self._position(layer, head)
        return _vectors(self._layer("query", i)[h], self.query_tokens, "query", layer, head, "queries")

    def keys(self, layer: int, head: int) -> xr.DataArray:
        """The keys ``(key, dim)`` that query head ``head`` attends with (its key head under
        grouped-query attention), float32."""
        i, h = self._position(layer, head)
        return _vectors(self._layer("key", i)[self.key_head(h)], self.key_tokens, "key", layer, head, "keys")

    # -- storage -------------------------------------------------------------------------------------
    def stored_attrs(self) -> dict[str, Any]:
        """What the store keeps with the query array: the rules, the encoding and the kept positions."""
        out: dict[str, Any] = {"encoding": QK_ENCODING, "rules": [r.as_json() for r in self.rules]}
        if self.layers is not None:
            out["layer"] = [int(v) for v in self.layers]
        if self.heads is not None:
            out["head"] = [int(v) for v in self.heads]
        out["groups"] = int(self.groups)
        if self.error is not None:
            out["error"] = float(self.error)
        return out

    @classmethod
    def from_stored(
        cls,
        arrays: Mapping[str, Any],
        attrs: Mapping[str, Any],
        query_tokens: pd.DataFrame,
        key_tokens: pd.DataFrame,
        name: str = "attention",
    ) -> QKAttention:
        """The inverse of :meth:`stored_attrs`: ``arrays`` holds ``query``, ``key``, ``lse`` (and ``bias``)."""
        return cls(
            query=arrays["query"],
            key=arrays["key"],
            lse=arrays["lse"],
            bias=arrays.get("bias"),
            query_scale=arrays.get("query_scale"),
            key_scale=arrays.get("key_scale"),
            rules=[Rule.from_json(r) for r in attrs["rules"]],
            query_tokens=query_tokens,
            key_tokens=key_tokens,
            layers=attrs.get("layer"),
            heads=attrs.get("head"),
            groups=int(attrs.get("groups", 1)),
            name=name,
            error=attrs.get("error"),
        )


def _vectors(values: np.ndarray, tokens: pd.DataFrame, dim: str, layer: int, head: int, name: str) -> xr.DataArray:
    coords = {**token_coords(tokens, dim), "dim": np.arange(values.shape[1], dtype=np.int32)}
    return xr.DataArray(
        values,
        dims=(dim, "dim"),
        coords={**coords, "layer": layer, "head": head},
        name=name,
        attrs={"long_name": f"{name} (post-RoPE, as the attention function received them)", "units": "1"},
    )


def matrix_bytes(
    n_layers: int, n_heads: int, n_query: int, n_key: int, causal: bool = False, value_bytes: int = 2
) -> float:
    """Bytes of matrices (float16: 2 a value; uint8 rows: 1 and a float32 scale a row), as they compress:
    a causal matrix's upper half is zeros."""
    scales = 0 if value_bytes == 2 else n_layers * n_heads * n_query * 4
    return n_layers * n_heads * n_query * n_key * value_bytes * (0.5 if causal else 1.0) + scales


def qk_bytes(n_layers: int, n_heads: int, n_key_heads: int, dim: int, n_query: int, n_key: int) -> float:
    """Bytes of the ``qk`` encoding: int16 q and k with a float32 scale a vector, and the float32 row
    log-sum-exp."""
    return n_layers * ((n_heads * n_query + n_key_heads * n_key) * (dim * 2 + 4) + n_heads * n_query * 4)
