"""A corpus at a glance: what ``attviz info`` prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from attviz.corpus import Corpus


def directory_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


#: ``attviz info`` checks the documents that carry no self-check itself when there are at most this many.
AUTO_CHECK_DOCUMENTS = 200


def summarize(corpus: Corpus, check: bool | None = None) -> dict[str, Any]:
    """Documents, tokens, layers, heads, model, labels, accuracy, storage of a corpus, and its attention
    self-check (:mod:`attviz.checks`): the stored one, with the documents' checks that are missing
    computed on sampled rows when ``check`` (None: when at most :data:`AUTO_CHECK_DOCUMENTS` miss one)."""
    table = corpus.table
    n_tokens = table["n_tokens"].to_numpy() if len(table) else np.zeros(0)
    attrs = corpus.attrs
    labelled = table["label"].notna() & table["prediction"].notna() if len(table) else []
    accuracy = float(table.loc[labelled, "correct"].astype(bool).mean()) if len(table) and labelled.any() else None
    kinds = attrs.get("kinds") or sorted({k for doc in corpus for k in doc.kinds})
    info: dict[str, Any] = {
        "documents": len(corpus),
        "tokens": int(n_tokens.sum()),
        "tokens_per_document": {
            "min": int(n_tokens.min()) if len(n_tokens) else 0,
            "mean": round(float(n_tokens.mean()), 1) if len(n_tokens) else 0.0,
            "max": int(n_tokens.max()) if len(n_tokens) else 0,
        },
        "layers": int(attrs.get("layers") or 0),
        "heads": int(attrs.get("heads") or 0),
        "kinds": list(kinds),
        "model": attrs.get("model") or None,
        "model_path": attrs.get("model_path") or None,
        "labels": corpus.label_names,
        "gold_labels": int(table["label"].notna().sum()) if len(table) else 0,
        "predictions": int(table["prediction"].notna().sum()) if len(table) else 0,
        "accuracy": None if accuracy is None else round(accuracy, 4),
    }
    if corpus.path:
        stored = directory_bytes(corpus.path)
        raw = _raw_float16_bytes(corpus)
        info["path"] = str(corpus.path)
        info["bytes_on_disk"] = stored
        info["raw_float16_bytes"] = raw
        info["compression_ratio"] = round(raw / stored, 3) if stored and raw else None
    from attviz.store import describe_encoding

    all_qk = int(attrs.get("qk_documents") or 0) >= len(corpus) > 0
    info["matrix_encoding"] = None if all_qk else describe_encoding(attrs) or None  # no document keeps matrices
    info["storage_policy"] = attrs.get("storage_policy") or None
    info["attention_encoding"] = describe_attention(attrs, len(corpus))
    info["statistics"] = []
    if corpus.path:
        from attviz.analysis.engine import cached_settings

        info["statistics"] = sorted({s.aggregation for s in cached_settings(corpus.path)})
    info["attention_check"], info["attention_check_documents"] = attention_check(corpus, check)
    return info


def attention_check(corpus: Corpus, compute: bool | None = None, limit: int = 200) -> tuple[dict, list[dict]]:
    """The corpus's self-check summary and, per document with a finding (errors first), its lines
    (at most ``limit`` documents); ``compute`` as in :func:`summarize`."""
    from attviz.checks import check_corpus, describe, problems, stored_check

    summary = check_corpus(corpus, compute=compute, limit=AUTO_CHECK_DOCUMENTS)
    documents = []
    for doc in corpus:
        result = stored_check(doc)
        lines = describe(result, doc) if result else []
        if lines:
            documents.append({"doc": doc.id, "error": problems(result), "findings": lines})
    documents.sort(key=lambda item: not item["error"])
    return summary, documents[:limit]


def describe_attention(attrs: dict[str, Any], documents: int) -> str | None:
    """How attention was captured and kept: q/k for how many documents, the measured rebuild error,
    or why it fell back to matrices; None for stores written before queries and keys existed."""
    mode = attrs.get("attention_mode")
    if not mode:
        return None
    from attviz.qk import QK_ENCODING

    parts = [f"mode {mode}"]
    kept = int(attrs.get("qk_documents") or 0)
    if mode != "matrices":
        rest = ", matrices for the rest" if kept < documents else ""
        parts.append(f"queries/keys ({QK_ENCODING}) for {kept} of {documents} documents{rest}")
    check = attrs.get("qk_check") or {}
    if check:
        parts.append(
            f"rebuild checked against eager attention: max abs error {float(check['error']):.2g} (float32), "
            f"{float(check['stored_error']):.2g} (as stored)"
            + (f", {float(check['tile_error']):.2g} (tiles of long documents)" if "tile_error" in check else "")
        )
    if attrs.get("attention_fallback"):
        parts.append(f"matrices because {attrs['attention_fallback']}")
    return "; ".join(parts)


def _raw_float16_bytes(corpus: Corpus) -> int:
    layers, heads = int(corpus.attrs.get("layers") or 0), int(corpus.attrs.get("heads") or 0)
    if not layers or not heads or corpus.attrs.get("encoder_decoder"):
        return 0
    n = corpus.table["n_tokens"].to_numpy(dtype=np.int64)
    return int((layers * heads * n * n * 2).sum())


def format_summary(info: dict[str, Any]) -> str:
    per = info["tokens_per_document"]
    lines = [
        f"documents   {info['documents']}",
        f"tokens      {info['tokens']} (per document min {per['min']}, mean {per['mean']}, max {per['max']})",
        f"model       {info['model'] or '-'}" + (f" ({info['model_path']})" if info.get("model_path") else ""),
        f"attention   {info['layers']} layers x {info['heads']} heads ({', '.join(info['kinds']) or '-'})",
        f"labels      {', '.join(info['labels']) or '-'}",
        f"gold labels {info['gold_labels']}, predictions {info['predictions']}",
    ]
    if info["accuracy"] is not None:
        lines.append(f"accuracy    {info['accuracy']:.1%}")
    if info.get("bytes_on_disk"):
        extra = _ratio_note(info.get("compression_ratio"))
        lines.append(f"on disk     {info['bytes_on_disk'] / 1e6:.1f} MB{extra}")
    if info.get("storage_policy"):
        lines.append(f"keeps       {info['storage_policy']}")
    if info.get("matrix_encoding"):
        lines.append(f"matrices    {info['matrix_encoding']}")
    if info.get("attention_encoding"):
        lines.append(f"kept as     {info['attention_encoding']}")
    if info.get("statistics"):
        lines.append(f"statistics  cached for {', '.join(info['statistics'])} (attviz stats)")
    from attviz.checks import summary_lines

    check = summary_lines(info.get("attention_check") or {})
    lines.append(f"check       {check[0]}")
    lines += [f"            {line}" for line in check[1:]]
    documents = info.get("attention_check_documents") or []
    for item in documents[:20]:
        lines.append(f"  {item['doc']}: {'; '.join(item['findings'])}")
    if len(documents) > 20:
        lines.append(f"  ... {len(documents) - 20} more document(s) with findings (--json lists them)")
    return "\n".join(lines)


def _ratio_note(ratio: float | None) -> str:
    """How the store's size compares with its matrices as raw float16, in honest words."""
    if not ratio:
        return ""
    if ratio >= 1.005:  # shows as ≥ 1.01x
        return f" ({ratio:.2f}x smaller than raw float16)"
    if ratio > 1 / 1.005:
        return " (about the size of raw float16)"
    return f" ({1 / ratio:.2f}x larger than raw float16)"
