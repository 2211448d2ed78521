"""Head-level summaries of one document: the numbers a model view needs to find interesting heads.

Per (layer, head), each averaged over the query tokens (Clark et al. 2019, §3–4; Vig & Belinkov
2019 for attention distance):

- ``entropy``: mean entropy of the query rows (nats; rows re-normalised first);
- ``distance``: mean over queries of Σ_k a(q, k)·|q − k|, the attention-weighted distance in token
  positions (the ``query``/``key`` coords, so dropped tokens leave gaps);
- ``special``: share of attention on special tokens ([CLS], [SEP], BOS: the ``key_special`` coord);
- ``previous`` / ``next`` / ``self``: mean weight on the token just before / after / itself
  (neighbours in the array; queries without one are left out of the mean).

Shares and distance use the weights as given (after ``drop_special`` without re-normalising, a row
sums to less than 1). ``previous``/``next``/``self`` need self-attention (as many queries as keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, attention_tensor, replace_dims, special_tensor
from attviz.aggregations.entropy import entropy_torch
from attviz.aggregations.reductions import CLARK

if TYPE_CHECKING:
    import torch

STATISTICS = {  # name: (long name, units)
    "entropy": ("mean attention entropy", "nat"),
    "distance": ("mean attention distance", "token"),
    "special": ("share of attention on special tokens", "1"),
    "previous": ("share of attention on the previous token", "1"),
    "next": ("share of attention on the next token", "1"),
    "self": ("share of attention on the token itself", "1"),
}


def head_statistics(a: np.ndarray, qpos: np.ndarray, kpos: np.ndarray, special: np.ndarray) -> dict:
    """Each statistic of :data:`STATISTICS` for ``a`` of shape ``(..., query, key)``, float32."""
    out: dict[str, np.ndarray] = {}
    total = a.sum(-1, keepdims=True)
    p = a / np.where(total > 0, total, 1)
    logp = np.log(np.where(p > 0, p, 1))
    out["entropy"] = -np.einsum("...qk,...qk->...q", p, logp).mean(-1)
    distance = np.abs(qpos[:, None] - kpos[None, :]).astype(a.dtype)
    out["distance"] = np.einsum("...qk,qk->...q", a, distance).mean(-1)
    out["special"] = (a @ special.astype(a.dtype)).mean(-1)
    square = a.shape[-1] == a.shape[-2]
    for name, offset in (("previous", -1), ("next", 1), ("self", 0)):
        if square and a.shape[-1] > abs(offset):
            out[name] = np.diagonal(a, offset=offset, axis1=-2, axis2=-1).mean(-1)
        else:
            out[name] = np.full(a.shape[:-2], np.nan, dtype=a.dtype)
    return out


def head_statistics_torch(a: torch.Tensor, special: torch.Tensor, names: Sequence[str] = tuple(STATISTICS)) -> dict:
    """:func:`head_statistics` of the statistics ``names`` for a float32 ``(..., query, key)`` tensor
    with positions ``0..n-1`` and a ``(key,)`` bool ``special`` mask; on the tensor's device."""
    import torch

    out: dict[str, torch.Tensor] = {}
    n_query, n_key = a.shape[-2:]
    if "entropy" in names:
        out["entropy"] = entropy_torch(a).mean(-1)
    if "distance" in names:
        qpos = torch.arange(n_query, device=a.device)
        kpos = torch.arange(n_key, device=a.device)
        distance = (qpos[:, None] - kpos[None, :]).abs().to(a.dtype)
        # elementwise, not a matmul: float32 accumulation even where TF32 matmuls are allowed
        out["distance"] = (a * distance).sum(-1).mean(-1)
    if "special" in names:
        out["special"] = (a * special.to(a.dtype)).sum(-1).mean(-1)
    square = n_query == n_key
    for name, offset in (("previous", -1), ("next", 1), ("self", 0)):
        if name not in names:
            continue
        if square and n_key > abs(offset):
            out[name] = torch.diagonal(a, offset=offset, dim1=-2, dim2=-1).mean(-1)
        else:
            out[name] = torch.full(a.shape[:-2], float("nan"), dtype=a.dtype, device=a.device)
    return out


class HeadSummary(Aggregation):
    """Per-head summary statistics of one document's attention (Clark et al. 2019).

    Output ``(layer, head, statistic)`` with a ``statistic_units`` coord, or ``(layer, head)`` for
    one chosen ``statistic``.
    """

    description = "Per-head entropy, attention distance, share on special/previous/next/self tokens"
    reference = CLARK
    input_dims = ("query", "key")

    statistic = param.Selector(
        default="all", objects=["all", *STATISTICS], doc="One statistic, or all along 'statistic'."
    )

    @property
    def long_name(self) -> str:  # type: ignore[override]
        return STATISTICS[self.statistic][0] if self.statistic in STATISTICS else "head summary"

    @property
    def units(self) -> str:  # type: ignore[override]
        return STATISTICS[self.statistic][1] if self.statistic in STATISTICS else "mixed"

    def output_dims(self, input_dims):
        dims = replace_dims(input_dims, drop=("query", "key"))
        return dims if self.statistic in STATISTICS else (*dims, "statistic")

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        array = array.transpose(..., "query", "key")
        special = array.coords.get("key_special")
        special = np.zeros(array.sizes["key"], bool) if special is None else special.values
        stats = head_statistics(
            np.asarray(array.data, dtype=np.float32),
            np.asarray(array["query"].values, dtype=np.int64),
            np.asarray(array["key"].values, dtype=np.int64),
            np.asarray(special, dtype=bool),
        )
        lead = array.isel(query=0, key=0, drop=True)
        lead = lead.drop_vars([c for c in lead.coords if c.startswith(("query", "key"))])
        if self.statistic in STATISTICS:
            return xr.DataArray(stats[self.statistic], dims=lead.dims, coords=lead.coords)
        names = list(STATISTICS)
        return xr.DataArray(
            np.stack([stats[n] for n in names], axis=-1),
            dims=(*lead.dims, "statistic"),
            coords={
                **lead.coords,
                "statistic": np.asarray(names, dtype=object),
                "statistic_units": ("statistic", np.asarray([STATISTICS[n][1] for n in names], dtype=object)),
            },
        )

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        a = attention_tensor(values)
        names = [self.statistic] if self.statistic in STATISTICS else list(STATISTICS)
        stats = head_statistics_torch(a, special_tensor(special, a), names)
        return stats[names[0]] if self.statistic in STATISTICS else torch.stack([stats[n] for n in names], dim=-1)
