"""Reductions over heads and/or layers: mean, max, min, median, population std, range.

Each keeps every other dim and all token coords; results are float32 (stored attention is float16:
sums accumulate in float32, max/min are exact) and dask arrays stay lazy. Reference: Clark et al. 2019, "What Does BERT
Look At? An Analysis of BERT's Attention" (per-head and averaged attention maps),
https://arxiv.org/abs/1906.04341.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, as_float, replace_dims

OVER = {"head": ("head",), "layer": ("layer",), "layer+head": ("layer", "head")}
CLARK = 'Clark et al. 2019, "What Does BERT Look At?", https://arxiv.org/abs/1906.04341'


class Reduction(Aggregation):
    """A statistic over heads, layers, or both (``over``)."""

    input_dims: ClassVar[tuple[str, ...]] = ("head",)
    reference = CLARK
    statistic: ClassVar[str] = ""

    over = param.Selector(default="head", objects=list(OVER), doc="Which dims to reduce.")

    __abstract = True

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return f"{self.statistic} attention over {self.over.replace('+', ' and ')}s"

    def needs(self) -> tuple[str, ...]:
        return OVER[self.over]

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=self.needs())

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        return self.reduce(array, list(self.needs()))

    def reduce(self, array: xr.DataArray, dims: list[str]) -> xr.DataArray:
        raise NotImplementedError


class Mean(Reduction):
    """Mean attention over heads and/or layers."""

    description = "Mean over heads and/or layers"
    statistic = "mean"

    def reduce(self, array, dims):
        # float32 accumulation without an upcast copy; NaN propagates (attention has none)
        return array.mean(dims, dtype=np.float32, skipna=False)


class Max(Reduction):
    """Maximum attention over heads and/or layers."""

    description = "Maximum over heads and/or layers"
    statistic = "maximum"

    def reduce(self, array, dims):
        return as_float(array.max(dims))  # exact in the stored precision


class Min(Reduction):
    """Minimum attention over heads and/or layers."""

    description = "Minimum over heads and/or layers"
    statistic = "minimum"

    def reduce(self, array, dims):
        return as_float(array.min(dims))


class Median(Reduction):
    """Median attention over heads and/or layers (mean of the two middle values for an even count)."""

    description = "Median over heads and/or layers"
    statistic = "median"

    def reduce(self, array, dims):
        if array.chunks is not None:  # dask's median needs the reduced dims in one chunk
            array = array.chunk({d: -1 for d in dims})
        return as_float(array).median(dims)


class Std(Reduction):
    """Population standard deviation (divides by the count, ddof=0) over heads and/or layers."""

    description = "Population standard deviation over heads and/or layers"
    statistic = "population standard deviation of"

    def reduce(self, array, dims):
        return as_float(array).std(dims, ddof=0)


class Range(Reduction):
    """Range (max − min) of attention over heads and/or layers: where heads disagree."""

    description = "Range (max − min) over heads and/or layers"
    statistic = "range of"

    def reduce(self, array, dims):
        return as_float(array.max(dims)) - as_float(array.min(dims))


__all__ = ["Max", "Mean", "Median", "Min", "Range", "Reduction", "Std"]
