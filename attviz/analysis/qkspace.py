"""The query–key space of one head (issue #13): every token's query and key over a corpus in one 2-D map.

AttentionViz (Yeh et al. 2023, "AttentionViz: A Global View of Transformer Attention", §4) projects
the query and the key vectors of one (layer, head) *jointly*, so that a query lies near the keys it
attends to. Before the projection the vectors are normalised in two ways that leave every attention
weight ``softmax(q · kᵀ · scale)`` as it was:

- **key translation**: adding a vector ``t`` to every key adds ``q · t`` to a whole row of logits, a
  constant per query that softmax ignores; the keys are translated so that their centroid equals the
  queries' centroid (otherwise the two clouds sit apart and the map shows the offset, not attention);
- **scaling**: multiplying the queries by ``c`` and dividing the keys by ``c`` leaves ``q · k`` as it
  is; ``c`` is chosen so that queries and keys have the same mean norm. (Scaling both by one factor
  would change the softmax temperature; this product-preserving scaling does not.)

Scaling by ``c = sqrt(mean|k| / mean|q|)`` after translating (the factor that equalises the norms
of the translated set) moves the centroids apart again (to ``c·μ_q`` and ``μ_q / c``) unless
``c = 1``; :func:`normalise_qk` solves for the one ``c`` under which both hold at once (see its
docstring), which is that factor whenever the translated norms already agree. Both steps run over
the whole set of projected queries and keys of the head (all sampled documents together), as
AttentionViz does; the translation is one vector for every document, so each document's rows keep
their weights too.

Caveat: under logit soft-capping (Gemma 2, ``tanh(x / cap) · cap``) a per-row constant is no longer
ignored, so there the translation changes the weights slightly (the scaling still does not).

The 2-D projection is UMAP (McInnes et al. 2018; AttentionViz's choice) when the ``umap`` package is
installed, else PCA (a deterministic SVD of the centred joint matrix).

Queries and keys come from a corpus that keeps attention as queries and keys (``attention="qk"``);
for documents kept as matrices (or only as vectors) the corpus's model (or the one passed) is run
again on the document's text with ``attention="qk"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from attviz.corpus import KIND_STREAMS, Corpus, Document
from attviz.errors import AttvizError, InputError

METHODS = ("auto", "pca", "umap")
ROLES = ("query", "key")
COLUMNS = ["doc", "doc_id", "position", "token", "role", "label", "prediction", "special", "x", "y"]


@dataclass
class QKSpace:
    """One head's queries and keys projected jointly to 2-D.

    ``points``: one row per (document, token, role) with the columns ``doc`` (the document's index in
    the corpus), ``doc_id``, ``position`` (the token's position in its stream), ``token`` (its text),
    ``role`` (``"query"`` or ``"key"``), ``label``, ``prediction`` (None where the corpus has none),
    ``special`` (a special token) and the coordinates ``x``, ``y``. ``explained``: PCA's explained
    variance ratio of the two components (None under UMAP). ``sampled``: whether ``max_points`` left
    tokens out.
    """

    points: pd.DataFrame
    method: str
    explained: tuple[float, float] | None
    layer: int
    head: int
    kind: str
    sampled: bool


# -- queries and keys ------------------------------------------------------------------------------
def _kind(doc: Document, kind: str | None) -> str:
    if kind is None:
        kind = next((k for k in ("self", "encoder") if k in doc.arrays or f"{k}_vectors" in doc.arrays), "self")
    if kind not in KIND_STREAMS:
        raise InputError(f"unknown attention kind {kind!r}", field="kind", expected=f"one of {sorted(KIND_STREAMS)}")
    return kind


def _kept(doc: Document, layer: int, head: int, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The document's stored queries and keys of the head, or None when it does not keep them."""
    kept = doc.qk(kind)
    if kept is None:
        return None
    try:
        queries, keys = kept.queries(layer, head), kept.keys(layer, head)
    except KeyError:  # a storage policy kept other layers or heads
        return None
    return np.asarray(queries.values, dtype=np.float32), np.asarray(keys.values, dtype=np.float32)


def _loaded_model(model: Any, tokenizer: Any) -> Any:
    """A :class:`attviz.models.LoadedModel` from a loaded one, a name or path, or a model + tokenizer."""
    from attviz.models import LoadedModel, load_model, prepare_model

    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str | os.PathLike):
        return load_model(model)
    if tokenizer is None:
        raise AttvizError("pass the tokenizer together with a loaded model")
    return prepare_model(model, tokenizer)


