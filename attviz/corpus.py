"""The attention data model: :class:`Document` and :class:`Corpus`.

A document's attention is an :class:`xarray.DataArray` per *kind*:

- ``"self"``: encoder-only or decoder-only models, dims ``("layer", "head", "query", "key")``;
- ``"encoder"``, ``"decoder"``, ``"cross"``: encoder-decoder models (cross has decoder queries and
  encoder keys);
- ``"vectors"``: per-token vectors without matrices, dims ``("vector", "token")`` (the original
  AttViz format stores only these);
- ``"<kind>_vectors"`` (e.g. ``"self_vectors"``): token-level aggregations kept by a storage policy,
  dims ``("vector", "layer", "head", "token")``, and ``"<kind>_summary"``: per-head statistics,
  dims ``("layer", "head", "statistic")`` (see :mod:`attviz.policy`);
- ``"capture_<id>"`` (e.g. ``"capture_value_norm"``): what a capture plugin recorded from the model
  during extraction (see :mod:`attviz.captures`), with the dims the plugin declares; its token dims
  index the source tokens. When its dims are among a matrix's, :meth:`Document.get` attaches it to
  that matrix as the coordinate ``<id>`` (so ``doc.attention.isel(layer=2, head=0)`` carries a
  ``value_norm`` coordinate along ``key``).

Every token dimension ``d`` (``query``, ``key``, ``token``) carries the integer position as its index
and the non-dimension coordinates ``d_text`` (token string), ``d_word`` (word index, -1 for special
tokens), ``d_start``/``d_end`` (character offsets into :attr:`Document.text`) and ``d_special``.
Tokens come from named *streams*: ``"source"`` (the model input) and ``"target"`` (decoder input).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

TOKEN_FIELDS = ("text", "word", "start", "end", "special")
VECTORS = "_vectors"  # suffix of a kind's stored token-level aggregations (a storage policy's)
SUMMARY = "_summary"  # suffix of a kind's stored head statistics
CAPTURE = "capture_"  # prefix of the arrays a capture plugin records (see attviz.captures)
TOKEN_DIMS = ("query", "key", "token")
VECTOR_DIMS = ("vector", "layer", "head", "token")
SUMMARY_DIMS = ("layer", "head", "statistic")
MATRIX_KINDS = ("self", "encoder", "decoder", "cross")
# Which token stream the query/key axis of each matrix kind indexes.
# Table columns that describe the store layout, not the documents.
_INTERNAL_COLUMNS = {"group", "kinds", "meta"}
KIND_STREAMS = {
    "self": ("source", "source"),
    "encoder": ("source", "source"),
    "decoder": ("target", "target"),
    "cross": ("target", "source"),
}


def token_frame(
    text: Sequence[str],
    word: Sequence[int] | None = None,
    start: Sequence[int] | None = None,
    end: Sequence[int] | None = None,
    special: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """Build a token table (one row per position) with the columns of :data:`TOKEN_FIELDS`."""
    n = len(text)
    frame = pd.DataFrame(
        {
            "text": pd.Series(list(text), dtype=object),
            "word": np.asarray(word if word is not None else np.arange(n), dtype=np.int32),
            "start": np.asarray(start if start is not None else np.zeros(n), dtype=np.int32),
            "end": np.asarray(end if end is not None else np.zeros(n), dtype=np.int32),
            "special": np.asarray(special if special is not None else np.zeros(n), dtype=bool),
        }
    )
    frame.index.name = "position"
    return frame


def token_coords(tokens: pd.DataFrame, dim: str) -> dict[str, Any]:
    """Coordinates for one token dimension ``dim`` built from a token table."""
    coords: dict[str, Any] = {dim: np.arange(len(tokens), dtype=np.int32)}
    for name in TOKEN_FIELDS:
        values = tokens[name].to_numpy()
        if name == "text":
            values = values.astype(object)
        coords[f"{dim}_{name}"] = (dim, values)
    return coords


def attention_array(
    values: Any,
    tokens: pd.DataFrame,
    key_tokens: pd.DataFrame | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    name: str = "attention",
) -> xr.DataArray:
    """Wrap a ``(layer, head, query, key)`` array (numpy or dask) as a fully-labelled DataArray."""
    key_tokens = tokens if key_tokens is None else key_tokens
    n_layers, n_heads, n_query, n_key = values.shape
    if n_query != len(tokens) or n_key != len(key_tokens):
        raise ValueError(
            f"attention of shape {tuple(values.shape)} does not match "
            f"{len(tokens)} query tokens and {len(key_tokens)} key tokens"
        )
    coords = {
        "layer": np.asarray(layers if layers is not None else range(n_layers), dtype=np.int32),
        "head": np.asarray(heads if heads is not None else range(n_heads), dtype=np.int32),
        **token_coords(tokens, "query"),
        **token_coords(key_tokens, "key"),
    }
    return xr.DataArray(
        values,
        dims=("layer", "head", "query", "key"),
        coords=coords,
        name=name,
        attrs={"long_name": "attention weight", "units": "1"},
    )


def vector_array(values: Any, tokens: pd.DataFrame, names: Sequence[str], *, name: str = "vectors") -> xr.DataArray:
    """Wrap a ``(vector, token)`` array of per-token values (e.g. legacy AttViz vectors)."""
    coords = {"vector": np.asarray(list(names), dtype=object), **token_coords(tokens, "token")}
    return xr.DataArray(
        values,
        dims=("vector", "token"),
        coords=coords,
        name=name,
        attrs={"long_name": "attention value", "units": "1"},
    )


def token_vectors_array(
    values: Any,
    tokens: pd.DataFrame,
    names: Sequence[str],
    *,
    long_names: Sequence[str] | None = None,
    units: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    name: str = "vectors",
) -> xr.DataArray:
    """Wrap stored token-level aggregations ``(vector, layer, head, token)``; ``names`` are their specs."""
    n_vectors, n_layers, n_heads, n_tokens = values.shape
    if n_tokens != len(tokens) or n_vectors != len(names):
        raise ValueError(
            f"vectors of shape {tuple(values.shape)} do not match {len(names)} names and {len(tokens)} tokens"
        )
    coords = {
        "vector": np.asarray(list(names), dtype=object),
        "vector_long_name": ("vector", np.asarray(list(long_names or names), dtype=object)),
        "vector_units": ("vector", np.asarray(list(units or ["1"] * n_vectors), dtype=object)),
        "layer": np.asarray(layers if layers is not None else range(n_layers), dtype=np.int32),
        "head": np.asarray(heads if heads is not None else range(n_heads), dtype=np.int32),
        **token_coords(tokens, "token"),
    }
    return xr.DataArray(
        values, dims=VECTOR_DIMS, coords=coords, name=name, attrs={"long_name": "token-level attention", "units": "1"}
    )


def summary_array(
    values: Any,
    statistics: Sequence[str],
    units: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    name: str = "head_summary",
) -> xr.DataArray:
    """Wrap stored per-head statistics ``(layer, head, statistic)`` (as ``head_summary`` gives them)."""
    n_layers, n_heads, _ = values.shape
    coords = {
        "layer": np.asarray(layers if layers is not None else range(n_layers), dtype=np.int32),
        "head": np.asarray(heads if heads is not None else range(n_heads), dtype=np.int32),
        "statistic": np.asarray(list(statistics), dtype=object),
        "statistic_units": ("statistic", np.asarray(list(units), dtype=object)),
    }
    return xr.DataArray(
        values, dims=SUMMARY_DIMS, coords=coords, name=name, attrs={"long_name": "head summary", "units": "mixed"}
    )


def capture_array(
    values: Any,
    dims: Sequence[str],
    tokens: pd.DataFrame | None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    name: str = "capture",
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Wrap what a capture plugin recorded for one document (dims as the plugin declares them).

    Token dims (``query``, ``key``, ``token``) get the source ``tokens``' coordinates, ``layer`` and
    ``head`` their positions (or ``layers``/``heads``), any other dim its positions.
    """
    dims = tuple(dims)
    if np.ndim(values) != len(dims):
        raise ValueError(f"captured values of shape {tuple(np.shape(values))} do not have the dims {dims}")
    coords: dict[str, Any] = {}
    for dim, size in zip(dims, np.shape(values), strict=True):
        if dim in TOKEN_DIMS:
            if tokens is None or len(tokens) != size:
                raise ValueError(
                    f"captured {dim} axis of {size} does not match {0 if tokens is None else len(tokens)} tokens"
                )
            coords.update(token_coords(tokens, dim))
        elif dim == "layer" and layers is not None:
            coords[dim] = np.asarray(layers, dtype=np.int32)
        elif dim == "head" and heads is not None:
            coords[dim] = np.asarray(heads, dtype=np.int32)
        else:
            coords[dim] = np.arange(size, dtype=np.int32)
    return xr.DataArray(values, dims=dims, coords=coords, name=name, attrs=dict(attrs or {}))


