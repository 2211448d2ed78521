"""Attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

The layers form a graph: node (l, i) is token i after layer l (l = 0 is the input embeddings) and
the edge (l − 1, j) → (l, i) has capacity ``Ã_l[i, j]``, the head-fused, residual-mixed,
row-normalised attention of :mod:`attviz.aggregations.rollout`. The flow of input token j to output
token q is the maximum flow from node (0, j) to node (L, q). Each of the T values is one max-flow
problem, solved with :func:`scipy.sparse.csgraph.maximum_flow` (Dinic) on one shared graph.

Precision: scipy needs integer capacities, so each capacity is rounded to a multiple of
``10**-precision`` (default 1e-6); a flow is then off by at most half that per edge of the minimum
cut (the cut into the output token has T edges: ≤ T · 0.5e-6; a test against networkx's exact
float max-flow agrees to 1e-6). Capacities that round to 0 are dropped.
Cost: T max-flow problems on a graph of ~L·T² edges, about T^3.5 in all. Measured on the 2-core
dev machine, 6 layers × 12 heads (``benchmarks/aggregations.py``): 32 tokens 0.01 s, 64 tokens
0.04 s, 128 tokens 0.25 s, 192 tokens 0.8 s, 256 tokens 2.3–2.8 s, 384 tokens 8.5 s, 512 tokens 26 s.
Interactive (< 1 s) up to ~200 tokens; the default ``max_tokens=256`` refuses longer documents
(use rollout, or drop special tokens / merge words first, or raise ``max_tokens``).
https://arxiv.org/abs/2005.00928
"""

from __future__ import annotations

import numpy as np
import param
import xarray as xr
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow

from attviz.aggregations.base import Aggregation, replace_dims, to_token
from attviz.aggregations.rollout import ABNAR, FUSIONS, lacks_self_attention, mixed_attention


def flow_graph(mixed: np.ndarray, query: int, scale: int) -> tuple[csr_array, int]:
    """The layered graph for output token ``query`` (integer capacities) and its sink node.

    Node ``l * T + i`` is token i after layer l. Only the sink's own edges enter the top layer:
    other top-layer nodes cannot reach the sink and would only cost time.
    """
    n_layers, n, _ = mixed.shape
    caps = np.rint(mixed * scale).astype(np.int64)
    caps[-1, np.arange(n) != query, :] = 0
    # edge (l-1, j) -> (l, i) with capacity caps[l-1][i, j]
    layer, i, j = np.nonzero(caps)
    rows = layer * n + j
    cols = (layer + 1) * n + i
    size = (n_layers + 1) * n
    graph = csr_array((caps[layer, i, j].astype(np.int32), (rows, cols)), shape=(size, size))
    graph.sort_indices()
    return graph, n_layers * n + query


def attention_flow(mixed: np.ndarray, query: int, precision: int = 6) -> np.ndarray:
    """Max flow from every input token to output token ``query``, as floats."""
    scale = 10**precision
    graph, sink = flow_graph(mixed, query, scale)
    n = mixed.shape[-1]
    flows = np.fromiter((maximum_flow(graph, j, sink, method="dinic").flow_value for j in range(n)), float, n)
    return flows / scale


class Flow(Aggregation):
    """Attention flow to one output token from every input token (Abnar & Zuidema 2020).

    Output ``(token,)`` over the input tokens. Each raw value is a maximum flow, bounded by the
    narrowest cut between the two tokens, so raw values need not sum to 1; by default they are
    scaled to sum to 1 like the authors' implementation (``normalise``).
    """

    description = "Attention flow (max-flow) from every input token to one output token"
    reference = ABNAR
    input_dims = ("layer", "head", "query", "key")
    long_name = "attention flow"

    query = param.Integer(
        default=0,
        softbounds=(-1, 127),
        step=1,
        doc="Output token at the top layer; negative counts from the end (-1 is the last token).",
    )
    residual = param.Number(
        default=0.5, bounds=(0.0, 1.0), step=0.05, doc="Weight r of the identity (residual stream)."
    )
    head_fusion = param.Selector(default="mean", objects=list(FUSIONS), doc="How heads are fused.")
    precision = param.Integer(
        default=6, bounds=(2, 8), doc="Capacities are rounded to 10**-precision (integer max-flow)."
    )
    normalise = param.Boolean(default=True, doc="Scale the flows to sum to 1 (as the authors' code does).")
    max_tokens = param.Integer(
        default=256,
        bounds=(1, None),
        softbounds=(32, 512),
        doc="Refuse longer documents (flow costs ~T³ per layer); rollout has no such limit.",
    )

    def output_dims(self, input_dims):
        return replace_dims(input_dims, drop=("layer", "head", "query"), rename={"key": "token"})

    def missing(self, array: xr.DataArray) -> str:
        n = array.sizes.get("query", 0)
        if n > self.max_tokens:
            return f"at most max_tokens={self.max_tokens} tokens (this text has {n}; flow costs ~T³ per layer)"
        if not -n <= self.query < n:
            return f"a query inside the text (query {self.query} of {n} tokens)"
        return lacks_self_attention(array)

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        extra = [d for d in array.dims if d not in self.input_dims]
        if extra:
            raise ValueError(f"flow works on one document's matrices; select away dims {extra} first")
        n = array.sizes["query"]
        if n > self.max_tokens:
            raise ValueError(
                f"attention flow on {n} tokens is too slow (max_tokens={self.max_tokens}); "
                "use rollout, drop special tokens, or raise max_tokens"
            )
        if not -n <= self.query < n:
            raise IndexError(f"query {self.query} is out of range for {n} tokens")
        mixed = mixed_attention(array, self.residual, self.head_fusion)
        flows = attention_flow(mixed, self.query % n, self.precision)
        if self.normalise and flows.sum() > 0:
            flows = flows / flows.sum()
        keys = array.isel(layer=0, head=0, query=0, drop=True)
        keys = keys.drop_vars([c for c in keys.coords if c.startswith("query")])
        return to_token(xr.DataArray(flows.astype(np.float32), dims=("key",), coords=keys.coords), "key")
