"""Attention that checks itself: row sums, NaN/inf, uniform heads and sink-dominated heads.

Every attention row is a softmax, so its weights are finite, non-negative and sum to 1 (Vaswani et
al. 2017, "Attention is all you need", eq. 1). What attviz stores or reads can break that: a float16
forward pass that overflows (NaN/inf), a file truncated or edited by hand, a reader fed the wrong
array, a mask applied after the softmax. Two patterns are not errors but change how a head should be
read, so they are reported as notices:

- a **uniform** head spreads every row evenly over the keys it can see (the row's maximum within
  :data:`UNIFORM_SLACK` of ``1/n``): it carries no positional or content preference, and where a whole
  model is uniform the attention was most likely not what was captured (zeroed logits, a wrong mask);
- a **sink-dominated** head puts on average ≥ :data:`SINK_SHARE` of every row's weight on one key,
  usually the first token or a separator ("attention sinks", Xiao et al. 2024, "Efficient Streaming
  Language Models with Attention Sinks", ICLR; Gu et al. 2025, "When Attention Sink Emerges in
  Language Models", ICLR; BERT's [SEP] heads, Clark et al. 2019, "What Does BERT Look At?"): such a
  head's weights say little about the other tokens (Kobayashi et al. 2020 show its output norm is
  small).

:func:`check_arrays` checks one document's arrays as they are written (the store writer calls it for
every document, so extraction, conversion and re-saving all check); the result is kept in the
document's ``meta["attention_check"]`` and summarised by :func:`summarize` in the corpus attrs
(``attention_check``). :func:`check_document` checks a document read from a file that carries no
check (sampled rows of long documents), and :func:`check_corpus` a whole corpus (``attviz info``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: The version of the checks; a stored result of another version is computed again.
VERSION = 1
#: A head is sink-dominated when its rows put on average at least this share on one key.
SINK_SHARE = 0.9
#: A row is flat when its largest weight is at most ``(1 + UNIFORM_SLACK) / n`` (n: its non-zero keys) ...
UNIFORM_SLACK = 0.05
#: ... of which a uniform head has at least this share among its rows that see at least MIN_KEYS keys.
UNIFORM_ROWS = 0.95
MIN_KEYS = 4
#: Rows checked per head where a document is checked by sampling (q/k documents; documents read from
#: files without a stored check): :data:`SAMPLE_BLOCKS` runs of consecutive rows, evenly spaced, the
#: first and the last row included.
SAMPLE_ROWS = 128
SAMPLE_BLOCKS = 8
#: Findings of these checks mean the attention is wrong; the others are notices.
ERRORS = ("nonfinite", "row_sum")
NOTICES = ("uniform", "sink")
#: At most this many (layer, head) entries per check and document are kept (the counts are exact).
MAX_ENTRIES = 64


def row_tolerance(dtype: Any, n_keys: int, error_bound: float = 0.0) -> float:
    """How far a row's sum may be from 1 and still be a softmax row kept in ``dtype``.

    Rounding each weight to ``dtype`` changes it by at most ``eps/2`` of itself, so the row's sum by at
    most ``eps/2`` (the weights sum to 1); the float32 softmax and the summation add at most
    ``n·eps32``; a store quantised with an absolute error bound ``b`` per weight adds ``n·b``. The
    tolerance is twice the first term plus the others.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps) if np.dtype(dtype).kind == "f" else 0.0
    return eps + n_keys * float(np.finfo(np.float32).eps) + n_keys * float(error_bound)


