"""How the explorer reads documents: matrices recomputed when a store keeps none, transforms cached.

:class:`DocumentReader` is mixed into :class:`~attviz.explorer.Explorer` (it uses its ``_cache``,
``_problems``, ``live_model`` and the state's corpora).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from attviz import aggregations
from attviz.cache import KeyedCache, Ref
from attviz.corpus import Corpus, Document, tokens_of
from attviz.menus import NO_TRANSFORM
from attviz.models import same_model
from attviz.state import ExplorerState


class DocumentReader(ExplorerState):
    """The explorer's state, reading documents through a keyed cache."""

    _cache: KeyedCache
    _problems: dict[str, str]
    live_model: Any

    def find_document(self, source: str | None, doc_id: str | None) -> Document | None:
        doc = super().find_document(source, doc_id)
        corpus = self.corpus(source)
        if doc is None or doc.has_matrices or "vectors" in doc.kinds or not self._can_recompute(corpus):
            return doc
        if doc_id in self._problems:  # tried and failed: not again on every change
            return doc
        try:
            return self._cache.get("recomputed", (source, Ref(corpus), doc_id), lambda: self._recompute(doc))
        except Exception as exc:  # the model cannot be loaded or run: show what the store keeps
            self._problems[doc_id] = f"the matrices could not be recomputed ({exc})"
            return doc

    def _can_recompute(self, corpus: Corpus) -> bool:
        """Matrices on demand only with the model that made the corpus (same tokens, same attention)."""
        model = corpus.attrs.get("model")
        return self.live_model is not None and bool(model) and same_model(str(model), self.live_model.name)

    def _recompute(self, doc: Document) -> Document:
        """``doc`` with its attention recomputed by the live model (the store keeps none): as queries and
        keys where those are smaller (a long document is then explored a head and a tile at a time)."""
        extracted = self.live_model([doc.text], [doc.id])[0]
        arrays = {**doc.arrays, **{k: extracted.arrays[k] for k in extracted.kinds}}
        return Document(
            id=doc.id,
            text=doc.text,
            arrays=arrays,
            label=doc.label,
            prediction=doc.prediction,
            probabilities=doc.probabilities,
            target=doc.target,
            source_id=doc.source_id,
            source_start=doc.source_start,
            meta={**doc.meta, "recomputed": self.live_model.name},
        )

    def transformed(self, doc: Document, kind: str, transform: str) -> xr.DataArray | None:
        """The document's attention of ``kind`` transformed, cached. Without a transform it stays as
        stored (lazy, float16): layers are read and upcast one at a time."""
        if kind not in doc.kinds or kind == "vectors":
            return None
        if transform == NO_TRANSFORM or aggregations.get(transform).missing(doc.get(kind)):
            return doc.get(kind)  # (the state says what a transform misses: see _outputs)

        def compute() -> xr.DataArray:
            array = aggregations.get(transform)(doc.get(kind).astype(np.float32)).astype(np.float32)
            # Number the (possibly fewer) tokens 0..n-1, so a token's position on the axis is its index.
            return array.assign_coords(
                {dim: np.arange(array.sizes[dim], dtype=np.int32) for dim in ("query", "key") if dim in array.dims}
            )

        return self._cache.get("attention", (Ref(doc), kind, transform), compute)

    def map_token(self, doc: Document, kind: str, before: str, position: int) -> int | None:
        """The token covering the same characters (a word piece maps to its merged word), or the same
        special token; None when the transform dropped it."""
        old_array, new_array = self.transformed(doc, kind, before), self.transformed(doc, kind, self.transform)
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
