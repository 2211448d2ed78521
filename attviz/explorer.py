"""The explorer: :class:`Explorer`, the state of a session and the outputs derived from it.

The choices live in :class:`~attviz.state.ExplorerState`; the actions (live input, files, exports)
in :class:`~attviz.session.SessionActions`. Here, everything the views show is *derived* from the
choices by aggregation plugins, behind one keyed cache: each output's key names exactly the inputs
it reads, so a change recomputes only what depends on it (a head change never reloads the document;
a token click never recomputes the matrix) and every output whose key changed is set once, in one
batch. Only the outputs in :attr:`Explorer.needed` are derived (the layout sets it to what the
visible views show), so a long document never computes a hidden view's statistics.

The Panel layout, and how views are bound to these parameters, is :mod:`attviz.layout`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import param
import xarray as xr

from attviz import aggregations
from attviz.aggregations.base import Aggregation
from attviz.cache import KeyedCache, Ref
from attviz.corpus import KIND_STREAMS, MATRIX_KINDS, SUMMARY, VECTORS, Corpus, Document, token_coords
from attviz.policy import parse_aggregation
from attviz.quantize import as_float32
from attviz.reading import DocumentReader
from attviz.session import SessionActions, as_corpora, corpus_name
from attviz.state import HEAD, NO_TRANSFORM

#: Every derived output, in the order they are computed.
OUTPUTS = (
    "table",
    "document",
    "attention",
    "layer_matrices",
    "matrix",
    "head_vectors",
    "token_vector",
    "head_summary",
    "other_matrix",
    "current_corpus",
    "corpus_statistics",
    "corpus_status",
    "other_corpus_statistics",
    "other_corpus_status",
)


def _output(cls: type, doc: str) -> param.ClassSelector:
    return param.ClassSelector(class_=cls, default=None, allow_None=True, precedence=-1, doc=doc)


#: A document kept as queries and keys is "long" when one layer's float32 matrices would exceed this:
#: the explorer then draws tiles of one head and colours tokens block-wise (MiniLM: from ~3,000 tokens).
LONG_LAYER_BYTES = 1 << 29


class Explorer(SessionActions, DocumentReader):
    """The state of an attviz exploration session and what its views show.

    >>> explorer = attviz.explore(corpus)          # a Corpus or a path
    >>> explorer.param.update(layer=3, head=7)
    >>> explorer.matrix                            # the (query, key) DataArray the views show
    """

    # -- derived (read them; the explorer sets them) ------------------------------------------------
    document = _output(Document, "The current document.")
    attention = _output(xr.DataArray, "The document's attention of the chosen kind, transformed (all layers).")
    layer_matrices = _output(xr.DataArray, "(head, query, key) of the layer.")
    matrix = _output(xr.DataArray, "(query, key) of the layer and head (or heads combined).")
    head_vectors = _output(xr.DataArray, "(head, token): the token colour of every head of the layer.")
    token_vector = _output(xr.DataArray, "(token,): the token colour shown.")
    head_summary = _output(xr.DataArray, "(layer, head, statistic): statistics of every head.")
    table = _output(pd.DataFrame, "The corpus table.")
    other_matrix = _output(xr.DataArray, "The comparison document's (query, key).")
    current_corpus = _output(Corpus, "The corpus explored (the one named by `source`).")
    corpus_statistics = param.Parameter(
        default=None,
        precedence=-1,
        doc="The corpus statistics of the explored corpus (an attviz.analysis.engine.CorpusStatistics), computed in "
        "the background only while a visible view needs them (see `corpus_status`).",
    )
    corpus_status = param.String(
        default="",
        precedence=-1,
        doc="Why the corpus statistics are not shown: being computed (with the progress), or why they cannot be "
        "('' when they are shown or not asked for).",
    )
    store_source = param.String(
        default=None,
        allow_None=True,
        precedence=-1,
        doc="The corpus whose statistics are contrasted with the explored corpus's (store A vs store B over the "
        "same texts, e.g. two checkpoints); the corpus view sets it while it shows that contrast. None: none asked.",
    )
    other_corpus_statistics = param.Parameter(
        default=None,
        precedence=-1,
        doc="The corpus statistics of `store_source` (a CorpusStatistics), computed in the background like "
        "`corpus_statistics`, only while a visible view needs them and `store_source` names another corpus.",
    )
    other_corpus_status = param.String(
        default="", precedence=-1, doc="Why the statistics of `store_source` are not shown: being computed, or why not."
    )
    other_sources = param.List(
        default=[], precedence=-1, doc="The names of the loaded corpora other than the explored one."
    )
    text = param.String(default="", precedence=-1, doc="The document's original text.")
    label = param.String(default="", precedence=-1, doc="The corpus and document shown.")
    other_label = param.String(default="", precedence=-1, doc="The corpus and document compared with.")
    title = param.String(default="", precedence=-1, doc="What is shown: document, layer/head, token colour.")
    message = param.String(default="", precedence=-1, doc="The last problem to show the user ('' when none).")
    notice = param.String(default="", precedence=-1, doc="What to know about what is shown ('' when nothing).")
    needed = param.Parameter(
        default=None,
        precedence=-1,
        doc="Outputs the visible views show (a set of names; None: all). The table, the layer's matrices, the head "
        "summary and the comparison are published only while named here; the matrix and token colours always.",
    )

    layer_memory = param.Integer(
        default=LONG_LAYER_BYTES,
        bounds=(0, None),
        precedence=-1,
        doc="Bytes one layer's float32 matrices may take in memory. A document kept as queries and keys above it "
        "is explored a head at a time: matrix tiles drawn at the screen's resolution, token colours block by block.",
    )

    def __init__(self, corpus: Corpus | Mapping[str, Corpus] | str | os.PathLike | None = None, **params: Any):
        self._cache = KeyedCache()
        self._keys: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._upload_dir = None
        self._problems: dict[str, str] = {}  # document id -> why its matrices could not be recomputed
        self._statistics_callback: Callable[[], None] | None = None
        self.live_model: Any = params.pop("live_model", None)
        if corpus is not None:
            params["corpora"] = as_corpora(corpus)
        super().__init__(**params)
        self.param.watch(lambda *_: self.derive(), ["needed", "store_source"])
        if not self.corpora:
            self.derive()

    def choices_changed(self, names: set[str]) -> None:
        self.derive()

    def computed(self, output: str) -> int:
        """How many times ``output`` was computed (cache misses); for tests and profiling."""
        return self._cache.computed.get(output, 0)

    # == derived outputs =============================================================================
    def derive(self) -> None:
        """Derive the needed outputs whose keys changed and set them (with the message) in one batch."""
        with self._lock:
            notes: list[str] = []
            try:
                outputs = self._outputs(notes)
                message = ""
            except Exception as exc:  # a failing aggregation must not end the session
                outputs, message = {}, f"{type(exc).__name__}: {exc}"
            changed = {name: value for name, (key, value) in outputs.items() if self._keys.get(name, _UNSET) != key}
            for name in changed:
                self._keys[name] = outputs[name][0]
            doc = outputs["document"][1] if "document" in outputs else self.document
            vector = outputs["token_vector"][1] if "token_vector" in outputs else self.token_vector
            changed.update(self._labels(doc, vector))
            changed["other_sources"] = [name for name in self.corpora if name != self.source]
            changed.update(message=message, notice="; ".join(notes))
            self.param.update(**{k: v for k, v in changed.items() if not _same(getattr(self, k), v)})

    def _wanted(self, name: str) -> bool:
        if name in ON_REQUEST:  # heavy corpus-wide work: only when a visible view names it
            return self.needed is not None and name in self.needed
        return self.needed is None or name in self.needed

    def _outputs(self, notes: list[str]) -> dict[str, tuple[Any, Any]]:
        """``{output: (key, value)}``: the matrix and token colours always (what a notebook reads and most
        views show); the optional ones (head summary, comparison) only while :attr:`needed` names them,
        else they keep their values (and keys) until a view that shows them is visible again."""
        out = self._derived(notes)
        return {k: v for k, v in out.items() if self._wanted(k) or k not in OPTIONAL}

    def _derived(self, notes: list[str]) -> dict[str, tuple[Any, Any]]:
        """``{output: (key, value)}``, from the cache where the key is known; heavy outputs only when needed."""
        out: dict[str, tuple[Any, Any]] = dict.fromkeys(OUTPUTS, (None, None))
        corpus = self.corpus(self.source)
        corpus_key = (self.source, Ref(corpus), len(corpus) if corpus is not None else 0)
        if self._wanted("table"):
            out["table"] = (corpus_key, self._cache.get("table", corpus_key, lambda: corpus.table if corpus else None))
        out["current_corpus"] = (corpus_key, corpus)
        if self._wanted("corpus_statistics"):
            self._statistics_outputs(out, corpus, corpus_key)
        if self._wanted("other_corpus_statistics"):
            self._other_statistics_outputs(out)
        doc = self.find_document(self.source, self.doc_id)
        doc_key = (corpus_key, self.doc_id, Ref(doc))
        out["document"] = (doc_key, doc)
        if self.doc_id in self._problems:
            notes.append(self._problems[self.doc_id])
        if doc is None:
            return out
        check = self._cache.get("attention_check", doc_key, lambda: _attention_check(doc, corpus))
        notes.extend(_check_notes(check, doc, self.kind, self.layer, self.head))
        qk = _long_qk(doc, self.kind, self.layer_memory)
        if qk is not None:
            self._long_outputs(out, qk, (doc_key, self.kind), notes)
            return out
        attention = self.transformed(doc, self.kind, self.transform)
        att_key = (doc_key, self.kind, self.transform)
        if self.transform != NO_TRANSFORM and self.kind in doc.kinds:
            lacks = aggregations.get(self.transform).missing(doc.get(self.kind))
            if lacks:
                notes.append(f"'{self.transform}' needs {lacks}: showing the attention untransformed")
        out["attention"] = (att_key, attention)
        if attention is None:
            self._vector_outputs(out, doc, doc_key, notes)
            return out
        layer_key = (att_key, self.layer)
        if "layer" in attention.dims:
            layer_matrices = self._cache.get("layer_matrices", layer_key, lambda: _loaded(attention, self.layer))
        else:
            layer_matrices = _loaded(attention, None)
        has_heads = "head" in layer_matrices.dims
        out["layer_matrices"] = (layer_key, layer_matrices if has_heads else None)
        reduction = self.head_reduction if has_heads else HEAD
        head = self.head if reduction == HEAD and has_heads else None
        matrix_key = (layer_key, head, reduction)
        if not (self.matrix_reduction() or not has_heads):
            notes.append(f"'{self.head_reduction}' combines token colours only: choose another to see a matrix")
        else:
            out["matrix"] = (matrix_key, self._cache.get("matrix", matrix_key, lambda: self._matrix(layer_matrices)))
        self._token_outputs(out, attention, layer_matrices, layer_key, reduction, notes)
        if self._wanted("head_summary"):
            summary_key = (doc_key, self.kind)
            summary = self._cache.get("head_summary", summary_key, lambda: self._summary(doc))
            out["head_summary"] = (summary_key, summary)
        if self._wanted("other_matrix") and self.compare_doc_id is not None:
            out["other_matrix"] = self._other(matrix_key)
        return out

    def _token_outputs(
        self,
        out: dict,
        attention: xr.DataArray,
        layer_matrices: xr.DataArray,
        layer_key: Hashable,
        reduction: str,
        notes: list[str],
    ) -> None:
        agg = self.vector_aggregation
        spec = json.dumps(agg.spec(), sort_keys=True, default=str) if agg is not None else None
        if self.document_vector():  # one token vector from the whole document (attention flow)
            key = (layer_key[0], spec)
            source = attention
            try:
                agg.check_dims(tuple(attention.dims))
            except ValueError:  # e.g. flow after rollout fused the heads: flow runs on the raw attention
                source = self.transformed(out["document"][1], self.kind, NO_TRANSFORM)
                notes.append(f"{agg.id} needs every head: computed before the transform '{self.transform}'")
            if _lacks(agg, source, notes):
                return
            vector = self._cache.get("token_vector", key, lambda: agg(source.astype(np.float32)))
            out["token_vector"] = (key, vector)
            return
        if agg is not None and _lacks(agg, layer_matrices, notes):
            return
        vec_key = (layer_key, spec)
        head_vectors = self._cache.get("head_vectors", vec_key, lambda: self._head_vectors(layer_matrices, agg))
        self._publish(out, vec_key, head_vectors, "head", reduction)

    def _long_outputs(self, out: dict, qk: Any, att_key: Hashable, notes: list[str]) -> None:
        """Outputs of a long document kept as queries and keys, never holding a layer's ``T × T``:
        the selected head's matrix as tiles computed when drawn, token colours from aggregations
        with a queries-and-keys version (:meth:`Aggregation.apply_qk`: one row, block-wise sums)."""
        n_layers, n_heads, n_query, n_key = qk.shape
        layer, reduction = min(self.layer, n_layers - 1), self.head_reduction
        head = min(self.head, n_heads - 1)
        size = f"{n_query:,} × {n_key:,} tokens"
        out["attention"] = (att_key, None)
        if self.transform != NO_TRANSFORM:
            notes.append(f"'{self.transform}' needs whole matrices: not applied at {size}")
        layer_key = (att_key, layer)
        matrix_key = (layer_key, head, HEAD)
        out["matrix"] = (matrix_key, self._cache.get("matrix", matrix_key, lambda: qk.head_array(layer, head)))
        if reduction != HEAD:
            notes.append(f"at {size} the views show the selected head ('{reduction}' needs every head's matrix)")
        if self._wanted("head_summary"):
            notes.append(f"the head summary needs every head's whole matrix: not computed at {size}")
        agg = self.vector_aggregation
        if agg is None:
            return
        if self.document_vector() or not agg.supports_qk:
            usable = ", ".join(sorted(a for a in aggregations.available() if _supports_qk(a)))
            notes.append(f"'{agg.id}' needs whole matrices: at {size} token colours come from {usable}")
            return
        heads = [head]
        spec = json.dumps(agg.spec(), sort_keys=True, default=str)
        vec_key = (layer_key, spec, tuple(heads))

        def compute() -> xr.DataArray:
            values = agg.apply_qk(qk, layer, heads)
            coords = {"head": [qk.head_ids[h] for h in heads], **token_coords(qk.key_tokens, "token")}
            return xr.DataArray(values, dims=("head", "token"), coords=coords, name=agg.id)

        self._publish(out, vec_key, self._cache.get("head_vectors", vec_key, compute), "head", HEAD)

    def _vector_outputs(self, out: dict, doc: Document, doc_key: Hashable, notes: list[str]) -> None:
        """Outputs of legacy AttViz vectors, or of a store that keeps token vectors only."""
        if self.kind not in doc.kinds and self.kind + VECTORS not in doc.kinds:
            model = self.corpus(self.source).attrs.get("model") or "the model that made it"
            notes.append(f"this document keeps no attention: load {model} (--model) to recompute it")
            return
        if self.kind == "vectors":
            self._publish(out, doc_key, doc.vectors, "vector", self.head_reduction)
            return
        stored = doc.get(self.kind + VECTORS)
        specs = [str(v) for v in stored["vector"].values]
        spec = _stored_spec(specs, self.vector_aggregation)
        summary_kind = self.kind + SUMMARY
        out["head_summary"] = ((doc_key, self.kind), doc.get(summary_kind) if summary_kind in doc.kinds else None)
        model = self.corpus(self.source).attrs.get("model") or "its model"
        if spec is None:
            notes.append(
                f"this store keeps no matrices, only {', '.join(specs)}: choose one of them under "
                f"'Token colour', or load {model} (--model) to recompute the matrices"
            )
            return
        vec_key = (doc_key, self.kind, spec, self.layer)
        coords = [c for c in stored.coords if c.startswith("vector")]
        head_vectors = self._cache.get(
            "head_vectors", vec_key, lambda: stored.sel(vector=spec).isel(layer=self.layer).drop_vars(coords)
        )
        self._publish(out, vec_key, head_vectors, "head", self.head_reduction)
        notes.append(f"this store keeps token vectors only (showing {spec}); load {model} to see matrices")
        if self.transform != NO_TRANSFORM:
            notes.append(f"'{self.transform}' needs the matrices")

    def _publish(self, out: dict, key: Hashable, vectors: xr.DataArray | None, over: str, reduction: str) -> None:
        """Publish one token vector per head (or legacy vector, ``over``) under ``key``, and the token
        colour: the selected one or their combination (cached)."""
        out["head_vectors"] = (key, vectors)
        tv_key = (key, self.head if reduction == HEAD else None, reduction)
        out["token_vector"] = (
            tv_key,
            self._cache.get("token_vector", tv_key, lambda: self._reduce(vectors, over, reduction)),
        )

    def _matrix(self, layer_matrices: xr.DataArray) -> xr.DataArray:
        """The (query, key) matrix shown."""
        if "head" not in layer_matrices.dims:
            return layer_matrices
        if self.head_reduction == HEAD:
            return layer_matrices.isel(head=self.head)
        return aggregations.get(self.head_reduction, over="head")(layer_matrices)

    @staticmethod
    def _head_vectors(layer_matrices: xr.DataArray, agg: Aggregation | None) -> xr.DataArray | None:
        if agg is None:
            return None
        matrices = layer_matrices if "head" in layer_matrices.dims else layer_matrices.expand_dims(head=[0])
        return agg(matrices).transpose("head", "token")

    def _reduce(self, vectors: xr.DataArray | None, over: str, reduction: str) -> xr.DataArray | None:
        """The token colour from one vector per head (``over``): the selected one or their combination."""
        if vectors is None:
            return None
        if reduction == HEAD or vectors.sizes[over] == 1:
            return vectors.isel({over: min(self.head, vectors.sizes[over] - 1)})
        return aggregations.get(reduction, over=over)(vectors)

    def _summary(self, doc: Document) -> xr.DataArray | None:
        attention = self.transformed(doc, self.kind, NO_TRANSFORM)
        return None if attention is None else aggregations.get("head_summary")(attention)

    def _statistics_outputs(self, out: dict, corpus: Corpus | None, corpus_key: Hashable) -> None:
        """The corpus statistics when they are ready, else the status of their background job (which
        derives again when it advances or ends). One job per corpus, shared by every session."""
        if corpus is None:
            out["corpus_statistics"] = (corpus_key, None)
            out["corpus_status"] = ("", "")
            return
        out["corpus_statistics"], out["corpus_status"] = self._job_outputs(self.source, corpus, corpus_key)

    def _other_statistics_outputs(self, out: dict) -> None:
        """The statistics of :attr:`store_source` (store B of a store A vs store B contrast), like
        :meth:`_statistics_outputs`: from the same shared job of that corpus."""
        name = self.store_source
        corpus = self.corpus(name) if name is not None and name != self.source else None
        key = (name, Ref(corpus), len(corpus) if corpus is not None else 0)
        if corpus is None:
            status = "" if name is None else f"Choose a corpus other than {self.source} to contrast with"
            if name is not None and name not in self.corpora:
                status = f"No corpus named {name} is loaded"
            out["other_corpus_statistics"] = (key, None)
            out["other_corpus_status"] = (status, status)
            return
        out["other_corpus_statistics"], out["other_corpus_status"] = self._job_outputs(name, corpus, key)

    def _job_outputs(self, name: str | None, corpus: Corpus, corpus_key: Hashable) -> tuple[tuple, tuple]:
        """``((key, statistics), (status, status))`` of the shared statistics job of ``corpus``."""
        job = statistics_job(corpus)
        if not job.done.is_set():
            job.listen(self._statistics_listener())
            done, total = job.progress
            status = f"Computing the corpus statistics of {name}: {done} of {total} documents…"
            return ((corpus_key, "pending"), None), (status, status)
        if job.error is not None:
            status = f"Corpus statistics are not available for {name}: {job.error}"
            return ((corpus_key, "failed"), None), (status, status)
        problems = "; ".join(getattr(job.result, "problems", []) or [])
        return ((corpus_key, Ref(job.result)), job.result), (problems, problems)

    def _statistics_listener(self) -> Callable[[], None]:
        """What the statistics job calls when it advances or ends: derive again, in this session's
        Bokeh document when there is one (never from the worker thread into a served page)."""
        if self._statistics_callback is not None:
            return self._statistics_callback
        try:
            from panel.io.state import state

            doc = state.curdoc if state.curdoc is not None and state.curdoc.session_context is not None else None
        except Exception:  # panel missing or no session: derive in the worker thread (notebooks, scripts)
            doc = None

        def callback() -> None:
            if doc is None:
                self.derive()
                return
            from panel.io.state import set_curdoc

            def in_document() -> None:
                with set_curdoc(doc):
                    self.derive()

            with contextlib.suppress(Exception):  # the session has ended
                doc.add_next_tick_callback(in_document)

        self._statistics_callback = callback
        return callback

    def wait_for_statistics(self, timeout: float | None = None) -> bool:
        """Wait until the corpus statistics job of the explored corpus (and of :attr:`store_source`, when
        it names another corpus) has ended (for tests and scripts), then derive; whether they ended within
        ``timeout`` seconds."""
        names = [self.source] + ([self.store_source] if self.store_source not in (None, self.source) else [])
        corpora = [c for c in map(self.corpus, names) if c is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = True
        for corpus in corpora:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ended = statistics_job(corpus).done.wait(left) and ended
        self.derive()
        return ended

    def _other(self, matrix_key: Hashable) -> tuple[Any, Any]:
        other = self.find_document(self.compare_source, self.compare_doc_id)
        if other is None or self.kind not in other.kinds:
            return (None, None)
        key = (self.compare_source, self.compare_doc_id, Ref(other), matrix_key)

        def compute() -> xr.DataArray | None:
            attention = self.transformed(other, self.kind, self.transform)
            if attention is None or ("layer" in attention.dims and self.layer >= attention.sizes["layer"]):
                return None
            layer = _loaded(attention, self.layer if "layer" in attention.dims else None)
            if "head" in layer.dims and self.head_reduction == HEAD and self.head >= layer.sizes["head"]:
                return None
            return self._matrix(layer) if self.matrix_reduction() else None

        return (key, self._cache.get("other_matrix", key, compute))

    def _labels(self, doc: Document | None, vector: xr.DataArray | None) -> dict[str, str]:
        """The short texts views show: the document, the comparison, and a title of what is shown."""
        label = f"{self.source}: {self.doc_id}" if self.doc_id is not None else ""
        other = f"{self.compare_source}: {self.compare_doc_id}" if self.compare_doc_id is not None else ""
        parts = [label]
        if self.kind not in ("self", "vectors"):
            parts.append(f"{self.kind} attention")
        if self.transform != NO_TRANSFORM:
            parts.append(self.transform)
        if self.has_layers:
            parts.append(f"layer {self.layer}")
        if self.has_heads:
            which = "vector" if self.kind == "vectors" else "head"
            parts.append(
                f"{which} {self.head}" if self.head_reduction == HEAD else f"{self.head_reduction} over {which}s"
            )
        agg = self.vector_aggregation
        if vector is not None and agg is not None:
            parts.append(str(agg.long_name or agg.description or agg.id))
        return {
            "text": doc.text if doc is not None else "",
            "label": label,
            "other_label": other,
            "title": " · ".join(p for p in parts if p),
        }

    def __panel__(self) -> Any:
        from attviz.layout import ExplorerLayout

        return ExplorerLayout(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        from attviz import notebook

        return notebook.repr_mimebundle(self, include, exclude)  # never a blank cell offline


_UNSET = object()
#: Outputs derived whatever the views show: the controls depend on them.
ALWAYS = ("document", "attention")
#: Outputs derived only while a visible view shows them (see :attr:`Explorer.needed`).
OPTIONAL = (
    "table",
    "layer_matrices",
    "head_summary",
    "other_matrix",
    "corpus_statistics",
    "corpus_status",
    "other_corpus_statistics",
    "other_corpus_status",
)
#: Optional outputs derived only while :attr:`Explorer.needed` names them (``None`` does not ask for them).
ON_REQUEST = ("corpus_statistics", "corpus_status", "other_corpus_statistics", "other_corpus_status")


class StatisticsJob:
    """The corpus statistics of one corpus (:func:`attviz.analysis.engine.corpus_statistics`), computed in
    a daemon thread; a store keeps them in its ``stats/`` group, so a reopened store has them at once.

    ``done`` is set when it has ended, with ``result`` or ``error``; ``progress`` is ``(done, total)``
    documents; the ``listen``-ers are called (in the worker thread) as it advances and when it ends.
    """

    def __init__(self, corpus: Corpus):
        self.corpus = corpus
        self.size = len(corpus)
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.progress = (0, self.size)
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="attviz-corpus-statistics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            from attviz.analysis.engine import corpus_statistics

            self.result = corpus_statistics(self.corpus, progress=self._advance)
        except Exception as exc:  # shown to the user as the status, never raised into a session
            self.error = exc
        finally:
            self.done.set()
            self._notify()
            with self._lock:
                self._listeners.clear()

    def _advance(self, done: int, total: int) -> None:
        self.progress = (done, total)
        if done < total:
            self._notify()

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the job advances and when it ends (at once if it has ended)."""
        with self._lock:
            if not self.done.is_set():
                if callback not in self._listeners:
                    self._listeners.append(callback)
                return
        callback()

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:  # one broken session must not stop the others
                logging.getLogger(__name__).exception("a corpus statistics listener failed")