def _blocks(n: int, sample: int | None) -> list[slice]:
    """The rows to check of ``n``: all, or ``sample`` of them in :data:`SAMPLE_BLOCKS` evenly spaced runs."""
    if sample is None or n <= sample:
        return [slice(0, n)]
    size = max(1, sample // SAMPLE_BLOCKS)
    starts = np.unique(np.linspace(0, n - size, SAMPLE_BLOCKS).round().astype(int))
    return [slice(int(start), int(start) + size) for start in starts]


#: Weights checked at once (a group of heads of one layer): small documents in one go, long ones a head at a time.
GROUP_ELEMENTS = 1 << 22


def _group(weights: np.ndarray, tolerance: float) -> list[dict[str, Any]]:
    """The checks of a group of heads' rows ``(head, rows, keys)``, one dict a head. float16 is widened to
    float32 once (numpy has no fast half-precision reductions; float32's pairwise sums err by ~log2(n)·eps32,
    far below the tolerance)."""
    if weights.dtype not in (np.float32, np.float64):
        weights = weights.astype(np.float32)
    sums = weights.sum(axis=-1).astype(np.float64)  # (head, rows)
    finite = np.isfinite(sums)
    n_good = finite.sum(axis=-1)
    error = np.where(finite, np.abs(sums - 1.0), 0.0)
    keys = np.count_nonzero(weights, axis=-1)
    largest = weights.max(axis=-1).astype(np.float64)
    eligible = (keys >= MIN_KEYS) & finite
    flat = (largest * keys <= 1.0 + UNIFORM_SLACK) & eligible
    good = weights if finite.all() else np.where(finite[..., None], weights, 0)
    column = good.sum(axis=1).astype(np.float64) / np.maximum(n_good, 1)[:, None]  # mean over the finite rows
    out = []
    for h in range(weights.shape[0]):
        result: dict[str, Any] = {"nonfinite": int(len(sums[h]) - n_good[h])}
        if n_good[h]:
            result["row_sum"] = (int((error[h] > tolerance).sum()), float(error[h].max()))
            if eligible[h].any():
                result["uniform"] = float(flat[h].sum() / eligible[h].sum())
            key = int(column[h].argmax())
            result["sink"] = (key, float(column[h, key]))
        out.append(result)
    return out


def _matrix_groups(values: Any, blocks: list[slice]) -> Iterable[tuple[int, int, np.ndarray]]:
    """``(layer, first head, weights (heads, rows, keys))`` of a ``(layer, head, query, key)`` array (numpy,
    or anything that slices like one, such as a dask-backed DataArray's ``.data``), a layer read at a time."""
    layers, heads = values.shape[:2]
    for layer in range(layers):
        parts = [np.asarray(values[layer][:, rows]) for rows in blocks]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        step = max(1, GROUP_ELEMENTS // max(1, block[0].size))
        for head in range(0, heads, step):
            yield layer, head, block[head : head + step]


def _qk_groups(values: Any, blocks: list[slice]) -> Iterable[tuple[int, int, np.ndarray]]:
    """``(layer, head, weights (1, rows, keys))`` of rows of a :class:`~attviz.qk.QKAttention`, rebuilt exactly."""
    layers, heads = values.shape[:2]
    for layer in range(layers):
        for head in range(heads):
            parts = [values.rows(layer, head, rows) for rows in blocks]
            yield layer, head, (parts[0] if len(parts) == 1 else np.concatenate(parts))[None]


def check_matrix(
    values: Any,
    *,
    dtype: Any = np.float32,
    error_bound: float = 0.0,
    sample: int | None = None,
    layer_ids: Sequence[int] | None = None,
    head_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Check one kind's attention ``(layer, head, query, key)``: a numpy array, a dask/zarr-backed array
    or a :class:`~attviz.qk.QKAttention`.

    ``dtype`` and ``error_bound`` are how the weights are kept (see :func:`row_tolerance`); ``sample``
    checks that many evenly spaced rows per head instead of all (q/k documents are always sampled, at
    :data:`SAMPLE_ROWS`, and rebuilt with their own softmax, so their row sums are checked through
    their queries' and keys' finiteness). ``layer_ids``/``head_ids`` name the positions (a store may keep
    a subset). Returns a JSON-able dict: the tolerance, the rows checked and, per check, the
    ``[layer, head, ...]`` entries that failed it.
    """
    from attviz.qk import QKAttention

    n_query, n_key = (int(x) for x in values.shape[2:])
    layer_ids = list(layer_ids) if layer_ids is not None else list(range(values.shape[0]))
    head_ids = list(head_ids) if head_ids is not None else list(range(values.shape[1]))
    qk = isinstance(values, QKAttention)
    if qk:
        sample = sample or SAMPLE_ROWS
        dtype = np.float32
    blocks = _blocks(n_query, sample)
    tolerance = row_tolerance(dtype, n_key, error_bound)
    found: dict[str, list] = {name: [] for name in (*ERRORS, *NOTICES)}
    worst = 0.0
    groups = (_qk_groups if qk else _matrix_groups)(values, blocks)
    results = ((layer, first + h, r) for layer, first, w in groups for h, r in enumerate(_group(w, tolerance)))
    for layer, head, result in results:
        at = [layer_ids[layer], head_ids[head]]
        if result["nonfinite"]:
            found["nonfinite"].append([*at, result["nonfinite"]])
        if "row_sum" in result:
            bad, error = result["row_sum"]
            worst = max(worst, error)
            if bad:
                found["row_sum"].append([*at, bad, round(error, 6)])
        if result.get("uniform", 0.0) >= UNIFORM_ROWS:
            found["uniform"].append([*at, round(result["uniform"], 4)])
        if "sink" in result and result["sink"][1] >= SINK_SHARE:
            found["sink"].append([*at, result["sink"][0], round(result["sink"][1], 4)])
    if qk:
        bad = _qk_nonfinite(values)
        found["nonfinite"] = [entry for entry in found["nonfinite"] if (entry[0], entry[1]) not in bad]
        found["nonfinite"] += [[*at, n] for at, n in sorted(bad.items())]
    out: dict[str, Any] = {
        "tolerance": float(f"{tolerance:.3g}"),
        "rows": sum(rows.stop - rows.start for rows in blocks),
        "of_rows": n_query,
        "max_row_error": round(worst, 6),
        "counts": {name: len(entries) for name, entries in found.items()},
    }
    out.update({name: entries[:MAX_ENTRIES] for name, entries in found.items() if entries})
    return out


def _qk_nonfinite(values: Any) -> dict[tuple[int, int], int]:
    """``{(layer, head): n}``: NaN/inf among a q/k document's stored queries, keys and row log-sum-exps
    (what every weight is computed from)."""
    bad: Counter = Counter()
    layer_ids, head_ids = values.layer_ids, values.head_ids
    for layer in range(values.shape[0]):
        query = values._layer("query", layer)
        key = values._layer("key", layer)
        lse = values._layer("lse", layer)
        for head in range(values.shape[1]):
            n = int((~np.isfinite(query[head])).sum() + (~np.isfinite(key[values.key_head(head)])).sum())
            n += int((~np.isfinite(lse[head])).sum())
            if n:
                bad[(layer_ids[layer], head_ids[head])] = n
    return dict(bad)


def check_vectors(values: Any) -> dict[str, Any]:
    """Check token-level values (a policy's vectors, a legacy file's): only that they are finite."""
    array = np.asarray(values, dtype=np.float64)
    n = int((~np.isfinite(array)).sum())
    return {"counts": {"nonfinite": int(n > 0)}, **({"nonfinite": [[-1, -1, n]]} if n else {})}


def check_arrays(
    arrays: Mapping[str, Any],
    *,
    dtypes: Mapping[str, Any] | None = None,
    error_bounds: Mapping[str, float] | None = None,
    sample: int | None = None,
) -> dict[str, Any]:
    """One document's check, per kind: its attention matrices (or queries and keys) and its token
    vectors; the ``meta["attention_check"]`` a document carries. ``dtypes``/``error_bounds`` per kind say
    how it is kept (default: the array's own dtype, exact)."""
    import xarray as xr

    from attviz.corpus import kind_role
    from attviz.qk import QKAttention

    kinds: dict[str, Any] = {}
    for kind, values in arrays.items():
        role, _ = kind_role(kind)
        if role == "capture":
            continue  # a plugin's values (norms, ...), not attention
        layer_ids = head_ids = None
        if isinstance(values, xr.DataArray):
            if "layer" in values.coords:
                layer_ids = [int(x) for x in values.coords["layer"].values]
            if "head" in values.coords:
                head_ids = [int(x) for x in values.coords["head"].values]
            values = values.data
        if role == "matrix" or isinstance(values, QKAttention):
            if getattr(values, "ndim", 4) != 4:
                continue
            kinds[kind] = check_matrix(
                values,
                dtype=(dtypes or {}).get(kind, getattr(values, "dtype", np.float32)),
                error_bound=(error_bounds or {}).get(kind, 0.0),
                sample=sample,
                layer_ids=layer_ids,
                head_ids=head_ids,
            )
        else:
            kinds[kind] = check_vectors(values)
    return {"version": VERSION, "sampled": sample is not None, "kinds": kinds}


def stored_check(doc: Any) -> dict[str, Any] | None:
    """The check a document carries (of this :data:`VERSION`), else None."""
    stored = doc.meta.get("attention_check")
    return stored if isinstance(stored, dict) and stored.get("version") == VERSION else None


def key_text(doc: Any, kind: str, key: int) -> str:
    """The text of key token ``key`` of a document's ``kind`` (what a sink notice names)."""
    try:
        return str(doc.get(kind).coords["key_text"].values[key])
    except (KeyError, IndexError, ValueError):
        return f"key {key}"


def check_document(
    doc: Any, *, sample: int | None = SAMPLE_ROWS, error_bound: float = 0.0, refresh: bool = False
) -> dict[str, Any]:
    """A document's check: the one it carries (computed when it was written), else computed now on
    ``sample`` rows per head (None: every row) and kept in ``doc.meta``; ``error_bound`` is a quantised
    store's absolute error per weight (its ``max_abs_error``)."""
    stored = None if refresh else stored_check(doc)
    if stored is not None:
        return stored
    arrays: dict[str, Any] = {}
    dtypes: dict[str, Any] = {}
    for kind in doc.kinds:
        qk = doc.qk(kind)
        if qk is not None:
            arrays[kind] = qk
            continue
        array = doc.get(kind)
        arrays[kind] = array
        dtypes[kind] = array.dtype
    result = check_arrays(arrays, dtypes=dtypes, error_bounds=dict.fromkeys(arrays, error_bound), sample=sample)
    doc.meta["attention_check"] = result
    return result


def findings(check: Mapping[str, Any]) -> dict[str, list[tuple[str, list]]]:
    """``{check name: [(kind, entry), ...]}`` of one document's check."""
    out: dict[str, list[tuple[str, list]]] = {name: [] for name in (*ERRORS, *NOTICES)}
    for kind, result in (check.get("kinds") or {}).items():
        for name in out:
            out[name] += [(kind, entry) for entry in result.get(name, [])]
    return out


def problems(check: Mapping[str, Any]) -> bool:
    """Whether a document's check found errors (not only notices)."""
    return any(
        (result.get("counts") or {}).get(name) for result in (check.get("kinds") or {}).values() for name in ERRORS
    )


def _heads(entries: Sequence[tuple[str, list]], limit: int = 4) -> str:
    names = [f"{kind} L{entry[0]} H{entry[1]}" if entry[0] >= 0 else kind for kind, entry in entries]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def describe(check: Mapping[str, Any], doc: Any = None, names: Sequence[str] = (*ERRORS, *NOTICES)) -> list[str]:
    """One line per failed check of one document among ``names`` (errors first), e.g. ``rows that do not
    sum to 1 in self L2 H3 (up to 0.31 off)``; ``doc`` names a sink's key token."""
    found = {name: entries if name in names else [] for name, entries in findings(check).items()}
    lines = []
    if found["nonfinite"]:
        lines.append(f"NaN or infinite attention in {_heads(found['nonfinite'])}")
    if found["row_sum"]:
        worst = max(entry[3] for _, entry in found["row_sum"])
        lines.append(f"rows that do not sum to 1 in {_heads(found['row_sum'])} (up to {worst:.3g} off)")
    if found["uniform"]:
        lines.append(f"uniform (flat) attention in {_heads(found['uniform'])}")
    if found["sink"]:
        kind, entry = max(found["sink"], key=lambda item: item[1][3])
        where = f" (e.g. {entry[3]:.0%} on {key_text(doc, kind, entry[2])!r})" if doc is not None else ""
        lines.append(f"{len(found['sink'])} sink-dominated head(s): {_heads(found['sink'])}{where}")
    return lines


def summarize(
    checks: Mapping[str, Mapping[str, Any] | None] | Iterable[tuple[str, Mapping[str, Any] | None]],
    dtype: str = "",
    examples: int = 5,
) -> dict[str, Any]:
    """The corpus's check from its documents' (``{doc id: check or None}``, or such pairs): how many documents were
    checked, which documents failed each check (up to ``examples`` ids and the count), and per
    ``kind/layer/head`` how many documents each notice was found in. ``dtype`` is the model's compute
    dtype: NaN/inf under float16 is reported as a likely overflow."""
    pairs = list(checks.items() if isinstance(checks, Mapping) else checks)
    checked = [(doc, check) for doc, check in pairs if check]
    out: dict[str, Any] = {"version": VERSION, "documents": len(checked), "unchecked": len(pairs) - len(checked)}
    for name in (*ERRORS, *NOTICES):
        docs: list[str] = []
        heads: Counter = Counter()
        worst = 0.0
        for doc, check in checked:
            entries = findings(check)[name]
            if entries:
                docs.append(doc)
            for kind, entry in entries:
                heads[f"{kind}/{entry[0]}/{entry[1]}"] += 1
                if name == "row_sum":
                    worst = max(worst, float(entry[3]))
        item: dict[str, Any] = {"documents": len(docs), "examples": docs[:examples]}
        if name in NOTICES:
            item["heads"] = dict(heads.most_common())
        if name == "row_sum" and docs:
            item["max_error"] = worst
        out[name] = item
    if out["nonfinite"]["documents"] and dtype in ("float16", "half"):
        out["overflow"] = (
            f"{out['nonfinite']['documents']} document(s) have NaN/inf attention from a float16 model: float16 "
            "overflowed; extract again with --dtype float32 (or bfloat16)"
        )
    return out


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """What ``attviz info`` and the explorer say of a corpus's check (errors first, then notices)."""
    if not summary:
        return ["attention not checked"]
    n = summary.get("documents", 0)
    unchecked = summary.get("unchecked")
    lines = [f"{n} document(s) checked" + (f", {unchecked} not checked (attviz info --check)" if unchecked else "")]
    labels = {
        "nonfinite": "with NaN or infinite attention",
        "row_sum": "with rows that do not sum to 1",
        "uniform": "with uniform (flat) heads",
        "sink": "with sink-dominated heads",
    }
    for name in (*ERRORS, *NOTICES):
        item = summary.get(name) or {}
        if not item.get("documents"):
            continue
        line = f"{'error' if name in ERRORS else 'notice'}: {item['documents']} document(s) {labels[name]}"
        if name == "row_sum":
            line += f" (up to {item.get('max_error', 0):.3g} off)"
        if item.get("heads"):
            top = list(item["heads"].items())[:6]
            share = ", ".join(f"{head.replace('/', ' L', 1).replace('/', ' H')} in {count}" for head, count in top)
            line += f": {share}" + (
                f" and {len(item['heads']) - len(top)} more head(s)" if len(item["heads"]) > 6 else ""
            )
        if item.get("examples") and name in ERRORS:
            line += f" (e.g. {', '.join(map(repr, item['examples']))})"
        lines.append(line)
    if summary.get("overflow"):
        lines.append(f"error: {summary['overflow']}")
    if len(lines) == 1 and n:
        lines[0] += ": no problems"
    return lines


def check_corpus(corpus: Any, *, compute: bool | None = True, limit: int = 0) -> dict:
    """The corpus's summary: from the documents' stored checks, computing the missing ones (sampled)
    when ``compute`` (None: when at most ``limit`` documents miss one)."""
    pairs = [(doc, stored_check(doc)) for doc in corpus]
    if compute is None:
        compute = sum(check is None for _, check in pairs) <= limit
    if compute:
        bound = float(corpus.attrs.get("max_abs_error") or 0.0)
        pairs = [(doc, check or check_document(doc, error_bound=bound)) for doc, check in pairs]
    return summarize([(doc.id, check) for doc, check in pairs], compute_dtype(corpus.attrs))


def compute_dtype(attrs: Mapping[str, Any]) -> str:
    """The dtype the model ran in (from an extracted corpus's ``settings``), '' when unknown."""
    import json

    try:
        return str(json.loads(attrs.get("settings") or "{}").get("dtype") or "")
    except (TypeError, ValueError):
        return ""
