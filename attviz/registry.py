"""Plugin discovery through Python entry points, with error isolation.

Four groups: ``attviz.aggregations``, ``attviz.views``, ``attviz.readers`` and ``attviz.captures``. A plugin's id is its
entry-point name. attviz's own built-ins are registered in its ``pyproject.toml`` like any other
distribution's. Discovery is lazy and cached (:func:`refresh` clears it); a plugin that fails to
import, is malformed, or collides with another's name is reported (warning + :func:`problems`) and
left out, never crashing attviz. Tests inject hand-built ``EntryPoint`` objects into
:func:`load_plugins`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata as metadata
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GROUPS = {
    "aggregations": "attviz.aggregations",
    "views": "attviz.views",
    "readers": "attviz.readers",
    "captures": "attviz.captures",
}


class PluginWarning(RuntimeWarning):
    """A plugin was left out (failed import, malformed class, or duplicate name)."""


@dataclass
class PluginInfo:
    """One discovered entry point and what became of it."""

    group: str
    name: str
    value: str
    distribution: str
    status: str = "ok"  # "ok" | "error" | "duplicate"
    error: str = ""
    plugin: Any = field(default=None, repr=False)

    @property
    def description(self) -> str:
        text = getattr(self.plugin, "description", "") or (self.plugin.__doc__ or "" if self.plugin else "")
        return " ".join(str(text).strip().split("\n\n")[0].split())

    def as_dict(self) -> dict[str, str]:
        return {
            "group": self.group,
            "name": self.name,
            "value": self.value,
            "distribution": self.distribution,
            "status": self.status,
            "error": self.error,
            "description": self.description if self.status == "ok" else "",
        }


# group -> function(cls) raising TypeError when the class is not a valid plugin of that group
_VALIDATORS: dict[str, Callable[[Any], None]] = {}


def check_plugin_class(cls: Any, base: type, public_name: str, method: str, *, described: bool = True) -> None:
    """The checks every plugin kind shares: ``cls`` subclasses ``base`` (``public_name``, e.g.
    ``attviz.views.View``), overrides ``method`` and, when ``described``, has a ``description``."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{cls!r} is not a subclass of {public_name}")
    if getattr(cls, method) is getattr(base, method):
        raise TypeError(f"{cls.__name__} does not implement {method}()")
    if described and not cls.description:
        raise TypeError(f"{cls.__name__} has no description")


def register_validator(group: str, validator: Callable[[Any], None]) -> None:
    """Set the check a plugin class of ``group`` must pass (called by each plugin base module)."""
    _VALIDATORS[group] = validator


def _validator(group: str) -> Callable[[Any], None] | None:
    if group not in _VALIDATORS:
        # Importing the base module registers its validator.
        base = {
            "attviz.readers": "attviz.readers.base",
            "attviz.aggregations": "attviz.aggregations.base",
            "attviz.views": "attviz.views.base",
            "attviz.captures": "attviz.captures.base",
        }.get(group)
        if base:
            with contextlib.suppress(ImportError):
                __import__(base)
    return _VALIDATORS.get(group)


def load_plugins(group: str, entry_points: Iterable[metadata.EntryPoint]) -> dict[str, PluginInfo]:
    """Load entry points of one group; return every one of them with its status."""
    found: dict[str, PluginInfo] = {}
    results: dict[str, PluginInfo] = {}
    validate = _validator(group)
    for ep in entry_points:
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        info = PluginInfo(group=group, name=ep.name, value=ep.value, distribution=dist)
        if ep.name in found:
            first = found[ep.name]
            if first.value == ep.value:  # the same plugin seen twice (e.g. editable + regular install)
                continue
            info.status = "duplicate"
            info.error = f"name {ep.name!r} is already taken by {first.value} ({first.distribution})"
            warnings.warn(f"attviz plugin {group}:{ep.name} left out: {info.error}", PluginWarning, stacklevel=2)
            results[f"{ep.name}@{ep.value}"] = info
            continue
        found[ep.name] = info
        try:
            plugin = ep.load()
            if validate is not None:
                validate(plugin)
            info.plugin = plugin
        except Exception as exc:  # a broken plugin must never break attviz
            info.status = "error"
            info.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"attviz plugin {group}:{ep.name} left out: {info.error}", PluginWarning, stacklevel=2)
        results[ep.name] = info
    return results


@functools.cache
def _discover(group: str) -> dict[str, PluginInfo]:
    return load_plugins(group, metadata.entry_points(group=group))


def refresh() -> None:
    """Forget discovered plugins (after installing one in a running process)."""
    _discover.cache_clear()


def _group(group: str) -> str:
    return GROUPS.get(group, group)


def plugin_infos(group: str | None = None) -> list[PluginInfo]:
    """Every discovered entry point (all groups, or one), including failed ones."""
    groups = [_group(group)] if group else list(GROUPS.values())
    return [info for g in groups for info in _discover(g).values()]


def plugins(group: str) -> dict[str, Any]:
    """The working plugins of a group: ``{entry-point name: class}``."""
    return {info.name: info.plugin for info in _discover(_group(group)).values() if info.status == "ok"}


def get(group: str, name: str) -> Any:
    """One plugin class by group and entry-point name, with a clear error when it is unavailable."""
    infos = _discover(_group(group))
    info = infos.get(name)
    if info is None:
        known = ", ".join(sorted(n for n, i in infos.items() if i.status == "ok")) or "none"
        raise KeyError(f"no {group} plugin named {name!r} (available: {known})")
    if info.status != "ok":
        raise KeyError(f"{group} plugin {name!r} is unavailable: {info.error}")
    return info.plugin


def problems(group: str | None = None) -> list[PluginInfo]:
    """Plugins that were left out, with the reason."""
    return [info for info in plugin_infos(group) if info.status != "ok"]
