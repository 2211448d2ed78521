"""The explorer's menus, found in the aggregation registry by the dims each aggregation takes and returns.

A head combination reduces the head (or legacy ``vector``) dim of token vectors; a token colour maps one
head's ``(query, key)`` matrix, or a whole document's attention, to one value per token; a transform
keeps the layer and token axes of ``(layer, head, query, key)``. An installed plugin of that shape
appears in the explorer without any change to it.
"""

from __future__ import annotations

from typing import Any

from attviz import aggregations
from attviz.aggregations.base import ATTENTION_DIMS, Aggregation

#: The head "combination" that shows one head.
HEAD = "head"
#: The transform that changes nothing.
NO_TRANSFORM = "none"


def _instances(**params: Any) -> dict[str, Aggregation]:
    """Every registered aggregation that can be built with ``params`` (a broken plugin is skipped)."""
    found = {}
    for name in aggregations.available():
        try:
            found[name] = aggregations.get(name, **params)
        except Exception:  # no such parameter, or a plugin that cannot be built: not offered
            continue
    return found


def _fits(agg: Aggregation, dims: tuple[str, ...], out: tuple[str, ...]) -> bool:
    try:
        agg.check_dims(dims)
        return tuple(agg.output_dims(dims)) == out
    except Exception:
        return False


def head_reductions(dims: tuple[str, ...] = ("head", "token")) -> dict[str, str]:
    """``{label: id}`` of the ways to combine the ``dims[0]`` values of token vectors (``dims``):
    "selected head" and every aggregation with an ``over`` parameter that reduces that dim."""
    over = dims[0]
    found = {"selected head" if over == "head" else "selected vector": HEAD}
    for name, agg in _instances(over=over).items():
        if over in getattr(agg, "offered_over", (over,)) and _fits(agg, dims, dims[1:]):
            found[f"{agg.description} ({name})"] = name
    return found


def matrix_reductions() -> set[str]:
    """Ids of the head combinations that also combine ``(head, query, key)`` matrices."""
    return {
        name for name, agg in _instances(over="head").items() if _fits(agg, ("head", "query", "key"), ("query", "key"))
    }


def token_vector_aggregations() -> dict[str, str]:
    """``{id: description}`` of the token colours: aggregations from one head's ``(query, key)``
    matrix to a token vector (per head), or from a document's whole attention to one token vector
    (attention flow)."""
    found = {}
    for name, agg in _instances().items():
        per_head = _fits(agg, ("head", "query", "key"), ("head", "token")) and set(agg.needs()) <= {
            "head",
            "query",
            "key",
        }
        if per_head or _fits(agg, ATTENTION_DIMS, ("token",)):
            found[name] = agg.description
    return found


def document_vectors() -> set[str]:
    """Ids of the token colours computed from the whole attention of a document (e.g. flow)."""
    return {name for name, agg in _instances().items() if _fits(agg, ATTENTION_DIMS, ("token",))}


def transforms() -> dict[str, str]:
    """``{label: id}`` of the transforms of all layers: aggregations that keep the layer and token
    axes of ``(layer, head, query, key)`` (drop special tokens, merge word pieces, rollout), except
    reductions (they have ``over``) and those that do nothing by default (:attr:`offered`)."""
    found = {"none": NO_TRANSFORM}
    for name, agg in _instances().items():
        if "over" in agg.param or not getattr(agg, "offered", True):
            continue
        try:
            agg.check_dims(ATTENTION_DIMS)
            out = tuple(agg.output_dims(ATTENTION_DIMS))
        except Exception:
            continue
        if {"layer", "query", "key"} <= set(out) and set(out) <= set(ATTENTION_DIMS):
            found[f"{agg.description} ({name})"] = name
    return found
