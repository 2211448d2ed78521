"""The attention matrix of one layer/head (or an aggregation): query rows, key columns.

Axes are integer positions (a categorical HeatMap would merge duplicate tokens); readable token
labels (:func:`attviz.views.common.token_labels`) are the ticks when few enough to read, and hover
shows both tokens (readable and raw). Large matrices are rasterised
with datashader using the *max* aggregator, so a single strong cell is not averaged away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr
from bokeh.models import BasicTicker, CustomJSHover, CustomJSTickFormatter, FixedTicker, HoverTool
from holoviews.operation.datashader import regrid

from attviz.views.base import View
from attviz.views.common import (
    TITLE_DOC,
    AxisLabels,
    describe,
    page_scroll_hook,
    shown_when,
    title_hook,
    token_positions,
)

COLORMAPS = ["Blues", "viridis", "magma", "cividis", "Greys", "fire"]

# Tick labels: token text (cut at 24 characters) when every position has a tick, else the position.
_TICK_CODE = """
if (ticks.length > 1 && Math.abs(ticks[1] - ticks[0]) > 1) return String(tick);
const label = labels[Math.round(tick)];
if (label == null) return "";
return label.length > 24 ? label.slice(0, 23) + "…" : label;
"""
# Hover: the token under the mouse (the value is the data coordinate $x or $y).
HOVER_CODE = """
const label = labels[Math.round(value)];
return label == null ? "" : label;
"""


def index_of(positions: np.ndarray, position: int | None) -> int | None:
    """The array index of a document position, or None when absent."""
    if position is None:
        return None
    hits = np.flatnonzero(positions == position)
    return int(hits[0]) if hits.size else None


def matrix_values(array: xr.DataArray) -> np.ndarray:
    """A ``(query, key)`` matrix as a float32 numpy array (upcast from float16, dask loaded)."""
    return np.asarray(array.transpose("query", "key").values, dtype=np.float32)


def value_dimension(array: xr.DataArray | None, name: str = "attention") -> hv.Dimension:
    """The value dimension of a matrix (named from the array, labelled with its long name and units)."""
    attrs = array.attrs if array is not None else {}
    units = attrs.get("units")
    return hv.Dimension(
        name, label=str(attrs.get("long_name", name)), unit=None if units in (None, "1", "") else str(units)
    )


def matrix_image(values: np.ndarray, vdim: hv.Dimension, value_range: tuple[float, float] | None = None) -> hv.Image:
    """An ``hv.Image`` of a ``(query, key)`` matrix on integer axes (cell centres at 0..n-1)."""
    n_query, n_key = values.shape
    if value_range is not None:
        vdim = vdim.clone(range=value_range)
    return hv.Image(
        (np.arange(n_key), np.arange(n_query), values),
        kdims=["key", "query"],
        vdims=[vdim],
        bounds=(-0.5, -0.5, n_key - 0.5, n_query - 0.5),
    )


def empty_image(vdim: hv.Dimension) -> hv.Image:
    """A 1×1 placeholder image (zero) so a DynamicMap can start without data."""
    return matrix_image(np.zeros((1, 1), dtype=np.float32), vdim, (0.0, 1.0))


def set_token_axis(axis: Any, labels: Sequence[str], max_labels: int, rotate: bool = False) -> None:
    """Label a Bokeh axis of integer positions with ``labels`` (in place; rotated 90° if ``rotate``).

    Up to ``max_labels`` every position gets a tick; beyond, Bokeh picks integer ticks and the
    labels show the token only when zoomed in to one tick per position (else the index).
    """
    n = len(labels)
    if n <= max_labels:
        if not isinstance(axis.ticker, FixedTicker) or list(axis.ticker.ticks) != list(range(n)):
            axis.ticker = FixedTicker(ticks=list(range(n)))
    elif type(axis.ticker) is not BasicTicker or axis.ticker.min_interval != 1:
        axis.ticker = BasicTicker(min_interval=1, desired_num_ticks=10)
    formatter = axis.formatter
    if not isinstance(formatter, CustomJSTickFormatter):
        axis.formatter = formatter = CustomJSTickFormatter(code=_TICK_CODE, args={"labels": list(labels)})
    elif list(formatter.args.get("labels", [])) != list(labels):
        formatter.args = {"labels": list(labels)}
    axis.major_label_orientation = np.pi / 2 if rotate else 0
    axis.major_label_text_font_size = "8pt" if n > 30 else "10pt"


def token_axes_hook(get_labels: Callable[[], AxisLabels], max_labels: Callable[[], int]) -> Callable[[Any, Any], None]:
    """A HoloViews hook putting token labels on the axes and in the hover (x: keys, y: queries).

    ``get_labels()`` returns the :class:`~attviz.views.common.AxisLabels` of what is shown now: the
    readable labels on the ticks, readable and raw tokens in the hover. The hook updates the
    tickers, tick formatters and hover formatters of the figure in place.
    """

    def hook(plot: Any, element: Any) -> None:
        labels = get_labels()
        figure = plot.state
        set_token_axis(figure.xaxis[0], labels.key, max_labels(), rotate=True)
        set_token_axis(figure.yaxis[0], labels.query, max_labels())
        formatters = plot.handles.get("attviz_hover_formatters")
        if formatters is None:
            formatters = {
                "$x": CustomJSHover(code=HOVER_CODE, args={"labels": list(labels.key_hover)}),
                "$y": CustomJSHover(code=HOVER_CODE, args={"labels": list(labels.query_hover)}),
            }
            plot.handles["attviz_hover_formatters"] = formatters
            for tool in figure.tools:
                if isinstance(tool, HoverTool):
                    tool.formatters = {**tool.formatters, **formatters}
        for key, hover in (("$x", labels.key_hover), ("$y", labels.query_hover)):
            if list(formatters[key].args["labels"]) != list(hover):
                formatters[key].args = {"labels": list(hover)}

    return hook


HOVER_TOOLTIPS = [("query", "$y{custom}"), ("key", "$x{custom}"), ("value", "@image{0.0000}")]
"""Tooltips of a matrix image: both tokens (via :func:`token_axes_hook`) and the value, all escaped by Bokeh."""


class _RegridLarge(regrid):
    """Datashader ``regrid`` (what ``rasterize`` does to an Image) for images above ``threshold`` only."""

    threshold = param.Integer(default=256, doc="Largest number of rows and columns drawn as is.")

    def _process(self, element: Any, key: Any = None) -> Any:
        rows, cols = element.interface.shape(element, gridded=True)
        if max(rows, cols) <= self.p.threshold:
            return element
        return super()._process(element, key)


def rasterize_large(dmap: hv.DynamicMap, threshold: Any, range_xy: hv.streams.RangeXY) -> hv.DynamicMap:
    """Rasterise (max per pixel) the images of ``dmap`` with more than ``threshold`` rows or columns.

    ``threshold`` is an int or a parameter (followed live); ``range_xy`` is the stream of the
    visible range (reset it when the data changes so a new matrix is shown in full).
    """
    return _RegridLarge(
        dmap, aggregator="max", threshold=threshold, streams=[range_xy, hv.streams.PlotSize()], dynamic=True
    )


def matrix_plot(
    images: hv.DynamicMap,
    *,
    labels: Callable[[], AxisLabels],
    max_labels: Callable[[], int],
    threshold: Any,
    range_xy: hv.streams.RangeXY,
    title: Callable[[], str],
    log_scale: bool = False,
    **opts: Any,
) -> hv.DynamicMap:
    """Style a DynamicMap of matrix images: rasterised above ``threshold``, token axes and hover, titled.

    ``labels()`` gives the current :class:`~attviz.views.common.AxisLabels`, ``title()`` the plot's
    title; ``opts`` are further HoloViews options (param references such as ``view.param.cmap`` are
    followed live). The mouse wheel scrolls the page until the user picks the wheel-zoom tool.
    """
    shown = rasterize_large(images, threshold, range_xy)
    dynamic = {k: v for k, v in opts.items() if isinstance(v, param.Parameter)}
    if dynamic:
        shown = shown.apply.opts(**dynamic)
    static = {
        "colorbar": True,
        "framewise": True,
        "invert_yaxis": True,
        "logz": log_scale,
        "responsive": True,
        "min_width": 250,
        "tools": ["hover"],
        "hover_tooltips": HOVER_TOOLTIPS,
        "default_tools": ["pan", "wheel_zoom", "box_zoom", "reset", "save"],
        "hooks": [token_axes_hook(labels, max_labels), title_hook(title), page_scroll_hook],
        "xlabel": "key",
        "ylabel": "query",
    }
    static.update({k: v for k, v in opts.items() if k not in dynamic})
    return shown.opts(**static)


def value_range(values: np.ndarray, log_scale: bool = False) -> tuple[float, float]:
    """The colour range of a matrix: from 0 (or the smallest positive value in log scale) to its max."""
    finite = values[np.isfinite(values)]
    high = float(finite.max()) if finite.size else 1.0
    if log_scale:
        positive = finite[finite > 0]
        low = max(float(positive.min()), high * 1e-6) if positive.size else 1e-6
    else:
        low = min(0.0, float(finite.min())) if finite.size else 0.0
    return low, high if high > low else low + 1.0


class MatrixView(View):
    """The ``(query, key)`` attention matrix as an image: query rows top to bottom, key columns.

    Tap a cell to select its query token (``selected_token``); the selected row is highlighted by
    an overlay of its own, so a selection does not redraw the image.
    """

    description = "Attention matrix (query rows × key columns); tap a row to select its token"
    requires = ("matrix",)

    cmap = param.Selector(default="Blues", objects=COLORMAPS, doc="Colour map of the attention values.")
    log_scale = param.Boolean(default=False, doc="Map colours on a log scale (shows small weights).")
    max_labels = param.Integer(
        default=80, bounds=(0, 400), doc="Label every token on the axes up to this many tokens (else positions)."
    )
    rasterize_above = param.Integer(
        default=256, bounds=(16, 8192), doc="Rasterise (max per pixel) matrices with more tokens than this."
    )
    height = param.Integer(default=520, bounds=(200, 2000), doc="Height of the plot in pixels.")
    title = param.String(default="", doc=TITLE_DOC)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._layout: pn.viewable.Viewable | None = None
        self._plot_pane: pn.pane.HoloViews | None = None
        self._labels = AxisLabels.of(None)
        self._query_positions = np.zeros(0, dtype=np.int64)
        self._range_xy = hv.streams.RangeXY()
        self._update_tokens()

    @param.depends("data", watch=True)
    def _update_tokens(self) -> None:
        self._range_xy.reset()  # show a new matrix in full (runs before the plot's own watchers)
        data = self.data
        if isinstance(data, xr.DataArray) and self.can_show(data):
            self._labels = AxisLabels.of(data)
            self._query_positions = token_positions(data, "query")
        else:
            self._labels = AxisLabels.of(None)
            self._query_positions = np.zeros(0, dtype=np.int64)

    def _image(self, data: Any, title: str = "") -> hv.Image:
        vdim = value_dimension(data if isinstance(data, xr.DataArray) else None)
        if not (isinstance(data, xr.DataArray) and self.can_show(data)):
            return empty_image(vdim)
        values = matrix_values(data)
        return matrix_image(values, vdim, value_range(values, self.log_scale))

    def plot_title(self) -> str:
        """The title of the plot: the ``title`` input, else the data's long name, layer and head."""
        return self.title or describe(self.data, "attention")

    def _selection(self, selected_token: int | None, data: Any) -> hv.HSpan:
        row = index_of(self._query_positions, selected_token)
        return hv.HSpan(None, None) if row is None else hv.HSpan(row - 0.5, row + 0.5)

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        if y is None:
            return
        row = round(float(y))
        if 0 <= row < len(self._query_positions):
            self.selected_token = int(self._query_positions[row])

    def _plot(self) -> hv.DynamicMap:
        images = hv.DynamicMap(pn.bind(self._image, data=self.param.data, title=self.param.title))
        shown = matrix_plot(
            images,
            labels=lambda: self._labels,
            max_labels=lambda: self.max_labels,
            threshold=self.param.rasterize_above,
            range_xy=self._range_xy,
            title=self.plot_title,
            log_scale=self.log_scale,
            cmap=self.param.cmap,
            height=self.height,
            tools=["hover", "tap"],
        )
        self._tap = hv.streams.Tap(source=shown, transient=True)
        self._tap.add_subscriber(self._on_tap)
        selection = hv.DynamicMap(
            pn.bind(self._selection, selected_token=self.param.selected_token, data=self.param.data)
        ).opts(fill_color="orange", fill_alpha=0.2, line_color="darkorange", line_width=2)
        return (shown * selection).opts(hooks=[page_scroll_hook])  # the overlay sets the active tools last

    @param.depends("log_scale", "height", watch=True)
    def _rebuild(self) -> None:
        # A log colour mapper is another Bokeh model type; these two settings rebuild the figure.
        if self._plot_pane is not None:
            self._range_xy.reset()
            self._plot_pane.object = self._plot()

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            self._plot_pane = pn.pane.HoloViews(self._plot(), sizing_mode="stretch_width", linked_axes=False)
            placeholder = pn.pane.Markdown(
                "*No matrix to show: choose a document (this view shows one (query, key) attention matrix). "
                "A store of token vectors only keeps none: serve it with its model to recompute them.*",
                visible=self.param.data.rx.is_(None),
            )
            plot = shown_when(self.param.data.rx.is_not(None), self._plot_pane)
            self._layout = pn.Column(placeholder, plot, sizing_mode="stretch_width")
        return self._layout
