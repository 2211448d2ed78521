"""View plugins: Panel components that show aggregated attention (see :mod:`attviz.views.base`).

>>> from attviz import views
>>> views.available()                      # {entry-point name: description}
>>> view = views.get("value_norm_bars", data=matrix)  # an installed plugin, by entry-point name
"""

from __future__ import annotations

from typing import Any

from attviz.views.base import INPUTS, LINKED, REQUIREMENTS, View, fits


def get(name: str, **params: Any) -> View:
    """An instance of the view registered under entry-point ``name``, with ``params``."""
    from attviz import registry

    return registry.get("views", name)(**params)


def available(data: Any = None) -> dict[str, str]:
    """``{entry-point name: description}`` of the working views (those that can show ``data``, if given)."""
    from attviz import registry

    return {
        name: cls.description
        for name, cls in sorted(registry.plugins("views").items())
        if data is None or cls.can_show(data)
    }


__all__ = ["INPUTS", "LINKED", "REQUIREMENTS", "View", "available", "fits", "get"]
