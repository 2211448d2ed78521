"""The ``value_norm_bars`` view: attention α vs norm-weighted ||αf(x)|| for one query token."""

from __future__ import annotations

from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from attviz.views.base import View

MEASURES = {"alpha": "attention α", "weighted": "||αf(x)||"}


class ValueNormBars(View):
    """Per key token, the share of attention α and of the norm-weighted ||α f(x)|| from one query.

    Reference: Kobayashi et al. 2020, https://arxiv.org/abs/2004.10102 (their Fig. 1 contrast:
    tokens with large α but small ||f(x)||, such as [CLS] and [SEP], contribute little). ``data`` is
    one head's (query, key) matrix carrying the ``value_norm`` coordinate (dim key), e.g.
    ``attention_with_value_norms(...).sel(layer=2, head=0)``; both rows are normalised to sum 1.
    The x axis is the key position (so repeated tokens stay apart), labelled with the token text.
    """

    description = "Attention α vs norm-weighted ||αf(x)|| per key token (Kobayashi et al. 2020)"
    requires = ("matrix",)

    norms = param.ClassSelector(
        class_=xr.DataArray, default=None, allow_None=True, doc="||f(x)|| per key (dim key); None: data's value_norm."
    )

    @classmethod
    def can_show(cls, data: Any) -> bool:
        """A (query, key) matrix with a ``value_norm`` coordinate along ``key``."""
        return super().can_show(data) and "value_norm" in data.coords and data.coords["value_norm"].dims == ("key",)

    def frame(self) -> pd.DataFrame:
        """``position``, ``token``, ``alpha`` and ``weighted`` (each summing to 1) of the selected query."""
        if self.data is None:
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
        if self.data is None:
            query = "no data: needs a matrix with value norms (attviz_valuenorm.attention_with_value_norms)"
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
        return pn.pane.HoloViews(hv.DynamicMap(self.plot), sizing_mode="stretch_width")


def _share(values: np.ndarray) -> np.ndarray:
    total = values.sum()
    return values / total if total > 0 else values