_JOBS: dict[int, StatisticsJob] = {}
_JOBS_LOCK = threading.Lock()
_MAX_JOBS = 16


def statistics_job(corpus: Corpus) -> StatisticsJob:
    """The (one, process-wide) statistics job of ``corpus`` as it is now; started on first use."""
    with _JOBS_LOCK:
        job = _JOBS.get(id(corpus))
        if job is None or job.corpus is not corpus or job.size != len(corpus):
            job = _JOBS[id(corpus)] = StatisticsJob(corpus)
            while len(_JOBS) > _MAX_JOBS:  # forget the oldest ended job (a store still has its cache)
                oldest = next((k for k, j in _JOBS.items() if j.done.is_set()), None)
                if oldest is None:
                    break
                del _JOBS[oldest]
        return job


#: A document without a stored self-check is checked when it is opened if its matrices are at most this
#: many bytes as float16 (q/k documents always: their rows are rebuilt cheaply); a larger one would be read whole.
CHECK_BYTES = 256 << 20


def _attention_check(doc: Document, corpus: Corpus | None) -> dict | None:
    """The document's attention self-check (stored, else computed on sampled rows), None when skipped."""
    from attviz.checks import check_document, stored_check

    stored = stored_check(doc)
    if stored is not None:
        return stored
    attrs = corpus.attrs if corpus is not None else {}
    matrix = [k for k in doc.kinds if k in KIND_STREAMS and doc.qk(k) is None]
    if sum(int(np.prod(doc.get(k).shape)) * 2 for k in matrix) > CHECK_BYTES:
        return None
    try:
        return check_document(doc, error_bound=float(attrs.get("max_abs_error") or 0.0))
    except Exception:  # the check must never stop the document from being shown
        return None


