"""The Aggregation plugin kind, :class:`Pipeline`, and helpers shared by the built-ins.

An aggregation is a :class:`param.Parameterized` (its parameters are its whole configuration, with
bounds so the app can build widgets) that declares the dims it needs (:attr:`Aggregation.input_dims`)
and the dims it returns (:meth:`Aggregation.output_dims`), and maps a DataArray to a new DataArray
with one pure :meth:`Aggregation.apply`. Its stable id is its entry-point name in the group
``attviz.aggregations`` (never ``param``'s auto-generated ``name``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import param
import xarray as xr

from attviz.corpus import TOKEN_FIELDS
from attviz.registry import register_validator

if TYPE_CHECKING:  # torch is heavy: imported only where a torch method runs
    import torch

ATTENTION_DIMS = ("layer", "head", "query", "key")
VECTOR_DIMS = ("vector", "token")


class DimsError(ValueError):
    """An aggregation got (or would get, in a pipeline) an array without the dims it needs."""

    def __init__(self, message: str, needs: str = ""):
        super().__init__(message)
        self.needs = needs


def fmt_dims(dims: Sequence[str]) -> str:
    return "(" + ", ".join(dims) + ")"


class Aggregation(param.Parameterized):
    """Base class of aggregations (entry-point group ``attviz.aggregations``).

    Subclasses set the ClassVars, declare their parameters, and implement :meth:`apply` (and
    :meth:`output_dims` when they change dims). :meth:`__call__` checks dims, runs ``apply`` and
    labels the result (``name``, ``long_name``, ``units`` and the JSON spec ``aggregation``).
    """

    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    input_dims: ClassVar[tuple[str, ...]] = ()
    long_name: ClassVar[str] = ""
    units: ClassVar[str] = "1"

    __abstract = True

    # -- dims ----------------------------------------------------------------------------------
    def needs(self) -> tuple[str, ...]:
        """The dims this configured instance needs (default: :attr:`input_dims`)."""
        return tuple(self.input_dims)

    def check_dims(self, dims: Sequence[str]) -> None:
        """Raise :class:`DimsError` when an array with ``dims`` cannot be aggregated."""
        needs = self.needs()
        missing = [d for d in needs if d not in dims]
        if missing:
            raise DimsError(
                f"aggregation {self.id!r} needs dims {fmt_dims(needs)} but got {fmt_dims(dims)} "
                f"(missing {', '.join(missing)})",
                needs=fmt_dims(needs),
            )

    def output_dims(self, input_dims: Sequence[str]) -> tuple[str, ...]:
        """The dims of the result for an input with ``input_dims`` (default: unchanged)."""
        return tuple(input_dims)

    def missing(self, array: xr.DataArray) -> str:
        """What ``array`` lacks for this aggregation besides dims, e.g. a coordinate only some
        extractions store ('' when nothing): the explorer says so instead of failing."""
        return ""

    # -- identity ------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The entry-point name of this aggregation's class (``module:Class`` when unregistered)."""
        return _ids().get(type(self)) or f"{type(self).__module__}:{type(self).__qualname__}"

    def params(self) -> dict[str, Any]:
        """This instance's parameter values, JSON-safe, without ``param``'s ``name``."""
        return {k: _jsonable(v) for k, v in self.param.values().items() if k != "name"}

    def spec(self) -> list[dict[str, Any]]:
        """The steps this aggregation stands for: ``[{"aggregation": id, **params}]``."""
        return [{"aggregation": self.id, **self.params()}]

    # -- running -------------------------------------------------------------------------------
    def __call__(self, array: xr.DataArray) -> xr.DataArray:
        self.check_dims(tuple(array.dims))
        result = self.apply(array)
        return self.label(result, array)

    def apply(self, array: xr.DataArray) -> xr.DataArray:
        """The aggregation itself: pure, returns a new DataArray, keeps token coords."""
        raise NotImplementedError

    def apply_torch(self, values: torch.Tensor, *, special: torch.Tensor | None = None) -> torch.Tensor:
        """Optional: the same aggregation on a torch tensor (on its device, float32 math).

        For on-device extraction: aggregate one document's attention before the copy to the host.

        Parameters
        ----------
        values
            One document's attention with dims :data:`ATTENTION_DIMS` ``(layer, head, query, key)``,
            any float dtype, any device; token positions are ``0..n-1`` on both token axes.
        special
            Optional bool tensor of shape ``(key,)`` marking special tokens (``None``: none are).

        Returns
        -------
        torch.Tensor
            float32, on the device of ``values``, with dims exactly
            ``self.output_dims(ATTENTION_DIMS)`` in that order, and values equal to :meth:`apply` on
            the same data (up to float32 rounding, same NaN conventions).

        Raises
        ------
        NotImplementedError
            When the aggregation has no torch version (see :attr:`supports_torch`).
        """
        raise NotImplementedError(f"aggregation {self.id!r} has no torch version (apply_torch)")

    def apply_qk(self, qk: Any, layer: int, heads: Sequence[int]) -> np.ndarray:
        """Optional: the token vector ``(head, token)`` of ``heads`` (positions) of one stored ``layer``
        (position), computed from a document kept as queries and keys (:class:`attviz.qk.QKAttention`)
        without its whole ``T × T`` matrices: one row, or block by block. The explorer uses it for long
        documents, where a layer's matrices do not fit in memory (see :attr:`supports_qk`)."""
        raise NotImplementedError(f"aggregation {self.id!r} has no queries-and-keys version (apply_qk)")

    @property
    def supports_qk(self) -> bool:
        """True when the class overrides :meth:`apply_qk` (as for :attr:`supports_torch`)."""
        qk_owner, apply_owner = _owner(type(self), "apply_qk"), _owner(type(self), "apply")
        return qk_owner is not Aggregation and issubclass(qk_owner, apply_owner)

    @property
    def supports_torch(self) -> bool:
        """True when the class overrides :meth:`apply_torch` (no less derived than its :meth:`apply`,
        so a subclass that changes ``apply`` only is not run with its parent's torch version)."""
        torch_owner, apply_owner = _owner(type(self), "apply_torch"), _owner(type(self), "apply")
        return torch_owner is not Aggregation and issubclass(torch_owner, apply_owner)

    def label(self, result: xr.DataArray, source: xr.DataArray) -> xr.DataArray:
        """Name the result and set ``long_name``, ``units`` and the ``aggregation`` spec."""
        before = source.attrs.get("aggregation")
        steps = json.loads(before) if isinstance(before, str) else []
        result = result.copy(deep=False)
        keep = self.keeps_label(source)
        result.name = (keep and source.name) or self.id.replace(":", ".")
        result.attrs = {
            "long_name": (keep and source.attrs.get("long_name")) or self.long_name or self.description,
            "units": (keep and source.attrs.get("units")) or self.units,
            "aggregation": json.dumps(steps + self.spec()),
        }
        return result

    def keeps_label(self, source: xr.DataArray) -> bool:
        """Whether the result is the same quantity as ``source`` (keep its name and units)."""
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, slice):
        return ":".join("" if v is None else str(v) for v in (value.start, value.stop, value.step))
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Aggregation):
        return value.spec()
    return value


