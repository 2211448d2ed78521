"""Compare two attention matrices: two documents, or one text under two corpora/models.

Side by side on a shared colour range and, when both have the same tokens on both axes, their
difference (diverging colours symmetric around 0) with two summary numbers: the largest absolute
difference and the mean per-row Jensen–Shannon divergence (Lin 1991, "Divergence measures based
on the Shannon entropy", https://doi.org/10.1109/18.61115), in bits.
"""

from __future__ import annotations

import html
from typing import Any

import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr

from attviz.views.base import View
from attviz.views.common import TITLE_DOC, AxisLabels, describe
from attviz.views.matrix import (
    COLORMAPS,
    empty_image,
    matrix_image,
    matrix_plot,
    matrix_values,
    value_dimension,
    value_range,
)

PLOT_HEIGHT = 420  # pixels, each of the three plots
HINT = (
    "Nothing to compare with yet: choose a second document, or the same text under another corpus or "
    "model, as the comparison in the explorer; its matrix (same layer, head and aggregation) appears here."
)


def same_tokens(a: xr.DataArray, b: xr.DataArray) -> bool:
    """Whether two ``(query, key)`` matrices have the same token texts on both axes."""
    for dim in ("query", "key"):
        if a.sizes[dim] != b.sizes[dim]:
            return False
        text_a, text_b = a.coords.get(f"{dim}_text"), b.coords.get(f"{dim}_text")
        if (text_a is None) != (text_b is None):
            return False
        if text_a is not None and [str(t) for t in text_a.values] != [str(t) for t in text_b.values]:
            return False
    return True


def row_js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence (log base 2, in bits, between 0 and 1) of each row pair of ``p`` and ``q``.

    Rows are normalised to sum 1 first; a row pair where either sums to 0 gives NaN.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p_sum, q_sum = p.sum(-1, keepdims=True), q.sum(-1, keepdims=True)
    valid = (p_sum[..., 0] > 0) & (q_sum[..., 0] > 0)
    p = p / np.where(p_sum > 0, p_sum, 1)
    q = q / np.where(q_sum > 0, q_sum, 1)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        ratio = np.where(a > 0, a / np.where(m > 0, m, 1), 1)
        return np.sum(a * np.log2(ratio), axis=-1)

    return np.where(valid, 0.5 * kl(p) + 0.5 * kl(q), np.nan)


def compare_summary(a: xr.DataArray | np.ndarray, b: xr.DataArray | np.ndarray) -> dict[str, float]:
    """``max_abs_difference`` and ``mean_js_divergence_bits`` (mean over query rows) of two matrices."""
    values_a, values_b = (matrix_values(m) if isinstance(m, xr.DataArray) else np.asarray(m) for m in (a, b))
    divergence = row_js_divergence(values_a, values_b)
    finite = divergence[np.isfinite(divergence)]
    return {
        "max_abs_difference": float(np.nanmax(np.abs(values_a - values_b))) if values_a.size else 0.0,
        "mean_js_divergence_bits": float(finite.mean()) if finite.size else float("nan"),
    }


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


