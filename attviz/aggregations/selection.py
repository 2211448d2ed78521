"""Selection of layers and heads by number, list, or slice.

The dims are kept (a single number selects a length-1 dim), so the output dims never depend on
the values chosen. Numbers are coordinate labels (layer/head numbers as the model counts them),
so a pipeline that selected layers 2–5 can select layer 3 again. A slice (``slice(0, 6, 2)`` or
the string ``"0:6:2"``) has Python's meaning over those numbers: stop excluded, negative bounds
count from the end of the available numbers. Reference: Clark et al. 2019, "What Does BERT Look
At?" (analyses of individual heads and layers), https://arxiv.org/abs/1906.04341.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import param
import xarray as xr

from attviz.aggregations.base import Aggregation
from attviz.aggregations.reductions import CLARK


class IndexSelector(param.Parameter):
    """``None`` (all), an int, a list/tuple of ints, a slice, or a string ``"0:4"`` / ``"1,3"``."""

    def _validate_value(self, value: Any, allow_None: bool) -> None:
        super()._validate_value(value, allow_None)
        try:
            parse_index(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}: {exc}") from None


def parse_index(value: Any) -> int | list[int] | slice | None:
    """Normalise a selection: ``None``, an int, a list of ints or a slice."""
    if value is None or isinstance(value, slice):
        return value
    if isinstance(value, bool):
        raise TypeError(f"cannot select with {value!r}")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text in ("", ":"):
            return None
        if ":" in text:
            parts = [p.strip() for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError(f"bad slice {value!r}")
            return slice(*(int(p) if p else None for p in parts))
        return [int(p) for p in text.split(",")] if "," in text else int(text)
    if isinstance(value, list | tuple | np.ndarray):
        return [int(parse_index(v)) for v in value]  # type: ignore[arg-type]
    raise TypeError(f"cannot select with {value!r} (expected an int, list, slice or 'start:stop')")


def select_labels(labels: np.ndarray, choice: Any, dim: str) -> np.ndarray:
    """The positions along ``dim`` whose labels ``choice`` picks (in the order of ``choice``)."""
    choice = parse_index(choice)
    if choice is None:
        return np.arange(len(labels))
    if isinstance(choice, slice):
        return np.argsort(labels, kind="stable")[choice]
    wanted = [choice] if isinstance(choice, int) else choice
    lookup = {int(v): i for i, v in enumerate(labels)}
    missing = [w for w in wanted if w not in lookup]
    if missing:
        raise KeyError(f"no {dim} {missing} (available: {[int(v) for v in labels]})")
    return np.asarray([lookup[w] for w in wanted], dtype=int)


class Select(Aggregation):
    """Keep chosen layers and/or heads (``None`` keeps all)."""

    description = "Choose layers and heads (number, list or slice)"
    reference = CLARK
    layers = IndexSelector(default=None, doc="Layers to keep: 3, [0, 5], '0:6:2' or None for all.")
    heads = IndexSelector(default=None, doc="Heads to keep: 3, [0, 5], '0:12:2' or None for all.")

    def needs(self) -> tuple[str, ...]:
        return tuple(d for d, v in (("layer", self.layers), ("head", self.heads)) if v is not None)

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        picks = {}
        for dim, choice in (("layer", self.layers), ("head", self.heads)):
            if choice is not None:
                picks[dim] = select_labels(np.asarray(array[dim].values), choice, dim)
        return array.isel(picks)

    def keeps_label(self, source: xr.DataArray) -> bool:
        return True
