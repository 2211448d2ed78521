"""Capture plugins: per-document data recorded from the model during extraction (see :mod:`attviz.captures.base`).

>>> from attviz import captures
>>> captures.available()                  # {entry-point name: description}
>>> corpus = attviz.extract(texts, captures=["value_norm"])   # an installed plugin, by its id
>>> corpus[0].attention.isel(layer=2, head=0)["value_norm"]   # (key,)
"""

from __future__ import annotations

from attviz.captures.base import (
    CaptureBatch,
    ModelCapture,
    UnsupportedModel,
    available,
    get,
    resolve,
    unsupported,
)

__all__ = ["CaptureBatch", "ModelCapture", "UnsupportedModel", "available", "get", "resolve", "unsupported"]
