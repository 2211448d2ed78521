"""The ``value_norm_bars`` view: attention α vs norm-weighted ||αf(x)|| for one query token."""

from __future__ import annotations

from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from attviz.views.base import View, fits

MEASURES = {"alpha": "attention α", "weighted": "||αf(x)||"}
CAPTURE = "capture_value_norm"  # the document array the value_norm capture fills
HOW_TO_RECORD = (
    "Value norms are recorded from the model when a document is extracted: `attviz extract --capture "
    "value_norm` or `attviz.extract(..., captures=['value_norm'])`, and automatically for the explorer's "
    "live input. Only BERT-family models (BERT, RoBERTa, ELECTRA, MiniLM, ...) are supported."
)


class ValueNormBars(View):
    """Per key token, the share of attention α and of the norm-weighted ||α f(x)|| from one query.

    Reference: Kobayashi et al. 2020, https://arxiv.org/abs/2004.10102 (their Fig. 1 contrast:
    tokens with large α but small ||f(x)||, such as [CLS] and [SEP], contribute little). ``data`` is
    one head's (query, key) matrix carrying the ``value_norm`` coordinate (dim key), e.g.
    ``doc.attention.isel(layer=2, head=0)`` of a document extracted with the ``value_norm`` capture,
    or ``attention_with_value_norms(...).sel(layer=2, head=0)``; both rows are normalised to sum 1.
    The x axis is the key position (so repeated tokens stay apart), labelled with the token text.

    Given the document instead (the explorer does that when its matrix has no value norms), the
    view says what is missing: "selected head" (norms are per head, a mean over heads has none) or
    a document extracted with the capture.
    """

    description = "Attention α vs norm-weighted ||αf(x)|| per key token (Kobayashi et al. 2020)"
    requires = ("matrix", "document")

    norms = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, doc="||f(x)|| per key (dim key); None: data's value_norm."
    )

    @classmethod
    def can_show(cls, data: Any) -> bool:
        """A (query, key) matrix with a ``value_norm`` coordinate along ``key``; or a document, to say
        what it lacks (see :meth:`message`)."""
        if fits("matrix", data):
            return "value_norm" in data.coords and data.coords["value_norm"].dims == ("key",)
        return fits("document", data)

    def _matrix(self) -> xr.DataArray | None:
        return self.data if isinstance(self.data, xr.DataArray) else None

    def message(self) -> str:
        """Why there are no bars ("" when there are)."""
        data = self.data
        if isinstance(data, xr.DataArray) and (self.norms is not None or type(self).can_show(data)):
            return ""
        if data is None:
            return "No document: open one, or give a (query, key) matrix with value norms."
        if isinstance(data, xr.DataArray):
            return (
                "This matrix has no value norms along its keys: give one head's (query, key) matrix of "
                "attention that carries the value_norm coordinate. " + HOW_TO_RECORD
            )
        has_norms = CAPTURE in getattr(data, "kinds", ()) or any(
            "value_norm" in data.get(kind).coords for kind in ("self", "encoder") if kind in data.kinds
        )
        if has_norms:
            return (
                "Value norms are per head: choose **selected head** under *Combine heads* (a combination "
                "of heads has none), and a transform that keeps every token (none or drop special tokens)."
            )
        return f"Document {data.id!r} has no value norms. " + HOW_TO_RECORD

    def frame(self) -> pd.DataFrame:
        """``position``, ``token``, ``alpha`` and ``weighted`` (each summing to 1) of the selected query."""
        if self._matrix() is None or self.message():
            return pd.DataFrame({"position": [], "token": [], "alpha": [], "weighted": []})
        data = self.data.transpose("query", "key")
        row = data.isel(query=0) if self.selected_token is None else data.sel(query=self.selected_token)
        norms = self.norms if self.norms is not None else row.coords.get("value_norm")
        if norms is None:
            raise ValueError("value_norm_bars needs value norms: the data's value_norm coord or the norms param")
        alpha = np.asarray(row.values, dtype=np.float64)
        weighted = alpha * np.asarray(norms.values, dtype=np.float64)
        texts = row.coords["key_text"].values if "key_text" in row.coords else row["key"].values.astype(str)
        return pd.DataFrame(
            {
                "position": np.asarray(row["key"].values, dtype=int),
                "token": [str(t) for t in texts],
                "alpha": _share(alpha),
                "weighted": _share(weighted),
            }
        )

    @param.depends("data", "selected_token", "norms")
    def plot(self) -> hv.Overlay:
        """α (wide, light) and ||αf(x)|| (narrow) bars over the key positions."""
        frame = self.frame()
        bars = [
            hv.Bars(frame, "position", [(column, "share of the row"), "token"], label=label).opts(
                bar_width=width, alpha=alpha
            )
            for (column, label), width, alpha in zip(MEASURES.items(), (0.8, 0.4), (0.35, 0.9), strict=True)
        ]
        if frame.empty:
            query = "no query: no value norms (see the note above)"
        else:
            query = "first query" if self.selected_token is None else f"query {self.selected_token}"
        return hv.Overlay(bars).opts(
            hv.opts.Bars(
                xticks=list(zip(frame["position"], frame["token"], strict=True)) or None,
                xrotation=60,
                tools=["hover"],
                responsive=True,
                height=300,
            ),
            hv.opts.Overlay(title=f"α vs ||αf(x)|| from {query}", legend_position="top_right"),
        )

    def __panel__(self) -> pn.viewable.Viewable:
        # One Alert updated in place (a param.depends method would build new panes on every change,
        # outside the served document, whose stylesheets then point at Panel's CDN).
        message = pn.bind(lambda _data, _norms: self.message(), self.param.data, self.param.norms)
        notice = pn.pane.Alert(message, alert_type="info", visible=pn.bind(bool, message), sizing_mode="stretch_width")
        return pn.Column(
            notice,
            pn.pane.HoloViews(hv.DynamicMap(self.plot), sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )


def _share(values: np.ndarray) -> np.ndarray:
    total = values.sum()
    return values / total if total > 0 else values
