"""Special-token handling: drop [CLS]/[SEP]/BOS/... and re-normalise the attention that is left.

Special tokens are those flagged in the ``*_special`` coords (set by the tokenizer at extraction)
plus any token strings listed in ``extra_tokens``. They often soak up most of the attention (Clark
et al. 2019 find heads putting >50 % on [SEP]), which hides the pattern among the words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, DimsError, as_float, fmt_dims
from attviz.aggregations.reductions import CLARK

TOKEN_DIMS = ("query", "key", "token")


def special_mask(array: xr.DataArray, dim: str, extra: Sequence[str] = ()) -> np.ndarray:
    """Boolean mask of the special tokens along ``dim`` (all False without a special coord)."""
    n = array.sizes[dim]
    flags = array.coords.get(f"{dim}_special")
    mask = np.zeros(n, bool) if flags is None else np.asarray(flags.values, dtype=bool)
    texts = array.coords.get(f"{dim}_text")
    if extra and texts is not None:
        mask = mask | np.isin(np.asarray(texts.values, dtype=object), list(extra))
    return mask


class DropSpecial(Aggregation):
    """Remove special tokens from every token dim; re-normalise rows over the remaining keys.

    With ``renormalise`` each query row sums to 1 again (attention among the real tokens); without
    it the raw weights are kept, so a row's sum is the share the query gave to non-special tokens.
    Token vectors (dim ``token``) are only filtered. The ``query``/``key``/``token`` coords keep
    the original positions. Reference: Clark et al. 2019, §3 (attention to [CLS]/[SEP]).
    """

    description = "Drop special tokens ([CLS], [SEP], BOS), optionally re-normalising rows"
    reference = CLARK
    input_dims = ("query", "key")
    long_name = "attention weight without special tokens"

    renormalise = param.Boolean(default=True, doc="Rows sum to 1 again over the kept keys.")
    extra_tokens = param.List(default=[], item_type=str, doc="Token strings to treat as special too, e.g. ['[CLS]'].")

    def check_dims(self, dims):
        if not any(d in dims for d in TOKEN_DIMS):
            needs = "(query, key) or (token)"
            raise DimsError(f"aggregation {self.id!r} needs dims {needs} but got {fmt_dims(dims)}", needs)

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        keep = {
            dim: np.flatnonzero(~special_mask(array, dim, self.extra_tokens)) for dim in TOKEN_DIMS if dim in array.dims
        }
        result = as_float(array.isel(keep))
        if self.renormalise and "key" in result.dims:
            total = result.sum("key")
            result = result / xr.where(total > 0, total, 1.0)
        return result

    def keeps_label(self, source: xr.DataArray) -> bool:
        return "key" not in source.dims  # a filtered vector is still what it was