def attach_capture(array: xr.DataArray, captured: xr.DataArray, kind: str) -> xr.DataArray:
    """``array`` (a matrix of ``kind``) with ``captured`` as the coordinate named by its capture id.

    Only when the capture says it attaches to ``kind`` (attr ``attach``), its dims are among the
    array's, its layers and heads cover the array's (a policy may keep fewer matrices) and its token
    axes have the array's length; otherwise ``array`` is returned as it is. The coordinate carries
    the attr ``attviz_capture`` (writers leave it out: the capture is stored once, as its own array).
    """
    name = str(captured.attrs.get("capture") or "")
    attach = captured.attrs.get("attach", "")
    kinds = [k.strip() for k in attach.split(",")] if isinstance(attach, str) else [str(k) for k in attach]
    if not name or kind not in kinds or not set(captured.dims) <= set(array.dims):
        return array
    if name in array.coords and "attviz_capture" not in array.coords[name].attrs:
        return array  # never replace a coordinate of the array's own
    selection: dict[str, Any] = {}
    for dim in captured.dims:
        if dim in ("layer", "head"):
            wanted = np.asarray(array[dim].values)
            if not np.isin(wanted, np.asarray(captured[dim].values)).all():
                return array
            selection[dim] = wanted
        elif captured.sizes[dim] != array.sizes[dim]:
            return array
    aligned = captured.sel(selection) if selection else captured
    aligned = aligned.transpose(*(d for d in array.dims if d in captured.dims))
    attrs = {k: captured.attrs[k] for k in ("long_name", "units") if k in captured.attrs}
    variable = xr.Variable(aligned.dims, np.asarray(aligned.values), attrs={**attrs, "attviz_capture": name})
    return array.assign_coords({name: variable})


