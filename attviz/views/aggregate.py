"""The AttViz aggregate plot: the token vector as a line, with the spread across heads.

The original AttViz "graph" view, fixed: the y axis autoscales (values above 1 stay visible), a log
scale copes with zeros, the x axis names the tokens, the plot is linked to the text (selected token
as a vertical line; a tap selects the nearest token) and the Bokeh save tool exports PNG, or SVG
with ``backend="svg"``. The extremes over heads are the registered ``min`` and ``max`` aggregations.

The view owns one Bokeh figure (no HoloViews on the update path): a change replaces only the
columns that changed (a head change of the same layer sends the line's two value columns, not the
heads' points nor the token labels), a title change sets the title and a selection moves one span.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
import param
import xarray as xr
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, HoverTool, Range1d, Span
from bokeh.plotting import figure

from attviz.views.base import View
from attviz.views.common import (
    TITLE_DOC,
    TapEvents,
    describe,
    head_rows,
    hover_labels,
    over_heads,
    plain_text,
    same_values,
    set_title,
    token_labels,
    update_bokeh,
)
from attviz.views.matrix import set_token_axis

AGGREGATE_COLOR = "#F9822C"
EXTREME_COLOR = "red"
OTHER_COLOR = "grey"
_TOOLTIPS = [
    ("token", "@{token_text} (@{token})"),  # readable and raw token, escaped by Bokeh
    ("value", "@{value}{0.000}"),
    ("min", "@{min}{0.000}"),
    ("max", "@{max}{0.000}"),
]
SERIES = ("other", "extreme", "line")  # drawn in this order (the line on top)


def log_floor(values: np.ndarray) -> float:
    """The smallest positive value divided by 10 (1e-6 when nothing is positive): zeros are drawn there."""
    values = np.asarray(values, dtype=np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    return float(positive.min() / 10) if positive.size else 1e-6


def plot_frames(
    rows: xr.DataArray,
    aggregate: np.ndarray,
    texts: list[str],
    scale: str,
    extremes: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The columns of the three series (aggregate line, min/max markers, every head) for one document.

    ``rows`` is ``(head, token)``; its extremes come from the ``min``/``max`` aggregations over heads.
    With ``scale="log"`` the plotted ``attention`` values are clipped below at :func:`log_floor`
    (``value`` keeps the true numbers for the hover). ``texts`` are the hover's token labels;
    ``extremes`` the (min, max) over heads when already known.
    """
    values = np.asarray(rows.values, dtype=np.float64)
    n = values.shape[1]
    x = np.arange(n)
    if extremes is not None and len(values):
        lo, hi = extremes
    else:
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


def update_columns(source: ColumnDataSource, columns: dict[str, Any]) -> None:
    """Set the columns of ``source`` that changed (only those are sent to the browser)."""
    data = source.data
    if set(columns) != set(data) or len(next(iter(columns.values()), ())) != len(next(iter(data.values()), ())):
        source.data = columns
        return
    changed = {k: v for k, v in columns.items() if not same_values(data[k], v)}
    if changed:
        data.update(changed)


