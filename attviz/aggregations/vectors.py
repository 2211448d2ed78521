"""Per-token vectors from attention matrices: attention received, one query's row, the diagonal.

Each turns ``(..., query, key)`` into ``(..., token)``, keeping the other dims (layer, head) and
the token coords (``token_text``, ``token_start`` ...), so views treat every vector alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, as_float, attention_tensor, check_attention, replace_dims, to_token

if TYPE_CHECKING:
    import torch

VIG = (
    'Vig & Belinkov 2019, "Analyzing the Structure of Attention in a Transformer Language Model", '
    "https://arxiv.org/abs/1906.04284"
)
CLARK = 'Clark et al. 2019, "What Does BERT Look At?", https://arxiv.org/abs/1906.04341'
ATTVIZ = (
    'Škrlj et al. 2020, "AttViz: Online exploration of self-attention for transparent neural '
    'language modeling", https://arxiv.org/abs/2005.05716'
)


class AttentionReceived(Aggregation):
    """Attention each token receives: the mean over queries of its key column (Vig & Belinkov 2019).

    The mean (not the sum) keeps the vector a distribution over keys when rows sum to 1.
    """

    description = "Attention received by each token (mean over queries)"
    reference = VIG
    input_dims = ("query", "key")
    long_name = "attention received (mean over queries)"

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=("query",), rename={"key": "token"})

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        # accumulate in float32 without an upcast copy of the whole array
        return to_token(array.mean("query", dtype=np.float32, skipna=False), "key")

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        return attention_tensor(values).mean(dim=2)

    def apply_qk(self, qk: Any, layer: int, heads: Sequence[int]) -> np.ndarray:
        """Column means accumulated block by block of query rows (O(T·d) memory)."""
        return np.stack([qk.received(layer, h) for h in heads]) / np.float32(qk.shape[2])


class AttentionFrom(Aggregation):
    """The attention row of one query token, e.g. ``[CLS]`` (0) or the last token (-1).

    Reference: Clark et al. 2019 (attention from ``[CLS]``).
    """

    description = "Attention from one query token (e.g. [CLS] or the last token)"
    reference = CLARK
    input_dims = ("query", "key")
    long_name = "attention from one query token"

    query = param.Integer(
        default=0,
        softbounds=(-1, 127),
        step=1,
        doc="Query position; negative counts from the end (-1 is the last token).",
    )

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=("query",), rename={"key": "token"})

    def missing(self, array: xr.DataArray) -> str:
        n = array.sizes.get("query", 0)
        return "" if -n <= self.query < n else f"a query inside the text (query {self.query} of {n} tokens)"

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        self._check_query(array.sizes["query"])
        row = as_float(array.isel(query=self.query))
        return to_token(row.drop_vars([c for c in row.coords if c.startswith("query")]), "key")

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        values = check_attention(values)
        return values[:, :, self._check_query(values.shape[2])].to(torch.float32, copy=True)

    def apply_qk(self, qk: Any, layer: int, heads: Sequence[int]) -> np.ndarray:
        """One row a head: O(T·d)."""
        query = self._check_query(qk.shape[2])
        return np.stack([qk.rows(layer, h, query) for h in heads])

    def _check_query(self, n: int) -> int:
        if not -n <= self.query < n:
            raise IndexError(f"query {self.query} is out of range for {n} query tokens")
        return self.query


class Diagonal(Aggregation):
    """Self-attention of each token (the matrix diagonal): the quantity original AttViz exported.

    Needs query and key over the same tokens (self-attention, not cross-attention).
    Reference: Škrlj et al. 2020 (AttViz).
    """

    description = "Attention of each token to itself (the diagonal; AttViz's vectors)"
    reference = ATTVIZ
    input_dims = ("query", "key")
    long_name = "self-attention (diagonal)"

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=("key",), rename={"query": "token"})

    def missing(self, array: xr.DataArray) -> str:
        """A square matrix: cross-attention (decoder queries × encoder keys) has no diagonal."""
        if array.sizes.get("query") != array.sizes.get("key"):
            return "as many keys as queries (cross-attention has no diagonal)"
        return ""

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        n = self._check_square(array.sizes["query"], array.sizes["key"])
        index = xr.DataArray(np.arange(n), dims="query")
        diagonal = array.isel(key=index)  # pointwise: key i for query i
        return to_token(as_float(diagonal), "query")

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        values = check_attention(values)
        self._check_square(values.shape[2], values.shape[3])
        return torch.diagonal(values, dim1=2, dim2=3).to(torch.float32, copy=True)

    @staticmethod
    def _check_square(n_query: int, n_key: int) -> int:
        if n_key != n_query:
            raise ValueError(
                f"the diagonal needs as many keys as queries (got {n_query} queries, "
                f"{n_key} keys): is this cross-attention?"
            )
        return n_query
