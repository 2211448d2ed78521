"""Static HTML export: one self-contained page that explores attention offline, without a server.

>>> import attviz
>>> from attviz.export import export_html
>>> html = export_html("corpus.zarr", "page.html", doc_ids=["world-01", "sports-02"])  # doctest: +SKIP

The page inlines Bokeh's JavaScript and carries each document's attention quantised to uint8 per row
(see :mod:`attviz.export.payload` for the format and the error bound), or, for a document kept as
queries and keys where that is smaller, its float16 queries and keys (:mod:`attviz.export.qkpayload`):
the browser then computes the selected row, the token colours and the matrix image (max-pooled to at
most 2,048 pixels a side) itself, never a whole ``T × T`` matrix. The browser decodes one layer at a
time and computes heads, the mean and the maximum over heads itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from attviz.atomic import write_text
from attviz.corpus import Corpus, Document
from attviz.errors import InputError
from attviz.export.page import read_manifest, render_page
from attviz.export.payload import ENCODINGS, PAYLOADS, decode_layer, document_payload
from attviz.export.qkpayload import QK_MAX_TOKENS, decode_qk_layer
from attviz.quantize import QUANTIZATIONS, quantize_rows

VIEWS = ("text", "matrix", "predictions")
__all__ = [
    "PAYLOADS",
    "QK_MAX_TOKENS",
    "QUANTIZATIONS",
    "VIEWS",
    "decode_layer",
    "decode_qk_layer",
    "export_html",
    "quantize_rows",
    "read_manifest",
    "write_atomic",
]


def export_html(
    corpus_or_path: Corpus | Document | str | os.PathLike,
    path: str | os.PathLike | None = None,
    *,
    doc_ids: Iterable[str | int] | None = None,
    views: Sequence[str] = VIEWS,
    max_tokens: int = 2048,
    title: str | None = None,
    window: tuple[int, int] | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    max_bytes: int = 64 * 2**20,
    max_page_bytes: int = 100 * 2**20,
    max_documents: int = 200,
    compress: bool = True,
    quantization: str = "row",
    payload: str = "auto",
) -> str:
    """Write one self-contained HTML page (inline JS/CSS, no network) and return its text.

    corpus_or_path: a :class:`~attviz.Corpus`, a :class:`~attviz.Document`, or anything
        :func:`attviz.read` opens. ``path``: where to write the page (atomically); None only returns it.
    doc_ids: documents to export (ids or positions); None: all, up to ``max_documents`` (a note says so).
    views: which panels the page has, any of ``"text"``, ``"matrix"``, ``"predictions"``.
    max_tokens: the most tokens exported of a document; longer ones are cut to ``window``
        (``(start, stop)`` token positions; default the first ``max_tokens``), and the page says so.
    layers, heads: export only these layer / head positions (the mean and max are then over these heads).
    max_bytes: quantised bytes a document may take before compression; beyond it evenly spaced layers
        (the first and the last among them) are exported, and the page says which.
    max_page_bytes: encoded attention the page may hold; the documents after the one that passes it
        are left out (a note says how many). ``max_documents`` caps the count when ``doc_ids`` is None.
    compress: deflate the payload (the page inflates it with the browser's ``DecompressionStream``).
    quantization: ``"row"`` (uint8 with a scale per row: every row keeps 256 levels, error ≤ row max / 510)
        or ``"matrix"`` (one scale per head's matrix: error ≤ matrix max / 510, the same bound for
        attention; ~2.2× less attention data at 512 tokens, but rows far below their matrix's maximum keep few levels).
    payload: for documents kept as queries and keys (``attention="qk"``): ``"auto"`` exports their float16
        queries and keys where that is smaller than the uint8 matrices (from a few hundred tokens on) or where
        the matrices would be cut to ``max_tokens``, and the browser computes the weights it shows; such a
        document is exported whole up to 8,192 tokens. ``"qk"``: always so; ``"matrix"``: never. The page
        states the measured largest error of a weight it computes (see :mod:`attviz.export.qkpayload`);
        the manifest holds it as ``qk_error`` (``matrix_error`` for the uint8 bound).
    """
    views = tuple(views)
    if unknown := [v for v in views if v not in VIEWS]:
        raise InputError(f"unknown view(s) {', '.join(map(repr, unknown))}", expected=f"some of {', '.join(VIEWS)}")
    if max_tokens < 1:
        raise InputError(f"max_tokens must be positive, not {max_tokens}")
    if payload not in PAYLOADS:
        raise InputError(f"unknown payload {payload!r}", field="payload", expected=" or ".join(PAYLOADS))
    if quantization not in QUANTIZATIONS:
        expected = " or ".join(QUANTIZATIONS)
        raise InputError(f"unknown quantisation {quantization!r}", field="quantization", expected=expected)
    corpus = _as_corpus(corpus_or_path)
    documents, notes = _pick_documents(corpus, doc_ids, max_documents)
    if not documents:
        raise InputError("the corpus holds no documents to export")
    encoding = ENCODINGS[0] if compress else ENCODINGS[1]
    with_attention = "text" in views or "matrix" in views
    entries, blobs, size = [], {}, 0
    errors: dict[str, float] = {}
    for index, doc in enumerate(documents):
        if size > max_page_bytes:
            notes.append(
                f"Only the first {_count(index, 'document')} of {len(documents):,} are exported: the page holds "
                f"at most {max_page_bytes / 2**20:.0f} MiB of attention (max_page_bytes)."
            )
            break
        part = document_payload(
            doc,
            index,
            max_tokens=max_tokens,
            window=window,
            layers=layers,
            heads=heads,
            max_bytes=max_bytes,
            encoding=encoding,
            attention=with_attention,
            quantization=quantization,
            payload=payload,
        )
        entries.append(part.entry)
        blobs.update(part.blobs)
        size += sum(map(len, part.blobs.values()))
        if part.blobs:
            errors[part.kind] = max(errors.get(part.kind, 0.0), part.max_error)
    max_error = max(errors.values(), default=0.0)
    if "matrix" in errors:
        matrix_error = errors["matrix"]
        scale = "the row's maximum / 255" if quantization == "row" else "one per head's matrix: its maximum / 255"
        notes.append(
            f"Attention is stored as 8-bit integers with a float32 scale ({scale}): every value shown is within "
            f"half a step of the model's, at most {matrix_error:.3g} here (≤ 1/510 ≈ 0.00196 whenever weights are "
            "≤ 1); means and maxima over heads keep that bound."
        )
    if "qk" in errors:
        stated = [e["qk"]["store_error"] for e in entries if e.get("payload") == "qk" and e["qk"]["store_error"]]
        store = f" (the stored queries and keys rebuild the model's weights within {max(stated):.2g})" if stated else ""
        count = sum(e.get("payload") == "qk" for e in entries)
        notes.append(
            f"{_count(count, 'document')} {'carries' if count == 1 else 'carry'} queries and keys instead "
            "of matrices (float16, keys centred; the page computes every weight it shows from them): every "
            f"weight is within {errors['qk']:.3g} of the stored queries' and keys' weights{store}, measured over "
            "all of them; means and maxima over heads keep that bound."
        )
    from attviz import __version__

    model = corpus.attrs.get("model")
    if title is None:
        title = "attviz" + (f" — {model}" if model else "") + f" — {_count(len(entries), 'document')}"
    elif model:
        notes.insert(0, f"Model: {model}.")
    manifest = {
        "version": __version__,
        "encoding": encoding,
        "quantization": quantization,
        "max_error": max_error,
        "matrix_error": errors.get("matrix"),
        "qk_error": errors.get("qk"),
        "docs": entries,
    }
    page = render_page(title=title, manifest=manifest, blobs=blobs, views=views, notes=notes)
    if path is not None:
        write_atomic(path, page)
    return page


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (no partial file is left)."""
    write_text(path, text)


def _as_corpus(source: Any) -> Corpus:
    if isinstance(source, Corpus):
        return source
    if isinstance(source, Document):
        return Corpus([source])
    from attviz.readers import read

    return read(source)


def _pick_documents(
    corpus: Corpus, doc_ids: Iterable[str | int] | None, max_documents: int
) -> tuple[list[Document], list[str]]:
    if doc_ids is None:
        chosen = list(range(min(len(corpus), max_documents)))
        notes = [] if len(chosen) == len(corpus) else [f"The first {len(chosen)} of {len(corpus):,} documents."]
        return [corpus[i] for i in chosen], notes
    documents = []
    for key in doc_ids:
        try:
            documents.append(corpus[key])
        except (KeyError, IndexError) as error:
            raise InputError(f"no document {key!r} in the corpus", field="doc_ids") from error
    if not documents:
        raise InputError("no documents to export", field="doc_ids")
    return documents, []


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
