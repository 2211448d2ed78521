"""The explorer's Panel layout: controls built from the :class:`~attviz.explorer.Explorer`'s
parameters, and a main area with every installed view plugin.

:class:`ExplorerLayout` builds the parts once (``controls``, ``main``) so that the plain layout
(:meth:`ExplorerLayout.panel`, inline in Jupyter) and the served template (:mod:`attviz.app`) share
them. Only the views on the visible tab are kept up to date.
"""

from __future__ import annotations

import asyncio
import html
import io
from typing import Any

import panel as pn

from attviz import registry
from attviz.explorer import Explorer

#: Where built-in views go: tab title -> entry-point names, in order. Other views get a tab each.
TABS = {
    "Text": ("text", "aggregate_plot"),
    "Matrix": ("matrix",),
    "Heads": ("head_view",),
    "Model": ("model_overview",),
    "Documents": ("documents",),
    "Compare": ("compare",),
}
#: Views shown above the tabs, always up to date.
HEADER_VIEWS = ("predictions",)
UPLOAD_TYPES = ".zip,.nc,.nc4,.h5,.json,.npz,.safetensors"


def build_views(explorer: Explorer) -> tuple[dict[str, Any], list[str]]:
    """One instance of every working view plugin, connected to ``explorer``; and the problems."""
    views, problems = {}, []
    # Cheap views first: the explorer updates them in this order, so the text recolours before plots redraw.
    order = [*HEADER_VIEWS, *(n for names in TABS.values() for n in names)]
    found = registry.plugins("views")
    names = sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))
    for name, cls in ((n, found[n]) for n in names):
        try:
            views[name] = explorer.connect(cls())
        except Exception as exc:  # a broken view plugin must not break the app
            problems.append(f"view {name!r} could not be created: {type(exc).__name__}: {exc}")
    problems += [f"{p.group} plugin {p.name!r}: {p.error}" for p in registry.problems()]
    return views, problems


