"""The explorer's Panel layout: the only :class:`~panel.viewable.Viewer` of the app.

:class:`ExplorerLayout` builds the controls from the :class:`~attviz.explorer.Explorer`'s parameters
and one instance of every installed view plugin, each *bound* to the explorer's parameters by param
references (its ``data`` to the output that fits its ``requires``, its :data:`~attviz.views.INPUTS`
to the matching outputs) and linked both ways on :data:`~attviz.views.LINKED`. It tells the
explorer which outputs the visible views need (:attr:`Explorer.needed`), so hidden tabs cost
nothing. The plain layout renders inline in Jupyter; :mod:`attviz.app` puts its parts in a template.
"""

from __future__ import annotations

import html
from typing import Any

import panel as pn
import param

from attviz import registry
from attviz.explorer import ALWAYS, Explorer
from attviz.layout_cards import export_card, live_card, upload_card
from attviz.views.base import INPUTS, LINKED, REQUIREMENTS

#: Where built-in views go: tab title -> entry-point names, in order. Other views get a tab each.
TABS = {
    "Text": ("text", "aggregate_plot"),
    "Matrix": ("matrix",),
    "Heads": ("head_view",),
    "Model": ("model_overview",),
    "Documents": ("documents",),
    "Compare": ("compare",),
    "Corpus": ("corpus",),
}
#: Views shown above the tabs, always up to date.
HEADER_VIEWS = ("predictions",)
#: The explorer output that feeds each view requirement (keys: :data:`~attviz.views.REQUIREMENTS`).
FEEDS = {
    "matrix": "matrix",
    "head_matrices": "layer_matrices",
    "token_vectors": "head_vectors",
    "token_vector": "token_vector",
    "head_summary": "head_summary",
    "corpus": "table",
    "document": "document",
    "corpus_statistics": "corpus_statistics",
}
#: The explorer parameter behind each extra view input (keys: :data:`~attviz.views.INPUTS`).
INPUT_FEEDS = {"aggregate": "token_vector", "other": "other_matrix"}

assert set(FEEDS) == set(REQUIREMENTS), "every view requirement needs an explorer output"


def _first_fit(cls: type, *values: Any) -> Any:
    return next((v for v in values if v is not None and cls.can_show(v)), None)


def bind_view(explorer: Explorer, view: Any) -> set[str]:
    """Bind ``view``'s inputs to ``explorer``'s outputs (param references) and link its LINKED
    parameters both ways; returns the explorer outputs the view reads."""
    cls = type(view)
    outputs = [FEEDS[r] for r in cls.requires]
    refs: dict[str, Any] = {"data": param.bind(_first_fit, cls, *(explorer.param[o] for o in outputs))}
    for name in INPUTS:
        if name in view.param:
            source = INPUT_FEEDS.get(name, name)
            refs[name] = explorer.param[source]
            outputs.append(source)
    for name in refs:
        view.param[name].allow_refs = True
    view.param.update(refs)
    for name in LINKED:
        if name in view.param:
            _link(explorer, view, name)
    return set(outputs)


def _link(explorer: Explorer, view: Any, name: str) -> None:
    """Keep ``view.<name>`` and ``explorer.<name>`` equal, whichever of them changes."""

    def to_explorer(event: param.parameterized.Event) -> None:
        if getattr(explorer, name) != event.new:
            try:
                setattr(explorer, name, event.new)
            except ValueError as exc:  # e.g. a click outside the bounds: tell, don't crash
                explorer.message = str(exc)

    def to_view(event: param.parameterized.Event) -> None:
        if getattr(view, name) != event.new:
            setattr(view, name, event.new)

    setattr(view, name, getattr(explorer, name))
    view.param.watch(to_explorer, [name])
    explorer.param.watch(to_view, [name])