def _recorded_model(corpus: Corpus, missing: str) -> Any:
    """The model the corpus was extracted with, loaded again (its local directory, else its name)."""
    from attviz.models import load_model

    recorded, path = corpus.attrs.get("model") or None, corpus.attrs.get("model_path") or None
    source = path if path and os.path.isdir(path) else recorded
    if not source:
        raise AttvizError(f"{missing}, and the corpus records no model to recompute them: pass model=...")
    try:
        return load_model(source)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AttvizError(
            f"{missing}; recomputing them needs the corpus's model {str(recorded or source)!r}, which could not "
            f"be loaded ({reason}): pass model=... (and tokenizer=...) or extract with attention='qk'"
        ) from exc


def _missing(doc: Document, kind: str, layer: int, head: int) -> str:
    return (
        f"document {doc.id!r} keeps no queries and keys of its {kind!r} attention for layer {layer}, head {head} "
        "(it was extracted with attention='matrices' or a storage policy without them)"
    )


def _recompute(docs: Sequence[Document], kind: str, loaded: Any, max_length: int | None = None) -> list[Document]:
    """The documents extracted again from their texts with ``attention="qk"`` (one extraction for all)."""
    from attviz.extract import extract

    targets = None
    if loaded.encoder_decoder:
        if any(doc.target is None for doc in docs):
            raise AttvizError("recomputing an encoder-decoder document's queries and keys needs its target text")
        targets = [str(doc.target) for doc in docs]
    try:
        again = extract(
            [doc.text for doc in docs],
            model=loaded,
            ids=[doc.id for doc in docs],
            targets=targets,
            max_length=max_length,
            attention="qk",
            progress=False,
        )
    except AttvizError as exc:
        raise AttvizError(f"could not recompute queries and keys with {loaded.name!r}: {exc}") from exc
    out = list(again)
    for doc, new in zip(docs, out, strict=True):
        for stream in dict.fromkeys(KIND_STREAMS[kind]):
            try:
                before = list(doc.token_table(stream)["text"])
            except KeyError:
                continue
            after = list(new.token_table(stream)["text"])
            if before != after:
                raise AttvizError(
                    f"recomputing document {doc.id!r} with {loaded.name!r} gives {len(after)} {stream} tokens, not "
                    f"the {len(before)} stored (another model or tokenizer, or a window of a longer text?): pass "
                    "the model it was extracted with"
                )
    return out