class ExplorerLayout:
    """The widgets and views of one explorer display."""

    def __init__(self, explorer: Explorer):
        self.explorer = explorer
        self.views, self.problems = build_views(explorer)
        self.tabs = self._tabs()
        self.controls = self._controls()
        self.main = self._main()
        self.tabs.param.watch(self._on_tab, ["active"])
        self._on_tab()

    # -- main area ------------------------------------------------------------------------------
    def _tabs(self) -> pn.Tabs:
        self.tab_views: list[list[Any]] = []
        panes = []
        placed = set(HEADER_VIEWS)
        for title, names in TABS.items():
            present = [self.views[n] for n in names if n in self.views]
            placed.update(names)
            if present:
                panes.append((title, pn.Column(*present, sizing_mode="stretch_width")))
                self.tab_views.append(present)
        for name, view in self.views.items():
            if name not in placed:
                panes.append((name.replace("_", " "), pn.Column(view, sizing_mode="stretch_width")))
                self.tab_views.append([view])
        return pn.Tabs(*panes, dynamic=True, sizing_mode="stretch_width")

    def _on_tab(self, *_: Any) -> None:
        active = self.tab_views[self.tabs.active] if self.tab_views else []
        header = [self.views[n] for n in HEADER_VIEWS if n in self.views]
        self.explorer.set_active([*header, *active])

    def _main(self) -> pn.Column:
        message = self._alert("message", "danger")  # a problem
        notice = self._alert("notice", "info")  # what the user should know about what is shown
        header = [self.views[n] for n in HEADER_VIEWS if n in self.views]
        notes = pn.pane.Alert(
            "<br>".join(html.escape(p) for p in self.problems), alert_type="warning", visible=bool(self.problems)
        )
        prediction = pn.Card(*header, title="Prediction", collapsed=False, sizing_mode="stretch_width")
        return pn.Column(message, notice, notes, prediction, self.tabs, sizing_mode="stretch_width")

    def _alert(self, name: str, alert_type: str) -> pn.pane.Alert:
        """An alert showing the explorer's text parameter ``name`` (escaped), hidden while it is empty."""
        alert = pn.pane.Alert(alert_type=alert_type, visible=False, sizing_mode="stretch_width")

        def show(*_: Any) -> None:
            text = getattr(self.explorer, name)
            alert.object, alert.visible = html.escape(text), bool(text)

        self.explorer.param.watch(show, [name])
        show()
        return alert

    # -- controls -------------------------------------------------------------------------------
    def _controls(self) -> pn.Column:
        e = self.explorer
        p = e.param
        source = pn.widgets.Select.from_param(p.source, label="Corpus", sizing_mode="stretch_width")
        source.visible = len(e.corpora) > 1
        e.param.watch(lambda *_: setattr(source, "visible", len(e.corpora) > 1), ["corpora"])
        doc = pn.widgets.Select.from_param(p.doc_id, label="Document", sizing_mode="stretch_width")
        back = pn.widgets.Button(label="◀", width=40, description="Previous document")
        forward = pn.widgets.Button(label="▶", width=40, description="Next document")
        back.on_click(lambda *_: e.step(-1))
        forward.on_click(lambda *_: e.step(1))
        kind = pn.widgets.RadioButtonGroup.from_param(p.kind, label="Attention", color="light")
        kind.visible = len(p.kind.objects) > 1
        e.param.watch(lambda *_: setattr(kind, "visible", len(e.param.kind.objects) > 1), ["doc_id", "source"])
        layer = pn.widgets.IntSlider.from_param(p.layer, label="Layer", sizing_mode="stretch_width")
        head = pn.widgets.IntSlider.from_param(p.head, label="Head", sizing_mode="stretch_width")
        kept = pn.pane.HTML(sizing_mode="stretch_width", visible=False)

        def show_kept(*_: Any) -> None:
            kept.object = _kept_text(e)
            kept.visible = bool(kept.object)

        e.param.watch(show_kept, ["attention", "layer", "head", "head_reduction"])
        show_kept()
        reduction = pn.widgets.Select.from_param(p.head_reduction, label="Combine heads", sizing_mode="stretch_width")
        vector = pn.widgets.Select.from_param(p.vector, label="Token colour", sizing_mode="stretch_width")
        transform = pn.widgets.Select.from_param(p.transform, label="Transform", sizing_mode="stretch_width")
        follow = pn.widgets.Checkbox.from_param(p.follow_selection, label="Attention from follows the selected token")
        settings = pn.Column(sizing_mode="stretch_width")

        def show_settings(*_: Any) -> None:
            agg = e.vector_aggregation
            names = [n for n in agg.param if n != "name" and agg.param[n].precedence != -1] if agg else []
            settings[:] = [pn.Param(agg.param, parameters=names, show_name=False)] if names else []

        e.param.watch(show_settings, ["vector_aggregation"])
        show_settings()
        selected = pn.pane.HTML(sizing_mode="stretch_width")
        clear = pn.widgets.Button(label="Clear selection", color="light", width=120)
        clear.on_click(lambda *_: setattr(e, "selected_token", None))

        def show_selected(*_: Any) -> None:
            selected.object = _selected_text(e)

        e.param.watch(show_selected, ["selected_token", "head_vectors"])
        show_selected()
        compare = pn.Card(
            pn.widgets.Select.from_param(p.compare_source, label="Corpus", sizing_mode="stretch_width"),
            pn.widgets.Select.from_param(p.compare_doc_id, label="Document", sizing_mode="stretch_width"),
            title="Compare with",
            collapsed=True,
            sizing_mode="stretch_width",
        )
        return pn.Column(
            source,
            pn.Row(doc, back, forward, sizing_mode="stretch_width"),
            kind,
            layer,
            head,
            kept,
            reduction,
            vector,
            settings,
            follow,
            transform,
            pn.Row(selected, clear, sizing_mode="stretch_width"),
            self._live_card(),
            self._upload_card(),
            compare,
            self._export_card(),
            sizing_mode="stretch_width",
        )

    def _live_card(self) -> pn.Card:
        e = self.explorer
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
        return pn.Card(
            text, pn.Row(run, spinner), status, title="Live input", collapsed=False, sizing_mode="stretch_width"
        )

    def _upload_card(self) -> pn.Card:
        e = self.explorer
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

    def _export_card(self) -> pn.Card:
        e = self.explorer

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

        doc = pn.widgets.FileDownload(
            callback=document_file, filename="document.nc", label="Document (.nc)", color="light"
        )
        page = pn.widgets.FileDownload(
            callback=page_file, filename="document.html", label="Interactive page (.html)", color="light"
        )
        corpus = pn.widgets.FileDownload(
            callback=corpus_file, filename="corpus.nc", label="Corpus (.nc)", color="light"
        )
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

    def panel(self) -> pn.Row:
        """The plain layout: controls on the left, views on the right (works inline in Jupyter)."""
        return pn.Row(
            pn.Column(self.controls, width=320),
            self.main,
            sizing_mode="stretch_width",
        )


def _kept_text(e: Explorer) -> str:
    """The model's own layer/head numbers when the store keeps only some ('' when all are kept)."""
    attention = e.attention
    if attention is None or "layer" not in attention.dims:
        return ""
    parts = []
    for dim, index in (("layer", e.layer), ("head", e.head)):
        if dim not in attention.dims:
            continue
        numbers = [int(v) for v in attention[dim].values]
        if numbers != list(range(len(numbers))):
            label = (
                "all kept" if dim == "head" and e.head_reduction != "head" else numbers[min(index, len(numbers) - 1)]
            )
            parts.append(f"model {dim} <b>{label}</b> (of kept {', '.join(map(str, numbers))})")
    return f"<small>{'; '.join(parts)}</small>" if parts else ""


def _selected_text(e: Explorer) -> str:
    if e.selected_token is None:
        return "<small>No token selected: click one.</small>"
    vectors = e.head_vectors
    if vectors is not None and "token_text" in vectors.coords and e.selected_token < vectors.sizes["token"]:
        token = str(vectors.coords["token_text"].values[e.selected_token])
        return f"Selected: <b>{html.escape(token)}</b> (position {e.selected_token})"
    return f"Selected: position {e.selected_token}"


def _safe(name: Any) -> str:
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name or "attviz"))
    return text.strip("._") or "attviz"


def explorer_layout(explorer: Explorer) -> pn.Row:
    """The plain explorer layout (see :class:`ExplorerLayout`)."""
    return ExplorerLayout(explorer).panel()


__all__ = ["ExplorerLayout", "build_views", "explorer_layout"]
