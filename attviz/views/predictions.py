"""One document's class probabilities (:class:`Predictions`): the AttViz bar and every class sorted.

A class's colour is :func:`attviz.views.common.class_colour` of its name, the same in every corpus
and view. Class names are untrusted: escaped with :func:`html.escape` in HTML, plain canvas text in
the Bokeh chart.
"""

from __future__ import annotations

import html
from typing import Any, ClassVar

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from attviz.corpus import Document
from attviz.views.base import View
from attviz.views.common import class_colour, page_scroll_hook, title_hook


def class_probabilities(doc: Document) -> pd.DataFrame:
    """Every class's probability, sorted descending.

    Columns: class, probability, colour (:func:`~attviz.views.common.class_colour` of the class),
    percent, gold, predicted, outline (bar line width: the gold class is outlined) and label (the
    class, "◀ gold" added to the gold one).
    """
    probabilities = doc.probabilities or {}
    names = [str(name) for name in probabilities]
    frame = pd.DataFrame(
        {
            "class": names,
            "probability": [float(p) for p in probabilities.values()],
            "colour": [class_colour(name) for name in names],
        }
    )
    frame["percent"] = frame["probability"] * 100
    frame["gold"] = frame["class"].isin([doc.label])
    frame["predicted"] = frame["class"].isin([predicted_class(doc)])
    frame["outline"] = np.where(frame["gold"], 2.5, 0.0)
    # Bokeh draws tick labels as text, never as HTML, so class names need no escaping there.
    frame["label"] = [
        f"{name} ◀ gold" if gold else name for name, gold in zip(frame["class"], frame["gold"], strict=True)
    ]
    return frame.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def predicted_class(doc: Document) -> str | None:
    """The document's prediction, or else its most probable class (None when it has neither)."""
    if doc.prediction is not None:
        return doc.prediction
    if doc.probabilities:
        return str(max(doc.probabilities, key=lambda name: doc.probabilities[name]))  # type: ignore[index]
    return None


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def prediction_summary_html(doc: Document | None) -> str:
    """The AttViz probability bar, its caption and the right/wrong flag, as escaped HTML."""
    if doc is None:
        return "<em>No document selected.</em>"
    flag = _flag(doc)
    if not doc.probabilities:
        return f"<div><em>no predictions stored</em></div>{flag}"
    frame = class_probabilities(doc)
    segments = "".join(
        f'<div class="segment" title="{html.escape(str(name))}: {_percent(float(p))}" '
        f'style="width:{float(p) * 100:.2f}%;background:{class_colour(name)};box-shadow:inset -1px 0 white"></div>'
        for name, p in doc.probabilities.items()
    )
    top = frame.iloc[0]
    bar = (
        '<div class="probability-bar" style="display:flex;height:24px;width:100%;max-width:480px;'
        f'border-radius:12px;overflow:hidden;background:#eee">{segments}</div>'
    )
    caption = (
        f'<p class="caption">Class with the highest probability of {_percent(top["probability"])} is '
        f'<span style="color:{top["colour"]}">■</span> <b>{html.escape(top["class"])}</b>.</p>'
    )
    return f"{bar}{caption}{flag}"


def _flag(doc: Document) -> str:
    predicted = predicted_class(doc)
    if predicted is None:
        return ""
    pred, gold = html.escape(str(predicted)), html.escape(str(doc.label)) if doc.label else None
    if gold is None:
        return f'<p class="flag">predicted {pred} (no gold label)</p>'
    if predicted == doc.label:
        return f'<p class="flag" style="color:#2a7d2a">✓ predicted {pred}, gold {gold}</p>'
    return f'<p class="flag" style="color:#c0392b;font-weight:bold">✗ predicted {pred}, gold {gold}</p>'


class Predictions(View):
    """The class probabilities of one document: the AttViz bar and every class sorted, gold marked."""

    description: ClassVar[str] = "Class probabilities of the document, with its gold label and prediction"
    requires: ClassVar[tuple[str, ...]] = ("document",)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._summary = pn.pane.HTML("", sizing_mode="stretch_width")
        # A placeholder class keeps the first plot's axis categorical.
        self._pipe = hv.streams.Pipe(data=class_probabilities(Document(id="", text="", probabilities={"": 0.0})))
        chart = hv.DynamicMap(self._chart, streams=[self._pipe])
        # A Column is shown and hidden, never the HoloViews pane itself (see attviz.views.common.shown_when).
        self._plot = pn.Column(pn.pane.HoloViews(chart, sizing_mode="stretch_width"), visible=False)
        self._layout = pn.Column(self._summary, self._plot, sizing_mode="stretch_width")
        self._update()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    @param.depends("data", watch=True)
    def _update(self) -> None:
        doc = self.data if isinstance(self.data, Document) else None
        self._summary.object = prediction_summary_html(doc)
        has_probabilities = bool(doc is not None and doc.probabilities)
        if has_probabilities:
            self._pipe.send(class_probabilities(doc))  # type: ignore[arg-type]
        self._plot.visible = has_probabilities

    def plot_title(self) -> str:
        """The chart's title: what it shows and the document (the layer, head or colouring play no part)."""
        doc = self.data if isinstance(self.data, Document) else None
        return f"class probabilities · document {doc.id}" if doc is not None else "class probabilities"

    def _height(self) -> int:
        n = len(self.data.probabilities or {}) if isinstance(self.data, Document) else 1
        return int(np.clip(70 + 24 * n, 160, 640))  # about 24 px per class

    def _size_hook(self, plot: Any, element: Any) -> None:
        if plot.state.height != self._height():
            plot.state.height = self._height()

    def _chart(self, data: pd.DataFrame) -> hv.Bars:
        """Horizontal bars, highest first; the gold class outlined and labelled "◀ gold"."""
        ordered = data.iloc[::-1]  # the categorical y axis runs bottom to top
        return hv.Bars(
            ordered, kdims=[hv.Dimension("label", label="class")], vdims=["percent", "colour", "outline"]
        ).opts(
            invert_axes=True,
            color="colour",
            line_color="black",
            line_width="outline",
            xlabel="",
            ylabel="probability (%)",
            ylim=(0, 105),
            tools=["hover"],
            hover_tooltips=[("class", "@{label}"), ("probability", "@{percent}{0.0}%")],
            framewise=True,
            responsive=True,
            height=self._height(),
            toolbar="above",
            default_tools=["save"],
            hooks=[self._size_hook, title_hook(self.plot_title), page_scroll_hook],
        )