def y_bounds(frames: dict[str, Any]) -> tuple[float, float]:
    """The y range drawn: every plotted value with 5 % padding (linear: from 0 or below; log: in decades)."""
    values = np.concatenate([np.asarray(frames[k]["attention"], dtype=np.float64).ravel() for k in SERIES])
    values = values[np.isfinite(values)]
    if frames["floor"] is not None:  # log
        low = float(values.min()) if values.size else frames["floor"]
        high = float(values.max()) if values.size else 1.0
        high = max(high, low * 10)
        span = np.log10(high) - np.log10(low)
        return 10 ** (np.log10(low) - 0.05 * span), 10 ** (np.log10(high) + 0.05 * span)
    low = min(0.0, float(values.min())) if values.size else 0.0
    high = float(values.max()) if values.size else 1.0
    if high <= low:
        high = low + 1.0
    pad = 0.05 * (high - low)
    return low - pad, high + pad


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
        self._labels: list[str] = []
        self._extremes: tuple[Any, Any] = (None, None)  # (data, (min, max) over its heads)
        self._tap = TapEvents()  # a tap anywhere selects the nearest token
        self._tap.add_subscriber(self._on_tap)
        self._frames_now = self._frames()
        self._figure = self._build()
        self._pane = pn.pane.Bokeh(self._figure, sizing_mode="stretch_width")
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
        if self._extremes[0] is not self.data:  # a head change keeps the layer: the same extremes
            extremes = (over_heads("min", rows), over_heads("max", rows)) if rows.sizes["head"] else None
            self._extremes = (self.data, extremes)
        return plot_frames(rows, values, hover_labels(data, "token"), self.scale, self._extremes[1])

    def plot_title(self) -> str:
        """The plot's title: the ``title`` input, else the name of the line (and the layer)."""
        return self.title or describe(self.aggregate if isinstance(self.aggregate, xr.DataArray) else self.data)

    def _ylabel(self, floor: float | None) -> str:
        name = "attention"
        for source in (self.aggregate, self.data):
            if isinstance(source, xr.DataArray):
                name = str(source.attrs.get("long_name") or source.name or name)
                break
        return name if floor is None else f"{name} (log; values ≤ {floor:.2g} drawn at {floor:.2g})"

    # -- the figure ----------------------------------------------------------------------------------
    def _build(self) -> figure:
        """The figure: three series (faint heads, red extremes, the orange aggregate line) and the
        selected token as a dashed span; built again only for a new scale, backend or height."""
        frames = self._frames_now
        low, high = y_bounds(frames)
        n = len(frames["line"]["token"])
        fig = figure(
            height=self.height,
            min_width=250,
            sizing_mode="stretch_width",
            x_range=Range1d(-0.5, max(n - 0.5, 0.5)),
            y_range=Range1d(low, high),
            y_axis_type="log" if self.scale == "log" else "linear",
            tools="pan,wheel_zoom,box_zoom,reset,save,tap",
            toolbar_location="above",
            output_backend=self.backend,
            title=plain_text(self.plot_title()),
            x_axis_label="token",
            y_axis_label=plain_text(self._ylabel(frames["floor"])),
        )
        fig.toolbar.active_scroll = None  # the wheel scrolls the page until the user picks the tool
        self._sources = {kind: ColumnDataSource(self._columns(kind, frames)) for kind in SERIES}
        fig.scatter("token", "attention", source=self._sources["other"], color=OTHER_COLOR, alpha=0.25, size=3,
                    legend_label="other")  # fmt: skip
        fig.scatter("token", "attention", source=self._sources["extreme"], color=EXTREME_COLOR, marker="triangle",
                    size=5, alpha=0.8, legend_label="extreme")  # fmt: skip
        line = fig.line("token", "attention", source=self._sources["line"], color=AGGREGATE_COLOR, line_width=2,
                        legend_label="aggregate")  # fmt: skip
        fig.add_tools(HoverTool(renderers=[line], tooltips=_TOOLTIPS, mode="vline"))
        fig.legend.location = "top_right"
        self._span = Span(location=self._span_location(), dimension="height", line_color="black", line_width=1.5,
                          line_dash="dashed")  # fmt: skip
        fig.add_layout(self._span)
        set_token_axis(fig.xaxis[0], self._labels, self.max_labels, rotate=True)
        fig.on_event(Tap, lambda event: self._tap.event(x=event.x, y=event.y))
        return fig

    @staticmethod
    def _columns(kind: str, frames: dict[str, Any]) -> dict[str, Any]:
        columns = dict(frames[kind])
        if kind == "line":
            columns["token_text"] = list(columns["token_text"])
        return columns

    def _span_location(self) -> float:
        return np.nan if self.selected_token is None else float(self.selected_token)

    def _redraw(self) -> None:
        """Put the current frames into the figure: the columns that changed, the ranges, the labels."""
        frames, fig = self._frames_now, self._figure
        for kind in SERIES:
            update_columns(self._sources[kind], self._columns(kind, frames))
        low, high = y_bounds(frames)
        n = len(frames["line"]["token"])
        updates = {"start": low, "end": high}
        fig.y_range.update(**{k: v for k, v in updates.items() if getattr(fig.y_range, k) != v})
        x = {"start": -0.5, "end": max(n - 0.5, 0.5)}
        if (fig.x_range.start, fig.x_range.end) != (x["start"], x["end"]):
            fig.x_range.update(**x)
        ylabel = plain_text(self._ylabel(frames["floor"]))
        if fig.yaxis[0].axis_label != ylabel:
            fig.yaxis[0].axis_label = ylabel
        set_token_axis(fig.xaxis[0], self._labels, self.max_labels, rotate=True)
        self._set_title()
        self._set_span()

    def _set_title(self) -> None:
        set_title(self._figure, self.plot_title())

    def _set_span(self) -> None:
        location = self._span_location()
        if not (np.isnan(location) and np.isnan(self._span.location or np.nan)):
            self._span.location = location

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        if x is None or self.data is None:
            return
        n = self.data.sizes["token"]
        self.selected_token = int(np.clip(np.floor(x + 0.5), 0, max(n - 1, 0)))

    @param.depends("data", "aggregate", "max_labels", watch=True)
    def _send(self) -> None:
        self._frames_now = self._frames()
        update_bokeh(self._pane, self._redraw)

    @param.depends("title", watch=True)
    def _retitle(self) -> None:
        update_bokeh(self._pane, self._set_title)

    @param.depends("selected_token", watch=True)
    def _select(self) -> None:
        update_bokeh(self._pane, self._set_span)

    @param.depends("scale", "backend", "height", watch=True)
    def _rebuild(self) -> None:
        """An axis type, output backend or height cannot change in place: build the plot anew (rare)."""
        self._frames_now = self._frames()
        self._figure = self._build()
        self._pane.object = self._figure

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
