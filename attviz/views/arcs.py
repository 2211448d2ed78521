"""Head view (after BertViz, Vig 2019): query tokens left, key tokens right, one colour per head.

Vig, J. (2019). A Multiscale Visualization of Attention in the Transformer Model. ACL demos.
https://aclanthology.org/P19-3007/

Links are one ``hv.Segments`` glyph (alpha and width grow with the weight); tokens are two
``hv.Labels`` glyphs (drawn as canvas text, so token strings stay inert).
"""

from __future__ import annotations

from typing import Any

import colorcet
import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr
from bokeh.models import CustomJSHover

from attviz.views.base import View
from attviz.views.common import (
    TITLE_DOC,
    AxisLabels,
    describe,
    page_scroll_hook,
    set_title,
    title_hook,
    token_positions,
)
from attviz.views.matrix import HOVER_CODE, index_of

LEFT, RIGHT = 0.0, 1.0  # x of the query and key columns
_GAP = 0.03  # links stop short of the labels
MIN_WIDTH = 420  # pixels; the plot takes the page's width (one data unit, the links, is a third of it)
MIN_HEIGHT = 240  # pixels; beyond, ``token_height`` per token
HEAD_COLORS: list[str] = list(colorcet.palette["glasbey_category10"])


def head_color(head: int) -> str:
    """The colour of a head (by its number, so a head keeps its colour whatever is filtered)."""
    return HEAD_COLORS[int(head) % len(HEAD_COLORS)]


def link_alpha(weight: np.ndarray) -> np.ndarray:
    """Line alpha of a link: its weight, at least 0.1 so weak links stay visible."""
    return np.clip(weight, 0.1, 1.0)


def link_width(weight: np.ndarray) -> np.ndarray:
    """Line width of a link in pixels: 1 + 3 × weight."""
    return 1.0 + 3.0 * np.clip(weight, 0.0, 1.0)


