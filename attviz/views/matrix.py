"""The attention matrix of one layer/head (or an aggregation): query rows, key columns.

Axes are integer positions (a categorical HeatMap would merge duplicate tokens); readable token
labels (:func:`attviz.views.common.token_labels`) are the ticks when few enough to read, and hover
shows both tokens (readable and raw). Large matrices are rasterised with the *max* of each block of
cells, so a single strong cell is not averaged away.

:class:`MatrixView` owns one Bokeh figure with one ``image`` glyph (no HoloViews on its update
path): a head change replaces the image's float32 data and the colour range; the token axes, the
hover labels and the zoom stay as they are while the document's tokens do not change. Above
``rasterize_above`` tokens the image is max-pooled to the plot's pixels (:func:`max_pool`) and
pooled again for the visible window when the user zooms. The HoloViews helpers below
(:func:`matrix_plot`, :func:`rasterize_large`, ...) draw the comparison view's matrices.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr
from bokeh.core.property.descriptors import UnsetValueError
from bokeh.events import RangesUpdate, Tap
from bokeh.models import (
    BasicTicker,
    BoxAnnotation,
    ColorBar,
    ColumnDataSource,
    CustomJSHover,
    CustomJSTickFormatter,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    LogColorMapper,
    Range1d,
)
from bokeh.plotting import figure
from holoviews.operation.datashader import regrid
from holoviews.plotting.util import process_cmap

from attviz.views.base import View
from attviz.views.common import (
    TITLE_DOC,
    AxisLabels,
    TapEvents,
    describe,
    page_scroll_hook,
    plain_text,
    set_title,
    shown_when,
    title_hook,
    token_positions,
    update_bokeh,
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


def pool_factors(n_rows: int, n_cols: int, rows: int, cols: int) -> tuple[int, int]:
    """Cells per pixel along each axis so that ``n_rows × n_cols`` fits ``rows × cols``."""
    return max(1, -(-n_rows // max(rows, 1))), max(1, -(-n_cols // max(cols, 1)))


def max_pool(values: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``values`` reduced to at most ``rows`` × ``cols`` by the max of equal blocks of cells (NaN ignored
    unless a block holds only NaN); never enlarged."""
    return max_pool_by(values, *pool_factors(*values.shape, rows, cols))


