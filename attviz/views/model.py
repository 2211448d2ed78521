"""Model overview: one statistic per (layer, head) as a grid, to find heads worth a closer look.

Shows the output of the ``head_summary`` aggregation (Clark et al. 2019, "What Does BERT Look
At?", https://arxiv.org/abs/1906.04341): entropy, attention distance, share on special / previous /
next / own token. Click a cell to select that layer and head.
"""

from __future__ import annotations

from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr

from attviz.views.base import View
from attviz.views.common import TITLE_DOC, page_scroll_hook, shown_when, title_hook
from attviz.views.matrix import index_of, set_token_axis

STAT_DIM = "statistic"


def summary_table(data: xr.DataArray) -> tuple[np.ndarray, list[str], list[str], np.ndarray, np.ndarray]:
    """``(values (layer, head, statistic), names, units, layer ids, head ids)`` of a head summary.

    A plain ``(layer, head)`` array is one statistic named after the array; any other third dim is
    read as the statistic dim; further dims are reduced to their first entry.
    """
    extra = [d for d in data.dims if d not in ("layer", "head")]
    stat_dim = STAT_DIM if STAT_DIM in extra else (extra[0] if extra else None)
    data = data.isel({d: 0 for d in extra if d != stat_dim})
    if stat_dim is None:
        names = [str(data.name or "value")]
        units = [str(data.attrs.get("units", ""))]
        values = np.asarray(data.transpose("layer", "head").values, dtype=np.float32)[..., None]
    else:
        data = data.transpose("layer", "head", stat_dim)
        names = [str(n) for n in data[stat_dim].values] if stat_dim in data.coords else []
        names = names or [f"{stat_dim} {i}" for i in range(data.sizes[stat_dim])]
        unit_coord = data.coords.get(f"{stat_dim}_units")
        units = [str(u) for u in unit_coord.values] if unit_coord is not None else [""] * len(names)
        values = np.asarray(data.values, dtype=np.float32)
    layers = np.asarray(data["layer"].values if "layer" in data.coords else np.arange(data.sizes["layer"]))
    heads = np.asarray(data["head"].values if "head" in data.coords else np.arange(data.sizes["head"]))
    return values, names, units, layers.astype(np.int64), heads.astype(np.int64)


def _column(name: str) -> str:
    """A safe column name for a statistic (letters, digits and underscores)."""
    return "stat_" + "".join(c if c.isalnum() else "_" for c in name)