def kind_role(kind: str) -> tuple[str, str]:
    """``(role, matrix kind)``: ``matrix``, ``vectors`` (a policy's token-level aggregations),
    ``summary`` (its head statistics), ``capture`` (a capture plugin's array; then the plugin's id
    instead of a matrix kind) or ``legacy`` (AttViz ``(vector, token)`` data)."""
    if kind in KIND_STREAMS:
        return "matrix", kind
    if kind.startswith(CAPTURE) and len(kind) > len(CAPTURE):
        return "capture", kind[len(CAPTURE) :]
    for role, suffix in (("vectors", VECTORS), ("summary", SUMMARY)):
        if kind.endswith(suffix) and kind[: -len(suffix)] in KIND_STREAMS:
            return role, kind[: -len(suffix)]
    return "legacy", kind


def tokens_of(array: xr.DataArray, dim: str) -> pd.DataFrame:
    """The token table of one token dimension of a DataArray (inverse of :func:`token_coords`)."""
    return token_frame(*(np.asarray(array.coords[f"{dim}_{name}"].values) for name in TOKEN_FIELDS))


@dataclass
class Document:
    """One text with its tokens, attention arrays and (optional) labels and predictions.

    ``arrays`` maps a kind (``"self"``, ``"encoder"``, ``"decoder"``, ``"cross"``, ``"vectors"``)
    to a DataArray or to a zero-argument callable that loads it (store-backed documents are lazy).
    """

    id: str
    text: str
    arrays: dict[str, xr.DataArray | Callable[[], xr.DataArray]] = field(default_factory=dict)
    label: str | None = None
    prediction: str | None = None
    probabilities: dict[str, float] | None = None
    target: str | None = None
    source_id: str | None = None
    source_start: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._loaded: dict[str, xr.DataArray] = {}
        self._qk: dict[str, Any] = {}

    # -- arrays --------------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        """The kinds of arrays this document holds."""
        return list(self.arrays)

    def get(self, kind: str) -> xr.DataArray:
        """The DataArray of one kind (loaded lazily and kept)."""
        if kind not in self.arrays:
            raise KeyError(f"document {self.id!r} has no {kind!r} array (it has {self.kinds})")
        if kind not in self._loaded:
            value = self.arrays[kind]
            array = value() if callable(value) else value
            if hasattr(array, "to_dataarray"):  # kept as queries and keys (attviz.qk.QKAttention)
                self._qk[kind] = array
                array = array.to_dataarray()
            if kind in KIND_STREAMS:  # a matrix: with what capture plugins recorded, as coordinates
                for other in self.arrays:
                    if kind_role(other)[0] == "capture":
                        array = attach_capture(array, self.get(other), kind)
            self._loaded[kind] = array
        return self._loaded[kind]

    def qk(self, kind: str | None = None) -> Any:
        """The :class:`attviz.qk.QKAttention` of a matrix kind (default: the main one) when this
        document keeps its attention as queries and keys, else None."""
        kind = kind or self._main_kind()
        if kind not in self.arrays or kind not in KIND_STREAMS:
            return None
        self.get(kind)
        return self._qk.get(kind)

    def _main_kind(self) -> str:
        return next((k for k in ("self", "encoder") if k in self.arrays), "self")

    def queries(self, layer: int, head: int, kind: str | None = None) -> xr.DataArray:
        """One head's queries ``(query, dim)`` as the attention function received them (post-RoPE)."""
        return self._kept_qk(kind).queries(layer, head)

    def keys(self, layer: int, head: int, kind: str | None = None) -> xr.DataArray:
        """The keys ``(key, dim)`` one query head attends with (its key head under grouped-query attention)."""
        return self._kept_qk(kind).keys(layer, head)

    def _kept_qk(self, kind: str | None) -> Any:
        kept = self.qk(kind)
        if kept is None:
            raise KeyError(
                f"document {self.id!r} keeps its {kind or self._main_kind()!r} attention as matrices, not queries "
                "and keys (extract with attention='qk' / --attention qk to keep them)"
            )
        return kept

    @property
    def captures(self) -> list[str]:
        """The ids of the capture plugins whose data this document holds (arrays ``capture_<id>``)."""
        return [kind_role(kind)[1] for kind in self.arrays if kind_role(kind)[0] == "capture"]

    @property
    def attention(self) -> xr.DataArray:
        """The main attention matrices: ``self`` (encoder- or decoder-only) or ``encoder``."""
        for kind in ("self", "encoder"):
            if kind in self.arrays:
                return self.get(kind)
        raise KeyError(
            f"document {self.id!r} stores no attention matrices (it has {self.kinds}); "
            "legacy AttViz data holds per-token vectors only: use Document.vectors"
        )

    @property
    def vectors(self) -> xr.DataArray:
        """Per-token vectors ``(vector, token)`` as stored (legacy AttViz data)."""
        return self.get("vectors")

    @property
    def has_matrices(self) -> bool:
        return any(kind in self.arrays for kind in MATRIX_KINDS)

    # -- tokens --------------------------------------------------------------------------------
    def token_table(self, stream: str = "source") -> pd.DataFrame:
        """Token table of a stream (``"source"`` or ``"target"``): text, word, start, end, special."""
        for kind, _array in self.arrays.items():
            role, base = kind_role(kind)
            if role in ("summary", "capture"):
                continue
            if role in ("legacy", "vectors") and stream == KIND_STREAMS.get(base, ("source",))[0]:
                return tokens_of(self.get(kind), "token")
            if role == "matrix":
                query_stream, key_stream = KIND_STREAMS[kind]
                kept = _array if hasattr(_array, "key_tokens") else self._qk.get(kind)  # q/k know their tokens
                if key_stream == stream:
                    return kept.key_tokens if kept is not None else tokens_of(self.get(kind), "key")
                if query_stream == stream:
                    return kept.query_tokens if kept is not None else tokens_of(self.get(kind), "query")
        raise KeyError(f"document {self.id!r} has no {stream!r} tokens")

    @property
    def tokens(self) -> list[str]:
        """Token strings of the model input, in order (special tokens included)."""
        return list(self.token_table("source")["text"])

    @property
    def n_tokens(self) -> int:
        return len(self.token_table("source"))

    def __repr__(self) -> str:
        snippet = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"Document(id={self.id!r}, text={snippet!r}, kinds={self.kinds}, label={self.label!r})"


