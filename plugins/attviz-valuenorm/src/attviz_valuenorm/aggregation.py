"""The ``value_norm`` aggregation: norm-based attention ||α_ij f(x_j)|| (Kobayashi et al. 2020)."""

from __future__ import annotations

from typing import Any

import param
import xarray as xr

from attviz.aggregations.base import ATTENTION_DIMS, Aggregation, as_float
from attviz_valuenorm.hooks import REFERENCE, with_value_norms


class ValueNorm(Aggregation):
    """Attention weighted by the norm of the transformed value vector: ||α_ij f(x_j)|| = α_ij ||f(x_j)||.

    Reference: Kobayashi et al. 2020 (EMNLP), https://arxiv.org/abs/2004.10102. The norms
    ||f(x_j)|| per (layer, head, key) depend on the model, not only on the attention, so they come
    with the data: either the ``norms`` parameter (from :func:`attviz_valuenorm.value_norms`) or,
    by default, the input's ``value_norm`` coordinate (the attention of a document extracted with
    the ``value_norm`` capture, or from :func:`attviz_valuenorm.attention_with_value_norms` or
    :func:`attviz_valuenorm.with_value_norms`), which travels through selections so the aggregation
    stays a pure function of its input.

    >>> attention = attviz.extract(["The cat sat on the mat."], captures=["value_norm"])[0].attention
    >>> weighted = attviz.aggregations.get("value_norm")(attention)
    """

    description = "Attention weighted by the value-vector norm ||αf(x)|| (Kobayashi et al. 2020)"
    reference = REFERENCE
    input_dims = ATTENTION_DIMS
    long_name = "norm-weighted attention ||αf(x)||"
    units = "hidden-state norm"

    norms = param.ClassSelector(
        class_=xr.DataArray,
        default=None,
        allow_None=True,
        doc="||f(x)|| with dims (layer, head, key) from value_norms(); None: the input's value_norm coordinate.",
    )
    normalize = param.Boolean(
        default=False, doc="Divide each query row by its sum, so rows sum to 1 and compare with attention α."
    )

    def params(self) -> dict[str, Any]:
        """The configuration without ``norms`` (data, not a setting; the spec stays JSON)."""
        return {k: v for k, v in super().params().items() if k != "norms"}

    def missing(self, array: xr.DataArray) -> str:
        """The value norms, when neither ``norms`` nor the ``value_norm`` coordinate gives them."""
        if self.norms is None and "value_norm" not in array.coords:
            return "the value-vector norms (extract with --capture value_norm)"
        return ""

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        if self.norms is not None:
            array = with_value_norms(array, self.norms)
        elif "value_norm" not in array.coords:
            raise ValueError(
                "value_norm needs the value-vector norms: give it the attention of a document extracted with "
                "the value_norm capture (attviz extract --capture value_norm), or attention_with_value_norms("
                "model, tokenizer, text), or pass norms=value_norms(model, tokenizer, text)"
            )
        norms = array.coords["value_norm"].variable
        weighted = (as_float(array) * norms).drop_vars("value_norm")
        if self.normalize:
            total = weighted.sum("key")
            weighted = weighted / total.where(total > 0, 1)
        return weighted.transpose(*array.dims)

    def label(self, result: xr.DataArray, source: xr.DataArray) -> xr.DataArray:
        result = super().label(result, source)
        if self.normalize:
            result.attrs["units"] = "1"
        return result
