"""The capture plugin kind: per-document data a plugin records from the model during extraction.

Attention weights are not all a method may need: norm-based analyses want the value vectors, others
hidden states or gradients. A *capture* (entry-point group ``attviz.captures``) is a small
:class:`ModelCapture` class that, during :func:`attviz.extract`, registers forward hooks on the model
(:meth:`~ModelCapture.attach`), turns what they saw into one array per batch
(:meth:`~ModelCapture.collect`), and removes them again (:meth:`~ModelCapture.detach`). attviz cuts
each document's part out of the batch (no padding), copies it to the host with the attention and
stores it with the document as the array ``capture_<id>`` (zarr store, netCDF, in memory), labelled
with the source tokens. When its dims are among a matrix's (e.g. ``(layer, head, key)``), the
document's matrix carries it as the coordinate ``<id>``, which follows every selection
(``doc.attention.isel(layer=2, head=0)["value_norm"]`` has dim ``key``).

Captures are opt-in: ``attviz.extract(..., captures=["value_norm"])`` / ``attviz extract --capture
value_norm`` runs the named ones and fails when one cannot run on the model;
``captures="auto"`` (the explorer's live input) runs every installed capture with ``auto = True`` that
supports the model, and notes the others (with the reason) in the corpus attrs ``captures_skipped``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import param

from attviz.corpus import CAPTURE, KIND_STREAMS, TOKEN_DIMS
from attviz.errors import AttvizError
from attviz.registry import check_plugin_class, register_validator

if TYPE_CHECKING:  # torch is heavy: imported where a capture runs
    import torch


class UnsupportedModel(AttvizError):
    """A capture cannot run on this model; the message says why (raised by :meth:`ModelCapture.check`)."""


@dataclasses.dataclass
class CaptureBatch:
    """What :meth:`ModelCapture.collect` gets after one forward pass."""

    #: The :class:`attviz.models.LoadedModel` (``.model``, ``.tokenizer``, ``.config``, ``.device``).
    model: Any
    #: The model's output (``return_dict=True``, with ``attentions``).
    outputs: Any
    #: ``(batch, tokens)`` input ids, right-padded to the longest document of the batch.
    input_ids: torch.Tensor
    #: ``(batch, tokens)``: 1 for a document's tokens, 0 for padding.
    attention_mask: torch.Tensor
    #: Each document's number of (source) tokens; attviz keeps ``[:n]`` of every token axis.
    lengths: list[int]


class ModelCapture(param.Parameterized):
    """Base class of capture plugins (entry-point group ``attviz.captures``).

    Subclasses set :attr:`description` and :attr:`dims` and implement :meth:`collect` (usually with
    :meth:`attach` registering forward hooks through :meth:`hook`); :meth:`check` says whether a
    model is supported. Parameters (``param``) are the capture's configuration, given on the command
    line as ``--capture id:name=value``. The id is the entry-point name.
    """

    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    #: Dims of one document's array, without the batch: ``layer``, ``head``, token dims (``query``,
    #: ``key``, ``token``: the source tokens, cut to the document's length) and any others (numbered).
    dims: ClassVar[tuple[str, ...]] = ()
    long_name: ClassVar[str] = ""
    units: ClassVar[str] = ""
    #: Matrix kinds that carry the array as a coordinate named by the id (when its dims are among theirs).
    attach_to: ClassVar[tuple[str, ...]] = ("self", "encoder")
    #: Whether ``captures="auto"`` runs it (the explorer's live input); False for costly captures.
    auto: ClassVar[bool] = True

    __abstract = True

    # -- identity ------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The entry-point name of this capture's class (its class name when unregistered)."""
        return _ids().get(type(self)) or type(self).__name__

    @property
    def kind(self) -> str:
        """The name of the document array it fills: ``capture_<id>``."""
        return CAPTURE + self.id

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self.param.values().items() if k != "name"}

    def spec(self) -> str:
        """``id`` or ``id:name=value,...`` (as ``--capture`` takes it)."""
        import json

        params = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(self.params().items()))
        return f"{self.id}:{params}" if params else self.id

    def stored_attrs(self) -> dict[str, Any]:
        """The attrs stored with each document's array (the store rebuilds it from them, plugin or not)."""
        attrs = {
            "capture": self.id,
            "attach": ",".join(self.attach_to),
            "long_name": self.long_name or self.description,
            "units": self.units,
            "reference": self.reference,
            "spec": self.spec(),
        }
        return {"dims": list(self.dims), **{f"array_{k}": v for k, v in attrs.items() if v}}

    # -- the plugin's part -------------------------------------------------------------------------
    def check(self, model: Any) -> None:
        """Raise :class:`UnsupportedModel` (with the reason) when this capture cannot run on ``model``
        (an :class:`attviz.models.LoadedModel`). Called once per extraction, before any batch."""

    def attach(self, model: Any) -> None:
        """Before every forward pass: register forward hooks with :meth:`hook`."""

    def collect(self, batch: CaptureBatch) -> torch.Tensor:
        """After the forward pass: a tensor (or array) ``(batch, *dims)`` whose token axes are padded to
        the batch's width; attviz keeps each document's ``[:n]``, as float32. Called under
        ``torch.inference_mode()`` with the hooks still attached; may stay on the model's device.
        Return a new tensor each time: attviz reads it later, from the writer thread."""
        raise NotImplementedError

    def detach(self) -> None:
        """After every forward pass (also when it failed): remove the hooks :meth:`hook` registered.
        Override to drop more (call ``super().detach()``)."""
        handles = self.__dict__.pop("_attviz_handles", [])
        for handle in handles:
            handle.remove()

    def hook(self, module: Any, function: Callable[..., Any]) -> Any:
        """``module.register_forward_hook(function)``, removed again by :meth:`detach`."""
        handle = module.register_forward_hook(function)
        self.__dict__.setdefault("_attviz_handles", []).append(handle)
        return handle


