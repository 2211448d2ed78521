"""Built-in aggregations and the helpers to find them by entry-point name.

>>> from attviz import aggregations
>>> head_mean = aggregations.get("mean", over="head")
>>> pipeline = aggregations.Pipeline([head_mean, aggregations.get("attention_received")])
"""

from __future__ import annotations

from typing import Any

from attviz.aggregations.base import (
    ATTENTION_DIMS,
    VECTOR_DIMS,
    Aggregation,
    DimsError,
    Pipeline,
    from_spec,
)


def get(name: str, **params: Any) -> Aggregation:
    """An instance of the aggregation registered under entry-point ``name``, with ``params``."""
    from attviz import registry

    return registry.get("aggregations", name)(**params)


def available() -> dict[str, str]:
    """``{entry-point name: description}`` of every working aggregation plugin."""
    from attviz import registry

    return {name: cls.description for name, cls in sorted(registry.plugins("aggregations").items())}


__all__ = [
    "ATTENTION_DIMS",
    "VECTOR_DIMS",
    "Aggregation",
    "DimsError",
    "Pipeline",
    "available",
    "from_spec",
    "get",
]