class ModelOverview(View):
    """A layers × heads grid of one head statistic; hover shows them all, a click selects the head."""

    description = "Layers × heads grid of a head statistic (entropy, distance, ...); click a cell to pick the head"
    requires = ("head_summary",)

    statistic = param.Selector(
        default="entropy", objects=["entropy"], check_on_set=False, doc="The statistic coloured in the grid."
    )
    layer = param.Integer(default=None, allow_None=True, doc="The selected layer (linked with the explorer).")
    head = param.Integer(default=None, allow_None=True, doc="The selected head (linked with the explorer).")
    cmap = param.Selector(
        default="viridis", objects=["viridis", "magma", "cividis", "Blues", "RdBu_r"], doc="Colour map of the grid."
    )
    title = param.String(default="", doc=TITLE_DOC)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._layout: pn.viewable.Viewable | None = None
        self._values = np.zeros((0, 0, 0), dtype=np.float32)
        self._names: list[str] = []
        self._units: list[str] = []
        self._layers = np.zeros(0, dtype=np.int64)
        self._heads = np.zeros(0, dtype=np.int64)
        self._update_data()

    @param.depends("data", watch=True)
    def _update_data(self) -> None:
        data = self.data
        if isinstance(data, xr.DataArray) and self.can_show(data):
            self._values, self._names, self._units, self._layers, self._heads = summary_table(data)
        else:
            self._values = np.zeros((0, 0, 0), dtype=np.float32)
            self._names, self._units = [], []
            self._layers = self._heads = np.zeros(0, dtype=np.int64)
        names = self._names or ["entropy"]
        self.param.statistic.objects = names
        if self.statistic not in names:
            self.statistic = "entropy" if "entropy" in names else names[0]

    def _label(self, i: int) -> str:
        unit = self._units[i] if i < len(self._units) else ""
        return self._names[i] if unit in ("", "1") else f"{self._names[i]} ({unit})"

    # -- elements ------------------------------------------------------------------------------
    def grid(self) -> hv.Image:
        """The grid: x = head index, y = layer index; the first value is the chosen statistic."""
        n_layers, n_heads, _ = self._values.shape
        if not n_layers or not n_heads:
            return hv.Image(np.zeros((1, 1)), bounds=(-0.5, -0.5, 0.5, 0.5), kdims=["head", "layer"], vdims=["value"])
        chosen = self._names.index(self.statistic) if self.statistic in self._names else 0
        planes = [self._values[..., chosen]] + [self._values[..., i] for i in range(len(self._names))]
        planes += [np.broadcast_to(self._layers[:, None], (n_layers, n_heads))]
        planes += [np.broadcast_to(self._heads[None, :], (n_layers, n_heads))]
        value = hv.Dimension("value", label=self._label(chosen))
        vdims = [value] + [hv.Dimension(_column(n), label=self._label(i)) for i, n in enumerate(self._names)]
        vdims += ["layer_id", "head_id"]
        return hv.Image(
            (np.arange(n_heads), np.arange(n_layers), *planes),
            kdims=["head", "layer"],
            vdims=vdims,
            bounds=(-0.5, -0.5, n_heads - 0.5, n_layers - 0.5),
        )

    def plot_title(self) -> str:
        """The grid's title: the statistic per layer and head, and the ``title`` input (the document)."""
        shown = f"{self._label(self._names.index(self.statistic))} per layer and head" if self._names else ""
        return " · ".join(part for part in (shown or "head statistics", self.title) if part)

    def _grid(self, **_: Any) -> hv.Image:
        return self.grid()

    def _outline(self, **_: Any) -> hv.Rectangles:
        row, col = index_of(self._layers, self.layer), index_of(self._heads, self.head)
        boxes = [] if row is None or col is None else [(col - 0.5, row - 0.5, col + 0.5, row + 0.5)]
        return hv.Rectangles(boxes)

    def _on_tap(self, x: float | None = None, y: float | None = None) -> None:
        if x is None or y is None:
            return
        col, row = round(float(x)), round(float(y))
        if 0 <= row < len(self._layers) and 0 <= col < len(self._heads):
            self.param.update(layer=int(self._layers[row]), head=int(self._heads[col]))

    def _height(self) -> int:
        return int(np.clip(28 * len(self._layers) + 110, 220, 900))  # about 28 px per layer

    def _axes_hook(self, plot: Any, element: Any) -> None:
        figure = plot.state
        if figure.height != self._height():
            figure.height = self._height()
        set_token_axis(figure.xaxis[0], [str(h) for h in self._heads], 80)
        set_token_axis(figure.yaxis[0], [str(layer) for layer in self._layers], 80)

    def _tooltips(self) -> list[tuple[str, str]]:
        return [("layer", "@{layer_id}"), ("head", "@{head_id}")] + [
            (self._label(i), f"@{{{_column(n)}}}{{0.000}}") for i, n in enumerate(self._names)
        ]

    def _plot(self) -> hv.DynamicMap:
        grid = hv.DynamicMap(
            pn.bind(self._grid, data=self.param.data, statistic=self.param.statistic, title=self.param.title)
        )
        self._tap = hv.streams.Tap(source=grid, transient=True)
        self._tap.add_subscriber(self._on_tap)
        grid = grid.apply.opts(cmap=self.param.cmap).opts(
            colorbar=True,
            framewise=True,
            invert_yaxis=True,
            responsive=True,
            min_width=300,
            tools=["hover", "tap"],
            hover_tooltips=self._tooltips(),
            default_tools=["reset", "save"],
            height=self._height(),
            hooks=[self._axes_hook, self._hover_hook, title_hook(self.plot_title)],
            xlabel="head",
            ylabel="layer",
        )
        outline = hv.DynamicMap(
            pn.bind(self._outline, data=self.param.data, layer=self.param.layer, head=self.param.head)
        ).opts(fill_alpha=0, line_color="orange", line_width=3)
        return (grid * outline).opts(hooks=[page_scroll_hook])

    def _hover_hook(self, plot: Any, element: Any) -> None:
        # The statistics (and so the tooltips) change with the data: keep the hover tool in step.
        tooltips = self._tooltips()
        hover = plot.handles.get("hover")
        if hover is not None and hover.tooltips != tooltips:
            hover.tooltips = tooltips

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            plot = shown_when(
                self.param.data.rx.is_not(None),
                pn.pane.HoloViews(self._plot(), sizing_mode="stretch_width", linked_axes=False),
            )
            placeholder = pn.pane.Markdown(
                "*No head summary: choose a document (this view shows the `head_summary` aggregation).*",
                visible=self.param.data.rx.is_(None),
            )
            controls = pn.Row(
                pn.widgets.Select.from_param(self.param.statistic, name="Colour by", width=220),
                pn.widgets.Select.from_param(self.param.cmap, name="Colour map", width=140),
                visible=self.param.data.rx.is_not(None),
            )
            self._layout = pn.Column(placeholder, controls, plot, sizing_mode="stretch_width")
        return self._layout