class Corpus(Sequence[Document]):
    """An ordered collection of documents plus a corpus table.

    In memory after :func:`attviz.extract` without a store, or lazy over a zarr store
    (:meth:`open`): the table is read at once, a document's arrays only when asked for. A lazy
    corpus keeps the last :attr:`cache_size` documents it loaded (least recently used go first).
    """

    cache_size = 256

    def __init__(
        self,
        documents: Sequence[Document] | None = None,
        *,
        attrs: Mapping[str, Any] | None = None,
        loader: Callable[[int], Document] | None = None,
        table: xr.Dataset | None = None,
        path: str | os.PathLike | None = None,
    ):
        if documents is not None and loader is not None:
            raise ValueError("give either documents or a loader, not both")
        self._documents = list(documents) if documents is not None else None
        self._loader = loader
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.path = None if path is None else os.fspath(path)
        self._table = table if table is not None else build_table(self._documents or [])
        ids = [str(v) for v in self._table["doc_id"].values]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"document ids must be unique; repeated: {dupes[:5]}")
        self._index = {doc_id: i for i, doc_id in enumerate(ids)}
        self._cache: OrderedDict[int, Document] = OrderedDict()  # lazily loaded documents, LRU
        self._lock = threading.Lock()  # one corpus serves every session of an app

    # -- sequence protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._table.sizes["doc"])

    def __getitem__(self, key: int | str) -> Document:  # type: ignore[override]
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"no document with id {key!r}")
            key = self._index[key]
        if isinstance(key, slice | list):
            raise TypeError("index a Corpus with one int or id; use .select(...) for subsets")
        n = len(self)
        if not -n <= key < n:
            raise IndexError(f"document index {key} out of range for {n} documents")
        key %= n
        if self._documents is not None:
            return self._documents[key]
        with self._lock:
            doc = self._cache.get(key)
            if doc is not None:
                self._cache.move_to_end(key)
                return doc
        assert self._loader is not None
        doc = self._loader(key)
        with self._lock:
            doc = self._cache.setdefault(key, doc)  # another thread may have loaded it meanwhile
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return doc

    def __iter__(self) -> Iterator[Document]:
        for i in range(len(self)):
            yield self[i]

    @property
    def ids(self) -> list[str]:
        return [str(v) for v in self._table["doc_id"].values]

    # -- metadata ------------------------------------------------------------------------------
    @property
    def dataset(self) -> xr.Dataset:
        """The corpus table as an :class:`xarray.Dataset` along ``doc``."""
        return self._table

    @property
    def table(self) -> pd.DataFrame:
        """One row per document: id, text, n_tokens, label, prediction, confidence, correct, ..."""
        ds = self._table
        frame = pd.DataFrame(
            {
                name: ds[name].values.astype(object) if ds[name].dtype.kind in "OUT" else ds[name].values
                for name in ds.data_vars
                if ds[name].dims == ("doc",) and name not in _INTERNAL_COLUMNS
            }
        )
        frame = frame.rename(columns={"doc_id": "id"})
        for column in ("label", "prediction", "target", "source_id", "split"):
            if column in frame:
                frame[column] = frame[column].replace("", None)
        if "probability" in ds and ds.sizes.get("class", 0):
            probs = ds["probability"].values
            frame["confidence"] = np.where(np.isnan(probs).all(axis=1), np.nan, np.nanmax(probs, axis=1, initial=0.0))
        else:
            frame["confidence"] = np.nan
        if "label" in frame and "prediction" in frame:
            known = frame["label"].notna() & frame["prediction"].notna()
            frame["correct"] = pd.array(np.where(known, frame["label"] == frame["prediction"], False), dtype="boolean")
            frame.loc[~known, "correct"] = pd.NA
        return frame.set_index("id", drop=False)

    @property
    def probabilities(self) -> pd.DataFrame:
        """Class probabilities (documents × classes); empty when the model gave none."""
        ds = self._table
        if "probability" not in ds or not ds.sizes.get("class", 0):
            return pd.DataFrame(index=self.ids)
        return pd.DataFrame(ds["probability"].values, index=self.ids, columns=[str(c) for c in ds["class"].values])

    @property
    def label_names(self) -> list[str]:
        return [str(c) for c in self._table["class"].values] if "class" in self._table.coords else []

    # -- io ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> Corpus:
        """Open an attviz zarr store lazily."""
        from attviz.store import open_store

        return open_store(path)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Corpus:
        """Write the corpus as an attviz zarr store (atomically) and return it opened from disk."""
        from attviz.store import write_corpus

        write_corpus(self, path, overwrite=overwrite)
        return Corpus.open(path)

    def to_netcdf(self, path: str | os.PathLike) -> None:
        """Write the corpus to one netCDF file (h5netcdf, one group per document)."""
        from attviz.readers.netcdf import write_netcdf

        write_netcdf(self, path)

    def __repr__(self) -> str:
        where = f", path={self.path!r}" if self.path else ""
        model = self.attrs.get("model")
        return f"<Corpus {len(self)} documents{', model=' + repr(model) if model else ''}{where}>"


