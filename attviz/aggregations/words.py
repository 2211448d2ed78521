"""Subword → word merging of attention (the convention of Clark et al. 2019, §2).

Pieces of one word are merged as follows:

- **keys: sum.** Attention *to* a split word is the total its pieces receive, so each row still
  sums to 1;
- **queries: mean.** Attention *from* a split word is the average of its pieces' rows (each a
  distribution), so the merged row is a distribution too;
- **token vectors:** ``token_reduce`` (sum by default, right for attention received/given to tokens;
  use mean for per-query quantities such as entropy).

A word is a run of consecutive tokens with the same ``*_word`` index; special tokens and tokens with
word index −1 stay on their own. Merged tokens get new positions 0..W−1, their pieces' text joined
(WordPiece ``##`` prefixes of continuation pieces removed), the first piece's word index, the
smallest start and largest end offset, and ``special`` if any piece is special.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import param
import xarray as xr

from attviz.aggregations.base import Aggregation, DimsError, fmt_dims
from attviz.aggregations.reductions import CLARK
from attviz.corpus import token_coords, tokens_of

TOKEN_DIMS = ("query", "key", "token")


def word_units(word: np.ndarray, special: np.ndarray) -> np.ndarray:
    """The merged-unit index of every token: consecutive tokens of one word (same word index ≥ 0) share one.

    A special token is never merged, not even with a piece that carries the same word index (a
    ``<s>`` stored with the first word's index stays apart from ``Hel``, ``lo``). The one definition
    of a word for :class:`MergeWords` and the explorer's word-level text view.
    """
    word = np.asarray(word)
    special = np.asarray(special, dtype=bool)
    new = np.ones(len(word), dtype=bool)
    new[1:] = (word[1:] != word[:-1]) | (word[1:] < 0) | special[1:] | special[:-1]
    return np.cumsum(new) - 1


def word_starts(word: np.ndarray, special: np.ndarray) -> np.ndarray:
    """The position of the first token of each unit of :func:`word_units` (for ``np.ufunc.reduceat``)."""
    units = word_units(word, special)
    return np.flatnonzero(np.r_[True, units[1:] != units[:-1]]) if len(units) else np.zeros(0, dtype=np.int64)


def merged_tokens(tokens: pd.DataFrame, units: np.ndarray) -> pd.DataFrame:
    """The token table of the merged units."""
    first = np.ones(len(units), dtype=bool)
    first[1:] = units[1:] != units[:-1]
    text = tokens["text"].astype(str)
    text = text.where(first, text.str.removeprefix("##"))
    frame = pd.DataFrame(
        {
            "text": text.to_numpy(),
            "word": tokens["word"].to_numpy(),
            "start": tokens["start"].to_numpy(),
            "end": tokens["end"].to_numpy(),
            "special": tokens["special"].to_numpy(),
            "unit": units,
        }
    )
    merged = frame.groupby("unit", sort=True).agg(
        text=("text", "".join),
        word=("word", "first"),
        start=("start", "min"),
        end=("end", "max"),
        special=("special", "any"),
    )
    merged.index.name = "position"
    return merged.reset_index(drop=True)


def merge_dim(array: xr.DataArray, dim: str, how: str) -> xr.DataArray:
    """Merge the pieces along one token dim by ``how`` (``"sum"`` or ``"mean"``)."""
    tokens = tokens_of(array, dim)
    units = word_units(tokens["word"].to_numpy(), tokens["special"].to_numpy())
    starts = word_starts(tokens["word"].to_numpy(), tokens["special"].to_numpy())
    counts = np.diff(np.r_[starts, len(units)]).astype(np.float32)

    def kernel(a: np.ndarray) -> np.ndarray:  # segment sums over the last axis
        merged = np.add.reduceat(np.asarray(a, dtype=np.float32), starts, axis=-1)
        return merged / counts if how == "mean" else merged

    merged = xr.apply_ufunc(
        kernel,
        array.drop_vars([c for c in array.coords if c.startswith(dim)]),
        input_core_dims=[[dim]],
        output_core_dims=[["_unit"]],
        dask="parallelized",
        output_dtypes=[np.float32],
        dask_gufunc_kwargs={"output_sizes": {"_unit": len(starts)}},
    )
    merged = merged.rename({"_unit": dim}).transpose(*array.dims)
    return merged.assign_coords(token_coords(merged_tokens(tokens, units), dim))


class MergeWords(Aggregation):
    """Merge subword pieces into words: sum over key pieces, mean over query pieces.

    Reference: Clark et al. 2019, "What Does BERT Look At?", §2 (word-level attention maps).
    """

    description = "Merge subword tokens into words (sum over key pieces, mean over query pieces)"
    reference = CLARK
    input_dims = ("query", "key")
    long_name = "word-level attention weight"

    token_reduce = param.Selector(
        default="sum", objects=["sum", "mean"], doc="How a token vector merges a word's pieces."
    )

    def check_dims(self, dims):
        if not any(d in dims for d in TOKEN_DIMS):
            needs = "(query, key) or (token)"
            raise DimsError(f"aggregation {self.id!r} needs dims {needs} but got {fmt_dims(dims)}", needs)

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        result = array
        for dim, how in (("key", "sum"), ("query", "mean"), ("token", self.token_reduce)):
            if dim in result.dims:
                if f"{dim}_word" not in result.coords:
                    raise ValueError(f"merging words needs the {dim}_word coord (word index per token)")
                result = merge_dim(result, dim, how)
        return result

    def keeps_label(self, source: xr.DataArray) -> bool:
        return "key" not in source.dims  # a merged vector is still what it was