class ExplorerLayout(pn.viewable.Viewer):
    """The controls and views of one explorer display.

    >>> layout = ExplorerLayout(explorer)   # renders inline in Jupyter; .controls / .main for templates
    """

    def __init__(self, explorer: Explorer, **params: Any):
        super().__init__(**params)
        self.explorer = explorer
        self.views, self.reads, self.problems = self._build_views()
        self.tabs = self._tabs()
        self.controls = self._controls()
        self.main = self._main()
        self.tabs.param.watch(self._on_tab, ["active"])
        self._on_tab()

    def _build_views(self) -> tuple[dict[str, Any], dict[str, set[str]], list[str]]:
        """One instance of every working view plugin, bound to the explorer; and the problems."""
        views, reads, problems = {}, {}, []
        found = registry.plugins("views")
        for name, cls in found.items():
            try:
                view = cls()
                reads[name] = bind_view(self.explorer, view)
                views[name] = view
            except Exception as exc:  # a broken view plugin must not break the app
                problems.append(f"view {name!r} could not be created: {type(exc).__name__}: {exc}")
        problems += [f"{p.group} plugin {p.name!r}: {p.error}" for p in registry.problems()]
        return views, reads, problems

    # -- main area ------------------------------------------------------------------------------
    def _tabs(self) -> pn.Tabs:
        self.tab_views: list[list[str]] = []
        panes = []
        placed = set(HEADER_VIEWS)
        for title, names in TABS.items():
            present = [n for n in names if n in self.views]
            placed.update(names)
            if present:
                panes.append((title, pn.Column(*(self.views[n] for n in present), sizing_mode="stretch_width")))
                self.tab_views.append(present)
        for name, view in self.views.items():
            if name not in placed:
                panes.append((name.replace("_", " "), pn.Column(view, sizing_mode="stretch_width")))
                self.tab_views.append([name])
        return pn.Tabs(*panes, dynamic=True, sizing_mode="stretch_width")

    def _on_tab(self, *_: Any) -> None:
        visible = [*HEADER_VIEWS, *(self.tab_views[self.tabs.active] if self.tab_views else [])]
        needed = set(ALWAYS).union(*(self.reads.get(n, set()) for n in visible))
        self.explorer.needed = needed

    def _main(self) -> pn.Column:
        e = self.explorer
        message = _alert(e, "message", "danger")  # a problem
        notice = _alert(e, "notice", "info")  # what the user should know about what is shown
        notes = pn.pane.Alert(
            "<br>".join(html.escape(p) for p in self.problems), alert_type="warning", visible=bool(self.problems)
        )
        header = [self.views[n] for n in HEADER_VIEWS if n in self.views]
        # One line (the predicted class, its probability, right or wrong) until opened: the views get the room.
        prediction = pn.Card(
            *header,
            title=pn.bind(_prediction_line, e.param.document),
            collapsed=True,
            collapsible=True,
            sizing_mode="stretch_width",
            margin=(0, 5),
            visible=pn.bind(_has_prediction, e.param.document),
        )
        return pn.Column(message, notice, notes, prediction, self.tabs, sizing_mode="stretch_width")

    # -- controls -------------------------------------------------------------------------------
    def _controls(self) -> pn.Column:
        e = self.explorer
        p = e.param
        wide = {"sizing_mode": "stretch_width"}
        source = pn.widgets.Select.from_param(p.source, label="Corpus", **wide)
        source.visible = pn.bind(lambda corpora: len(corpora) > 1, p.corpora)
        doc = pn.widgets.Select.from_param(p.doc_id, label="Document", **wide)
        back = pn.widgets.Button(label="◀", width=40, description="Previous document")
        forward = pn.widgets.Button(label="▶", width=40, description="Next document")
        back.on_click(lambda *_: e.step(-1))
        forward.on_click(lambda *_: e.step(1))
        kind = pn.widgets.RadioButtonGroup.from_param(p.kind, label="Attention", color="primary", variant="outline")
        kind.visible = pn.bind(lambda *_: len(e.param.kind.objects) > 1, p.document, p.kind)
        layer = pn.widgets.IntSlider.from_param(p.layer, label="Layer", visible=p.has_layers, **wide)
        head = pn.widgets.IntSlider.from_param(p.head, label="Head", visible=p.has_heads, **wide)
        kept = pn.pane.HTML(pn.bind(lambda *_: _kept_text(e), p.attention, p.layer, p.head, p.head_reduction), **wide)
        reduction = pn.widgets.Select.from_param(p.head_reduction, label="Combine heads", visible=p.has_heads, **wide)
        vector = pn.widgets.Select.from_param(p.vector, label="Token colour", **wide)
        transform = pn.widgets.Select.from_param(p.transform, label="Transform", **wide)
        follow = pn.widgets.Checkbox.from_param(p.follow_selection, label="Attention from follows the selected token")
        settings = pn.bind(_settings, p.vector_aggregation)
        selected = pn.pane.HTML(pn.bind(lambda *_: _selected_text(e), p.selected_token, p.attention), **wide)
        clear = pn.widgets.Button(label="Clear selection", color="light", width=120)
        clear.on_click(lambda *_: setattr(e, "selected_token", None))
        compare = pn.Card(
            pn.widgets.Select.from_param(p.compare_source, label="Corpus", **wide),
            pn.widgets.Select.from_param(p.compare_doc_id, label="Document", **wide),
            title="Compare with",
            collapsed=True,
            **wide,
        )
        return pn.Column(
            source,
            pn.Row(doc, back, forward, **wide),
            kind,
            layer,
            head,
            kept,
            reduction,
            vector,
            settings,
            follow,
            transform,
            pn.Row(selected, clear, **wide),
            live_card(e),
            upload_card(e),
            compare,
            export_card(e),
            **wide,
        )

    def panel(self) -> pn.Row:
        """The plain layout: controls on the left, views on the right (works inline in Jupyter)."""
        return pn.Row(pn.Column(self.controls, width=320), self.main, sizing_mode="stretch_width")

    def __panel__(self) -> pn.Row:
        return self.panel()