def qk_vectors(
    doc: Document,
    layer: int,
    head: int,
    *,
    kind: str | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One head's queries ``(Q, d)`` and keys ``(K, d)`` of a document, float32, as the attention
    function received them (post-RoPE; under grouped-query attention the key head the query head uses).

    From the store when the document keeps them; else recomputed by running ``model`` (a
    :class:`~attviz.models.LoadedModel`, a name or path, or a model with its ``tokenizer``) on the
    document's text with ``attention="qk"``. Raises :class:`~attviz.errors.AttvizError` naming what is
    missing when neither works.
    """
    kind = _kind(doc, kind)
    kept = _kept(doc, layer, head, kind)
    if kept is not None:
        return kept
    if model is None:
        raise AttvizError(
            f"{_missing(doc, kind, layer, head)}, and no model was given to recompute them: pass model=... "
            "(and tokenizer=... with a loaded model) or extract with attention='qk'"
        )
    again = _recompute([doc], kind, _loaded_model(model, tokenizer))[0]
    kept = _kept(again, layer, head, kind)
    if kept is None:
        raise AttvizError(f"the model has no layer {layer}, head {head} of {kind!r} attention")
    return kept


# -- normalisation ---------------------------------------------------------------------------------
def _scale_factor(queries: np.ndarray, centred_keys: np.ndarray, centroid: np.ndarray) -> float:
    """``c`` with ``mean|c·q| = mean|k_c / c + c·μ_q|``: with ``s = 1/c²`` the root of
    ``g(s) = mean|s·k_c + μ_q| = mean|q|``. ``g`` is convex with ``g(0) = |μ_q| ≤ mean|q|`` (Jensen) and
    grows without bound, so the root is unique; found by bisection. 1 where there is none (all queries
    equal, or all keys equal)."""
    target = float(np.linalg.norm(queries, axis=1).mean())
    floor = float(np.linalg.norm(centroid))
    key_spread = float(np.linalg.norm(centred_keys, axis=1).mean())
    if target <= 0 or key_spread <= 0 or target - floor <= 1e-12 * max(target, 1.0):
        return 1.0

    def g(s: float) -> float:
        return float(np.linalg.norm(s * centred_keys + centroid, axis=1).mean())

    lo, hi = 0.0, (target + floor) / key_spread  # g(hi) ≥ hi·spread − |μ_q| ≥ target
    while g(hi) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if g(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return float(1 / np.sqrt(0.5 * (lo + hi)))


def normalise_qk(q: Any, k: Any) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``(Q, d)`` and keys ``(K, d)`` normalised as in AttentionViz §4, without changing any
    attention weight.

    Returns ``(c·q, (k − μ_k) / c + c·μ_q)``: the keys are translated (adding one vector to every key
    adds a constant to each row of ``q · kᵀ``, which softmax ignores) and the queries are multiplied by
    ``c`` and the keys divided by it (``q · k`` unchanged: scaling both by one factor would change the
    softmax temperature; this does not). ``c`` is the one for which, afterwards, the key centroid
    equals the query centroid *and* the mean query norm equals the mean key norm; the plain
    ``c = sqrt(mean|k| / mean|q|)``, applied after the translation, gives equal norms but moves the
    centroids apart again (to ``c·μ_q`` and ``μ_q / c``). Where no such ``c`` exists (all queries or
    all keys equal) ``c = 1``. Computed in float64; returned as float64 for float64 input, else float32.
    """
    out_dtype = np.result_type(np.asarray(q).dtype, np.asarray(k).dtype, np.float32)
    q = np.asarray(q, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1] or not len(q) or not len(k):
        raise InputError(
            f"queries of shape {q.shape} and keys of shape {k.shape}", expected="(Q, d) and (K, d), Q, K ≥ 1"
        )
    mu_q = q.mean(axis=0)
    centred = k - k.mean(axis=0)
    c = _scale_factor(q, centred, mu_q)
    return (c * q).astype(out_dtype, copy=False), (centred / c + c * mu_q).astype(out_dtype, copy=False)


# -- projection ------------------------------------------------------------------------------------
def pca_2d(x: Any) -> tuple[np.ndarray, tuple[float, float]]:
    """The first two principal-component scores ``(n, 2)`` of the rows of ``x`` and their explained
    variance ratios: an SVD of the centred matrix; each component's sign makes its largest-|loading|
    entry positive (so the map does not flip between runs). Missing components (rank < 2) are 0."""
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    scores = np.zeros((len(x), 2))
    explained = [0.0, 0.0]
    total = float((sv**2).sum())
    for i in range(min(2, len(sv))):
        component = vt[i]
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        scores[:, i] = centred @ component
        explained[i] = float(sv[i] ** 2 / total) if total > 0 else 0.0
    return scores, (explained[0], explained[1])


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_components=2, random_state=seed)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def _method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"unknown projection {method!r}", field="method", expected=f"one of {METHODS}")
    if method == "pca":
        return method
    try:
        import umap  # noqa: F401
    except ImportError as exc:
        if method == "umap":
            raise AttvizError("method='umap' needs the umap package (pip install umap-learn); or use 'pca'") from exc
        return "pca"
    return "umap"


# -- sampling --------------------------------------------------------------------------------------
def _counts(corpus: Corpus, index: int, kind: str) -> tuple[int, int]:
    """(queries, keys) of document ``index``: from the corpus table for source-stream kinds."""
    query_stream, key_stream = KIND_STREAMS[kind]
    if query_stream == key_stream == "source":
        n = int(corpus.dataset["n_tokens"].values[index])
        return n, n
    doc = corpus[index]
    return len(doc.token_table(query_stream)), len(doc.token_table(key_stream))


def _sample(counts: dict[int, tuple[int, int]], max_points: int, seed: int) -> tuple[dict[int, np.ndarray], bool]:
    """The token positions kept per document: every one, or a uniform seeded sample of (document,
    position) units — a unit brings its query and its key — with at most ``max_points`` points."""
    total = sum(q + k for q, k in counts.values())
    if total <= max_points:
        return {i: np.arange(max(q, k)) for i, (q, k) in counts.items()}, False
    docs = np.concatenate([np.full(max(q, k), i) for i, (q, k) in counts.items()])
    positions = np.concatenate([np.arange(max(q, k)) for q, k in counts.values()])
    points = np.concatenate(
        [(np.arange(max(q, k)) < q).astype(int) + (np.arange(max(q, k)) < k) for q, k in counts.values()]
    )
    order = np.random.default_rng(seed).permutation(len(docs))
    keep = order[: int(np.searchsorted(np.cumsum(points[order]), max_points, side="right"))]
    chosen: dict[int, np.ndarray] = {}
    for i in counts:
        mine = np.sort(positions[keep[docs[keep] == i]])
        if len(mine):
            chosen[i] = mine
    return chosen, True


def _indices(corpus: Corpus, documents: Sequence[int | str] | None) -> list[int]:
    n = len(corpus)
    if documents is None:
        return list(range(n))
    out: list[int] = []
    for value in documents:
        if isinstance(value, str):
            if value not in corpus.ids:
                raise InputError(f"no document with id {value!r}", field="documents")
            index = corpus.ids.index(value)
        else:
            index = int(value)
            if not -n <= index < n:
                raise InputError(f"document index {index} out of range for {n} documents", field="documents")
            index %= n
        if index not in out:
            out.append(index)
    if not out:
        raise InputError("no documents to project", field="documents", expected="at least one document")
    return out


