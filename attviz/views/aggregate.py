"""The AttViz aggregate plot: the token vector as a line, with the spread across heads.

The original AttViz "graph" view, fixed: the y axis autoscales (values above 1 stay visible), a log
scale copes with zeros, the x axis names the tokens, the plot is linked to the text (selected token
as a vertical line; a tap selects the nearest token) and the Bokeh save tool exports PNG, or SVG
with ``backend="svg"``. The extremes over heads are the registered ``min`` and ``max`` aggregations.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh  # registers the bokeh backend and its options
import numpy as np
import panel as pn
import param
import xarray as xr

from attviz.views.base import View
from attviz.views.common import (
    TITLE_DOC,
    describe,
    head_rows,
    hover_labels,
    over_heads,
    page_scroll_hook,
    title_hook,
    token_labels,
)
from attviz.views.matrix import set_token_axis

AGGREGATE_COLOR = "#F9822C"
EXTREME_COLOR = "red"
OTHER_COLOR = "grey"
_TOOLTIPS = [
    ("token", "@{token_text} (@{token})"),  # readable and raw token, escaped by Bokeh
    ("value", "@value{0.000}"),
    ("min", "@min{0.000}"),
    ("max", "@max{0.000}"),
]


def log_floor(values: np.ndarray) -> float:
    """The smallest positive value divided by 10 (1e-6 when nothing is positive): zeros are drawn there."""
    values = np.asarray(values, dtype=np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    return float(positive.min() / 10) if positive.size else 1e-6


def plot_frames(rows: xr.DataArray, aggregate: np.ndarray, texts: list[str], scale: str) -> dict[str, Any]:
    """The columns of the three series (aggregate line, min/max markers, every head) for one document.

    ``rows`` is ``(head, token)``; its extremes come from the ``min``/``max`` aggregations over heads.
    With ``scale="log"`` the plotted ``attention`` values are clipped below at :func:`log_floor`
    (``value`` keeps the true numbers for the hover). ``texts`` are the hover's token labels.
    """
    values = np.asarray(rows.values, dtype=np.float64)
    n = values.shape[1]
    x = np.arange(n)
    lo = over_heads("min", rows) if len(values) else aggregate
    hi = over_heads("max", rows) if len(values) else aggregate
    floor = log_floor(np.concatenate([values.ravel(), aggregate])) if scale == "log" else None

    def y(v: np.ndarray) -> np.ndarray:
        return v if floor is None else np.maximum(np.nan_to_num(v, nan=floor), floor)

    text = np.asarray(texts, dtype=object)
    line = {"token": x, "attention": y(aggregate), "value": aggregate, "min": lo, "max": hi, "token_text": text}
    extreme = {"token": np.concatenate([x, x]), "attention": y(np.concatenate([lo, hi]))}
    other = {"token": np.tile(x, len(values)), "attention": y(values.ravel())}
    return {"line": line, "extreme": extreme, "other": other, "floor": floor}


class AggregatePlot(View):
    """Attention per token as a line (the aggregate), with every head's value and the extremes."""

    description = "Aggregate attention per token as a line, with the min/max and every head (AttViz graph)"
    requires = ("token_vectors",)

    aggregate = param.Parameter(default=None, doc="Token vector drawn as the line (from the explorer).")
    scale = param.Selector(
        default="linear", objects=["linear", "log"], doc="y axis: linear (autoscaled) or log (zeros at a floor)."
    )
    backend = param.Selector(
        default="canvas", objects=["canvas", "svg"], doc="Bokeh output backend: the save tool gives PNG or SVG."
    )
    height = param.Integer(default=300, bounds=(150, 1200), doc="Plot height in pixels.")
    max_labels = param.Integer(
        default=80, bounds=(0, 400), doc="Label every token on the x axis up to this many tokens (else positions)."
    )
    title = param.String(default="", doc=TITLE_DOC)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._pipe = hv.streams.Pipe(data=self._frames())
        self._selection = hv.streams.Params(parameterized=self, parameters=["selected_token"])
        self._labels: list[str] = []
        self._pane = pn.pane.HoloViews(self._build(), sizing_mode="stretch_width")
        self._layout: pn.layout.Panel | None = None

    def _frames(self) -> dict[str, Any]:
        if self.data is None:
            self._labels = []
            empty = xr.DataArray(np.zeros((0, 0)), dims=("head", "token"))
            return plot_frames(empty, np.zeros(0), [], self.scale)
        data = self.data if self.data.ndim == 2 else self.data.expand_dims(vector=["value"])
        rows = head_rows(data)
        agg = self.aggregate
        if isinstance(agg, xr.DataArray) and agg.dims == ("token",) and agg.sizes["token"] == rows.sizes["token"]:
            values = np.asarray(agg.values, dtype=np.float64)
        elif rows.sizes["head"]:  # standalone use without an explorer: the mean over the heads
            values = over_heads("mean", rows)
        else:
            values = np.zeros(rows.sizes["token"])
        self._labels = token_labels(data, "token")
        return plot_frames(rows, values, hover_labels(data, "token"), self.scale)

    def plot_title(self) -> str:
        """The plot's title: the ``title`` input, else the name of the line (and the layer)."""
        return self.title or describe(self.aggregate if isinstance(self.aggregate, xr.DataArray) else self.data)

    def _axes_hook(self, plot: Any, element: Any) -> None:
        """Token labels on the x axis (every token up to ``max_labels``)."""
        set_token_axis(plot.state.xaxis[0], self._labels, self.max_labels, rotate=True)

    def _ylabel(self, floor: float | None) -> str:
        name = "attention"
        for source in (self.aggregate, self.data):
            if isinstance(source, xr.DataArray):
                name = str(source.attrs.get("long_name") or source.name or name)
                break
        return name if floor is None else f"{name} (log; values ≤ {floor:.2g} drawn at {floor:.2g})"

    def _series(self, kind: str, data: dict[str, Any]) -> hv.Element:
        """One series, one glyph: faint heads ("other"), red extremes, or the orange aggregate line."""
        y = hv.Dimension("attention", label=self._ylabel(data["floor"]))
        if kind == "line":
            vdims = [y, "value", "min", "max", "token_text"]
            return hv.Curve(data["line"], "token", vdims, label="aggregate").opts(
                color=AGGREGATE_COLOR, line_width=2, tools=["hover"], hover_tooltips=_TOOLTIPS, hover_mode="vline"
            )
        if kind == "extreme":
            return hv.Scatter(data["extreme"], "token", y, label="extreme").opts(
                color=EXTREME_COLOR, marker="triangle", size=5, alpha=0.8
            )
        return hv.Scatter(data["other"], "token", y, label="other").opts(color=OTHER_COLOR, alpha=0.25, size=3)

    def _selected(self, selected_token: int | None) -> hv.VLine:
        x = np.nan if selected_token is None else float(selected_token)
        return hv.VLine(x, kdims=["token", "attention"]).opts(color="black", line_width=1.5, line_dash="dashed")

    def _build(self) -> hv.DynamicMap:
        """Three series fed by one Pipe, and the selection in its own DynamicMap (cheap to move)."""
        series = {
            kind: hv.DynamicMap(partial(self._series, kind), streams=[self._pipe]).opts(framewise=True)
            for kind in ("other", "extreme", "line")
        }
        self._tap = hv.streams.Tap(source=series["line"])  # a tap anywhere selects the nearest token
        self._tap.add_subscriber(self._on_tap)
        selection = hv.DynamicMap(self._selected, streams=[self._selection])
        return (series["other"] * series["extreme"] * series["line"] * selection).opts(
            responsive=True,
            height=self.height,
            logy=self.scale == "log",
            show_legend=True,
            legend_position="top_right",
            xlabel="token",
            hooks=[self._axes_hook, title_hook(self.plot_title), page_scroll_hook],
            backend_opts={"plot.output_backend": self.backend},
            backend="bokeh",
        )

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        if x is None or self.data is None:
            return
        n = self.data.sizes["token"]
        self.selected_token = int(np.clip(np.floor(x + 0.5), 0, max(n - 1, 0)))

    @param.depends("data", "aggregate", "title", "max_labels", watch=True)
    def _send(self) -> None:
        self._pipe.send(self._frames())
        self._forget()

    @param.depends("selected_token", watch=True)
    def _forget(self) -> None:
        """Drop the frame HoloViews keeps from the first render, so a later render shows the current state."""
        self._pane.object.reset()

    @param.depends("scale", "backend", "height", watch=True)
    def _rebuild(self) -> None:
        """An axis type, output backend or height cannot change in place: build the plot anew (rare)."""
        self._pipe.data = self._frames()
        self._pane.object = self._build()

    def __panel__(self) -> pn.layout.Panel:
        if self._layout is None:
            controls = pn.Param(
                self.param,
                parameters=["scale", "backend"],
                widgets={"scale": pn.widgets.RadioButtonGroup, "backend": pn.widgets.RadioButtonGroup},
                default_layout=pn.Row,
                show_name=False,
            )
            self._layout = pn.Column(controls, self._pane, sizing_mode="stretch_width")
        return self._layout