def max_pool_by(values: np.ndarray, fr: int, fc: int) -> np.ndarray:
    """The max of each ``fr × fc`` block of cells (the last blocks padded with NaN)."""
    n_rows, n_cols = values.shape
    if fr == 1 and fc == 1:
        return values
    pr, pc = -n_rows % fr, -n_cols % fc
    padded = np.pad(values, ((0, pr), (0, pc)), constant_values=np.nan) if pr or pc else values
    blocks = padded.reshape(padded.shape[0] // fr, fr, padded.shape[1] // fc, fc)
    with np.errstate(invalid="ignore"):
        if np.isnan(blocks).any():
            return np.fmax.reduce(np.fmax.reduce(blocks, axis=3), axis=1).astype(np.float32)
        return blocks.max(axis=(1, 3))


def lazy_max_pool(lazy: Any, r0: int, r1: int, c0: int, c1: int, rows: int, cols: int) -> np.ndarray:
    """:func:`max_pool` of ``lazy[r0:r1, c0:c1]`` (a dask array) computed one block of rows at a time, so
    that a matrix that does not fit in memory (a long document kept as queries and keys) is drawn at the
    screen's resolution while holding one row of tiles."""
    fr, fc = pool_factors(r1 - r0, c1 - c0, rows, cols)
    bounds = np.cumsum((0, *lazy.chunks[0]))
    parts, carry = [], None
    for a, b in itertools.pairwise(bounds):
        a, b = max(a, r0), min(b, r1)
        if a >= b:
            continue
        block = np.asarray(lazy[a:b, c0:c1].compute(), dtype=np.float32)
        if carry is not None:
            block = np.concatenate([carry, block])
        full = len(block) // fr * fr
        if full:
            parts.append(max_pool_by(block[:full], fr, fc))
        carry = block[full:] if full < len(block) else None
    if carry is not None:
        parts.append(max_pool_by(carry, fr, fc))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _reported(model: Any, name: str) -> Any:
    """A property BokehJS reports (e.g. ``inner_width``), or None before it did."""
    try:
        return getattr(model, name)
    except UnsetValueError:
        return None


#: Pixels assumed for the plot's data area until the browser reports its size (width; height is
#: the view's ``height`` minus :data:`_CHROME` for the title, toolbar and axis).
_DEFAULT_WIDTH = 800
_CHROME = 110


class MatrixView(View):
    """The ``(query, key)`` attention matrix as an image: query rows top to bottom, key columns.

    Tap a cell to select its query token (``selected_token``); the selected row is highlighted by
    a box of its own, so a selection does not redraw the image.
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
        self._labels = AxisLabels.of(None)
        self._query_positions = np.zeros(0, dtype=np.int64)
        self._values = np.zeros((0, 0), dtype=np.float32)
        self._lazy: Any = None  # a dask matrix too large to hold: drawn block by block (lazy_max_pool)
        self._pool: Any = None  # or its source's own pooling (attrs["attviz_pool"], e.g. attviz.qk)
        self._lazy_range: tuple[float, float] = (0.0, 1.0)
        self._tokens_key: Any = None
        self._window: tuple[float, float, float, float] | None = None  # zoomed-in (x0, x1, y0, y1)
        self._tap = TapEvents()
        self._tap.add_subscriber(self._on_tap)
        self._figure = self._build()
        self._plot_pane = pn.pane.Bokeh(self._figure, sizing_mode="stretch_width")
        self._show()

    # -- data ----------------------------------------------------------------------------------------
    def _shown(self) -> xr.DataArray | None:
        data = self.data
        return data if isinstance(data, xr.DataArray) and self.can_show(data) else None

    def plot_title(self) -> str:
        """The title of the plot: the ``title`` input, else the data's long name, layer and head."""
        return self.title or describe(self.data, "attention")

    def _pixels(self) -> tuple[int, int]:
        """(rows, cols) of screen pixels of the data area: reported by the browser, else assumed."""
        width = _reported(self._figure, "inner_width") or _DEFAULT_WIDTH
        height = _reported(self._figure, "inner_height") or max(self.height - _CHROME, 50)
        return int(height), int(width)

    def _shape(self) -> tuple[int, int]:
        return tuple(self._lazy.shape) if self._lazy is not None else self._values.shape

    def _raster(self) -> dict[str, Any]:
        """The image columns: the matrix as is, or max-pooled to the pixels (of the zoomed window)."""
        values = self._values
        n_rows, n_cols = self._shape()
        if not n_rows * n_cols:
            return {"image": [np.zeros((1, 1), np.float32)], "x": [-0.5], "y": [-0.5], "dw": [1.0], "dh": [1.0]}
        if max(n_rows, n_cols) <= self.rasterize_above:
            return {"image": [values], "x": [-0.5], "y": [-0.5], "dw": [float(n_cols)], "dh": [float(n_rows)]}
        r0, r1, c0, c1 = 0, n_rows, 0, n_cols
        if self._window is not None:
            x0, x1, y0, y1 = self._window
            c0, c1 = max(0, int(np.floor(x0 + 0.5))), min(n_cols, int(np.ceil(x1 + 0.5)))
            r0, r1 = max(0, int(np.floor(y0 + 0.5))), min(n_rows, int(np.ceil(y1 + 0.5)))
            if c1 <= c0 or r1 <= r0:
                r0, r1, c0, c1 = 0, n_rows, 0, n_cols
        rows, cols = self._pixels()
        if self._pool is not None:  # a long q/k document's head: pooled from q and k directly
            image = self._pool(slice(r0, r1), slice(c0, c1), *pool_factors(r1 - r0, c1 - c0, rows, cols))
        elif self._lazy is not None:
            image = lazy_max_pool(self._lazy, r0, r1, c0, c1, rows, cols)
        else:
            image = max_pool(values[r0:r1, c0:c1], rows, cols)
        return {"image": [image], "x": [c0 - 0.5], "y": [r0 - 0.5], "dw": [float(c1 - c0)], "dh": [float(r1 - r0)]}

    # -- the figure ----------------------------------------------------------------------------------
    def _mapper(self) -> LinearColorMapper | LogColorMapper:
        mapper = LogColorMapper if self.log_scale else LinearColorMapper
        return mapper(palette=process_cmap(self.cmap, 256), low=0.0, high=1.0, nan_color="rgba(0, 0, 0, 0)")

    def _build(self) -> figure:
        """One figure: the image, a colour bar, the selected row's box, token axes and hover."""
        fig = figure(
            height=self.height,
            min_width=250,
            sizing_mode="stretch_width",
            x_range=Range1d(-0.5, 0.5),
            y_range=Range1d(0.5, -0.5),  # inverted: query 0 on top
            tools="pan,wheel_zoom,box_zoom,reset,save,tap",
            toolbar_location="above",
            title=plain_text(self.plot_title()),
            x_axis_label="key",
            y_axis_label="query",
        )
        fig.toolbar.active_scroll = None  # the wheel scrolls the page until the user picks the tool
        fig.grid.visible = False
        self._source = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self._color_mapper = self._mapper()
        image = fig.image(
            image="image", x="x", y="y", dw="dw", dh="dh", source=self._source, color_mapper=self._color_mapper
        )
        self._hover_formatters = {
            "$x": CustomJSHover(code=HOVER_CODE, args={"labels": []}),
            "$y": CustomJSHover(code=HOVER_CODE, args={"labels": []}),
        }
        fig.add_tools(HoverTool(renderers=[image], tooltips=HOVER_TOOLTIPS, formatters=self._hover_formatters))
        self._colorbar = ColorBar(color_mapper=self._color_mapper, width=12)
        fig.add_layout(self._colorbar, "right")
        self._box = BoxAnnotation(
            bottom=0, top=0, visible=False, fill_color="orange", fill_alpha=0.2, line_color="darkorange", line_width=2
        )
        fig.add_layout(self._box)
        fig.on_event(Tap, lambda event: self._tap.event(x=event.x, y=event.y))
        fig.on_event(RangesUpdate, self._on_zoom)
        fig.on_change("inner_width", self._on_size)
        fig.on_change("inner_height", self._on_size)
        self._tokens_key = None
        return fig

    @param.depends("data", "rasterize_above", "max_labels", watch=True)
    def _update(self) -> None:
        update_bokeh(self._plot_pane, self._show)

    def _show(self) -> None:
        """Show ``data``: the image and colour range always, tokens, axes and zoom when the tokens changed."""
        data = self._shown()
        large = data is not None and data.chunks is not None and max(data.shape) > self.rasterize_above
        self._lazy = data.data if large else None
        self._pool = data.attrs.get("attviz_pool") if large else None
        if large:
            self._values = np.zeros((0, 0), dtype=np.float32)
        else:
            self._values = matrix_values(data) if data is not None else np.zeros((0, 0), dtype=np.float32)
        fig = self._figure
        key = (
            (tuple(token_positions(data, "query").tolist()), tuple(token_positions(data, "key").tolist()))
            if data is not None
            else None
        )
        labels = AxisLabels.of(data)
        if key != self._tokens_key or labels != self._labels:  # another document, shape or transform
            self._tokens_key, self._labels = key, labels
            self._query_positions = token_positions(data, "query") if data is not None else np.zeros(0, np.int64)
            self._window = None
            n_rows, n_cols = self._shape()
            fig.x_range.update(start=-0.5, end=max(n_cols, 1) - 0.5)
            fig.y_range.update(start=max(n_rows, 1) - 0.5, end=-0.5)
            for key_, hover in (("$x", labels.key_hover), ("$y", labels.query_hover)):
                if list(self._hover_formatters[key_].args["labels"]) != list(hover):
                    self._hover_formatters[key_].args = {"labels": list(hover)}
        set_token_axis(fig.xaxis[0], self._labels.key, self.max_labels, rotate=True)
        set_token_axis(fig.yaxis[0], self._labels.query, self.max_labels)
        self._recolour()
        self._draw()  # a lazy matrix's colour range is that of the pooled image drawn
        self._set_title()
        self._set_box()

    def _recolour(self) -> None:
        if self._lazy is not None:
            low, high = self._lazy_range
        else:
            low, high = value_range(self._values, self.log_scale) if self._values.size else (0.0, 1.0)
        mapper = self._color_mapper
        if (mapper.low, mapper.high) != (low, high):
            mapper.update(low=low, high=high)

    def _draw(self) -> None:
        columns = self._raster()
        if self._lazy is not None:
            self._lazy_range = value_range(columns["image"][0], self.log_scale)
            self._recolour()
        current = self._source.data
        changed = {k: v for k, v in columns.items() if k == "image" or list(current.get(k, [])) != v}
        if set(current) != set(columns) or not current.get("image"):
            self._source.data = columns
        elif changed:
            current.update(changed)

    def _on_zoom(self, event: RangesUpdate) -> None:
        n_rows, n_cols = self._shape()
        if max(n_rows, n_cols) <= self.rasterize_above or None in (event.x0, event.x1, event.y0, event.y1):
            return
        x0, x1 = sorted((event.x0, event.x1))
        y0, y1 = sorted((event.y0, event.y1))
        full = x0 <= -0.5 and x1 >= n_cols - 0.5 and y0 <= -0.5 and y1 >= n_rows - 0.5
        window = None if full else (x0, x1, y0, y1)
        if window != self._window:
            self._window = window
            update_bokeh(self._plot_pane, self._draw)

    def _on_size(self, attr: str, old: Any, new: Any) -> None:
        if max(self._shape(), default=0) > self.rasterize_above:
            update_bokeh(self._plot_pane, self._draw)

    def _set_title(self) -> None:
        set_title(self._figure, self.plot_title())

    @param.depends("title", watch=True)
    def _retitle(self) -> None:
        update_bokeh(self._plot_pane, self._set_title)

    @param.depends("cmap", watch=True)
    def _recmap(self) -> None:
        palette = process_cmap(self.cmap, 256)
        update_bokeh(self._plot_pane, lambda: setattr(self._color_mapper, "palette", palette))

    @param.depends("selected_token", watch=True)
    def _select(self) -> None:
        update_bokeh(self._plot_pane, self._set_box)

    def _set_box(self) -> None:
        row = index_of(self._query_positions, self.selected_token)
        if row is None:
            if self._box.visible:
                self._box.visible = False
        else:
            self._box.update(bottom=row - 0.5, top=row + 0.5, visible=True)

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        if y is None:
            return
        row = round(float(y))
        if 0 <= row < len(self._query_positions):
            self.selected_token = int(self._query_positions[row])

    @param.depends("log_scale", "height", watch=True)
    def _rebuild(self) -> None:
        # A log colour mapper is another Bokeh model type; these two settings rebuild the figure.
        self._figure = self._build()
        self._show()
        self._plot_pane.object = self._figure

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            placeholder = pn.pane.Markdown(
                "*No matrix to show: choose a document (this view shows one (query, key) attention matrix). "
                "A store of token vectors only keeps none: serve it with its model to recompute them.*",
                visible=self.param.data.rx.is_(None),
            )
            plot = shown_when(self.param.data.rx.is_not(None), self._plot_pane)
            self._layout = pn.Column(placeholder, plot, sizing_mode="stretch_width")
        return self._layout