def _alert(explorer: Explorer, name: str, alert_type: str) -> pn.pane.Alert:
    """An alert showing the explorer's text parameter ``name`` (escaped), hidden while it is empty."""
    text = explorer.param[name]
    return pn.pane.Alert(
        pn.bind(html.escape, text),
        alert_type=alert_type,
        visible=pn.bind(bool, text),
        sizing_mode="stretch_width",
    )


def _has_prediction(doc: Any) -> bool:
    return doc is not None and bool(doc.probabilities or doc.prediction is not None or doc.label is not None)


def _prediction_line(doc: Any) -> str:
    """``Prediction: world 82.4 % ✓ (gold world)``: the card's title, readable while it is closed."""
    if doc is None or not (doc.probabilities or doc.prediction is not None):
        return "Prediction" if doc is None or doc.label is None else f"Gold label: {doc.label}"
    predicted = doc.prediction if doc.prediction is not None else max(doc.probabilities, key=doc.probabilities.get)
    share = f" {100 * doc.probabilities[predicted]:.1f} %" if predicted in (doc.probabilities or {}) else ""
    right = doc.label is not None and str(predicted) == str(doc.label)
    verdict = "" if doc.label is None else (" ✓" if right else f" ✗ (gold {doc.label})")
    return f"Prediction: {predicted}{share}{verdict}"


def _settings(agg: Any) -> Any:
    """Widgets for the token-colour aggregation's own parameters (none when it has none)."""
    names = [n for n in agg.param if n != "name" and agg.param[n].precedence != -1] if agg is not None else []
    return pn.Param(agg.param, parameters=names, show_name=False) if names else pn.Spacer(height=0)


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
    for array, dim in ((e.attention, "query"), (e.head_vectors, "token")):
        if array is not None and f"{dim}_text" in array.coords and e.selected_token < array.sizes[dim]:
            token = str(array.coords[f"{dim}_text"].values[e.selected_token])
            return f"Selected: <b>{html.escape(token)}</b> (position {e.selected_token})"
    return f"Selected: position {e.selected_token}"


__all__ = ["FEEDS", "TABS", "ExplorerLayout", "bind_view"]