def _check_notes(check: dict | None, doc: Document, kind: str, layer: int, head: int) -> list[str]:
    """What the explorer says of a document's self-check: its errors always; a notice for the head shown."""
    from attviz.checks import ERRORS, describe, key_text

    if not check:
        return []
    notes = []
    lines = describe(check, names=ERRORS)
    if lines:
        notes.append("Attention check: " + "; ".join(lines))
    result = check["kinds"].get(kind) or {}
    for entry in result.get("sink", []):
        if entry[:2] == [layer, head]:
            notes.append(
                f"Layer {layer} head {head} is sink-dominated in this document: {entry[3]:.0%} of its attention "
                f"on {key_text(doc, kind, entry[2])!r}"
            )
    for entry in result.get("uniform", []):
        if entry[:2] == [layer, head]:
            notes.append(f"Layer {layer} head {head} is uniform in this document: {entry[2]:.0%} of its rows are flat")
    return notes


def _long_qk(doc: Document, kind: str, layer_memory: int) -> Any:
    """The document's :class:`attviz.qk.QKAttention` of ``kind`` when one layer's float32 matrices exceed
    ``layer_memory`` bytes, else None."""
    if kind not in doc.kinds or kind not in MATRIX_KINDS:
        return None
    qk = doc.qk(kind)
    if qk is None:
        return None
    _, n_heads, n_query, n_key = qk.shape
    return qk if n_heads * n_query * n_key * 4 > layer_memory else None