def head_links(
    values: np.ndarray, threshold: float, top_k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The links of a ``(head, query, key)`` array to draw: weight ≥ ``threshold``, top ``top_k`` per row.

    ``rows`` restricts to those query indices; ``top_k`` 0 keeps every link above the threshold.
    Returns ``(head_index, query_index, key_index, weight, n_above)``, where ``n_above`` counts the
    links above the threshold before the top-k cut.
    """
    if rows is not None:
        values = values[:, rows, :]
    keep = values >= threshold
    n_above = int(keep.sum())
    n_keys = values.shape[-1]
    if 0 < top_k < n_keys:
        crowded = keep.sum(-1) > top_k  # only rows with more than top_k links above the threshold
        if crowded.any():
            rows_values = values[crowded]
            best = np.argpartition(-rows_values, top_k - 1, axis=-1)[:, :top_k]
            in_top = np.zeros(rows_values.shape, dtype=bool)
            np.put_along_axis(in_top, best, True, axis=-1)
            keep[crowded] &= in_top
    h, q, k = np.nonzero(keep)
    weight = values[h, q, k]
    if rows is not None:
        q = np.asarray(rows)[q]
    return h, q, k, weight, n_above


def _segments(
    query: np.ndarray | None = None,
    key: np.ndarray | None = None,
    head: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> hv.Segments:
    """Links as ``hv.Segments`` from query row ``query`` (left) to key row ``key`` (right)."""
    query = np.zeros(0, dtype=np.int64) if query is None else query
    key = np.zeros(0, dtype=np.int64) if key is None else key
    weight = np.zeros(0, dtype=np.float32) if weight is None else weight
    columns = {
        "x0": np.full(len(query), LEFT + _GAP),
        "y0": query.astype(float),
        "x1": np.full(len(key), RIGHT - _GAP),
        "y1": key.astype(float),
        "head": np.zeros(0, dtype=np.int64) if head is None else head,
        # The head as float for the colour mapper (ints would pass Bokeh's slow per-value colour check).
        "hue": np.zeros(0) if head is None else np.asarray(head, dtype=float),
        "weight": weight,
        "alpha": link_alpha(weight),
        "width": link_width(weight),
    }
    return hv.Segments(columns, kdims=["x0", "y0", "x1", "y1"], vdims=["head", "hue", "weight", "alpha", "width"])


_TokensChanged = hv.streams.Stream.define("TokensChanged", version=0)


class HeadView(View):
    """BertViz-style head view of one layer: links from query tokens (left) to key tokens (right).

    With a selected token only its links are drawn; otherwise every link above ``threshold`` (at
    most ``top_k`` per query and head). Click a token on the left to select it.
    """

    description = "Head view: links from each query token (left) to the key tokens (right), one colour per head"
    requires = ("head_matrices",)

    heads = param.List(default=[], allow_None=True, doc="Heads to draw (head numbers); empty or None: all heads.")
    threshold = param.Number(default=0.05, bounds=(0.0, 1.0), step=0.01, doc="Smallest attention weight drawn.")
    top_k = param.Integer(default=5, bounds=(0, 50), doc="Keep at most this many links per query and head (0: all).")
    all_links_up_to = param.Integer(
        default=512, bounds=(16, 4096), doc="With more tokens than this, only the selected token's links are drawn."
    )
    token_height = param.Integer(default=14, bounds=(8, 32), doc="Vertical space per token in pixels.")
    max_plot_height = param.Integer(
        default=6000, bounds=(400, 12000), doc="Largest plot height in pixels (tokens are squeezed beyond)."
    )
    max_height = param.Integer(default=720, bounds=(200, 3000), doc="Visible height; taller plots scroll.")
    title = param.String(default="", doc=TITLE_DOC)
    label = param.String(
        default="",
        doc="The document (from the explorer). When set, the title is it and the layer: the view draws every "
        "head, so the explorer's title, which names the selected head or the token colour, is not used (a head "
        "change then leaves the plot as it is instead of repainting all its links for a new title).",
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._layout: pn.viewable.Viewable | None = None
        self._values = np.zeros((0, 0, 0), dtype=np.float32)
        self._head_ids = np.zeros(0, dtype=np.int64)
        self._labels = AxisLabels.of(None)
        self._summary = ""
        self._query_positions = np.zeros(0, dtype=np.int64)
        self._tokens = _TokensChanged()  # redraws the token labels only when they change
        self._update_data()

    # -- state ---------------------------------------------------------------------------------
    @param.depends("data", watch=True)
    def _update_data(self) -> None:
        data = self.data
        if isinstance(data, xr.DataArray) and self.can_show(data):
            data = data.transpose("head", "query", "key")
            self._values = np.asarray(data.values, dtype=np.float32)
            heads = data.coords.get("head")
            n_heads = data.sizes["head"]
            self._head_ids = np.asarray(heads.values if heads is not None else np.arange(n_heads), dtype=np.int64)
            labels = AxisLabels.of(data)
            self._query_positions = token_positions(data, "query")
        else:
            self._values = np.zeros((0, 0, 0), dtype=np.float32)
            self._head_ids = np.zeros(0, dtype=np.int64)
            labels = AxisLabels.of(None)
            self._query_positions = np.zeros(0, dtype=np.int64)
        if labels != self._labels:  # another layer of the same document keeps its token labels
            self._labels = labels
            self._tokens.event(version=self._tokens.version + 1)

    def _plot_height(self) -> int:
        """``token_height`` pixels per token (and room for the title and toolbar), at least :data:`MIN_HEIGHT`."""
        n = max(len(self._labels.query), len(self._labels.key), 1)
        return int(min(max(self.token_height * n + 80, MIN_HEIGHT), self.max_plot_height))

    def plot_title(self) -> str:
        """The plot's title: the ``label`` input and the layer (else the ``title`` input, else the data's name and
        layer), and how many links are drawn."""
        if self.label:
            shown = f"{self.label} · {describe(self.data, 'attention')}" if self.data is not None else self.label
        else:
            shown = self.title or describe(self.data, "attention")
        return f"{shown}: {self._summary}" if self._summary else shown

    def _head_index(self) -> np.ndarray:
        if not self.heads:
            return np.arange(len(self._head_ids))
        return np.flatnonzero(np.isin(self._head_ids, np.asarray(self.heads, dtype=np.int64)))

    # -- elements ------------------------------------------------------------------------------
    def links(self) -> tuple[hv.Segments, str]:
        """The links to draw now (numeric columns only) and a sentence saying how many are shown/hidden."""
        row = index_of(self._query_positions, self.selected_token)
        n_queries = self._values.shape[1]
        if not n_queries:
            return _segments(), "No attention to draw."
        if row is None and n_queries > self.all_links_up_to:
            return (
                _segments(),
                f"{n_queries} tokens (more than {self.all_links_up_to}): click a token to draw its links.",
            )
        head_index = self._head_index()
        rows = None if row is None else np.asarray([row])
        h, q, k, weight, n_above = head_links(self._values[head_index], self.threshold, self.top_k, rows)
        segments = _segments(q, k, self._head_ids[head_index][h], weight)
        shown, hidden = len(q), n_above - len(q)
        scope = "all tokens" if row is None else f"token {self.selected_token}"
        cut = f", {hidden} more hidden by top-{self.top_k}" if self.top_k else ""
        summary = f"{scope}: {shown} links ≥ {self.threshold:g} shown{cut} ({len(head_index)} heads)"
        return segments, summary

    def _links_element(self, **_: Any) -> hv.Overlay:
        segments, self._summary = self.links()
        row = index_of(self._query_positions, self.selected_token)
        boxes = [] if row is None else [(LEFT - 0.9, row - 0.5, LEFT + _GAP, row + 0.5)]
        # The selected token's highlight lives here: a selection redraws the links anyway.
        return hv.Rectangles(boxes) * segments

    def _token_labels(self, column: str) -> hv.Labels:
        """The query (left) or key (right) tokens, one ``hv.Labels`` each (a Tap source must be one element)."""
        query_labels, key_labels = self._labels.query, self._labels.key
        n = max(len(query_labels), len(key_labels), 1)
        labels, x, align = (query_labels, LEFT, "right") if column == "query" else (key_labels, RIGHT, "left")
        element = hv.Labels((np.full(len(labels), x), np.arange(len(labels)), labels), vdims=column)
        return element.redim.range(y=(-0.5, n - 0.5)).opts(
            text_align=align, text_baseline="middle", text_font_size="9pt", text_color="#222222", framewise=True
        )

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        if x is None or y is None or x > (LEFT + RIGHT) / 2:
            return
        row = round(float(y))
        if 0 <= row < len(self._query_positions):
            position = int(self._query_positions[row])
            self.selected_token = None if position == self.selected_token else position

    def _hover_hook(self, plot: Any, element: Any) -> None:
        query_labels, key_labels = self._labels.query_hover, self._labels.key_hover
        formatters = plot.handles.get("attviz_hover_formatters")
        if formatters is None:
            formatters = {
                "@{y0}": CustomJSHover(code=HOVER_CODE, args={"labels": list(query_labels)}),
                "@{y1}": CustomJSHover(code=HOVER_CODE, args={"labels": list(key_labels)}),
            }
            plot.handles["attviz_hover_formatters"] = formatters
            # HoloViews writes the tooltip fields as "@{y0}": Bokeh looks formatters up by that spelling.
            plot.handles["hover"].formatters = {**plot.handles["hover"].formatters, **formatters}
        for field, labels in (("@{y0}", query_labels), ("@{y1}", key_labels)):
            if formatters[field].args["labels"] != list(labels):
                formatters[field].args = {"labels": list(labels)}

    def _size_hook(self, plot: Any, element: Any) -> None:
        self._figure = plot.state  # for _retitle
        height = self._plot_height()
        if plot.state.height != height:
            plot.state.height = height

    @param.depends("title", "label", watch=True)
    def _retitle(self) -> None:
        """A new title (e.g. the next head's, from the explorer) sets the figure's title: the links stay."""
        figure = getattr(self, "_figure", None)
        if figure is not None:
            set_title(figure, self.plot_title())

    def _plot(self) -> hv.DynamicMap:
        sizes = hv.streams.Params(self, ["token_height", "max_plot_height"])
        queries = hv.DynamicMap(lambda **_: self._token_labels("query"), streams=[self._tokens, sizes])
        keys = hv.DynamicMap(lambda **_: self._token_labels("key"), streams=[self._tokens])
        self._tap = hv.streams.Tap(source=queries, transient=True)
        self._tap.add_subscriber(self._on_tap)
        links = hv.DynamicMap(
            pn.bind(
                self._links_element,
                data=self.param.data,
                heads=self.param.heads,
                threshold=self.param.threshold,
                top_k=self.param.top_k,
                selected_token=self.param.selected_token,
                all_links_up_to=self.param.all_links_up_to,
            )
        ).opts(
            hv.opts.Segments(
                color="hue",
                cmap=HEAD_COLORS,
                clim=(-0.5, len(HEAD_COLORS) - 0.5),  # head h gets HEAD_COLORS[h]
                alpha="alpha",
                line_width="width",
                tools=["hover"],
                hover_tooltips=[
                    ("head", "@head"),
                    ("query", "@y0{custom}"),
                    ("key", "@y1{custom}"),
                    ("weight", "@weight{0.000}"),
                ],
                hooks=[self._hover_hook],
            ),
            hv.opts.Rectangles(fill_color="orange", fill_alpha=0.25, line_alpha=0),
        )
        return (links * queries * keys).opts(
            xlim=(LEFT - 1.0, RIGHT + 1.0),
            invert_yaxis=True,
            framewise=True,
            xaxis=None,
            yaxis=None,
            show_grid=False,
            responsive=True,
            min_width=MIN_WIDTH,
            height=self._plot_height(),
            default_tools=["pan", "wheel_zoom", "reset", "save"],
            hooks=[self._size_hook, title_hook(self.plot_title), page_scroll_hook],
            toolbar="above",
            fontsize={"title": "10pt"},
        )

    def _legend(self) -> str:
        items = [
            f'<span style="color:{head_color(h)}">&#9632;</span>&nbsp;{int(h)}'
            for h in self._head_ids[self._head_index()]
        ]
        return "heads: " + " &ensp;".join(items) if items else ""

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            legend = pn.pane.HTML(
                pn.bind(lambda data, heads: self._legend(), self.param.data, self.param.heads), margin=(0, 10)
            )
            plot = pn.pane.HoloViews(self._plot(), linked_axes=False, sizing_mode="stretch_width")
            placeholder = pn.pane.Markdown(
                "*No attention to show: choose a document (this view shows every head of one layer).*",
                visible=self.param.data.rx.is_(None),
            )
            scroller = pn.Column(
                plot,
                scroll=True,
                max_height=self.param.max_height,
                visible=self.param.data.rx.is_not(None),
                sizing_mode="stretch_width",
            )
            self._layout = pn.Column(placeholder, legend, scroller, sizing_mode="stretch_width")
        return self._layout
