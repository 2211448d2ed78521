"""The explorer's state: :class:`Explorer`, one ``param.Parameterized`` source of truth.

The user's choices (corpus, document, attention kind, layer, head, how heads are reduced, which
token vector, the selected token, a comparison document) are parameters. Everything the views show
is *derived* from them by aggregation plugins and cached by key, so that a change recomputes only
what depends on it (a head change never reloads the document; a token click never recomputes the
matrix) and each derived output is set once per change, in one batch. Views are connected with
:meth:`Explorer.connect`: they receive the outputs they declare in ``requires`` and stay linked
both ways on the parameters of :data:`attviz.views.LINKED`.

The Panel layout lives in :mod:`attviz.layout`; this module builds no widgets.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from attviz import aggregations
from attviz.aggregations.base import Aggregation
from attviz.corpus import MATRIX_KINDS, SUMMARY, VECTORS, Corpus, Document, tokens_of
from attviz.errors import AttvizError
from attviz.policy import parse_aggregation

#: How the heads of a layer are combined for the matrix and the token vector ("head": the selected one).
HEAD_REDUCTIONS = {
    "selected head": "head",
    "mean over heads": "mean",
    "max over heads": "max",
    "min over heads": "min",
    "median over heads": "median",
    "std over heads (population)": "std",
    "range over heads (max − min)": "range",
    "AttViz entropy (head disagreement)": "attviz_entropy",
}
#: The same reductions over the ``vector`` dim of legacy AttViz data (which has no heads).
VECTOR_REDUCTIONS = {
    "mean": "attviz_mean",
    "max": "attviz_max",
    "min": "attviz_min",
    "std": "attviz_std",
    "range": "attviz_max_min",
    "attviz_entropy": "attviz_entropy",
}
#: Transforms of the whole (layer, head, query, key) array before a layer/head is chosen.
TRANSFORMS = {
    "none": "none",
    "drop special tokens": "drop_special",
    "merge word pieces": "merge_words",
    "attention rollout (Abnar & Zuidema)": "rollout",
}
#: Which derived output feeds each view requirement.
OUTPUT_FOR = {
    "matrix": "matrix",
    "head_matrices": "layer_matrices",
    "token_vectors": "head_vectors",
    "token_vector": "token_vector",
    "head_summary": "head_summary",
    "corpus": "table",
    "document": "document",
}
_CACHE_SIZE = 6


class _Ref:
    """An object in a cache key, by identity. The key holds the object, so while the key is cached
    the object cannot be freed and its ``id`` handed to another (a bare ``id()`` could be)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ref) and other.obj is self.obj


class _Memo:
    """A small LRU of computed values by key, counting how often each output was computed."""

    def __init__(self, size: int = _CACHE_SIZE):
        self.size = size
        self.values: OrderedDict[Hashable, Any] = OrderedDict()
        self.computed = 0

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        if key in self.values:
            self.values.move_to_end(key)
            return self.values[key]
        value = compute()
        self.computed += 1
        self.values[key] = value
        while len(self.values) > self.size:
            self.values.popitem(last=False)
        return value


def token_vector_aggregations() -> dict[str, str]:
    """Aggregations that turn one head's ``(query, key)`` matrix into a token vector, by id.

    Found by their declared dims, so an installed plugin with that shape appears in the explorer.
    """
    found = {}
    for name, description in aggregations.available().items():
        try:
            agg = aggregations.get(name)
            if agg.output_dims(("head", "query", "key")) == ("head", "token") and set(agg.needs()) <= {
                "head",
                "query",
                "key",
            }:
                found[name] = description
        except Exception:  # a plugin that cannot be built is simply not offered
            continue
    return found