def _owner(cls: type, method: str) -> type:
    """The class of ``cls``'s MRO that defines ``method``."""
    return next(c for c in cls.__mro__ if method in vars(c))


def _ids() -> dict[type, str]:
    """Class -> entry-point name (discovery is cached by the registry)."""
    from attviz.registry import plugins

    try:
        return {cls: name for name, cls in plugins("aggregations").items()}
    except Exception:  # discovery itself must never break an aggregation
        return {}


class Pipeline(Aggregation):
    """Aggregations applied one after the other; dims are checked at construction.

    A step needs its dims to be a subset of the dims the previous step outputs. ``dims`` is the
    input the pipeline is checked against when built: by default the attention dims
    ``(layer, head, query, key)``, or ``(vector, token)`` when a step needs ``vector`` (legacy
    AttViz data). Calling the pipeline checks the flow again for the real array's dims.
    """

    description = "Several aggregations applied in order"
    steps = param.List(default=[], item_type=Aggregation, doc="The aggregations, in order.")
    dims = param.List(default=None, allow_None=True, item_type=str, doc="Input dims to check.")

    def __init__(self, steps: Sequence[Aggregation] | None = None, **params: Any):
        super().__init__(steps=list(steps or params.pop("steps", [])), **params)
        self.flow(self.start_dims())
        self.param.watch(self._revalidate, ["steps", "dims"])

    @property
    def id(self) -> str:
        return "pipeline"

    def start_dims(self) -> tuple[str, ...]:
        """The input dims checked at construction: ``dims``, else legacy vectors when a step
        needs ``vector`` (no aggregation makes that dim), else the attention dims."""
        if self.dims is not None:
            return tuple(self.dims)
        needed = {d for step in self.steps for d in step.needs()}
        return VECTOR_DIMS if "vector" in needed else ATTENTION_DIMS

    def _revalidate(self, event: param.parameterized.Event) -> None:
        """Check a new ``steps``/``dims``; put the old value back when the flow breaks."""
        try:
            self.flow(self.start_dims())
        except DimsError:
            with param.discard_events(self):
                setattr(self, event.name, event.old)
            raise

    def flow(self, dims: Sequence[str]) -> list[tuple[str, ...]]:
        """The dims after each step for an input with ``dims``; :class:`DimsError` if a step fails."""
        current = tuple(dims)
        out = [current]
        for i, step in enumerate(self.steps, start=1):
            try:
                step.check_dims(current)
            except DimsError as exc:
                if i == 1:
                    where = f"the input has {fmt_dims(current)}"
                else:
                    where = f"step {i - 1} ({self.steps[i - 2].id}) outputs {fmt_dims(current)}"
                raise DimsError(f"step {i} ({step.id}) needs dims {exc.needs} but {where}", exc.needs) from None
            current = tuple(step.output_dims(current))
            out.append(current)
        return out

    def needs(self) -> tuple[str, ...]:
        return self.steps[0].needs() if self.steps else ()

    def check_dims(self, dims: Sequence[str]) -> None:
        self.flow(dims)

    def output_dims(self, input_dims: Sequence[str]) -> tuple[str, ...]:
        return self.flow(input_dims)[-1]

    def spec(self) -> list[dict[str, Any]]:
        return [s for step in self.steps for s in step.spec()]

    def __call__(self, array: xr.DataArray) -> xr.DataArray:
        self.check_dims(tuple(array.dims))
        for step in self.steps:
            array = step(array)
        return array