def _max_length(corpus: Corpus) -> int | None:
    settings = corpus.attrs.get("settings")
    try:
        settings = json.loads(settings) if isinstance(settings, str) else dict(settings or {})
    except (TypeError, ValueError):
        return None
    value = settings.get("max_length")
    return int(value) if value else None


def qk_space(
    corpus: Corpus,
    layer: int,
    head: int,
    *,
    kind: str | None = None,
    method: str = "auto",
    max_points: int = 50_000,
    seed: int = 0,
    model: Any = None,
    tokenizer: Any = None,
    documents: Sequence[int | str] | None = None,
) -> QKSpace:
    """The query–key space of one head (AttentionViz): the queries and keys of every token of the
    corpus (or of ``documents``, indices or ids), normalised together by :func:`normalise_qk` and
    projected jointly to 2-D.

    ``method``: ``"umap"``, ``"pca"`` or ``"auto"`` (UMAP when the ``umap`` package is installed, else
    PCA). Over ``max_points`` points (a token brings two, its query and its key) a uniform sample of
    tokens (seeded by ``seed``) is kept, each with both its query and its key. Documents that do not
    keep queries and keys are recomputed with ``model`` (see :func:`qk_vectors`), by default the model
    the corpus records; the error says what is missing when that fails.
    """
    if max_points < 2:
        raise InputError(f"max_points is {max_points}", field="max_points", expected="at least 2")
    method = _method(method)
    indices = _indices(corpus, documents)
    kind = _kind(corpus[indices[0]], kind)
    counts = {i: _counts(corpus, i, kind) for i in indices}
    chosen, sampled = _sample(counts, max_points, seed)

    vectors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    missing: list[int] = []
    for i in chosen:
        kept = _kept(corpus[i], layer, head, kind)
        if kept is None:
            missing.append(i)
        else:
            vectors[i] = kept
    sources: dict[int, Document] = {}
    if missing:
        first = corpus[missing[0]]
        what = _missing(first, kind, layer, head) + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        loaded = _loaded_model(model, tokenizer) if model is not None else _recorded_model(corpus, what)
        again = _recompute([corpus[i] for i in missing], kind, loaded, _max_length(corpus))
        for i, doc in zip(missing, again, strict=True):
            kept = _kept(doc, layer, head, kind)
            if kept is None:
                raise AttvizError(f"the model has no layer {layer}, head {head} of {kind!r} attention")
            vectors[i], sources[i] = kept, doc

    rows: list[pd.DataFrame] = []
    blocks: dict[str, list[np.ndarray]] = {"query": [], "key": []}
    query_stream, key_stream = KIND_STREAMS[kind]
    for i, positions in chosen.items():
        doc = corpus[i]
        for role, values, stream in zip(ROLES, vectors[i], (query_stream, key_stream), strict=True):
            mine = positions[positions < len(values)]
            if not len(mine):
                continue
            try:
                tokens = doc.token_table(stream)
            except KeyError:
                tokens = sources[i].token_table(stream)
            blocks[role].append(values[mine])
            rows.append(
                pd.DataFrame(
                    {
                        "doc": i,
                        "doc_id": doc.id,
                        "position": mine.astype(np.int64),
                        "token": tokens["text"].to_numpy(dtype=object)[mine],
                        "role": role,
                        "label": doc.label,
                        "prediction": doc.prediction,
                        "special": tokens["special"].to_numpy(dtype=bool)[mine],
                    }
                )
            )
    if not blocks["query"] or not blocks["key"]:
        raise AttvizError("no queries or no keys to project (max_points too small?)")
    normal_q, normal_k = normalise_qk(np.concatenate(blocks["query"]), np.concatenate(blocks["key"]))
    # the rows in the order of the blocks: per document its queries, then its keys
    order = []
    q_at = k_at = 0
    for frame in rows:
        n = len(frame)
        if frame["role"].iat[0] == "query":
            order.append(normal_q[q_at : q_at + n])
            q_at += n
        else:
            order.append(normal_k[k_at : k_at + n])
            k_at += n
    joint = np.concatenate(order)
    explained: tuple[float, float] | None = None
    if method == "umap":
        xy = _umap(joint, seed)
    else:
        xy, explained = pca_2d(joint)
    points = pd.concat(rows, ignore_index=True)
    points["x"], points["y"] = xy[:, 0], xy[:, 1]
    return QKSpace(
        points=points[COLUMNS],
        method=method,
        explained=explained,
        layer=int(layer),
        head=int(head),
        kind=kind,
        sampled=sampled,
    )