def _supports_qk(name: str) -> bool:
    try:
        return aggregations.get(name).supports_qk
    except Exception:
        return False


def _loaded(attention: xr.DataArray, layer: int | None) -> xr.DataArray:
    """One layer (or the whole array when ``layer`` is None) in memory as float32."""
    array = attention.isel(layer=layer) if layer is not None else attention
    array = array.load() if array.chunks is not None else array
    if array.dtype == np.float32:
        return array
    # float16 -> float32 one matrix at a time through the 65,536-entry table: numpy's float16 arithmetic
    # is ~10x slower than float32's, and converting the whole layer at once would index with 8 bytes a
    # value (a 4,096-token MiniLM layer: 0.8 GB float32, plus 0.13 GB at a time instead of 1.6 GB).
    values = np.asarray(array.values)
    out = np.empty(values.shape, dtype=np.float32)
    for index in np.ndindex(values.shape[:-2]):
        out[index] = as_float32(values[index])
    return array.copy(data=out)


def _lacks(agg: Aggregation, array: xr.DataArray, notes: list[str]) -> bool:
    """Whether ``agg`` cannot run on ``array`` (:meth:`Aggregation.missing`); if so, the notice says why."""
    lacks = agg.missing(array)
    if lacks:
        notes.append(f"'{agg.id}' needs {lacks}: choose another token colour")
    return bool(lacks)


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


def explore(corpus: Any = None, **params: Any) -> Explorer:
    """An :class:`Explorer` on a Corpus, a path (any readable input), several of them, or the demo corpus."""
    if corpus is None:
        from attviz.demo import demo_corpus

        corpus = {"demo": demo_corpus(progress=False)}
    return Explorer(corpus, **params)


__all__ = ["OUTPUTS", "Explorer", "KeyedCache", "as_corpora", "corpus_name", "explore"]