class Explorer(pn.viewable.Viewer):
    """The state of an attviz exploration session, and its views.

    >>> explorer = attviz.explore(corpus)          # a Corpus or a path
    >>> explorer.param.update(layer=3, head=7)
    >>> explorer.matrix                            # the (query, key) DataArray the views show
    """

    # -- what is explored ----------------------------------------------------------------------
    corpora = param.Dict(default={}, doc="The session's corpora by name; live input adds a corpus named 'live'.")
    source = param.Selector(default=None, objects=[], allow_None=True, doc="Name of the corpus being explored.")
    doc_id = param.Selector(default=None, objects=[], allow_None=True, doc="Id of the current document.")
    kind = param.Selector(default="self", objects=["self"], doc="Which attention: self, encoder, decoder or cross.")

    # -- how attention is reduced ----------------------------------------------------------------
    transform = param.Selector(
        default="none",
        objects=dict(TRANSFORMS),
        doc="Applied to all layers first: drop special tokens, merge word pieces, or attention rollout.",
    )
    layer = param.Integer(default=0, bounds=(0, 0), doc="The selected layer.")
    head = param.Integer(default=0, bounds=(0, 0), doc="The selected head (or legacy vector).")
    head_reduction = param.Selector(
        default="mean",
        objects=dict(HEAD_REDUCTIONS),
        doc="How the heads of the layer are combined for the matrix and the token colours; 'head': the selected one.",
    )
    vector = param.Selector(
        default="attention_received",
        objects=["attention_received"],
        doc="The token vector (an aggregation from a (query, key) matrix to one value per token).",
    )
    vector_aggregation = param.ClassSelector(
        class_=Aggregation, default=None, allow_None=True, doc="The configured token-vector aggregation."
    )
    follow_selection = param.Boolean(
        default=True, doc="A token vector with a 'query' parameter (attention from) follows the selected token."
    )
    heads = param.List(default=[], item_type=int, doc="Heads shown in multi-head displays (empty: all).")
    selected_token = param.Integer(
        default=None,
        allow_None=True,
        doc="Position of the selected token on the current token axis (None: none); after a transform the "
        "tokens are numbered 0..n-1 again.",
    )

    # -- comparison --------------------------------------------------------------------------------
    compare_source = param.Selector(default=None, objects=[], allow_None=True, doc="Corpus of the comparison.")
    compare_doc_id = param.Selector(default=None, objects=[], allow_None=True, doc="Document compared with.")

    # -- derived (read them; they are set by the explorer) ------------------------------------------
    document = param.ClassSelector(class_=Document, default=None, allow_None=True, precedence=-1, doc="Current doc.")
    attention = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="Transformed attention (all layers)."
    )
    matrix = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="(query, key) of the layer/head."
    )
    layer_matrices = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="(head, query, key) of the layer."
    )
    head_vectors = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="(head, token) token vectors."
    )
    token_vector = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="(token,) the colouring values."
    )
    head_summary = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="(layer, head, statistic)."
    )
    table = param.ClassSelector(
        class_=pd.DataFrame, default=None, allow_None=True, precedence=-1, doc="The corpus table."
    )
    other_matrix = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, precedence=-1, doc="Comparison (query, key)."
    )
    message = param.String(default="", precedence=-1, doc="The last problem to show the user ('' when none).")
    notice = param.String(
        default="", precedence=-1, doc="What the user should know about what is shown, not a problem ('' when none)."
    )
    busy = param.Boolean(default=False, precedence=-1, doc="Live input is running.")
    progress = param.String(default="", precedence=-1, doc="What live input or an upload is doing.")

    _INPUTS = (
        "source",
        "doc_id",
        "kind",
        "transform",
        "layer",
        "head",
        "head_reduction",
        "vector",
        "vector_aggregation",
        "follow_selection",
        "selected_token",
        "compare_source",
        "compare_doc_id",
        "corpora",
    )

    def __init__(self, corpus: Corpus | Mapping[str, Corpus] | str | os.PathLike | None = None, **params: Any):
        self._memo: dict[str, _Memo] = {}
        self._keys: dict[str, Any] = {}
        self._notice = ""  # what the user should know about the current outputs (not an error)
        self._busy_refresh = False
        self._views: list[Any] = []
        self._active_views: set[int] | None = None
        self._lock = threading.RLock()
        self.live_model: Any = params.pop("live_model", None)
        self._upload_dir: tempfile.TemporaryDirectory | None = None
        corpora = _as_corpora(corpus) if corpus is not None else dict(params.pop("corpora", {}) or {})
        super().__init__(**params)
        vectors = {f"{description} ({name})": name for name, description in token_vector_aggregations().items()}
        self.param.vector.objects = vectors or {"attention received": "attention_received"}
        self.param.watch(self._on_change, list(self._INPUTS))
        self.param.watch(self._on_heads, ["heads"])
        self._agg_watcher = None
        if self.vector_aggregation is None:
            self.vector_aggregation = aggregations.get(self.vector)
        else:
            self._watch_aggregation(self.vector_aggregation)
        if corpora:
            self.corpora = corpora
        else:
            self._refresh()

    # == state changes =============================================================================
    def _on_change(self, *events: param.parameterized.Event) -> None:
        if self._busy_refresh:
            return
        names = {e.name for e in events}
        self._busy_refresh = True
        try:
            fixes = self._constrain(names, {e.name: e.old for e in events})
            if fixes:
                self.param.update(**fixes)
        finally:
            self._busy_refresh = False
        self._refresh()

    def _constrain(self, changed: set[str], old: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Adjust dependent choices (document list, bounds, kinds) after ``changed`` inputs
        (``old``: their previous values)."""
        fixes: dict[str, Any] = {}
        if "corpora" in changed:
            names = list(self.corpora)
            self.param.source.objects = names
            self.param.compare_source.objects = [None, *names]
            if self.source not in names:
                fixes["source"] = names[0] if names else None
        source = fixes.get("source", self.source)
        if {"corpora", "source"} & changed:
            corpus = self.corpora.get(source) if source is not None else None
            ids = corpus.ids if corpus is not None else []
            self.param.doc_id.objects = ids
            if self.doc_id not in ids:
                fixes["doc_id"] = ids[0] if ids else None
        if {"corpora", "compare_source"} & changed:
            other = self.corpora.get(self.compare_source) if self.compare_source is not None else None
            ids = other.ids if other is not None else []
            self.param.compare_doc_id.objects = [None, *ids]
            if self.compare_doc_id not in ids:
                doc_id = fixes.get("doc_id", self.doc_id)
                fixes["compare_doc_id"] = doc_id if doc_id in ids else (ids[0] if ids else None)
        if {"corpora", "source", "doc_id", "kind", "transform"} & changed:
            doc = self._document(source, fixes.get("doc_id", self.doc_id))
            fixes.update(self._fit_to_document(doc, changed, old or {}))
        if "vector" in changed and (self.vector_aggregation is None or self.vector_aggregation.id != self.vector):
            fixes["vector_aggregation"] = aggregations.get(self.vector)
        elif "vector_aggregation" in changed and self.vector_aggregation is not None:
            agg_id = self.vector_aggregation.id
            if agg_id in self.param.vector.objects and agg_id != self.vector:
                fixes["vector"] = agg_id
        if "vector_aggregation" in fixes or "vector_aggregation" in changed:
            self._watch_aggregation(fixes.get("vector_aggregation", self.vector_aggregation))
        return {k: v for k, v in fixes.items() if getattr(self, k) is not v and getattr(self, k) != v}

    def _fit_to_document(self, doc: Document | None, changed: set[str], old: Mapping[str, Any]) -> dict[str, Any]:
        """Kinds, layer/head bounds and selection for a newly shown document."""
        fixes: dict[str, Any] = {}
        if doc is None:
            return fixes
        kinds = [k for k in MATRIX_KINDS if k in doc.kinds or k + VECTORS in doc.kinds] or ["vectors"]
        self.param.kind.objects = kinds
        kind = self.kind if self.kind in kinds else kinds[0]
        if kind != self.kind:
            fixes["kind"] = kind
        attention = self._attention(doc, kind, self.transform)
        if attention is None and kind + VECTORS in doc.kinds:
            attention = doc.get(kind + VECTORS)  # a store that keeps token vectors only
            stored = [parse_aggregation(str(v))[0] for v in attention["vector"].values]
            if self.vector not in stored and stored[0] in self.param.vector.objects.values():
                fixes["vector"] = stored[0]  # show what the store has rather than a notice
                fixes["vector_aggregation"] = aggregations.get(stored[0])
        if attention is not None and "layer" in attention.dims:
            n_layers = attention.sizes["layer"]
            self.param.layer.bounds = (0, max(n_layers - 1, 0))
            if self.layer >= n_layers:
                fixes["layer"] = n_layers - 1
        n_heads = _n_heads(attention, doc)
        self.param.head.bounds = (0, max(n_heads - 1, 0))
        if self.head >= n_heads:
            fixes["head"] = n_heads - 1
        if {"corpora", "source", "doc_id", "kind", "transform"} & changed and "selected_token" not in changed:
            mapped = None
            if changed == {"transform"} and self.selected_token is not None and "transform" in old:
                mapped = self._map_token(doc, kind, old["transform"], self.selected_token)
            fixes["selected_token"] = mapped
        return fixes

    def _map_token(self, doc: Document, kind: str, before: str, position: int) -> int | None:
        """The position, after a transform change, of the token at ``position`` before it: the token
        covering the same characters (a word piece maps to its merged word), or the same special
        token; None when the transform dropped it."""
        old_array, new_array = self._attention(doc, kind, before), self._attention(doc, kind, self.transform)
        if old_array is None or new_array is None:
            return None
        old_tokens, new_tokens = tokens_of(old_array, "query"), tokens_of(new_array, "query")
        if not 0 <= position < len(old_tokens):
            return None
        token = old_tokens.iloc[position]
        if token["special"]:
            same = new_tokens[new_tokens["special"] & (new_tokens["text"] == token["text"])]
            rank = int((old_tokens["special"] & (old_tokens["text"] == token["text"])).iloc[:position].sum())
            return int(same.index[rank]) if rank < len(same) else None
        words = new_tokens[~new_tokens["special"]]
        covering = words[(words["start"] <= token["start"]) & (token["start"] < words["end"])]
        return int(covering.index[0]) if len(covering) else None

    def _watch_aggregation(self, agg: Aggregation | None) -> None:
        """Recompute when the token-vector aggregation's own parameters change."""
        if self._agg_watcher is not None:
            owner, watcher = self._agg_watcher
            owner.param.unwatch(watcher)
            self._agg_watcher = None
        if agg is not None:
            names = [p for p in agg.param if p != "name"]
            if names:
                self._agg_watcher = (agg, agg.param.watch(lambda *_: self._refresh(), names))

    def _on_heads(self, *_: Any) -> None:
        self._push()

    # == derived outputs ==============================================================================
    def _cached(self, output: str, key: Hashable, compute: Callable[[], Any]) -> Any:
        return self._memo.setdefault(output, _Memo()).get(key, compute)

    def computed(self, output: str) -> int:
        """How many times ``output`` was computed (cache misses); for tests and profiling."""
        memo = self._memo.get(output)
        return memo.computed if memo else 0

    def _corpus(self, source: str | None) -> Corpus | None:
        return self.corpora.get(source) if source is not None else None

    def _document(self, source: str | None, doc_id: str | None) -> Document | None:
        corpus = self._corpus(source)
        if corpus is None or doc_id is None or doc_id not in corpus.ids:
            return None
        doc = corpus[doc_id]
        if doc.has_matrices or "vectors" in doc.kinds or not self._can_recompute(corpus):
            return doc
        return self._cached("recomputed", (source, _Ref(corpus), doc_id), lambda: self._recompute(doc))

    def _can_recompute(self, corpus: Corpus) -> bool:
        """Matrices on demand only with the model that made the corpus (same tokens, same attention)."""
        model = corpus.attrs.get("model")
        return self.live_model is not None and bool(model) and str(model) == self.live_model.name

    def _recompute(self, doc: Document) -> Document:
        """``doc`` with its attention matrices recomputed by the live model (the store keeps none)."""
        extracted = self.live_model([doc.text], [doc.id])[0]
        return Document(
            id=doc.id,
            text=doc.text,
            arrays={**doc.arrays, **{k: extracted.get(k) for k in extracted.kinds}},
            label=doc.label,
            prediction=doc.prediction,
            probabilities=doc.probabilities,
            target=doc.target,
            source_id=doc.source_id,
            source_start=doc.source_start,
            meta={**doc.meta, "recomputed": self.live_model.name},
        )

    def _attention(self, doc: Document, kind: str, transform: str) -> xr.DataArray | None:
        """The document's attention of ``kind`` in float32, transformed (cached)."""
        if kind not in doc.kinds or kind == "vectors":
            return None
        key = (_Ref(doc), kind, transform)

        def compute() -> xr.DataArray:
            array = doc.get(kind)
            array = array.astype(np.float32) if array.dtype != np.float32 else array
            array = array.load() if array.chunks is not None else array
            if transform == "none":
                return array
            array = aggregations.get(transform)(array).astype(np.float32)
            # Number the (possibly fewer) tokens 0..n-1, so that a token's position on the axis is
            # also its index: every view and selection then agrees after a transform.
            return array.assign_coords(
                {dim: np.arange(array.sizes[dim], dtype=np.int32) for dim in ("query", "key") if dim in array.dims}
            )

        return self._cached("attention", key, compute)

    def _refresh(self) -> None:
        """Recompute the outputs whose inputs changed and set them in one batch."""
        with self._lock:
            self._notice = ""
            try:
                outputs = self._compute_outputs()
                message = ""
            except Exception as exc:  # a failing aggregation must not kill the session
                outputs = {}
                message = f"{type(exc).__name__}: {exc}"
            changed = {name: value for name, (key, value) in outputs.items() if self._keys.get(name, _UNSET) != key}
            for name in changed:
                self._keys[name] = outputs[name][0]
            if message != self.message:
                changed["message"] = message
            if self._notice != self.notice:
                changed["notice"] = self._notice
            if changed:
                self.param.update(**changed)
            self._push()

    def _compute_outputs(self) -> dict[str, tuple[Any, Any]]:
        """``{output: (key, value)}`` for every derived output, from cache where the key is known."""
        out: dict[str, tuple[Any, Any]] = {}
        corpus = self._corpus(self.source)
        corpus_key = (self.source, _Ref(corpus), len(corpus) if corpus is not None else 0)
        out["table"] = (corpus_key, self._cached("table", corpus_key, lambda: corpus.table if corpus else None))
        doc = self._document(self.source, self.doc_id)
        doc_key = (corpus_key, self.doc_id)
        out["document"] = (doc_key, doc)
        if doc is None:
            for name in ("attention", "matrix", "layer_matrices", "head_vectors", "token_vector", "head_summary"):
                out[name] = (None, None)
            out["other_matrix"] = (None, None)
            return out

        attention = self._attention(doc, self.kind, self.transform)
        att_key = (doc_key, self.kind, self.transform)
        out["attention"] = (att_key, attention)
        reduction = self.head_reduction
        if attention is None and self.kind + VECTORS in doc.kinds:
            return self._stored_outputs(out, doc, doc_key)
        if attention is None:  # legacy AttViz vectors only
            vectors = doc.vectors
            out["matrix"] = out["layer_matrices"] = (None, None)
            out["head_summary"] = (None, None)
            out["head_vectors"] = (doc_key, vectors)
            vec_key = (doc_key, self.head, reduction)
            reduced = self._cached("token_vector", vec_key, lambda: self._reduce_vectors(vectors))
            out["token_vector"] = (vec_key, reduced)
            out["other_matrix"] = (None, None)
            return out

        has_heads = "head" in attention.dims
        layer_key = (att_key, self.layer)
        layer_matrices = self._cached("layer_matrices", layer_key, lambda: attention.isel(layer=self.layer))
        out["layer_matrices"] = (layer_key, layer_matrices if has_heads else None)
        matrix_key = (layer_key, self.head if reduction == "head" or not has_heads else None, reduction)
        out["matrix"] = (matrix_key, self._cached("matrix", matrix_key, lambda: self._matrix(layer_matrices)))

        agg = self.vector_aggregation
        agg = self._following(agg)
        spec = json.dumps(agg.spec(), sort_keys=True, default=str) if agg is not None else None
        vec_key = (layer_key, spec)
        head_vectors = self._cached("head_vectors", vec_key, lambda: self._head_vectors(layer_matrices, agg))
        out["head_vectors"] = (vec_key, head_vectors)
        tv_key = (vec_key, matrix_key[1], reduction)
        out["token_vector"] = (tv_key, self._cached("token_vector", tv_key, lambda: self._reduce_heads(head_vectors)))

        summary_key = (doc_key, self.kind)
        out["head_summary"] = (summary_key, self._cached("head_summary", summary_key, lambda: self._summary(doc)))
        out["other_matrix"] = self._other(matrix_key)
        return out

    def _stored_outputs(self, out: dict, doc: Document, doc_key: Hashable) -> dict[str, tuple[Any, Any]]:
        """Outputs of a document whose store keeps token vectors (and maybe head statistics) only."""
        stored = doc.get(self.kind + VECTORS)
        specs = [str(v) for v in stored["vector"].values]
        spec = _stored_spec(specs, self.vector_aggregation)
        out["matrix"] = out["layer_matrices"] = out["other_matrix"] = (None, None)
        summary_kind = self.kind + SUMMARY
        summary = doc.get(summary_kind) if summary_kind in doc.kinds else None
        out["head_summary"] = ((doc_key, self.kind), summary)
        model = self._corpus(self.source).attrs.get("model") or "its model"
        if spec is None:
            out["head_vectors"] = out["token_vector"] = (None, None)
            self._notice = (
                f"this store keeps no matrices, only {', '.join(specs)}: choose one of them under "
                f"'Token colour', or load {model} (--model) to recompute the matrices"
            )
            return out
        vec_key = (doc_key, self.kind, spec, self.layer)
        vector_coords = [c for c in stored.coords if c.startswith("vector")]

        def compute() -> xr.DataArray:
            return stored.sel(vector=spec).isel(layer=self.layer).drop_vars(vector_coords)

        head_vectors = self._cached("head_vectors", vec_key, compute)
        out["head_vectors"] = (vec_key, head_vectors)
        tv_key = (vec_key, self.head, self.head_reduction)
        out["token_vector"] = (tv_key, self._cached("token_vector", tv_key, lambda: self._reduce_heads(head_vectors)))
        notes = [f"this store keeps token vectors only (showing {spec}); load {model} to see matrices"]
        if self.transform != "none":
            notes.append(f"'{self.transform}' needs the matrices")
        self._notice = "; ".join(notes)
        return out

    def _following(self, agg: Aggregation | None) -> Aggregation | None:
        """The token-vector aggregation, with its ``query`` set to the selected token when it follows it."""
        if agg is None or not self.follow_selection or "query" not in agg.param or self.selected_token is None:
            return agg
        return type(agg)(**{**agg.param.values(), "name": agg.name, "query": self.selected_token})

    def _matrix(self, layer_matrices: xr.DataArray) -> xr.DataArray:
        if "head" not in layer_matrices.dims:
            return layer_matrices
        if self.head_reduction == "head":
            return layer_matrices.isel(head=self.head)
        return self._head_reducer()(layer_matrices)

    def _head_reducer(self) -> Aggregation:
        if self.head_reduction == "attviz_entropy":
            return aggregations.get("attviz_entropy", over="head")
        return aggregations.get(self.head_reduction, over="head")

    def _head_vectors(self, layer_matrices: xr.DataArray, agg: Aggregation | None) -> xr.DataArray | None:
        if agg is None:
            return None
        matrices = layer_matrices if "head" in layer_matrices.dims else layer_matrices.expand_dims(head=[0])
        return agg(matrices).transpose("head", "token")

    def _reduce_heads(self, head_vectors: xr.DataArray | None) -> xr.DataArray | None:
        if head_vectors is None:
            return None
        if self.head_reduction == "head" or head_vectors.sizes["head"] == 1:
            return head_vectors.isel(head=min(self.head, head_vectors.sizes["head"] - 1))
        return self._head_reducer()(head_vectors)

    def _reduce_vectors(self, vectors: xr.DataArray) -> xr.DataArray:
        if self.head_reduction == "head":
            return vectors.isel(vector=self.head)
        name = VECTOR_REDUCTIONS.get(self.head_reduction)
        if name is None:
            raise ValueError(f"{self.head_reduction!r} is not available for per-token vectors (legacy AttViz data)")
        return aggregations.get(name, over="vector")(vectors)

    def _summary(self, doc: Document) -> xr.DataArray | None:
        attention = self._attention(doc, self.kind, "none")
        if attention is None:
            return None
        return aggregations.get("head_summary")(attention)

    def _other(self, matrix_key: Hashable) -> tuple[Any, Any]:
        other = self._document(self.compare_source, self.compare_doc_id)
        if other is None or self.kind not in other.kinds:
            return (None, None)
        key = (self.compare_source, self.compare_doc_id, matrix_key)

        def compute() -> xr.DataArray | None:
            attention = self._attention(other, self.kind, self.transform)
            if attention is None or self.layer >= attention.sizes.get("layer", 0):
                return None
            layer = attention.isel(layer=self.layer)
            if "head" in layer.dims and self.head_reduction == "head" and self.head >= layer.sizes["head"]:
                return None
            return self._matrix(layer)

        return (key, self._cached("other_matrix", key, compute))

    # == views ======================================================================================
    def output_for(self, view: Any) -> Any:
        """The output a view shows: the first of its ``requires`` that the explorer has now."""
        for requirement in type(view).requires:
            value = getattr(self, OUTPUT_FOR.get(requirement, ""), None)
            if value is not None and type(view).can_show(value):
                return value
        return None

    def _inputs_for(self, view: Any) -> dict[str, Any]:
        inputs = {
            "aggregate": self.token_vector,
            "heads": list(self.heads),
            "other": self.other_matrix,
            "text": self.document.text if self.document is not None else "",
            "label": f"{self.source}: {self.doc_id}" if self.doc_id is not None else "",
            "other_label": f"{self.compare_source}: {self.compare_doc_id}" if self.compare_doc_id is not None else "",
        }
        values = {"data": self.output_for(view)}
        values.update({k: v for k, v in inputs.items() if k in view.param})
        values.update({k: getattr(self, k) for k in LINKED_NAMES if k in view.param})
        return values

    def connect(self, view: Any) -> Any:
        """Feed ``view`` from this state and link its LINKED parameters both ways; returns the view."""
        self._views.append(view)
        for name in LINKED_NAMES:
            if name in view.param:
                view.param.watch(lambda event, name=name: self._from_view(name, event.new), [name])
        self._update_view(view, force=True)
        return view

    def set_active(self, views: list[Any] | None) -> None:
        """Only these views are kept up to date (the visible ones); None: all. Newly active views catch up."""
        self._active_views = None if views is None else {id(v) for v in views}
        for view in self._views:
            if self._is_active(view):
                self._update_view(view)

    def _is_active(self, view: Any) -> bool:
        return self._active_views is None or id(view) in self._active_views

    def _from_view(self, name: str, value: Any) -> None:
        if getattr(self, name) != value:
            try:
                setattr(self, name, value)
            except ValueError as exc:  # e.g. a click outside the bounds: tell, don't crash
                self.message = str(exc)

    def _push(self) -> None:
        """Bring every visible view up to date (each gets only the values that differ)."""
        for view in list(self._views):
            if self._is_active(view):
                self._update_view(view)

    def _update_view(self, view: Any, force: bool = False) -> None:
        values = self._inputs_for(view)
        updates = {k: v for k, v in values.items() if force or not _same(view.param.values().get(k), v)}
        if updates:
            try:
                view.param.update(**updates)
            except Exception as exc:  # one broken view must not break the others
                self.message = f"view {type(view).__name__} failed: {type(exc).__name__}: {exc}"

    # == actions =====================================================================================
    def add_corpus(self, name: str, corpus: Corpus, *, show: bool = True) -> str:
        """Add ``corpus`` under ``name`` (made unique) and switch to it when ``show``; returns the name."""
        unique, n = name, 2
        while unique in self.corpora:
            unique, n = f"{name} ({n})", n + 1
        corpora = {**self.corpora, unique: corpus}
        if show:
            with param.parameterized.batch_call_watchers(self):
                self.corpora = corpora
                self.source = unique
        else:
            self.corpora = corpora
        return unique

    def extract_live(self, text: str) -> Corpus:
        """Run the live model on ``text`` (thread-safe, changes no state; see :meth:`add_live`)."""
        if self.live_model is None:
            raise AttvizError("no model is loaded for live input")
        if not text.strip():
            raise AttvizError("the text is empty")
        live = self.corpora.get("live")
        doc_id = f"live-{(len(live) if live is not None else 0) + 1}"
        return self.live_model([text], [doc_id])

    def add_live(self, extracted: Corpus) -> str:
        """Append the documents of ``extracted`` to the session's ``live`` corpus and open the last one."""
        live = self.corpora.get("live")
        documents = [*(live or []), *extracted]
        seen: set[str] = set()
        for doc in documents:  # two quick runs may pick the same id: keep ids unique
            while doc.id in seen:
                doc.id = f"{doc.id}b"
            seen.add(doc.id)
        corpus = Corpus(documents, attrs=extracted.attrs)
        with param.parameterized.batch_call_watchers(self):
            self.corpora = {**self.corpora, "live": corpus}
            self.source = "live"
            self.doc_id = documents[-1].id
        return documents[-1].id

    def run_live(self, text: str) -> str:
        """Extract ``text`` with the live model and open it (synchronous); returns the document id."""
        return self.add_live(self.extract_live(text))

    def add_file(self, filename: str, data: bytes) -> str:
        """Open an uploaded file (store archive, netCDF, AttViz JSON, tensors) as a new corpus."""
        from attviz.uploads import open_upload

        if self._upload_dir is None:
            self._upload_dir = tempfile.TemporaryDirectory(prefix="attviz-upload-")
        corpus = open_upload(filename, data, self._upload_dir.name)
        return self.add_corpus(os.path.splitext(os.path.basename(filename))[0] or "upload", corpus)

    def export_document(self) -> bytes:
        """The current document as a netCDF file (bytes)."""
        return _netcdf_bytes(self._document_corpus())

    def export_page(self, quantization: str = "row") -> str:
        """The current document as a self-contained interactive HTML page (see :func:`attviz.export.export_html`;
        ``quantization``: one uint8 scale per ``"row"`` or per head's ``"matrix"``)."""
        from attviz.export import export_html

        return export_html(self._document_corpus(), title=f"attviz: {self.doc_id}", quantization=quantization)

    def _document_corpus(self) -> Corpus:
        """The current document alone, as a corpus with its corpus's attrs (for exports)."""
        if self.document is None:
            raise AttvizError("no document is open")
        return Corpus([self.document], attrs=self._corpus(self.source).attrs)

    def export_corpus(self) -> bytes:
        """The current corpus (with any live documents) as a netCDF file (bytes)."""
        corpus = self._corpus(self.source)
        if corpus is None:
            raise AttvizError("no corpus is open")
        return _netcdf_bytes(corpus)

    def step(self, offset: int) -> None:
        """Move ``offset`` documents forward (negative: back) in the current corpus."""
        ids = list(self.param.doc_id.objects)
        if ids:
            i = ids.index(self.doc_id) if self.doc_id in ids else 0
            self.doc_id = ids[(i + offset) % len(ids)]

    def __panel__(self) -> Any:
        from attviz.layout import explorer_layout

        return explorer_layout(self)


LINKED_NAMES = ("selected_token", "layer", "head", "doc_id")
_UNSET = object()


def _netcdf_bytes(corpus: Corpus) -> bytes:
    with tempfile.TemporaryDirectory(prefix="attviz-export-") as folder:
        path = os.path.join(folder, "export.nc")
        corpus.to_netcdf(path)
        with open(path, "rb") as handle:
            return handle.read()


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, xr.DataArray | pd.DataFrame | Document) or isinstance(b, xr.DataArray | pd.DataFrame | Document):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _stored_spec(specs: list[str], agg: Aggregation | None) -> str | None:
    """The stored vector that is ``agg``: same id and parameters, else the first with the same id."""
    if agg is None:
        return None
    same = [s for s in specs if parse_aggregation(s)[0] == agg.id]
    params = agg.params()
    exact = [s for s in same if all(_same(params.get(k), v) for k, v in parse_aggregation(s)[1].items())]
    return (exact or same or [None])[0]