class CompareView(View):
    """Two ``(query, key)`` matrices side by side and, with the same tokens, their difference."""

    description = "Compare two documents or corpora: matrices side by side and their difference"
    requires = ("matrix",)

    other = param.Parameter(default=None, doc="The second (query, key) matrix (same layer/head/aggregation), or None.")
    label = param.String(default="this", allow_None=True, doc="Short label of the current document/corpus.")
    other_label = param.String(default="other", allow_None=True, doc="Short label of the second document/corpus.")
    cmap = param.Selector(default="Blues", objects=COLORMAPS, doc="Colour map of the two matrices.")
    max_labels = param.Integer(
        default=80, bounds=(0, 400), doc="Label every token on the axes up to this many tokens (else positions)."
    )
    rasterize_above = param.Integer(
        default=256, bounds=(16, 8192), doc="Rasterise (max per pixel) matrices with more tokens than this."
    )
    title = param.String(default="", doc=TITLE_DOC)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._layout: pn.viewable.Viewable | None = None
        self._ranges = {side: hv.streams.RangeXY() for side in ("data", "other", "difference")}
        self._labels: dict[str, AxisLabels] = {}
        self._columns: dict[str, pn.Column] = {}
        self._values: dict[str, np.ndarray] = {}
        self._comparable = False
        self._range = (0.0, 1.0)
        self._update_inputs()

    # -- state ---------------------------------------------------------------------------------
    def _matrix(self, side: str) -> xr.DataArray | None:
        value = getattr(self, side)
        return value if isinstance(value, xr.DataArray) and self.can_show(value) else None

    def comparable(self) -> bool:
        """Whether both matrices are there with the same tokens (so a difference is shown)."""
        a, b = self._matrix("data"), self._matrix("other")
        return a is not None and b is not None and same_tokens(a, b)

    @param.depends("data", "other", watch=True)
    def _update_inputs(self) -> None:
        for stream in self._ranges.values():
            stream.reset()  # show new matrices in full
        for side in ("data", "other"):
            self._labels[side] = AxisLabels.of(self._matrix(side))
        self._labels["difference"] = self._labels["data"]
        self._values = {side: matrix_values(m) for side in ("data", "other") if (m := self._matrix(side)) is not None}
        self._comparable = self.comparable()
        shown = [v.ravel() for v in self._values.values()]
        self._range = value_range(np.concatenate(shown)) if shown else (0.0, 1.0)  # one colour range for both

    def message(self) -> str:
        """What the view says above the plots (HTML; every label and token escaped)."""
        a, b = self._matrix("data"), self._matrix("other")
        names = self._names()
        label, other = _escape(names["data"]), _escape(names["other"])
        if a is None:
            return "<p><em>No matrix to compare: choose a document first.</em></p>"
        if b is None:
            return f"<p><em>{_escape(HINT)}</em></p>"
        if not self._comparable:
            shape_a = f"{a.sizes['query']}×{a.sizes['key']}"
            shape_b = f"{b.sizes['query']}×{b.sizes['key']}"
            return (
                f"<p><b>{label}</b> ({shape_a} tokens) and <b>{other}</b> ({shape_b} tokens) do not have the "
                "same tokens, so no difference can be computed: they are shown side by side only.</p>"
            )
        summary = compare_summary(self._values["data"], self._values["other"])
        return (
            f"<p>Difference = <b>{label}</b> − <b>{other}</b> (red: more attention in {label}). "
            f"Largest |difference|: <b>{summary['max_abs_difference']:.4f}</b>; mean Jensen–Shannon divergence "
            f"of the query rows: <b>{summary['mean_js_divergence_bits']:.4f} bits</b> (log base 2: 0 = the same "
            "distribution, 1 = no overlap).</p>"
        )

    # -- elements ------------------------------------------------------------------------------
    def _image(self, side: str) -> hv.Image:
        matrix = self._matrix(side)
        vdim = value_dimension(matrix)
        if matrix is None:
            return empty_image(vdim)
        return matrix_image(self._values[side], vdim, self._range)

    def _difference(self) -> hv.Image:
        vdim = hv.Dimension("difference")  # labels stay out of Bokeh text (it would parse $$…$$ as TeX)
        if not self._comparable:
            return empty_image(vdim)
        values = self._values["data"] - self._values["other"]
        finite = np.abs(values[np.isfinite(values)])
        bound = float(finite.max()) if finite.size and finite.max() > 0 else 1e-6
        return matrix_image(values, vdim, (-bound, bound))

    def _figure(self, side: str, callback: Any, cmap: Any) -> pn.pane.HoloViews:
        names = {"label": self.param.label, "other_label": self.param.other_label, "title": self.param.title}
        images = hv.DynamicMap(pn.bind(callback, data=self.param.data, other=self.param.other, **names))
        plot = matrix_plot(
            images,
            labels=lambda: self._labels[side],
            max_labels=lambda: self.max_labels,
            threshold=self.param.rasterize_above,
            range_xy=self._ranges[side],
            title=lambda: self.plot_title(side),
            cmap=cmap,
            height=PLOT_HEIGHT,
        )
        return pn.pane.HoloViews(plot, sizing_mode="stretch_width", linked_axes=False)

    def plot_title(self, side: str) -> str:
        """The title of one plot (``"data"``, ``"other"`` or ``"difference"``): its label and what is shown."""
        shown = self.title or describe(self._matrix("data") if side == "difference" else self._matrix(side))
        return f"{self._names()[side]} · {shown}" if shown else self._names()[side]

    def _names(self) -> dict[str, str]:
        label, other = self.label or "this", self.other_label or "other"
        return {"data": label, "other": other, "difference": f"{label} − {other}"}

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            inputs = (self.param.data, self.param.other, self.param.label, self.param.other_label)
            message = pn.pane.HTML(pn.bind(lambda *_: self.message(), *inputs), sizing_mode="stretch_width")
            visible = {
                "data": self.param.data.rx.is_not(None),
                "other": self.param.other.rx.is_not(None),
                "difference": pn.bind(lambda *_: self._comparable, self.param.data, self.param.other),
            }
            images = {
                "data": lambda **_: self._image("data"),
                "other": lambda **_: self._image("other"),
                "difference": lambda **_: self._difference(),
            }
            self._columns = {}
            for side, callback in images.items():
                header = pn.pane.HTML(
                    pn.bind(lambda *_, side=side: f"<b>{_escape(self._names()[side])}</b>", *inputs[2:]),
                    margin=(0, 10),
                )
                cmap = "RdBu_r" if side == "difference" else self.param.cmap
                figure = self._figure(side, callback, cmap)
                self._columns[side] = pn.Column(header, figure, sizing_mode="stretch_width", visible=visible[side])
            row = pn.Row(*self._columns.values(), sizing_mode="stretch_width")
            self._layout = pn.Column(message, row, sizing_mode="stretch_width")
        return self._layout
