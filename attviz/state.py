"""The explorer's state: the user's choices, kept valid for every kind of corpus.

:class:`ExplorerState` is a plain ``param.Parameterized`` (no Panel): which corpus and document,
which attention kind, layer and head, how heads are combined, the token colour, a transform of all
layers, the selected token and a comparison. Its menus (head combinations, token colours,
transforms) come from the aggregation registry, found by the dims each aggregation takes and
returns, so an installed plugin appears without any change here. Whatever changes (a corpus of
another model kind, an uploaded legacy file, a transform that fuses the heads), the dependent
choices are adjusted in the same batch, so every combination of values the state holds is one the
derived outputs (:mod:`attviz.explorer`) can show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import param

from attviz import aggregations
from attviz.aggregations.base import VECTOR_DIMS, Aggregation
from attviz.corpus import MATRIX_KINDS, VECTORS, Corpus, Document
from attviz.menus import (
    HEAD,
    NO_TRANSFORM,
    document_vectors,
    head_reductions,
    matrix_reductions,
    token_vector_aggregations,
    transforms,
)
from attviz.policy import parse_aggregation


class ExplorerState(param.Parameterized):
    """What the user chose, always valid for the corpus and document shown.

    >>> state = ExplorerState(corpora={"mine": corpus})
    >>> state.param.update(layer=3, head=7, head_reduction="head")
    """

    # -- what is explored ----------------------------------------------------------------------
    corpora = param.Dict(default={}, doc="The session's corpora by name; live input adds a corpus named 'live'.")
    source = param.Selector(default=None, objects=[], allow_None=True, doc="Name of the corpus being explored.")
    doc_id = param.Selector(default=None, objects=[], allow_None=True, doc="Id of the current document.")
    kind = param.Selector(
        default="self", objects=["self"], doc="Which attention: self, encoder, decoder, cross, or legacy vectors."
    )

    # -- how attention is reduced ----------------------------------------------------------------
    transform = param.Selector(
        default=NO_TRANSFORM,
        objects={"none": NO_TRANSFORM},
        doc="Applied to all layers first: drop special tokens, merge word pieces, attention rollout, ...",
    )
    layer = param.Integer(default=0, bounds=(0, 0), doc="The selected layer.")
    head = param.Integer(default=0, bounds=(0, 0), doc="The selected head (or legacy vector).")
    head_reduction = param.Selector(
        default="mean",
        objects={"mean": "mean"},
        doc="How the heads of the layer are combined for the matrix and the token colours; 'head': the selected one.",
    )
    vector = param.Selector(
        default="attention_received",
        objects=["attention_received"],
        doc="The token colour: an aggregation from a (query, key) matrix (or a whole document) to token values.",
    )
    vector_aggregation = param.ClassSelector(
        class_=Aggregation, default=None, allow_None=True, doc="The configured token-colour aggregation."
    )
    follow_selection = param.Boolean(
        default=True, doc="A token colour with a 'query' parameter (attention from) follows the selected token."
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

    # -- what the controls can mean for the document shown (read only) -----------------------------
    has_layers = param.Boolean(default=True, precedence=-1, doc="The attention shown has a layer axis.")
    has_heads = param.Boolean(default=True, precedence=-1, doc="The attention shown has several heads/vectors.")

    _CHOICES = (
        "corpora",
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
    )

    def __init__(self, **params: Any):
        self._fixing = False
        self._pending: dict[str, Any] = {}  # choices to offer once a fix has moved the value
        self._agg_watcher: tuple[Aggregation, Any] | None = None
        self._matrix_reductions = matrix_reductions()
        self._document_vectors = document_vectors()
        self._reductions = {"head": head_reductions(("head", "token")), "vector": head_reductions(VECTOR_DIMS)}
        corpora = params.pop("corpora", {}) or {}
        menu_choices = {k: params.pop(k) for k in ("head_reduction", "transform", "vector") if k in params}
        super().__init__(**params)
        vectors = {f"{d} ({n})": n for n, d in token_vector_aggregations().items()}
        self.param.vector.objects = vectors or {"attention received": "attention_received"}
        self.param.transform.objects = transforms()
        self._set_reductions("head")
        with param.discard_events(self):
            self.param.update(menu_choices)
            if self.vector_aggregation is None or self.vector_aggregation.id != self.vector:
                self.vector_aggregation = aggregations.get(self.vector)
        self._watch_aggregation(self.vector_aggregation)
        self.param.watch(self._on_choice, list(self._CHOICES))
        if corpora:
            self.corpora = dict(corpora)

    # == documents (overridden by the explorer to recompute matrices a store does not keep) ===========
    def corpus(self, source: str | None) -> Corpus | None:
        """The corpus named ``source`` (None when there is none)."""
        return self.corpora.get(source) if source is not None else None

    def find_document(self, source: str | None, doc_id: str | None) -> Document | None:
        """Document ``doc_id`` of corpus ``source`` (None when there is none)."""
        corpus = self.corpus(source)
        if corpus is None or doc_id is None or doc_id not in corpus.ids:
            return None
        return corpus[doc_id]

    def map_token(self, doc: Document, kind: str, before: str, position: int) -> int | None:
        """Where the token at ``position`` under transform ``before`` is now (None: dropped)."""
        return None

    def stored_vectors(self, doc: Document) -> list[str]:
        """The token vectors a store keeps for the current kind, when it keeps no matrices."""
        if self.kind + VECTORS in doc.kinds and not doc.has_matrices:
            return [str(v) for v in doc.get(self.kind + VECTORS)["vector"].values]
        return []

    # == keeping the choices valid =====================================================================
    def _on_choice(self, *events: param.parameterized.Event) -> None:
        if self._fixing:
            return
        changed = {e.name for e in events}
        old = {e.name: e.old for e in events}
        names = set(changed)
        self._fixing = True
        try:
            for attempt in range(4):  # a fix may need another (a new corpus -> its document -> its kind)
                fixes = self._constrain(changed, old, by_user=attempt == 0)
                if not fixes:
                    break
                self.param.update(**fixes)
                changed, old = set(fixes), {}
                names |= changed
            for name, objects in list(self._pending.items()):  # the values are valid now: offer only these
                self._offer(name, objects)
            if self._show_query(cleared="selected_token" in names and self.selected_token is None):
                names.add("vector_aggregation")
        finally:
            self._fixing = False
        self.choices_changed(names)

    def choices_changed(self, names: set[str]) -> None:
        """Called once the choices are consistent again (the explorer derives its outputs here)."""

    def _constrain(self, changed: set[str], old: Mapping[str, Any], by_user: bool = True) -> dict[str, Any]:
        """The changes that make the choices consistent after ``changed`` (``old``: previous values;
        ``by_user``: the user changed them, not an earlier fix)."""
        fixes: dict[str, Any] = {}
        if "corpora" in changed:
            names = list(self.corpora)
            self._offer("source", names)
            self._offer("compare_source", [None, *names])
            if self.source not in names:
                fixes["source"] = names[0] if names else None
        source = fixes.get("source", self.source)
        if {"corpora", "source"} & changed:
            corpus = self.corpus(source)
            ids = corpus.ids if corpus is not None else []
            self._offer("doc_id", ids)
            if self.doc_id not in ids:
                fixes["doc_id"] = ids[0] if ids else None
        if {"corpora", "compare_source"} & changed:
            other = self.corpus(self.compare_source)
            ids = other.ids if other is not None else []
            self._offer("compare_doc_id", [None, *ids])
            if self.compare_doc_id not in ids:
                doc_id = fixes.get("doc_id", self.doc_id)
                fixes["compare_doc_id"] = doc_id if doc_id in ids else (ids[0] if ids else None)
        if by_user and "head" in changed and "head_reduction" not in changed and self.head_reduction != HEAD:
            fixes["head_reduction"] = HEAD  # picking a head (slider, model grid) means showing it
        if {"corpora", "source", "doc_id", "kind", "transform"} & changed:
            doc = self.find_document(source, fixes.get("doc_id", self.doc_id))
            fixes.update(self._fit_to_document(doc, changed, old, fixes))
        fixes.update(self._fit_vector(changed, fixes))
        return {k: v for k, v in fixes.items() if getattr(self, k) is not v and getattr(self, k) != v}

    def _fit_to_document(
        self, doc: Document | None, changed: set[str], old: Mapping[str, Any], fixes: dict[str, Any]
    ) -> dict[str, Any]:
        """Kinds, menus, layer/head bounds and the selection for the document shown."""
        out: dict[str, Any] = {}
        if doc is None:
            return out
        kinds = [k for k in MATRIX_KINDS if k in doc.kinds or k + VECTORS in doc.kinds]
        kinds = kinds or (["vectors"] if "vectors" in doc.kinds else [])
        if not kinds:  # no attention at all (a store without matrices, its model not loaded)
            self.param.update(has_layers=False, has_heads=False)
            return out
        self._offer("kind", kinds)
        kind = self.kind if self.kind in kinds else kinds[0]
        if kind != self.kind:
            out["kind"] = kind
        if kind == "vectors":  # legacy AttViz data: one value per token per vector, no layers
            dims = ("vector", "token")
            sizes = dict(doc.vectors.sizes)
            n_layers, n_heads = 0, sizes["vector"]
        else:
            stored = doc.get(kind) if kind in doc.kinds else doc.get(kind + VECTORS)
            sizes = dict(stored.sizes)
            dims = tuple(stored.dims)
            transform = fixes.get("transform", self.transform)
            if kind in doc.kinds and transform != NO_TRANSFORM:
                agg = aggregations.get(transform)
                if not agg.missing(stored):  # (else the attention is shown untransformed, with a notice)
                    dims = tuple(agg.output_dims(dims))
            n_layers = sizes.get("layer", 1) if "layer" in dims else 0
            n_heads = sizes.get("head", 1) if "head" in dims else 1
            stored_specs = self.stored_vectors(doc) if kind not in doc.kinds else []
            if stored_specs and "vector" not in changed:
                names = [parse_aggregation(s)[0] for s in stored_specs]
                vector = fixes.get("vector", self.vector)
                if vector not in names and names[0] in self.param.vector.objects.values():
                    out["vector"] = names[0]  # show what the store has rather than a notice
        over = "vector" if kind == "vectors" else "head"
        self._set_reductions(over)
        if self.head_reduction not in self._reductions[over].values():
            out["head_reduction"] = "attviz_mean" if kind == "vectors" else "mean"
        self.param.layer.bounds = (0, max(n_layers - 1, 0))
        if self.layer >= max(n_layers, 1):
            out["layer"] = max(n_layers - 1, 0)
        self.param.head.bounds = (0, max(n_heads - 1, 0))
        if self.head >= n_heads:
            out["head"] = n_heads - 1
        self.param.update(has_layers=n_layers > 0, has_heads=n_heads > 1)
        if {"corpora", "source", "doc_id", "kind", "transform"} & changed and "selected_token" not in changed:
            mapped = None
            if changed <= {"transform"} and self.selected_token is not None and "transform" in old:
                mapped = self.map_token(doc, kind, old["transform"], self.selected_token)
            out["selected_token"] = mapped
        return out

    def _offer(self, name: str, objects: list | dict) -> None:
        """Offer ``objects`` as the choices of ``name``. While the current value is not among them
        (until a fix sets one that is), the old value stays offered too: a widget showing the choices
        must never hold a value its parameter refuses."""
        values = list(objects.values()) if isinstance(objects, dict) else list(objects)
        current = getattr(self, name)
        if current in values or current is None:
            self.param[name].objects = objects
            self._pending.pop(name, None)
            return
        if isinstance(objects, dict):
            label = next((k for k, v in self.param[name].objects.items() if v == current), str(current))
            self.param[name].objects = {**objects, label: current}
        else:
            self.param[name].objects = [*values, current]
        self._pending[name] = objects

    def _set_reductions(self, over: str) -> None:
        options = self._reductions[over]
        if self.param.head_reduction.objects != options:
            self._offer("head_reduction", options)

    def _fit_vector(self, changed: set[str], fixes: dict[str, Any]) -> dict[str, Any]:
        """Keep the token-colour aggregation and its id in step; a followed query shows the selection."""
        out: dict[str, Any] = {}
        vector = fixes.get("vector", self.vector)
        agg = self.vector_aggregation
        if ("vector" in changed or "vector" in fixes) and (agg is None or agg.id != vector):
            agg = out["vector_aggregation"] = aggregations.get(vector)
        elif (
            "vector_aggregation" in changed
            and agg is not None
            and agg.id in self.param.vector.objects.values()
            and agg.id != vector
        ):
            out["vector"] = agg.id
        if "vector_aggregation" in out or "vector_aggregation" in changed:
            self._watch_aggregation(agg)
        return out

    def _show_query(self, cleared: bool = False) -> bool:
        """A token colour that follows the selection shows it as its own ``query`` (its widget); when
        the selection was cleared (another document or token axis), the query goes back to its default."""
        agg = self.vector_aggregation
        if not self.follows(agg):
            return False
        query = agg.param["query"].default if cleared else self.selected_token
        if query is not None and agg.query != query:
            agg.query = query
            return True
        return False

    def follows(self, agg: Aggregation | None) -> bool:
        """Whether ``agg``'s ``query`` follows the selected token."""
        return agg is not None and self.follow_selection and "query" in agg.param

    def _watch_aggregation(self, agg: Aggregation | None) -> None:
        """Re-derive when the token-colour aggregation's own parameters change; its ``query``, when
        it follows the selection, moves the selection (the query slider is the selection too)."""
        if self._agg_watcher is not None:
            owner, watcher = self._agg_watcher
            owner.param.unwatch(watcher)
            self._agg_watcher = None
        names = [p for p in agg.param if p != "name"] if agg is not None else []
        if names:
            self._agg_watcher = (agg, agg.param.watch(self._on_aggregation, names))

    def _on_aggregation(self, *events: param.parameterized.Event) -> None:
        if self._fixing:  # the state itself set the query to the selection
            return
        agg = self.vector_aggregation
        query = next((e.new for e in events if e.name == "query"), None)
        if self.follows(agg) and query is not None and 0 <= query != self.selected_token:
            self.selected_token = query  # the query slider moves the selection, and every view follows
            return
        self.choices_changed({"vector_aggregation"})

    def matrix_reduction(self) -> bool:
        """Whether the current head combination also applies to matrices (not only token vectors)."""
        return self.head_reduction == HEAD or self.head_reduction in self._matrix_reductions

    def document_vector(self) -> bool:
        """Whether the token colour is computed from the whole document (e.g. attention flow)."""
        return self.vector in self._document_vectors