def _n_heads(attention: xr.DataArray | None, doc: Document) -> int:
    if attention is not None:
        return attention.sizes.get("head", 1)
    if "vectors" in doc.kinds:
        return doc.vectors.sizes["vector"]
    return 1


def _as_corpora(corpus: Any) -> dict[str, Corpus]:
    if isinstance(corpus, Corpus):
        return {_corpus_name(corpus): corpus}
    if isinstance(corpus, Mapping):
        return dict(corpus)
    if isinstance(corpus, str | os.PathLike):
        from attviz.readers import read

        loaded = read(corpus)
        return {os.path.basename(os.fspath(corpus).rstrip("/")) or "corpus": loaded}
    if isinstance(corpus, list | tuple):
        out: dict[str, Corpus] = {}
        for item in corpus:
            for name, value in _as_corpora(item).items():
                unique, n = name, 2
                while unique in out:
                    unique, n = f"{name} ({n})", n + 1
                out[unique] = value
        return out
    raise TypeError(f"explore() takes a Corpus, a path or a dict of corpora, not {type(corpus).__name__}")


def _corpus_name(corpus: Corpus) -> str:
    if corpus.path:
        return os.path.basename(corpus.path.rstrip("/"))
    return str(corpus.attrs.get("name") or "corpus")


def explore(corpus: Any = None, **params: Any) -> Explorer:
    """An :class:`Explorer` on a Corpus, a path (any readable input), several of them, or the demo corpus."""
    if corpus is None:
        from attviz.demo import demo_corpus

        corpus = {"demo": demo_corpus(progress=False)}
    return Explorer(corpus, **params)