def from_spec(spec: str | Sequence[dict[str, Any]]) -> Aggregation:
    """Rebuild the aggregation (a :class:`Pipeline` for several steps) from an ``aggregation`` attr."""
    from attviz.aggregations import get

    steps_spec = json.loads(spec) if isinstance(spec, str) else list(spec)
    steps = [get(s["aggregation"], **{k: v for k, v in s.items() if k != "aggregation"}) for s in steps_spec]
    return steps[0] if len(steps) == 1 else Pipeline(steps)


# -- helpers shared by the built-ins ----------------------------------------------------------
def as_float(array: xr.DataArray, dtype: Any = np.float32) -> xr.DataArray:
    """Upcast (stored attention is float16) so sums and logs are accurate; lazy arrays stay lazy."""
    return array if array.dtype == dtype else array.astype(dtype)


def values(array: xr.DataArray, dtype: Any = np.float64) -> np.ndarray:
    """The data as an in-memory numpy array of ``dtype`` (computes a dask array)."""
    return np.asarray(array.data, dtype=dtype)


def attention_tensor(values: torch.Tensor) -> torch.Tensor:
    """``values`` checked by :func:`check_attention`, as float32 (no copy when it already is)."""
    return check_attention(values).float()


def check_attention(values: torch.Tensor) -> torch.Tensor:
    """``values`` unchanged once checked to be a float tensor with dims ``(layer, head, query, key)``."""
    if values.ndim != len(ATTENTION_DIMS):
        raise DimsError(
            f"apply_torch needs a tensor with dims {fmt_dims(ATTENTION_DIMS)}, got shape {tuple(values.shape)}",
            needs=fmt_dims(ATTENTION_DIMS),
        )
    if not values.is_floating_point():
        raise TypeError(f"attention must be a float tensor, got {values.dtype}")
    return values


def special_tensor(special: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """The ``(key,)`` bool special-token mask on the device of ``values`` (all False for ``None``)."""
    import torch

    n_key = values.shape[-1]
    if special is None:
        return torch.zeros(n_key, dtype=torch.bool, device=values.device)
    if tuple(special.shape) != (n_key,):
        raise ValueError(f"special must have shape ({n_key},) (one flag per key), got {tuple(special.shape)}")
    return special.to(device=values.device, dtype=torch.bool)


def drop_token_coords(array: xr.DataArray, dim: str) -> xr.DataArray:
    """Drop a token dim's non-dimension coords (``dim_text`` ...) that are left on ``array``."""
    names = [f"{dim}_{f}" for f in TOKEN_FIELDS] + [dim]
    return array.drop_vars([n for n in names if n in array.coords and dim not in array.dims])


def to_token(array: xr.DataArray, dim: str) -> xr.DataArray:
    """Rename the token dim ``dim`` (``query`` or ``key``) to ``token``, with its coords."""
    other = {"query": "key", "key": "query"}.get(dim)
    if other is not None:
        array = drop_token_coords(array, other)
    renames = {f"{dim}_{f}": f"token_{f}" for f in TOKEN_FIELDS if f"{dim}_{f}" in array.coords}
    return array.rename({dim: "token", **renames})


def replace_dims(dims: Sequence[str], drop: Sequence[str] = (), rename: dict[str, str] | None = None) -> tuple:
    """``dims`` without ``drop`` and with ``rename`` applied (for :meth:`output_dims`)."""
    rename = rename or {}
    return tuple(rename.get(d, d) for d in dims if d not in drop)


def _validate_aggregation(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Aggregation)):
        raise TypeError(f"{cls!r} is not a subclass of attviz.aggregations.Aggregation")
    if cls.apply is Aggregation.apply and not issubclass(cls, Pipeline):
        raise TypeError(f"{cls.__name__} does not implement apply()")
    if not cls.description:
        raise TypeError(f"{cls.__name__} has no description")


register_validator("attviz.aggregations", _validate_aggregation)
