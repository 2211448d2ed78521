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

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, check_attention, replace_dims, special_tensor
from attviz.aggregations.entropy import entropy_torch
from attviz.aggregations.reductions import CLARK
from attviz.quantize import as_float32

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


NEIGHBOURS = (("previous", -1), ("next", 1), ("self", 0))  # name: key offset from the query
BLOCK = 1 << 17  # values per block of query rows (512 KB in float32, in cache): each temporary is about one block
TORCH_BLOCK = 1 << 26  # values per block on a device (256 MB in float32)
WORKERS = min(4, os.cpu_count() or 1)  # threads over blocks of query rows (numpy releases the GIL)


def head_statistics(
    a: Any,
    qpos: np.ndarray,
    kpos: np.ndarray,
    special: np.ndarray,
    *,
    block: int = BLOCK,
    workers: int | None = None,
) -> dict[str, np.ndarray]:
    """Each statistic of :data:`STATISTICS` for ``a`` of shape ``(..., query, key)``, in float32.

    ``a`` may be float16 (as stored) or float32, a numpy array (used in place, never copied whole) or
    a dask array (read one chunk of its leading axes at a time, e.g. one layer of a store). Each
    matrix is taken ``block`` values of query rows at a time, converted to float32, so temporaries
    stay a few blocks per worker thread whatever the document's length (``workers``: default
    :data:`WORKERS`). The per-row values, and so the results, are those of the whole-array formulas
    bit for bit: a row's statistic depends on that row alone, and the mean over queries is taken once
    over all rows.
    """
    shape = tuple(a.shape)
    lead, (n_query, n_key) = shape[:-2], shape[-2:]
    rows = {name: np.empty((*lead, n_query), np.float32) for name in ("entropy", "distance", "special")}
    square = n_query == n_key
    diagonals = {
        name: np.empty((*lead, n_query - abs(offset)), np.float32)
        for name, offset in NEIGHBOURS
        if square and n_key > abs(offset)
    }
    weights = np.asarray(special, dtype=np.float32)
    qpos, kpos = np.asarray(qpos, dtype=np.int64), np.asarray(kpos, dtype=np.int64)
    step = max(1, block // max(n_key, 1))
    workers = max(1, min(workers or WORKERS, -(-n_query // step)))
    with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        for region in _regions(a):
            piece = np.asarray(a[region])
            out = {name: values[region] for name, values in {**rows, **diagonals}.items()}

            def run(start: int, piece: np.ndarray = piece, out: dict = out) -> None:
                _block_rows(piece, out, start, min(start + step, n_query), qpos, kpos, weights)

            starts = range(0, n_query, step)
            list(pool.map(run, starts) if pool is not None else map(run, starts))  # list: raise what failed
    stats = {name: rows[name].mean(-1) for name in ("entropy", "distance", "special")}
    for name, _ in NEIGHBOURS:
        stats[name] = diagonals[name].mean(-1) if name in diagonals else np.full(lead, np.nan, dtype=np.float32)
    return stats


def _block_rows(
    piece: np.ndarray,
    out: dict[str, np.ndarray],
    start: int,
    stop: int,
    qpos: np.ndarray,
    kpos: np.ndarray,
    weights: np.ndarray,
) -> None:
    """The per-row statistics of query rows ``start:stop`` of every matrix of ``piece`` into ``out``."""
    distance = np.abs(qpos[start:stop, None] - kpos[None, :]).astype(np.float32)
    for index in np.ndindex(piece.shape[:-2]):
        x = as_float32(piece[index][start:stop])
        out["distance"][index][start:stop] = np.einsum("qk,qk->q", x, distance)
        out["special"][index][start:stop] = x @ weights
        for name, offset in NEIGHBOURS:
            if name in out:  # row i's weight on key i + offset, at diagonal position min(i, i + offset)
                values = np.diagonal(x, offset=start + offset)
                first = max(start + offset, 0) if offset < 0 else start
                out[name][index][first : first + len(values)] = values
        total = x.sum(-1, keepdims=True)
        x /= np.where(total > 0, total, 1)  # x is now p, the re-normalised rows
        logp = np.where(x > 0, x, 1)  # 0 ln 0 = 0: where p == 0 take ln 1 = 0
        np.log(logp, out=logp)
        out["entropy"][index][start:stop] = -np.einsum("qk,qk->q", x, logp)


def _regions(a: Any) -> list[tuple[slice, ...]]:
    """The parts of ``a``'s leading axes read at once: all of a numpy array; a dask (or zarr) array's
    chunks along them; one position of the first axis for other lazy arrays."""
    lead = a.ndim - 2
    if isinstance(a, np.ndarray) or lead == 0:
        return [(slice(None),) * lead]
    chunks = getattr(a, "chunks", None)
    if chunks is None:
        return [(slice(i, i + 1),) + (slice(None),) * (lead - 1) for i in range(a.shape[0])]
    from dask.array.core import normalize_chunks, slices_from_chunks

    return slices_from_chunks(normalize_chunks(chunks[:lead], a.shape[:lead]))


def head_statistics_torch(
    a: torch.Tensor, special: torch.Tensor, names: Sequence[str] = tuple(STATISTICS), *, block: int = TORCH_BLOCK
) -> dict:
    """:func:`head_statistics` of the statistics ``names`` for a float ``(..., query, key)`` tensor
    with positions ``0..n-1`` and a ``(key,)`` bool ``special`` mask; on the tensor's device, in
    float32, ``block`` values of query rows (over all leading dims) at a time."""
    import torch

    n_query, n_key = a.shape[-2:]
    lead = a.shape[:-2]
    square = n_query == n_key
    neighbours = [(n, o) for n, o in NEIGHBOURS if n in names and square and n_key > abs(o)]
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    weights = special.to(torch.float32)
    step = max(1, block // max(n_key * math.prod(lead), 1))
    kpos = torch.arange(n_key, device=a.device)
    for start in range(0, n_query, step):
        x = a[..., start : start + step, :].float()
        if "entropy" in names:
            parts["entropy"].append(entropy_torch(x))
        if "distance" in names:
            qpos = torch.arange(start, start + x.shape[-2], device=a.device)
            distance = (qpos[:, None] - kpos[None, :]).abs().to(torch.float32)
            # elementwise, not a matmul: float32 accumulation even where TF32 matmuls are allowed
            parts["distance"].append((x * distance).sum(-1))
        if "special" in names:
            parts["special"].append((x * weights).sum(-1))
        for name, offset in neighbours:
            parts[name].append(torch.diagonal(x, offset=start + offset, dim1=-2, dim2=-1))
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if parts[name] or name in ("entropy", "distance", "special"):
            empty = a.new_empty((*lead, 0), dtype=torch.float32)
            out[name] = torch.cat(parts[name], dim=-1).mean(-1) if parts[name] else empty.mean(-1)
        else:
            out[name] = torch.full(lead, float("nan"), dtype=torch.float32, device=a.device)
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
            array.data,  # float16 as stored: converted block by block, never copied whole
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

        a = check_attention(values)  # converted to float32 block by block
        names = [self.statistic] if self.statistic in STATISTICS else list(STATISTICS)
        stats = head_statistics_torch(a, special_tensor(special, a), names)
        return stats[names[0]] if self.statistic in STATISTICS else torch.stack([stats[n] for n in names], dim=-1)
