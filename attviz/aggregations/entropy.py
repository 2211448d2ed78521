"""Entropy of each query's attention distribution, and its mean per head (Clark et al. 2019).

``H(q) = −Σ_k p(q, k) ln p(q, k)`` in nats, with ``0 ln 0 = 0``, after re-normalising each row to
sum to 1 (rows of stored float16 attention, or rows with special tokens dropped, may not). The
normalised form divides by the largest possible value: ``ln K`` for K keys, or ``ln(q + 1)`` for
query position q with ``causal=True`` (a decoder's query q sees q + 1 keys; the first row is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, attention_tensor, replace_dims, to_token
from attviz.aggregations.reductions import CLARK

if TYPE_CHECKING:
    import torch


def entropy_kernel(a: np.ndarray) -> np.ndarray:
    """Entropy (nats) over the last axis of non-negative weights, rows re-normalised; float32."""
    p = np.asarray(a, dtype=np.float32)
    total = p.sum(-1, keepdims=True)
    p = p / np.where(total > 0, total, 1)
    # 0 ln 0 = 0: where p == 0 take ln 1 = 0
    return -np.einsum("...k,...k->...", p, np.log(np.where(p > 0, p, 1)))


def entropy_torch(p: torch.Tensor) -> torch.Tensor:
    """:func:`entropy_kernel` for a float32 tensor, on its device."""
    import torch

    total = p.sum(-1, keepdim=True)
    p = p / torch.where(total > 0, total, 1.0)
    # 0 ln 0 = 0: where p == 0 take ln 1 = 0 (in place: one full-size temporary fewer)
    return -torch.where(p > 0, p, 1.0).log_().mul_(p).sum(-1)


def row_entropy_torch(values: torch.Tensor, normalised: bool = False, causal: bool = False) -> torch.Tensor:
    """:func:`row_entropy` of a ``(layer, head, query, key)`` tensor: ``(layer, head, query)`` float32."""
    import torch

    h = entropy_torch(attention_tensor(values))
    if normalised:
        n_query, n_key = values.shape[-2:]
        if causal:
            count = torch.arange(1, n_query + 1, device=h.device, dtype=torch.float32)
        else:
            count = torch.tensor(float(n_key), device=h.device, dtype=torch.float32)
        largest = count.log()
        h = torch.where(largest > 0, h / torch.where(largest > 0, largest, 1.0), 0.0)
    return h


def row_entropy(array: xr.DataArray, normalised: bool = False, causal: bool = False) -> xr.DataArray:
    """Entropy over ``key`` of each row of ``array``, optionally divided by its maximum."""
    h = xr.apply_ufunc(
        entropy_kernel,
        array,
        input_core_dims=[["key"]],
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    if normalised:
        if causal:
            count = xr.DataArray(np.arange(1, array.sizes["query"] + 1), dims="query")
        else:
            count = xr.DataArray(array.sizes["key"])
        largest = np.log(count.astype(np.float32))
        h = xr.where(largest > 0, h / xr.where(largest > 0, largest, 1.0), 0.0)
    return h


class Entropy(Aggregation):
    """Entropy of each query token's attention distribution (in nats, or normalised to [0, 1]).

    Low entropy: a focused head; high: broad attention. Reference: Clark et al. 2019, §3.
    """

    description = "Entropy of each query's attention distribution"
    reference = CLARK
    input_dims = ("query", "key")

    normalised = param.Boolean(default=False, doc="Divide by the largest possible entropy (0..1).")
    causal = param.Boolean(default=False, doc="Largest entropy of query q is ln(q+1) (decoders).")

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return "normalised attention entropy" if self.normalised else "attention entropy"

    @property
    def units(self) -> str:  # type: ignore[override]
        return "1" if self.normalised else "nat"

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=("key",), rename={"query": "token"})

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        h = row_entropy(array, self.normalised, self.causal)
        return to_token(h.transpose(*(d for d in array.dims if d != "key")), "query")

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        return row_entropy_torch(values, self.normalised, self.causal)

    def apply_qk(self, qk: Any, layer: int, heads: Sequence[int]) -> np.ndarray:
        """Each query's row entropy from queries and keys, one block of rows at a time (O(block) memory)."""
        n_query, n_key = qk.shape[2:]
        step = qk.row_blocks()
        out = np.empty((len(heads), n_query), dtype=np.float32)
        for i, head in enumerate(heads):
            for start in range(0, n_query, step):
                rows = slice(start, min(n_query, start + step))
                out[i, rows] = entropy_kernel(qk.rows(layer, head, rows))
        if self.normalised:
            count = np.arange(1, n_query + 1, dtype=np.float32) if self.causal else np.float32(n_key)
            largest = np.log(count)
            out = np.where(largest > 0, out / np.where(largest > 0, largest, 1.0), 0.0).astype(np.float32)
        return out


class HeadEntropy(Entropy):
    """Mean attention entropy of each head over its query tokens (Clark et al. 2019, Fig. 4)."""

    description = "Mean attention entropy per head"

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return "mean " + super().long_name

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=("query", "key"))

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        return row_entropy(array, self.normalised, self.causal).mean("query")

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        # xarray's mean skips NaN rows (skipna defaults to True for floats): nanmean
        return torch.nanmean(row_entropy_torch(values, self.normalised, self.causal), dim=-1)
