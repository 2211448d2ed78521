"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Per layer l the heads are fused (mean by default), the residual connection is modelled by mixing
in the identity, and rows are re-normalised::

    Ã_l = normalise_rows((1 − r) · A_l + r · I)        r = ``residual`` (0.5 in the paper)

and the rollout multiplies from the first layer up: ``R_1 = Ã_1``, ``R_l = Ã_l · R_{l−1}``, i.e.
``R_L = Ã_L ··· Ã_2 · Ã_1``. Row q of ``R_l`` says how much the output of layer l at position q
draws on each input token (key) at the embedding layer. The layers are those in the array (a
pipeline may select some first) in order of their ``layer`` coordinate.
https://arxiv.org/abs/2005.00928
"""

from __future__ import annotations

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation

ABNAR = 'Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", https://arxiv.org/abs/2005.00928'
FUSIONS = ("mean", "max", "min")


def lacks_self_attention(array: xr.DataArray) -> str:
    """What rollout and flow miss in ``array`` ('' when it is self-attention: square matrices)."""
    if array.sizes.get("query") != array.sizes.get("key"):
        return "self-attention (as many queries as keys; cross-attention has two texts)"
    return ""


def mixed_attention(array: xr.DataArray, residual: float, fusion: str = "mean") -> np.ndarray:
    """Ã per layer as a float64 ``(..., layer, query, key)`` numpy array (heads fused)."""
    if array.sizes["query"] != array.sizes["key"]:
        raise ValueError("rollout and flow need self-attention (as many queries as keys)")
    array = by_layer(array).transpose(..., "layer", "head", "query", "key")
    # mean: accumulate in float32 without an upcast copy; max/min are exact in float16
    kwargs = {"dtype": np.float32, "skipna": False} if fusion == "mean" else {}
    fused = getattr(array, fusion)("head", **kwargs)
    a = np.asarray(fused.data, dtype=np.float64)
    mixed = (1.0 - residual) * a
    idx = np.arange(a.shape[-1])
    mixed[..., idx, idx] += residual
    total = mixed.sum(-1, keepdims=True)
    return mixed / np.where(total > 0, total, 1.0)


def by_layer(array: xr.DataArray) -> xr.DataArray:
    """``array`` in increasing ``layer`` order (no copy when it already is)."""
    layers = np.asarray(array["layer"].values)
    return array if np.all(layers[1:] > layers[:-1]) else array.sortby("layer")


def rollout(mixed: np.ndarray) -> np.ndarray:
    """Cumulative products ``R_l = Ã_l · R_{l−1}`` along the layer axis (axis −3)."""
    out = np.empty_like(mixed)
    out[..., 0, :, :] = mixed[..., 0, :, :]
    for layer in range(1, mixed.shape[-3]):  # a loop over layers, never over tokens
        np.matmul(mixed[..., layer, :, :], out[..., layer - 1, :, :], out=out[..., layer, :, :])
    return out


class Rollout(Aggregation):
    """Attention rollout: attention to input tokens through all layers (Abnar & Zuidema 2020).

    Output ``(layer, query, key)``: the rollout up to and including each layer (pick a layer), or
    only the last one ``(query, key)`` with ``cumulative=False``.
    """

    description = "Attention rollout through the layers (residual-mixed, re-normalised)"
    reference = ABNAR
    input_dims = ("layer", "head", "query", "key")
    long_name = "attention rollout"

    residual = param.Number(
        default=0.5, bounds=(0.0, 1.0), step=0.05, doc="Weight r of the identity (residual stream)."
    )
    head_fusion = param.Selector(default="mean", objects=list(FUSIONS), doc="How heads are fused.")
    cumulative = param.Boolean(default=True, doc="Rollout up to every layer, or only the last.")

    def output_dims(self, input_dims):
        rest = tuple(d for d in input_dims if d not in self.input_dims)
        return (*rest, "layer", "query", "key") if self.cumulative else (*rest, "query", "key")

    def missing(self, array: xr.DataArray) -> str:
        return lacks_self_attention(array)

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        mixed = mixed_attention(array, self.residual, self.head_fusion)
        rolled = rollout(mixed).astype(np.float32)
        template = by_layer(array).isel(head=0, drop=True).transpose(..., "layer", "query", "key")
        result = xr.DataArray(rolled, dims=template.dims, coords=template.coords)
        return result if self.cumulative else result.isel(layer=-1, drop=True)
