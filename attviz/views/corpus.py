"""The corpus area: statistics over every document, linked to the document views (issue #13).

:class:`CorpusView` shows an :class:`~attviz.analysis.engine.CorpusStatistics` in four sub-tabs:

- **Head atlas**: the head atlas as a layers × heads grid coloured by one metric of
  :data:`~attviz.analysis.atlas.HEAD_METRICS` (the hover shows them all, the pattern class and the
  preferred offset) and the heads on any two metrics; a click selects the head, whose top documents
  (with one document per decile, so the typical case shows too) and top tokens are listed; a click on
  a document opens it with that head's most attended token selected.
- **Similarity**: the Jensen–Shannon distance between heads, in the clustering's leaf order.
- **Contrasts**: one group of documents against another (by label, prediction or correctness) on
  every head metric or token type: Mann–Whitney / KS p, Benjamini–Hochberg q, Cliff's δ with its
  bootstrap interval; the weighted log-odds tokens, the per-class token ranking and per-class log-value
  histograms and QQ plots (:mod:`attviz.analysis.differences`). With a second corpus loaded, "another
  store": this corpus against another one over the same texts (two checkpoints or models), the documents
  paired by text, with the Wilcoxon signed-rank test (:func:`~attviz.analysis.differences.compare_stores`);
  the other corpus's statistics come from the explorer (``other_corpus_statistics``, asked for through the
  linked ``store_source`` only while this contrast is chosen).
- **Query–key space**: the selected head's queries and keys in one 2-D map
  (:func:`attviz.analysis.qkspace.qk_space`), computed on request; a box or lasso selection lists its
  tokens, and a click on one opens its document with the token selected.

Token texts, ids and labels are untrusted: tables show them with plain-text formatters, HTML built
here escapes them, and Bokeh draws hover fields and tick labels as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
from collections.abc import Callable
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import NumberFormatter, ScientificFormatter

from attviz.views.base import View
from attviz.views.common import CLASS_PALETTE, class_colour, page_scroll_hook, plain_text, set_title
from attviz.views.matrix import set_token_axis

log = logging.getLogger(__name__)

#: Above this many points the query–key map is rasterized (datashader) instead of drawn point by point.
DATASHADE_ABOVE = 20_000
#: Rows of the query–key selection table.
MAX_SELECTED_ROWS = 500
CONTRAST_BY = {"gold label": "label", "prediction": "prediction", "correct or wrong": "correct"}
#: The ``contrast_by`` value of store A (this corpus) vs store B (another loaded corpus over the same texts).
STORE = "store"
STORE_BY = {**CONTRAST_BY, "another store": STORE}
QK_COLOURS = {"role (query / key)": "role", "token": "token", "class": "label", "position": "position"}
PATTERN_COLOURS = {"vertical": "#1f77b4", "diagonal": "#ff7f0e", "block": "#2ca02c", "heterogeneous": "#7f7f7f"}
SUB_TABS = ("Head atlas", "Similarity", "Contrasts", "Query–key space")


def _metric_names() -> dict[str, str]:
    """``{long name: metric}`` of every head-atlas metric."""
    from attviz.analysis.atlas import HEAD_METRICS

    return {f"{m.long_name} ({m.name})": m.name for m in HEAD_METRICS.values()}


def _label(metric: str) -> str:
    from attviz.analysis.atlas import HEAD_METRICS

    known = HEAD_METRICS.get(metric)
    return known.long_name if known is not None else metric


def _text_table(**params: Any) -> pn.widgets.Tabulator:
    """A read-only Tabulator whose cells are plain text (escaped by Tabulator's ``plaintext``)."""
    options = {
        "disabled": True,
        "show_index": False,
        "pagination": "local",
        "page_size": 10,
        "sizing_mode": "stretch_width",
        "layout": "fit_data_stretch",
    }
    options.update(params)
    return pn.widgets.Tabulator(pd.DataFrame(), **options)


def _formatters(frame: pd.DataFrame) -> dict[str, Any]:
    """Plain text for every text column; p and q values in scientific notation; other floats to 3 places."""
    out: dict[str, Any] = {}
    for column in frame.columns:
        kind = frame[column].dtype.kind
        if column.startswith(("p_", "q_")):
            out[column] = ScientificFormatter(precision=2, power_limit_low=-2, nan_format="", null_format="")
        elif kind == "f":
            out[column] = NumberFormatter(format="0.000", nan_format="", null_format="", text_align="right")
        elif kind not in "iub":
            out[column] = "plaintext"
    return out


def _show(table: pn.widgets.Tabulator, frame: pd.DataFrame) -> None:
    frame = frame.reset_index(drop=True)
    table.formatters = _formatters(frame)
    table.param.update(value=frame, page=1)


def _notice(text: str, kind: str = "info") -> pn.pane.Alert:
    return pn.pane.Alert(html.escape(text), alert_type=kind, sizing_mode="stretch_width")


def _served() -> bool:
    """Whether this runs in a served Panel session (not a notebook, script or test)."""
    doc = pn.state.curdoc
    return doc is not None and doc.session_context is not None


def _name_hook(name: str) -> Callable[[Any, Any], None]:
    """A HoloViews hook naming the Bokeh figure (tests and scripts find it by name)."""

    def hook(plot: Any, element: Any) -> None:
        plot.state.name = name

    return hook


def strongest_token(
    document: Any, layer: int, head: int, kind: str | None = None, text: str | None = None
) -> int | None:
    """The key position that one head (array positions ``layer``, ``head``) attends to most in a
    document (the most attention received, summed over queries), among the tokens ``text`` when given.
    None: the document has no matrices (or no such token)."""
    try:
        kinds = [kind] if kind else [k for k in ("self", "encoder") if k in document.kinds]
        if not kinds:
            return None
        array = document.get(kinds[0])
        matrix = np.asarray(array.isel(layer=layer, head=head).transpose("query", "key").values, dtype=np.float64)
        received = matrix.sum(axis=0)
        if text is not None:
            same = np.asarray(array["key_text"].values).astype(str) == str(text)
            if not same.any():
                return None
            received = np.where(same, received, -np.inf)
        key = int(np.argmax(received))
        return int(array["key"].values[key]) if "key" in array.coords else key
    except Exception:  # a document the corpus cannot give matrices for: open it without a token
        log.debug("no strongest token", exc_info=True)
        return None


class CorpusView(View):
    """Corpus statistics (head atlas, similarity, contrasts, query–key space), linked to the documents."""

    description = "Corpus statistics: head atlas, head similarity, class contrasts and the query–key space"
    requires = ("corpus_statistics",)

    layer = param.Integer(default=None, allow_None=True, doc="The selected layer (linked with the explorer).")
    head = param.Integer(default=None, allow_None=True, doc="The selected head (linked with the explorer).")
    doc_id = param.String(default=None, allow_None=True, doc="The id of the current document (linked).")
    current_corpus = param.Parameter(default=None, doc="The corpus explored (the query–key space runs on it).")
    corpus_status = param.String(default="", doc="Why no statistics are shown: being computed, or why not.")
    metric = param.Selector(default="entropy", objects=["entropy"], doc="The head metric coloured in the grid.")
    x_metric = param.Selector(default="entropy", objects=["entropy"], doc="The head metric on the scatter's x axis.")
    y_metric = param.Selector(default="distance", objects=["distance"], doc="The head metric on the scatter's y axis.")
    n_top = param.Integer(default=10, bounds=(1, 100), doc="Top documents listed for the selected head.")
    contrast_by = param.Selector(default="label", objects=CONTRAST_BY, doc="What splits the documents in two.")
    group_a = param.Selector(default=None, objects=[], allow_None=True, doc="The first group of the contrast.")
    group_b = param.Selector(default=None, objects=[], allow_None=True, doc="The second group ('rest': all others).")
    contrast_on = param.Selector(default="heads", objects=["heads", "tokens"], doc="Contrast head metrics or tokens.")
    store_b = param.Selector(
        default=None, objects=[], allow_None=True, doc="The other corpus (store B) of the 'another store' contrast."
    )
    store_source = param.String(
        default=None, allow_None=True, doc="The corpus whose statistics this view asks for (linked; None: none)."
    )
    other_corpus_statistics = param.Parameter(default=None, doc="The statistics of `store_source` (an input).")
    other_corpus_status = param.String(default="", doc="Why the statistics of `store_source` are not shown yet.")
    other_sources = param.List(default=[], doc="The other loaded corpora (an input): the choices of `store_b`.")
    compare_source = param.String(default=None, allow_None=True, doc="The Compare tab's corpus: `store_b`'s default.")
    qk_colour = param.Selector(default="role", objects=QK_COLOURS, doc="What colours the query–key map.")

    def __init__(self, **params: Any) -> None:
        names = _metric_names()
        super().__init__(**params)
        for name in ("metric", "x_metric", "y_metric"):
            self.param[name].objects = names
        self.param.update(metric="entropy", x_metric="entropy", y_metric="distance")
        self._layout: pn.viewable.Viewable | None = None
        self._atlas = pd.DataFrame()
        self._layers = np.zeros(0, dtype=np.int64)
        self._heads = np.zeros(0, dtype=np.int64)
        self._contrasts: dict[Any, Any] = {}
        self._contrast_request: object | None = None
        self._restore: Callable[[], None] | None = None  # shows the contrast just computed again (its tables)
        self._qk: dict[Any, Any] = {}
        self.qk_space: Any = None  # the QKSpace shown
        self._qk_points = pd.DataFrame()
        self._selected = pd.DataFrame()
        self.top_documents_table = _text_table(page_size=20)
        self.top_tokens_table = _text_table(page_size=10)
        self.contrast_table = _text_table(page_size=15, pagination="local")
        self.log_odds_table = _text_table(page_size=10)
        self.selection_table = _text_table(page_size=15)
        self.top_documents_table.on_click(self._on_top_document)
        self.top_tokens_table.on_click(self._on_top_token)
        self.contrast_table.on_click(self._on_contrast_row)
        self.selection_table.on_click(self._on_selected_token)
        self.head_info = pn.pane.HTML("", sizing_mode="stretch_width")
        self.problem = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")
        self.contrast_area = pn.Column(sizing_mode="stretch_width")
        self.qk_status = pn.pane.HTML("", sizing_mode="stretch_width")
        self.qk_plot = pn.Column(sizing_mode="stretch_width")
        self.qk_button = pn.widgets.Button(label="Compute", color="primary", width=120)
        self.qk_button.on_click(self._on_compute)
        self.sub_tabs = pn.Tabs(dynamic=True, sizing_mode="stretch_width")
        self._fill_stores()
        self._update_data()

    # -- data ----------------------------------------------------------------------------------
    @property
    def stats(self) -> Any:
        return self.data if self.can_show(self.data) else None

    def _report(self, what: str, exc: Exception | None) -> None:
        """Show (or, with ``exc`` None, clear) a problem of the view as a notice, never a traceback."""
        if exc is None:
            if self.problem.visible:
                self.problem.param.update(object="", visible=False)
            return
        log.debug("corpus view: %s failed", what, exc_info=exc)
        self.problem.param.update(object=html.escape(f"{what}: {type(exc).__name__}: {exc}"), visible=True)

    @param.depends("data", watch=True)
    def _update_data(self) -> None:
        try:
            self._load()
            self._report("", None)
        except Exception as exc:  # statistics this view cannot show: say why
            self._atlas = pd.DataFrame()
            self._layers = self._heads = np.zeros(0, dtype=np.int64)
            self._report("These corpus statistics cannot be shown", exc)

    def _load(self) -> None:
        stats = self.stats
        if stats is None:
            self._atlas = pd.DataFrame()
            self._layers = self._heads = np.zeros(0, dtype=np.int64)
        else:
            self._atlas = stats.atlas()
            self._layers = np.asarray(stats.heads["layer"].values, dtype=np.int64)
            self._heads = np.asarray(stats.heads["head"].values, dtype=np.int64)
            present = [m for m in stats.metrics if m in set(_metric_names().values())]
            names = {k: v for k, v in _metric_names().items() if v in present} or _metric_names()
            for name in ("metric", "x_metric", "y_metric"):
                self.param[name].objects = names
        self._contrasts.clear()
        self._fill_groups()
        self._update_head_tables()
        if self._layout is not None:
            self._build_tabs()
            self._refresh_active()

    def _position(self) -> tuple[int, int] | None:
        """The selected head as positions in the statistics' (layer, head) arrays."""
        if not len(self._layers) or self.layer is None or self.head is None:
            return None
        if 0 <= self.layer < len(self._layers) and 0 <= self.head < len(self._heads):
            return int(self.layer), int(self.head)
        return None

    # -- heads ---------------------------------------------------------------------------------
    def _grid_frame(self) -> pd.DataFrame:
        atlas = self._atlas
        if atlas.empty:
            return pd.DataFrame({"head_pos": [0], "layer_pos": [0], "value": [np.nan]})
        frame = atlas.copy()
        frame["layer_pos"] = np.searchsorted(self._layers, frame["layer"].to_numpy())
        frame["head_pos"] = np.searchsorted(self._heads, frame["head"].to_numpy())
        frame["value"] = frame.get(self.metric, np.nan)
        return frame

    def grid(self, **_: Any) -> hv.HeatMap:
        """The layers × heads grid (integer positions; the model's numbers in ticks and hover)."""
        frame = self._grid_frame()
        metrics = [m for m in _metric_names().values() if m in frame]
        extra = [c for c in ("pattern", "offset", "offset_weight") if c in frame]
        vdims = [hv.Dimension("value", label=_label(self.metric))]
        vdims += [hv.Dimension(m, label=_label(m)) for m in metrics] + extra
        vdims += [c for c in ("layer", "head") if c in frame]
        return hv.HeatMap(frame, kdims=["head_pos", "layer_pos"], vdims=vdims)

    def _outline(self, **_: Any) -> hv.Rectangles:
        where = self._position()
        boxes = [] if where is None else [(where[1] - 0.5, where[0] - 0.5, where[1] + 0.5, where[0] + 0.5)]
        return hv.Rectangles(boxes)

    def _grid_tooltips(self) -> list[tuple[str, str]]:
        tips = [("layer", "@{layer}"), ("head", "@{head}")]
        tips += [(_label(m), f"@{{{m}}}{{0.000}}") for m in _metric_names().values() if m in self._atlas]
        tips += [("pattern", "@{pattern}"), ("offset", "@{offset}{0}"), ("offset weight", "@{offset_weight}{0.000}")]
        return tips

    def _head_axes(self, figure: Any, name: str, title: str) -> None:
        """Name a layers × heads figure and tick its axes with the model's layer and head numbers."""
        figure.name = name
        set_token_axis(figure.xaxis[0], [str(h) for h in self._heads], 64)
        set_token_axis(figure.yaxis[0], [str(layer) for layer in self._layers], 64)
        set_title(figure, title)

    def _grid_height(self) -> int:
        return int(np.clip(24 * max(len(self._layers), 1) + 110, 240, 700))

    def _grid_hook(self, plot: Any, element: Any) -> None:
        figure = plot.state
        self._head_axes(figure, "attviz-corpus-grid", f"{_label(self.metric)} per head")
        hover = plot.handles.get("hover")
        tips = self._grid_tooltips()
        if hover is not None and hover.tooltips != tips:
            hover.tooltips = tips

    def on_grid_tap(self, x: Any = None, y: Any = None) -> None:
        """Select the head of the grid cell at (x, y) (head and layer positions)."""
        if x is None or y is None:
            return
        col, row = round(float(x)), round(float(y))
        if 0 <= row < len(self._layers) and 0 <= col < len(self._heads):
            self.param.update(layer=row, head=col)

    def _grid_pane(self) -> pn.pane.HoloViews:
        grid = hv.DynamicMap(pn.bind(self.grid, data=self.param.data, metric=self.param.metric))
        tap = hv.streams.Tap(source=grid, transient=True)
        tap.add_subscriber(self.on_grid_tap)
        grid = grid.opts(
            cmap="viridis",
            colorbar=True,
            framewise=True,
            invert_yaxis=True,
            responsive=True,
            min_width=300,
            height=self._grid_height(),
            tools=["hover", "tap"],
            default_tools=["reset", "save"],
            hooks=[self._grid_hook],
            xlabel="head",
            ylabel="layer",
        )
        outline = hv.DynamicMap(
            pn.bind(self._outline, data=self.param.data, layer=self.param.layer, head=self.param.head)
        ).opts(fill_alpha=0, line_color="orange", line_width=3)
        return pn.pane.HoloViews(
            (grid * outline).opts(hooks=[page_scroll_hook]), sizing_mode="stretch_width", linked_axes=False
        )

    def scatter(self, **_: Any) -> hv.Points:
        """Every head on two metrics, coloured by its pattern class."""
        atlas = self._atlas
        x_label, y_label = _label(self.x_metric), _label(self.y_metric)
        if atlas.empty or self.x_metric not in atlas or self.y_metric not in atlas:
            frame = pd.DataFrame({"x": [], "y": [], "pattern": [], "layer": [], "head": [], "index": []})
        else:
            frame = pd.DataFrame(
                {
                    "x": atlas[self.x_metric].to_numpy(),
                    "y": atlas[self.y_metric].to_numpy(),
                    "pattern": atlas["pattern"].astype(str).to_numpy() if "pattern" in atlas else "",
                    "layer": atlas["layer"].to_numpy(),
                    "head": atlas["head"].to_numpy(),
                    "index": np.arange(len(atlas)),
                }
            )
        x, y = hv.Dimension("x", label=x_label), hv.Dimension("y", label=y_label)
        return hv.Points(frame, kdims=[x, y], vdims=["pattern", "layer", "head", "index"])

    def on_scatter_select(self, index: list[int] | None = None) -> None:
        """Select the head of the scatter's point ``index[0]`` (a row of the atlas)."""
        if not index or self._atlas.empty:
            return
        row = self._atlas.iloc[int(index[0])]
        layer = int(np.searchsorted(self._layers, int(row["layer"])))
        head = int(np.searchsorted(self._heads, int(row["head"])))
        self.param.update(layer=layer, head=head)

    def _scatter_pane(self) -> pn.pane.HoloViews:
        points = hv.DynamicMap(
            pn.bind(self.scatter, data=self.param.data, x=self.param.x_metric, y=self.param.y_metric)
        )
        selection = hv.streams.Selection1D(source=points)
        selection.add_subscriber(self.on_scatter_select)
        points = points.opts(
            color="pattern",
            cmap=PATTERN_COLOURS,
            size=8,
            framewise=True,
            responsive=True,
            min_width=300,
            height=320,
            tools=["hover", "tap"],
            default_tools=["reset", "save", "pan", "box_zoom"],
            show_legend=True,
            legend_position="right",
            hooks=[page_scroll_hook],
        )
        return pn.pane.HoloViews(points, sizing_mode="stretch_width", linked_axes=False)

    @param.depends("layer", "head", "metric", "n_top", watch=True)
    def _update_head_tables(self) -> None:
        """The selected head's description, top documents and top tokens."""
        try:
            self._head_tables()
        except Exception as exc:
            self._report("The selected head's documents and tokens", exc)

    def _head_tables(self) -> None:
        stats, where = self.stats, self._position()
        if stats is None or where is None:
            self.head_info.object = "<i>Click a head in the grid or the scatter.</i>" if stats is not None else ""
            _show(self.top_documents_table, pd.DataFrame())
            _show(self.top_tokens_table, pd.DataFrame())
            return
        layer, head = int(self._layers[where[0]]), int(self._heads[where[1]])
        row = self._atlas[(self._atlas["layer"] == layer) & (self._atlas["head"] == head)]
        parts = [f"<b>Layer {layer}, head {head}</b>"]
        if not row.empty:
            first = row.iloc[0]
            if "pattern" in row:
                parts.append(f"pattern: {html.escape(str(first['pattern']))}")
            if "offset" in row and np.isfinite(first["offset"]):
                parts.append(f"preferred offset {int(first['offset']):+d} (weight {first['offset_weight']:.2f})")
            if self.metric in row:
                parts.append(f"{html.escape(_label(self.metric))}: {first[self.metric]:.3f}")
        self.head_info.object = " · ".join(parts)
        top = stats.top_documents(layer, head, self.metric, n=self.n_top, deciles=True)
        if "text" in top:
            top["text"] = [" ".join(str(t).split())[:120] for t in top["text"]]
        _show(self.top_documents_table, top.drop(columns=["index"], errors="ignore"))
        self._top_frame = top
        tokens = stats.top_tokens(layer, head)
        self._tokens_frame = tokens
        _show(self.top_tokens_table, tokens)

    def open_document(self, doc_id: str, token: int | None = None) -> None:
        """Open document ``doc_id`` (linked ``doc_id``) and select ``token`` there (after the document
        changed: a new document clears the selection)."""
        self.doc_id = str(doc_id)
        if token is not None:
            self.selected_token = int(token)

    def open_top_document(self, row: int) -> None:
        """Open the ``row``-th top document of the selected head, with its most attended token selected."""
        frame = getattr(self, "_top_frame", None)
        where = self._position()
        if frame is None or not 0 <= row < len(frame):
            return
        doc_id = str(frame["id"].iloc[row])
        token = None
        corpus = self.current_corpus
        if corpus is not None and where is not None:
            try:
                token = strongest_token(corpus[doc_id], where[0], where[1], self.stats.settings.kind)
            except Exception:
                token = None
        self.open_document(doc_id, token)

    def open_top_token(self, row: int) -> None:
        """Open the document where the ``row``-th top token of the selected head has its highest value,
        with the occurrence of that token the head attends to most selected."""
        frame = getattr(self, "_tokens_frame", None)
        if frame is not None and 0 <= row < len(frame):
            self.open_token_type(str(frame["type"].iloc[row]))

    def open_token_type(self, text: str) -> None:
        """Open the document where the token type ``text`` has its highest value for the selected head,
        with the occurrence the head attends to most selected."""
        where, stats = self._position(), self.stats
        if where is None or stats is None:
            return
        layer, head = int(self._layers[where[0]]), int(self._heads[where[1]])
        values = stats.token_values(layer, head)
        values = values[values["type"].astype(str) == text]
        if values.empty:
            return
        doc_id = str(values.loc[values["value"].idxmax(), "id"])
        token = None
        if self.current_corpus is not None:
            with contextlib.suppress(Exception):
                token = strongest_token(self.current_corpus[doc_id], where[0], where[1], stats.settings.kind, text)
        self.open_document(doc_id, token)

    def open_contrast_row(self, row: int) -> None:
        """Select the head of the ``row``-th contrast (and, for a token, open its strongest document)."""
        frame = getattr(self, "contrast_frame", None)
        if frame is None or not 0 <= row < len(frame) or not len(self._layers):
            return
        layer = int(np.searchsorted(self._layers, int(frame["layer"].iloc[row])))
        head = int(np.searchsorted(self._heads, int(frame["head"].iloc[row])))
        self.param.update(layer=layer, head=head)
        if "type" in frame:
            self.open_token_type(str(frame["type"].iloc[row]))

    def _on_contrast_row(self, event: Any) -> None:
        self.open_contrast_row(int(event.row))

    def _on_top_token(self, event: Any) -> None:
        self.open_top_token(int(event.row))

    def _on_top_document(self, event: Any) -> None:
        self.open_top_document(int(event.row))

    def _heads_tab(self) -> pn.Column:
        controls = pn.Row(
            pn.widgets.Select.from_param(self.param.metric, label="Colour by", width=340),
            pn.widgets.Select.from_param(self.param.x_metric, label="Scatter x", width=300),
            pn.widgets.Select.from_param(self.param.y_metric, label="Scatter y", width=300),
        )
        return pn.Column(
            controls,
            pn.Row(self._grid_pane(), self._scatter_pane(), sizing_mode="stretch_width"),
            self.head_info,
            pn.Row(
                pn.Column("**Top documents** (and one per decile) — click one to open it", self.top_documents_table),
                pn.Column(
                    "**Top tokens** (mean per document) — click one to open it", self.top_tokens_table, width=420
                ),
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )

    # -- similarity ----------------------------------------------------------------------------
    def _order(self) -> np.ndarray | None:
        stats = self.stats
        if stats is None or stats.similarity is None:
            return None
        order = stats.head_order()
        return np.arange(stats.similarity.shape[0]) if order is None else np.asarray(order)

    def _flat_label(self, flat: int) -> str:
        n_heads = max(len(self._heads), 1)
        return f"L{self._layers[flat // n_heads]}H{self._heads[flat % n_heads]}"

    def similarity(self, **_: Any) -> hv.HeatMap:
        """The head × head Jensen–Shannon distance in the clustering's order (integer positions)."""
        order = self._order()
        if order is None:
            empty = pd.DataFrame({"head_a_pos": [0], "head_b_pos": [0], "distance": [np.nan]})
            return hv.HeatMap(empty, ["head_a_pos", "head_b_pos"], ["distance"])
        values = np.asarray(self.stats.similarity.values)[np.ix_(order, order)]
        n = len(order)
        labels = np.array([self._flat_label(int(f)) for f in order], dtype=object)
        frame = pd.DataFrame(
            {
                "head_a_pos": np.tile(np.arange(n), n),
                "head_b_pos": np.repeat(np.arange(n), n),
                "distance": values.ravel(),
                "head_x": np.tile(labels, n),
                "head_y": np.repeat(labels, n),
            }
        )
        distance = hv.Dimension("distance", label="Jensen–Shannon distance")
        return hv.HeatMap(frame, kdims=["head_a_pos", "head_b_pos"], vdims=[distance, "head_x", "head_y"])

    def on_similarity_tap(self, x: Any = None, y: Any = None) -> None:
        """Select the head of the column at ``x`` (a position in the clustering's order)."""
        order = self._order()
        if order is None or x is None:
            return
        col = round(float(x))
        if 0 <= col < len(order):
            flat = int(order[col])
            n_heads = max(len(self._heads), 1)
            self.param.update(layer=flat // n_heads, head=flat % n_heads)

    def _similarity_hook(self, plot: Any, element: Any) -> None:
        order = self._order()
        labels = [] if order is None else [self._flat_label(int(f)) for f in order]
        figure = plot.state
        figure.name = "attviz-corpus-similarity"
        set_token_axis(figure.xaxis[0], labels, 160, rotate=True)
        set_token_axis(figure.yaxis[0], labels, 160)
        documents = self.stats.similarity.attrs.get("documents", "") if self.stats is not None else ""
        set_title(figure, f"Jensen–Shannon distance between heads ({documents} documents), clustered")

    def _similarity_tab(self) -> pn.viewable.Viewable:
        if self._order() is None:
            return _notice("These statistics have no head similarity.")
        heat = hv.DynamicMap(pn.bind(self.similarity, data=self.param.data))
        tap = hv.streams.Tap(source=heat, transient=True)
        tap.add_subscriber(self.on_similarity_tap)
        heat = heat.opts(
            cmap="magma_r",
            colorbar=True,
            framewise=True,
            invert_yaxis=True,
            responsive=True,
            min_width=400,
            height=int(np.clip(11 * len(self._order()) + 160, 400, 1800)),
            tools=["hover", "tap"],
            default_tools=["reset", "save", "box_zoom"],
            hooks=[self._similarity_hook, page_scroll_hook],
            xlabel="",
            ylabel="",
            hover_tooltips=[("heads", "@{head_x} · @{head_y}"), ("distance", "@{distance}{0.000}")],
        )
        return pn.Column(
            "Click a column to select its head. Heads close together attend alike.",
            pn.pane.HoloViews(heat, sizing_mode="stretch_width", linked_axes=False),
            sizing_mode="stretch_width",
        )

    # -- contrasts -----------------------------------------------------------------------------
    def _group_values(self) -> list[str]:
        stats = self.stats
        if stats is None:
            return []
        from attviz.analysis.engine import group_of

        try:
            values = group_of(stats.documents, self.contrast_by)
        except Exception:
            return []
        present = sorted({str(v) for v in values.dropna()})
        if self.contrast_by == "correct":
            present = [v for v in ("correct", "wrong") if v in present]
        return present

    # -- store A vs store B --------------------------------------------------------------------------
    @param.depends("other_sources", "compare_source", watch=True)
    def _fill_stores(self) -> None:
        """Offer "another store" while another corpus is loaded; its default: the Compare tab's corpus,
        else the first other corpus."""
        others = [str(n) for n in self.other_sources or []]
        self.param.contrast_by.objects = STORE_BY if others else CONTRAST_BY
        self.param.store_b.objects = others
        fixes: dict[str, Any] = {}
        if self.store_b not in others or (self.contrast_by != STORE and self.compare_source in others):
            default = self.compare_source if self.compare_source in others else (others[0] if others else None)
            fixes["store_b"] = default
        if not others and self.contrast_by == STORE:
            fixes["contrast_by"] = "label"
        if fixes:
            self.param.update(fixes)

    @param.depends("contrast_by", "store_b", watch=True)
    def _ask_for_store(self) -> None:
        """Ask the explorer (linked ``store_source``) for store B's statistics while that contrast is chosen."""
        wanted = self.store_b if self.contrast_by == STORE else None
        if self.store_source != wanted:
            self.store_source = wanted

    @param.depends("store_source", watch=True)
    def _store_asked(self) -> None:
        """The explorer (a notebook) asked for another store: show that contrast."""
        name = self.store_source
        offered = name is not None and name in self.param.store_b.objects
        if offered and (self.store_b, self.contrast_by) != (name, STORE):
            self.param.update(store_b=name, contrast_by=STORE)

    @param.depends("other_corpus_statistics", "other_corpus_status", watch=True)
    def _store_arrived(self) -> None:
        if self.contrast_by == STORE and self._active() == "Contrasts":
            self._update_contrast()

    def _other_stats(self) -> Any:
        other = self.other_corpus_statistics
        return other if other is not None and self.can_show(other) else None

    def _store_table(self, stats: Any, other: Any) -> pd.DataFrame:
        """This corpus vs store B, paired by text (cached per statistics), sorted by the paired test's p."""
        from attviz.analysis.differences import compare_stores

        key = ("store", id(stats), id(other), self.contrast_on)
        if key not in self._contrasts:
            frame = compare_stores(stats, other, on=self.contrast_on, match="text", ci_rows=100, resamples=500)
            if "p_wilcoxon" in frame and len(frame):
                attrs = dict(frame.attrs)
                frame = frame.sort_values(["p_wilcoxon", "p_mannwhitney"], kind="stable").reset_index(drop=True)
                frame.attrs.update(attrs)
            self._contrasts[key] = frame
        return self._contrasts[key]

    def _compute_store_contrast(self, stats: Any) -> list[Any]:
        other = self._other_stats()
        if not self.other_sources:
            return [_notice("Load a second corpus of the same texts (attviz serve A.zarr B.zarr) to contrast stores.")]
        if other is None:
            status = self.other_corpus_status
            if not status:
                status = f"Waiting for the corpus statistics of {self.store_b}…"
            computing = status.startswith(("Computing", "Waiting"))
            return [_notice(status, "info" if computing else "warning")]
        frame = self._store_table(stats, other)
        what = "head metrics" if self.contrast_on == "heads" else "token types"
        parts: list[Any] = [
            pn.pane.HTML(
                f"This corpus (a) vs <b>{html.escape(str(self.store_b))}</b> (b) over "
                f"{int(frame.attrs.get('documents', 0))} documents paired by text, on {what}: Wilcoxon signed-rank "
                "p (paired) with its Benjamini–Hochberg q, Mann–Whitney U and KS p, Cliff's δ (a > b is positive) "
                "with its 95% bootstrap interval. Click a row to select its head (and open the document where its "
                "token is strongest).",
                sizing_mode="stretch_width",
            )
        ]
        first = ["layer", "head", "metric", "type", "delta", "delta_low", "delta_high", "p_wilcoxon", "q_wilcoxon"]
        order = [c for c in first if c in frame] + [c for c in frame.columns if c not in first]
        shown = frame[order].rename(columns={"delta": "δ", "delta_low": "δ low", "delta_high": "δ high"})
        self._shows(frame, shown)
        parts.append(self.contrast_table)
        deltas = self.store_deltas(frame)
        if deltas is not None:
            parts.append(pn.pane.HoloViews(deltas, sizing_mode="stretch_width", linked_axes=False))
        return parts

    def store_deltas(self, frame: pd.DataFrame) -> hv.HeatMap | None:
        """Store A vs B per head on head metrics: Cliff's δ of the grid's metric, coloured from -1 (lower in
        this corpus in every pair) to 1 (higher); None on token types (the table says it per type)."""
        if self.contrast_on != "heads" or frame.empty or not {"layer", "head", "delta", "metric"} <= set(frame):
            return None
        q = "q_wilcoxon" if "q_wilcoxon" in frame else "q_mannwhitney"
        part = frame[frame["metric"] == self.metric][["layer", "head", "delta", q]]
        what = f"Cliff's δ of {_label(self.metric)}, this corpus vs {self.store_b}"
        if part.empty:
            return None
        part = part.assign(
            layer_pos=np.searchsorted(self._layers, part["layer"].to_numpy()),
            head_pos=np.searchsorted(self._heads, part["head"].to_numpy()),
        )
        vdims = [hv.Dimension("delta", label="δ", range=(-1, 1)), hv.Dimension(q, label="q"), "layer", "head"]

        def hook(plot: Any, element: Any) -> None:
            self._head_axes(plot.state, "attviz-corpus-store-deltas", what)

        return hv.HeatMap(part, kdims=["head_pos", "layer_pos"], vdims=vdims).opts(
            cmap="RdBu_r",
            clim=(-1, 1),
            colorbar=True,
            invert_yaxis=True,
            responsive=True,
            min_width=300,
            height=self._grid_height(),
            tools=["hover"],
            default_tools=["reset", "save"],
            hooks=[hook, page_scroll_hook],
            xlabel="head",
            ylabel="layer",
        )

    def _shows(self, frame: pd.DataFrame, shown: pd.DataFrame, odds: pd.DataFrame | None = None) -> None:
        """Show a contrast (its row clicks select from ``frame``), now and whenever its setting returns."""

        def restore() -> None:
            if getattr(self, "contrast_frame", None) is frame:  # shown already (e.g. a head click): keep the page
                return
            self.contrast_frame = frame
            _show(self.contrast_table, shown)
            if odds is not None:
                _show(self.log_odds_table, odds)

        restore()
        self._restore = restore

    @param.depends("contrast_by", watch=True)
    def _fill_groups(self) -> None:
        from attviz.analysis.differences import REST

        present = self._group_values()
        self.param.group_a.objects = present
        self.param.group_b.objects = [*present, REST] if present else []
        a = present[0] if present else None
        b = present[1] if len(present) > 1 else (REST if present else None)
        self.param.update(group_a=a, group_b=b)

    def contrast_parts(self) -> list[Any]:
        """The contrast tab's contents for the current settings (cached per settings)."""
        stats = self.stats
        if stats is None:
            return [_notice("No corpus statistics.")]
        key: tuple = (id(stats), self.contrast_by, self.group_a, self.group_b, self.contrast_on, self._position())
        if self.contrast_by == STORE:
            other = self._other_stats()
            key = (id(stats), STORE, self.store_b, id(other), self.other_corpus_status, self.contrast_on, self.metric)
        if key not in self._contrasts:
            self._restore = None
            try:
                parts = self._compute_contrast(stats)
            except Exception as exc:  # e.g. one class only: say why, keep the view
                parts = [_notice(f"No contrast: {exc}", "warning")]
            self._contrasts[key] = (parts, self._restore)
        else:  # the tables are shared by every setting: show this setting's again
            parts, restore = self._contrasts[key]
            if restore is not None:
                restore()
        return parts

    def _tables(self, stats: Any) -> tuple[pd.DataFrame, pd.DataFrame | str]:
        """The contrast table and the log-odds tokens (or why there are none), cached per settings."""
        from attviz.analysis.differences import contrast, token_log_odds

        by, a, b = self.contrast_by, self.group_a, self.group_b
        key = ("tables", id(stats), by, a, b, self.contrast_on)
        if key not in self._contrasts:
            frame = contrast(stats, by, a, b, on=self.contrast_on, ci_rows=100, resamples=500)
            try:
                odds: pd.DataFrame | str = token_log_odds(stats, by, a, b)
            except Exception as exc:
                odds = str(exc)
            self._contrasts[key] = (frame, odds)
        return self._contrasts[key]

    def _compute_contrast(self, stats: Any) -> list[Any]:
        from attviz.analysis.differences import class_ranking, log_values, qq_data

        if self.contrast_by == STORE:
            return self._compute_store_contrast(stats)
        by, a, b = self.contrast_by, self.group_a, self.group_b
        if a is None or a == b:
            return [_notice("Choose two different groups.", "warning")]
        frame, odds = self._tables(stats)
        parts: list[Any] = [
            pn.pane.HTML(
                f"<b>{html.escape(str(a))}</b> ({int(frame['n_a'].iloc[0]) if len(frame) else 0} documents) vs "
                f"<b>{html.escape(str(b))}</b> ({int(frame['n_b'].iloc[0]) if len(frame) else 0}) on "
                f"{'head metrics' if self.contrast_on == 'heads' else 'token types'}: Mann–Whitney U and KS p, "
                "Benjamini–Hochberg q, Cliff's δ (a > b is positive) with its 95% bootstrap interval. "
                "Click a row to select its head (and open the document where its token is strongest).",
                sizing_mode="stretch_width",
            )
        ]
        first = [
            "layer",
            "head",
            "metric",
            "type",
            "delta",
            "delta_low",
            "delta_high",
            "p_mannwhitney",
            "q_mannwhitney",
        ]
        order = [c for c in first if c in frame] + [c for c in frame.columns if c not in first]
        shown = frame[order].rename(columns={"delta": "δ", "delta_low": "δ low", "delta_high": "δ high"})
        self._shows(frame, shown, None if isinstance(odds, str) else odds)
        parts.append(self.contrast_table)
        if isinstance(odds, str):
            parts.append(_notice(f"No log-odds: {odds}", "warning"))
        else:
            parts += [pn.pane.Markdown("**Tokens that separate the groups** (weighted log-odds, Monroe et al. 2008)")]
            parts.append(self.log_odds_table)
        position = self._position()
        layer = head = None
        if position is not None:
            layer, head = int(self._layers[position[0]]), int(self._heads[position[1]])
        where = f"layer {layer}, head {head}" if layer is not None else "mean over heads"
        ranking = class_ranking(stats, by, layer=layer, head=head, k=12)
        parts.append(pn.pane.Markdown(f"**Top tokens per class** ({where}; bar: mean, behind: max)"))
        parts.append(pn.pane.HoloViews(self._ranking_plot(ranking), sizing_mode="stretch_width", linked_axes=False))
        samples = log_values(stats, by, layer=layer, head=head)
        parts.append(pn.pane.Markdown(f"**log₁₀ of each token type's max value, per class** ({where})"))
        distributions = self._distribution_plot(samples, qq_data(samples))
        parts.append(pn.pane.HoloViews(distributions, sizing_mode="stretch_width", linked_axes=False))
        return parts

    @staticmethod
    def _ranking_plot(ranking: pd.DataFrame) -> hv.Layout:
        plots = []
        for name, part in ranking.groupby("class", sort=True):
            part = part.iloc[::-1]  # the highest at the top
            labels = [f"{i + 1:>2}. {plain_text(t)}" for i, t in enumerate(part["type"].iloc[::-1])][::-1]
            frame = pd.DataFrame({"token": labels, "mean": part["mean"].to_numpy(), "max": part["max"].to_numpy()})
            colour = class_colour(name)
            behind = hv.Bars(frame, "token", "max").opts(color=colour, alpha=0.25, line_alpha=0)
            front = hv.Bars(frame, "token", "mean").opts(color=colour)
            plots.append(
                (behind * front).opts(
                    invert_axes=True, title=plain_text(name), height=300, width=320, tools=["hover"], ylabel="value"
                )
            )
        if not plots:
            return hv.Layout([hv.Bars([])])
        return hv.Layout(plots).cols(3).opts(shared_axes=False)

    @staticmethod
    def _distribution_plot(samples: dict[str, np.ndarray], qq: dict[str, pd.DataFrame]) -> hv.Layout:
        plots = []
        for name, sample in samples.items():
            colour = class_colour(name)
            if len(sample):
                counts, edges = np.histogram(sample, bins=min(30, max(5, len(sample) // 5)))
                plots.append(
                    hv.Histogram((edges, counts), kdims=["log10 value"], vdims=["types"]).opts(
                        color=colour, title=plain_text(f"{name}: log-values"), height=240, width=320
                    )
                )
            if name in qq:
                frame = qq[name]
                points = hv.Scatter(frame, "theoretical", "observed").opts(color=colour, size=4)
                line = hv.Curve(frame, "theoretical", "fit").opts(color="black", line_dash="dashed")
                plots.append((points * line).opts(title=plain_text(f"{name}: normal QQ"), height=240, width=320))
        if not plots:
            return hv.Layout([hv.Curve([])])
        return hv.Layout(plots).cols(2).opts(shared_axes=False)

    def _update_contrast(self) -> None:
        """Show the contrast of the current settings: at once outside a served session (notebooks, tests);
        served, its tests run in a worker thread, so this session and every other stay responsive."""
        if _served():
            pn.state.execute(self._update_contrast_async)
        else:
            self._show_contrast()

    def _show_contrast(self) -> None:
        try:
            self.contrast_area.objects = self.contrast_parts()
        except Exception as exc:
            self.contrast_area.objects = [_notice(f"No contrast: {type(exc).__name__}: {exc}", "warning")]

    async def _update_contrast_async(self) -> None:
        stats, token = self.stats, object()
        self._contrast_request = token
        self.contrast_area.loading = True
        try:
            other = self._other_stats()
            if stats is not None and self.contrast_by == STORE and other is not None:
                await asyncio.to_thread(self._store_table, stats, other)  # the slow part (cached)
            elif stats is not None and self.group_a is not None and self.group_a != self.group_b:
                await asyncio.to_thread(self._tables, stats)  # the slow part (cached); its errors show below
        except Exception:
            pass
        finally:
            if self._contrast_request is token:  # else newer settings are on their way
                self.contrast_area.loading = False
                self._show_contrast()

    def _contrasts_tab(self) -> pn.Column:
        groups = self.param.contrast_by.rx.pipe(lambda by: by != STORE)
        store = self.param.contrast_by.rx.pipe(lambda by: by == STORE)
        controls = pn.Row(
            pn.widgets.Select.from_param(self.param.contrast_by, label="Groups by", width=180),
            pn.widgets.Select.from_param(self.param.group_a, label="Group a", width=180, visible=groups),
            pn.widgets.Select.from_param(self.param.group_b, label="Group b", width=180, visible=groups),
            pn.widgets.Select.from_param(self.param.store_b, label="Other store", width=220, visible=store),
            pn.widgets.RadioButtonGroup.from_param(self.param.contrast_on, label="On", margin=(25, 10)),
        )
        return pn.Column(controls, self.contrast_area, sizing_mode="stretch_width")

    @param.depends("contrast_by", "group_a", "group_b", "store_b", "contrast_on", "layer", "head", "metric", watch=True)
    def _contrast_changed(self) -> None:
        if self._active() == "Contrasts":
            self._update_contrast()

    # -- query-key space -----------------------------------------------------------------------
    def _qk_key(self) -> Any:
        position = self._position()
        return None if position is None else (id(self.current_corpus), *position)

    def compute_qk(self) -> Any:
        """Compute (or take from the cache) the selected head's query–key space and show it."""
        from attviz.analysis.qkspace import qk_space

        key = self._qk_key()
        if key is None or self.current_corpus is None:
            raise ValueError("select a head and a corpus first")
        if key not in self._qk:
            self._qk[key] = qk_space(self.current_corpus, key[1], key[2])
        self.show_qk(self._qk[key])
        return self._qk[key]

    async def _on_compute(self, *_: Any) -> None:
        key = self._qk_key()
        if key is None or self.current_corpus is None:
            self.qk_status.object = "Select a head first (Heads or Similarity)."
            return
        self.qk_button.disabled = True
        self.qk_status.object = (
            f"Computing the query–key space of layer {self._layers[key[1]]}, head {self._heads[key[2]]}… "
            "(documents without stored queries and keys are run through the model again)"
        )
        try:
            await asyncio.to_thread(self._qk_cached, key)
            self.show_qk(self._qk[key])
        except Exception as exc:  # show it, keep the session
            self.qk_status.object = f"<span style='color:#b00'>Failed: {html.escape(str(exc))}</span>"
        finally:
            self.qk_button.disabled = False

    def _qk_cached(self, key: Any) -> None:
        from attviz.analysis.qkspace import qk_space

        if key not in self._qk:
            self._qk[key] = qk_space(self.current_corpus, key[1], key[2])

    def show_qk(self, space: Any) -> None:
        self.qk_space = space
        points = space.points.copy()
        points["index"] = np.arange(len(points))
        self._qk_points = points
        self.qk_status.object = (
            f"Layer {self._layers[space.layer]}, head {self._heads[space.head]}: {len(points):,} points "
            f"({html.escape(space.method)}{', sampled' if space.sampled else ''}). Draw a box or lasso to list tokens."
        )
        self._selected = points.iloc[:0]
        _show(self.selection_table, self._selection_rows())
        self._draw_qk()

    def qk_element(self) -> hv.Points:
        """The query–key points with the colour column of :attr:`qk_colour` (``colour``)."""
        points = self._qk_points
        if points.empty:
            return hv.Points(pd.DataFrame({"x": [], "y": [], "colour": []}), ["x", "y"], ["colour"])
        column = self.qk_colour
        frame = points[["x", "y", "token", "role", "doc_id", "position", "index"]].copy()
        if column == "token":
            codes, _ = pd.factorize(points["token"].astype(str))
            frame["colour"] = codes % len(CLASS_PALETTE)
        elif column == "position":
            frame["colour"] = points["position"].to_numpy()
        else:
            frame["colour"] = points[column].astype(str).to_numpy()
        frame["label"] = points["label"].astype(str).to_numpy()
        return hv.Points(frame, ["x", "y"], ["colour", "token", "role", "doc_id", "position", "label", "index"])

    def _qk_cmap(self) -> Any:
        if self.qk_colour == "role":
            return {"query": "#1f77b4", "key": "#d62728"}
        if self.qk_colour == "label":
            return {str(v): class_colour(v) for v in self._qk_points["label"].astype(str).unique()}
        if self.qk_colour == "token":
            return list(CLASS_PALETTE)
        return "viridis"

    @param.depends("qk_colour", watch=True)
    def _draw_qk(self) -> None:
        if self._qk_points.empty:
            self.qk_plot.objects = []
            return
        element = self.qk_element()
        common = {"responsive": True, "min_width": 400, "height": 520, "xlabel": "x", "ylabel": "y"}
        if len(self._qk_points) > DATASHADE_ABOVE:
            import datashader as ds
            from holoviews.operation.datashader import dynspread, rasterize

            shade: dict[str, Any] = {}
            if self.qk_colour in ("role", "label"):  # one colour per category, mixed by count
                colours = self._qk_cmap()
                categories = sorted(colours)
                data = element.data.assign(colour=pd.Categorical(element.data["colour"], categories=categories))
                element = element.clone(data=data)
                aggregator = ds.count_cat("colour")
                shade["cmap"] = [colours[c] for c in categories]
            elif self.qk_colour == "position":
                aggregator, shade["cmap"] = ds.mean("colour"), "viridis"
            else:  # thousands of token types: the density (hover a point-wise map for the tokens)
                aggregator, shade["cmap"] = ds.count(), "Blues"
            shaded = dynspread(rasterize(element, aggregator=aggregator)).opts(
                **shade,
                tools=["box_select"],
                default_tools=["reset", "save", "pan", "box_zoom"],
                hooks=[page_scroll_hook, _name_hook("attviz-corpus-qk")],
                **common,
            )
            bounds = hv.streams.BoundsXY(source=shaded)
            bounds.add_subscriber(self.select_bounds)
            plot = shaded
        else:
            cmap = self._qk_cmap()
            options: dict[str, Any] = {"color": "colour", "cmap": cmap, "size": 4, "alpha": 0.6}
            if self.qk_colour == "token":
                options.update(color_levels=len(CLASS_PALETTE), colorbar=False, show_legend=False)
            elif self.qk_colour == "position":
                options["colorbar"] = True
            else:
                options.update(show_legend=True, legend_position="right")
            plot = element.opts(
                tools=["hover", "box_select", "lasso_select"],
                default_tools=["reset", "save", "pan", "box_zoom"],
                hover_tooltips=[("token", "@{token}"), ("role", "@{role}"), ("document", "@{doc_id}"),
                                ("position", "@{position}"), ("class", "@{label}")],
                hooks=[page_scroll_hook, _name_hook("attviz-corpus-qk")],
                **options,
                **common,
            )  # fmt: skip
            selection = hv.streams.Selection1D(source=plot)
            selection.add_subscriber(self.select_points)
        self.qk_plot.objects = [pn.pane.HoloViews(plot, sizing_mode="stretch_width", linked_axes=False)]

    def select_points(self, index: list[int] | None = None) -> None:
        """List the points ``index`` (rows of the query–key points) in the selection table."""
        self._selected = self._qk_points.iloc[list(index or [])]
        _show(self.selection_table, self._selection_rows())

    def select_bounds(self, bounds: tuple[float, float, float, float] | None = None) -> None:
        """List the points inside ``bounds`` ``(x0, y0, x1, y1)`` in the selection table."""
        points = self._qk_points
        if bounds is None or points.empty:
            self._selected = points.iloc[:0]
        else:
            x0, y0, x1, y1 = bounds
            inside = points["x"].between(min(x0, x1), max(x0, x1)) & points["y"].between(min(y0, y1), max(y0, y1))
            self._selected = points[inside]
        _show(self.selection_table, self._selection_rows())

    def _selection_rows(self) -> pd.DataFrame:
        columns = ["doc_id", "position", "token", "role", "label", "prediction"]
        selected = self._selected
        if selected.empty:
            return pd.DataFrame(columns=columns)
        return selected[columns].head(MAX_SELECTED_ROWS).astype({"token": str, "doc_id": str}).reset_index(drop=True)

    def _on_selected_token(self, event: Any) -> None:
        self.open_selected(int(event.row))

    def open_selected(self, row: int) -> None:
        """Open the document of the ``row``-th selected token, with that token selected."""
        rows = self._selection_rows()
        if 0 <= row < len(rows):
            self.open_document(str(rows["doc_id"].iloc[row]), int(rows["position"].iloc[row]))

    def _qk_tab(self) -> pn.Column:
        return pn.Column(
            pn.pane.HTML(
                "The selected head's queries and keys in one map (AttentionViz, Yeh et al. 2023): a query lies "
                "near the keys it attends to.",
                sizing_mode="stretch_width",
            ),
            pn.Row(
                self.qk_button,
                pn.widgets.Select.from_param(self.param.qk_colour, label="Colour by", width=200),
            ),
            self.qk_status,
            self.qk_plot,
            pn.pane.Markdown(f"**Selected tokens** (up to {MAX_SELECTED_ROWS}) — click one to open its document"),
            self.selection_table,
            sizing_mode="stretch_width",
        )

    # -- layout --------------------------------------------------------------------------------
    def _active(self) -> str | None:
        if self._layout is None or not self.sub_tabs.objects:
            return None
        return SUB_TABS[self.sub_tabs.active] if self.sub_tabs.active < len(SUB_TABS) else None

    def _refresh_active(self, *_: Any) -> None:
        if self._active() == "Contrasts":
            self._update_contrast()

    @staticmethod
    def _built(title: str, builder: Callable[[], Any]) -> Any:
        try:
            return builder()
        except Exception as exc:  # one sub-tab that cannot be built leaves the others
            log.debug("corpus view: %s failed", title, exc_info=exc)
            return _notice(f"{title} cannot be shown: {type(exc).__name__}: {exc}", "warning")

    def _build_tabs(self) -> None:
        if self.stats is None:
            self.sub_tabs.objects = []
            return
        builders: list[Callable[[], Any]] = [self._heads_tab, self._similarity_tab, self._contrasts_tab, self._qk_tab]
        active = self.sub_tabs.active
        self.sub_tabs.objects = [
            pn.Column(self._built(t, b), name=t, sizing_mode="stretch_width")
            for t, b in zip(SUB_TABS, builders, strict=True)
        ]
        self.sub_tabs.active = min(active, len(SUB_TABS) - 1)

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            status = pn.pane.Alert(
                self.param.corpus_status.rx.pipe(html.escape),
                alert_type="info",
                visible=self.param.corpus_status.rx.pipe(bool),
                sizing_mode="stretch_width",
            )
            # An indeterminate bar (not Panel's "loader spin", which tests and users read as the server's busy flag).
            progress = pn.indicators.Progress(
                active=True,
                value=-1,
                sizing_mode="stretch_width",
                visible=self.param.corpus_status.rx.pipe(lambda s: s.startswith("Computing")),
            )
            self._layout = pn.Column(status, progress, self.problem, self.sub_tabs, sizing_mode="stretch_width")
            self._build_tabs()
            self.sub_tabs.param.watch(self._refresh_active, "active")
        return self._layout