def _ids() -> dict[type, str]:
    from attviz.registry import plugins

    try:
        return {cls: name for name, cls in plugins("captures").items()}
    except Exception:  # discovery itself must never break a capture
        return {}


def get(name: str, **params: Any) -> ModelCapture:
    """An instance of the capture registered under entry-point ``name``, with ``params``."""
    from attviz import registry

    return registry.get("captures", name)(**params)


def available(model: Any = None) -> dict[str, str]:
    """``{entry-point name: description}`` of the working captures (those that support ``model``, if given)."""
    from attviz import registry

    out = {}
    for name, cls in sorted(registry.plugins("captures").items()):
        if model is not None and unsupported(cls(), model):
            continue
        out[name] = cls.description
    return out


def unsupported(capture: ModelCapture, model: Any) -> str:
    """Why ``capture`` cannot run on ``model`` ("" when it can); a failing check is a reason too."""
    try:
        capture.check(model)
    except UnsupportedModel as exc:
        return str(exc)
    except Exception as exc:  # a broken plugin must never break attviz
        return f"its check failed: {type(exc).__name__}: {exc}"
    return ""


def resolve(
    captures: str | Iterable[str | ModelCapture] | None, model: Any
) -> tuple[dict[str, ModelCapture], dict[str, str]]:
    """The captures to run on ``model``: ``({id: capture}, {id: why another was skipped})``.

    ``None`` or ``()``: none. ``"auto"``: every installed capture with ``auto = True`` that supports
    the model; the others are skipped with their reason. A list of ids (``"id:name=value"`` for
    parameters) or instances: exactly those; an unknown id or an unsupported model is an error.
    """
    if captures is None:
        return {}, {}
    if isinstance(captures, str) and captures == "auto":
        from attviz import registry

        run, skipped = {}, {}
        for name, cls in sorted(registry.plugins("captures").items()):
            if not getattr(cls, "auto", True):
                continue
            try:
                capture = cls()
            except Exception as exc:  # pragma: no cover - a constructor that fails
                skipped[name] = f"{type(exc).__name__}: {exc}"
                continue
            reason = unsupported(capture, model)
            if reason:
                skipped[name] = reason
            else:
                run[name] = capture
        return run, skipped
    specs = [captures] if isinstance(captures, str | ModelCapture) else list(captures)
    run = {}
    for spec in specs:
        capture = spec if isinstance(spec, ModelCapture) else _build(str(spec))
        reason = unsupported(capture, model)
        if reason:
            name = getattr(model, "name", type(model).__name__)
            raise AttvizError(f"capture {capture.id!r} cannot run on {name}: {reason}")
        run[capture.id] = capture
    return run, {}


def _build(spec: str) -> ModelCapture:
    from attviz.policy import parse_aggregation

    name, params = parse_aggregation(spec)
    try:
        return get(name, **params)
    except KeyError:
        known = ", ".join(available()) or "none installed"
        raise AttvizError(f"no capture plugin {name!r} (available: {known})") from None
    except Exception as exc:
        raise AttvizError(f"capture {spec!r}: {exc}") from None


def token_axes(dims: Sequence[str]) -> list[int]:
    """Positions of the token dims in ``dims``."""
    return [i for i, d in enumerate(dims) if d in TOKEN_DIMS]


def _validate_capture(cls: Any) -> None:
    check_plugin_class(cls, ModelCapture, "attviz.captures.ModelCapture", "collect")
    dims = tuple(cls.dims)
    if not dims or len(set(dims)) != len(dims) or not all(isinstance(d, str) and d for d in dims):
        raise TypeError(f"{cls.__name__}.dims must name distinct dims, e.g. ('layer', 'head', 'key'), not {dims!r}")
    unknown = [k for k in cls.attach_to if k not in KIND_STREAMS]
    if unknown:
        raise TypeError(f"{cls.__name__}.attach_to names unknown matrix kinds {unknown} (known: {list(KIND_STREAMS)})")


register_validator("attviz.captures", _validate_capture)

__all__ = [
    "CaptureBatch",
    "ModelCapture",
    "UnsupportedModel",
    "available",
    "get",
    "resolve",
    "unsupported",
]