def build_table(documents: Sequence[Document], label_names: Sequence[str] | None = None) -> xr.Dataset:
    """The corpus table (:class:`xarray.Dataset` along ``doc``) of in-memory documents."""
    rows = [table_row(doc) for doc in documents]
    return table_from_rows(rows, label_names)


def table_row(doc: Document) -> dict[str, Any]:
    """The corpus-table row of one document (JSON-serialisable)."""
    n_tokens = doc.n_tokens if doc.arrays else 0
    return {
        "doc_id": doc.id,
        "text": doc.text,
        "n_tokens": int(n_tokens),
        "label": doc.label or "",
        "prediction": doc.prediction or "",
        "probabilities": dict(doc.probabilities or {}),
        "target": doc.target or "",
        "source_id": doc.source_id or doc.id,
        "source_start": int(doc.source_start),
        "split": str(doc.meta.get("split", "")),
        "meta": json.dumps({k: v for k, v in doc.meta.items() if k != "split"}, default=str),
    }


def table_from_rows(rows: Sequence[Mapping[str, Any]], label_names: Sequence[str] | None = None) -> xr.Dataset:
    """Build the corpus table from rows as made by :func:`table_row`."""
    classes: list[str] = list(label_names or [])
    for row in rows:
        for name in [*list(row.get("probabilities") or {}), row.get("label") or "", row.get("prediction") or ""]:
            if name and name not in classes:
                classes.append(name)
    probs = np.full((len(rows), len(classes)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        for name, value in (row.get("probabilities") or {}).items():
            probs[i, classes.index(name)] = value

    def column(name: str, dtype: Any = object, default: Any = "") -> np.ndarray:
        return np.array([row.get(name, default) for row in rows], dtype=dtype)

    return xr.Dataset(
        {
            "doc_id": ("doc", column("doc_id")),
            "text": ("doc", column("text")),
            "n_tokens": ("doc", column("n_tokens", np.int64, 0)),
            "label": ("doc", column("label")),
            "prediction": ("doc", column("prediction")),
            "target": ("doc", column("target")),
            "source_id": ("doc", column("source_id")),
            "source_start": ("doc", column("source_start", np.int64, 0)),
            "split": ("doc", column("split")),
            "meta": ("doc", np.array([row.get("meta") or "{}" for row in rows], dtype=object)),
            "probability": (("doc", "class"), probs, {"long_name": "class probability", "units": "1"}),
        },
        coords={"doc": np.arange(len(rows)), "class": np.array(classes, dtype=object)},
    )


def document_from_table(
    table: xr.Dataset, i: int, arrays: dict[str, Any], meta: dict[str, Any] | None = None
) -> Document:
    """Rebuild document ``i`` of a corpus table (as stored on disk) around its (lazy) arrays."""
    row = {name: table[name].values[i] for name in table.data_vars if table[name].dims == ("doc",)}
    probabilities = None
    if table.sizes.get("class", 0):
        probs = table["probability"].values[i]
        if not np.isnan(probs).all():
            probabilities = {str(c): float(p) for c, p in zip(table["class"].values, probs, strict=True)}
    if meta is None:
        meta = json.loads(str(row.get("meta") or "{}"))
    if str(row.get("split", "")):
        meta["split"] = str(row["split"])
    return Document(
        id=str(row["doc_id"]),
        text=str(row["text"]),
        arrays=arrays,
        label=str(row["label"]) or None,
        prediction=str(row["prediction"]) or None,
        probabilities=probabilities,
        target=str(row["target"]) or None,
        source_id=str(row["source_id"]) or None,
        source_start=int(row["source_start"]),
        meta=meta,
    )
