"""The sidebar cards of the explorer that run session actions: live input, open a file, export."""

from __future__ import annotations

import asyncio
import html
import io
from typing import Any

import panel as pn

from attviz.explorer import Explorer

UPLOAD_TYPES = ".zip,.nc,.nc4,.h5,.json,.npz,.safetensors"


def live_card(e: Explorer) -> pn.Card:
    """Type a text; the live model runs in a worker thread and the document joins the 'live' corpus."""
    text = pn.widgets.TextAreaInput(
        label="Text", placeholder="Type or paste a text…", height=110, sizing_mode="stretch_width"
    )
    run = pn.widgets.Button(label="Run model", color="primary")
    spinner = pn.indicators.LoadingSpinner(value=False, size=24, visible=False)
    status = pn.pane.HTML(sizing_mode="stretch_width")
    available = e.live_model is not None
    run.disabled = not available
    if not available:
        status.object = "No model loaded for live input (start with <code>attviz serve --model …</code>)."

    async def on_run(*_: Any) -> None:
        if not text.value.strip():
            status.object = "Type a text first."
            return
        run.disabled, spinner.value, spinner.visible = True, True, True
        status.object = f"Running {html.escape(e.live_model.name)}…"
        try:
            corpus = await asyncio.to_thread(e.extract_live, text.value)
            doc_id = e.add_live(corpus)
            status.object = f"Added <b>{html.escape(doc_id)}</b> to the corpus 'live'."
        except Exception as exc:  # show it, keep the session
            status.object = f"<span style='color:#b00'>Failed: {html.escape(str(exc))}</span>"
        finally:
            run.disabled, spinner.value, spinner.visible = False, False, False

    run.on_click(on_run)
    return pn.Card(text, pn.Row(run, spinner), status, title="Live input", collapsed=False, sizing_mode="stretch_width")


def upload_card(e: Explorer) -> pn.Card:
    """Open a store archive, netCDF, AttViz JSON or tensors; a bad file says why and the session goes on."""
    upload = pn.widgets.FileInput(accept=UPLOAD_TYPES, multiple=False, sizing_mode="stretch_width")
    status = pn.pane.HTML(sizing_mode="stretch_width")

    def on_upload(*_: Any) -> None:
        if upload.value is None:
            return
        try:
            name = e.add_file(upload.filename or "upload", upload.value)
            status.object = f"Opened <b>{html.escape(name)}</b>."
        except Exception as exc:  # a bad file must not end the session
            status.object = f"<span class='attviz-error' style='color:#b00'>{html.escape(str(exc))}</span>"

    upload.param.watch(on_upload, ["value"])
    hint = pn.pane.HTML(
        "<small>An attviz store (zipped <code>.zarr</code> folder), a netCDF file (<code>.nc</code>), "
        "original AttViz JSON, or tensors (<code>.npz</code>/<code>.safetensors</code>).</small>"
    )
    return pn.Card(upload, hint, status, title="Open a file", collapsed=True, sizing_mode="stretch_width")


def export_card(e: Explorer) -> pn.Card:
    """Download the document or corpus (netCDF) or the document as an offline interactive page."""

    def document_file() -> io.BytesIO:
        return io.BytesIO(e.export_document())

    def corpus_file() -> io.BytesIO:
        return io.BytesIO(e.export_corpus())

    scale = pn.widgets.RadioButtonGroup(
        name="Page quantisation",
        options={"scale per row": "row", "per matrix (smaller)": "matrix"},
        value="row",
        button_type="light",
        description="uint8 with a scale per row (every row keeps 256 levels) or one per head's matrix "
        "(about half the page at 512 tokens; the same error bound, 1/510, but weak rows keep few levels)",
    )

    def page_file() -> io.StringIO:
        return io.StringIO(e.export_page(quantization=scale.value))

    doc = pn.widgets.FileDownload(callback=document_file, filename="document.nc", label="Document (.nc)", color="light")
    page = pn.widgets.FileDownload(
        callback=page_file, filename="document.html", label="Interactive page (.html)", color="light"
    )
    corpus = pn.widgets.FileDownload(callback=corpus_file, filename="corpus.nc", label="Corpus (.nc)", color="light")
    e.param.watch(lambda *_: setattr(doc, "filename", f"{_safe(e.doc_id)}.nc"), ["doc_id"])
    e.param.watch(lambda *_: setattr(page, "filename", f"{_safe(e.doc_id)}.html"), ["doc_id"])
    e.param.watch(lambda *_: setattr(corpus, "filename", f"{_safe(e.source)}.nc"), ["source"])
    doc.filename, corpus.filename = f"{_safe(e.doc_id)}.nc", f"{_safe(e.source)}.nc"
    page.filename = f"{_safe(e.doc_id)}.html"
    hint = pn.pane.HTML(
        "<small>The page works offline, without a server (layer, head, mean/max, token selection). "
        "Plots: the toolbar's save tool writes PNG (SVG where a view offers it).</small>"
    )
    return pn.Card(page, scale, doc, corpus, hint, title="Export", collapsed=True, sizing_mode="stretch_width")


def _safe(name: Any) -> str:
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name or "attviz"))
    return text.strip("._") or "attviz"
