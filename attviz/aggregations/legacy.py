"""The original AttViz per-token aggregates, for parity (Škrlj et al. 2020, AttViz).

At each token position, a statistic over the V values of all vectors (legacy AttViz data has dims
``("vector", "token")``; ``over`` may also name ``head`` or ``layer`` of modern token vectors):
elementwise mean, population std (divides by V), max, min, max − min, and AttViz's binned
"entropy", which is *not* the entropy of an attention distribution: the values are binned by
``floor(100·v)/100``, ``H = −Σ_b p_b ln p_b`` with ``p_b = count_b / V``, and H is divided by the
number of occupied bins. It is 0 when all values share one 0.01 bin and at most ln(V)/V, a measure of
how much the vectors disagree at a token. Computed in float64 like the original's JavaScript.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, replace_dims
from attviz.aggregations.vectors import ATTVIZ


def binned_entropy(values: np.ndarray) -> np.ndarray:
    """AttViz's "entropy" over the last axis (see the module docstring)."""
    bins = np.floor(100.0 * values)
    count = (bins[..., :, None] == bins[..., None, :]).sum(-1)  # size of each value's bin
    n = values.shape[-1]
    # Σ_b p_b ln p_b = Σ_i (1/V) ln(count_i / V); the number of bins is Σ_i 1 / count_i
    h = -(np.log(count / n)).sum(-1) / n
    return h / (1.0 / count).sum(-1)


class AttVizAggregate(Aggregation):
    """A per-token statistic over vectors, as the original AttViz computes it (Škrlj et al. 2020)."""

    reference = ATTVIZ
    input_dims: ClassVar[tuple[str, ...]] = ("vector", "token")
    statistic: ClassVar[str] = ""
    #: The dims the explorer offers this statistic over (``mean`` etc. already combine heads).
    offered_over: ClassVar[tuple[str, ...]] = ("vector",)

    over = param.Selector(
        default="vector", objects=["vector", "head", "layer"], doc="The dim whose values are aggregated."
    )

    __abstract = True

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return f"{self.statistic} (AttViz)"

    def needs(self) -> tuple[str, ...]:
        return (self.over, "token")

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=(self.over,))

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        return self.reduce(array.astype(np.float64), self.over)

    def reduce(self, array: xr.DataArray, dim: str) -> xr.DataArray:
        raise NotImplementedError


class AttVizMean(AttVizAggregate):
    """AttViz "Elementwise mean": the mean over vectors at each token."""

    description = "Elementwise mean over vectors (AttViz)"
    statistic = "elementwise mean"

    def reduce(self, array, dim):
        return array.mean(dim)


class AttVizStd(AttVizAggregate):
    """AttViz "Elementwise std": the population standard deviation (divides by V)."""

    description = "Elementwise population std over vectors (AttViz)"
    statistic = "elementwise std"

    def reduce(self, array, dim):
        return array.std(dim, ddof=0)


class AttVizMax(AttVizAggregate):
    """AttViz "Elementwise max"."""

    description = "Elementwise max over vectors (AttViz)"
    statistic = "elementwise max"

    def reduce(self, array, dim):
        return array.max(dim)


class AttVizMin(AttVizAggregate):
    """AttViz "Elementwise min"."""

    description = "Elementwise min over vectors (AttViz)"
    statistic = "elementwise min"

    def reduce(self, array, dim):
        return array.min(dim)


class AttVizMaxMin(AttVizAggregate):
    """AttViz "Elementwise max-min": the range over vectors."""

    description = "Elementwise max − min over vectors (AttViz)"
    statistic = "elementwise max-min"

    def reduce(self, array, dim):
        return array.max(dim) - array.min(dim)


class AttVizEntropy(AttVizAggregate):
    """AttViz's binned "Entropy" (the AttViz variant, not a distribution's entropy; see module)."""

    description = "AttViz's binned 'entropy' of the values over vectors (AttViz variant)"
    statistic = "binned entropy"
    offered_over = ("vector", "head")  # head disagreement: no built-in reduction over heads says it
    units = "nat"

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return "binned entropy (AttViz variant)"

    def reduce(self, array, dim):
        return xr.apply_ufunc(binned_entropy, array, input_core_dims=[[dim]], dask="allowed")
