"""attviz in Jupyter: load Panel with its JavaScript embedded, and never show a blank explorer.

By default ``pn.extension()`` makes the notebook fetch BokehJS and Panel's JavaScript from CDNs
(``cdn.bokeh.org``, ``cdn.holoviz.org``). Without internet those requests fail and every Panel
output, the explorer included, stays an empty cell. :func:`extension` loads the same extensions
with ``inline=True``: the JavaScript and CSS travel inside the notebook output, so the explorer
renders offline (at the price of a few MB in the saved notebook)::

    import attviz
    attviz.extension()
    attviz.explore("corpus.zarr")

:func:`repr_mimebundle` is the explorer's notebook output: Panel's own, preceded by a plain-HTML
notice that says what to do when Panel's JavaScript is missing. A small script in the output hides
the notice as soon as Panel's JavaScript is there; where it never arrives (offline with CDN
resources, a saved notebook opened without running it, scripts not run) the notice stays visible.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

#: The class of the notice element (tests and styling find it by this).
NOTICE_CLASS = "attviz-notebook-notice"

_NOTICE_STYLE = (
    "border:1px solid #d9a400;background:#fff8e1;color:#3d3000;padding:8px 12px;margin:4px 0;"
    "border-radius:4px;font-family:sans-serif;font-size:13px;line-height:1.4"
)
# Hide the notice once Panel's JavaScript is loaded (Panel then renders the output itself) or the
# output has rendered; poll while the notice is in the page. Version checks are Panel's business.
_HIDE_SCRIPT = """<script type="text/javascript">
(function () {
  var notice = document.getElementById("%(notice)s");
  function ready() {
    var target = document.getElementById("%(target)s");
    return (window.Bokeh !== undefined && window.Bokeh.Panel !== undefined)
      || (target !== null && target.getBoundingClientRect().height > 0);
  }
  function check() {
    notice = notice || document.getElementById("%(notice)s");
    if (ready()) {
      if (notice) notice.style.display = "none";
    } else if (!notice || document.contains(notice)) {
      setTimeout(check, 200);
    }
  }
  check();
})();
</script>"""


def extension(*extensions: str, **params: Any) -> None:
    """``pn.extension`` for attviz, with all JavaScript and CSS embedded (works offline).

    Loads the Panel extensions the explorer's views need (``tabulator``) plus ``extensions``;
    ``params`` go to :func:`panel.extension` (``inline=True`` unless given). Run it once per notebook
    instead of ``pn.extension(...)``, before displaying an explorer or a view. HoloViews is set to
    its Bokeh backend by the same call.
    """
    import holoviews as hv
    import holoviews.plotting.bokeh  # Panel then loads HoloViews' notebook support too
    import panel as pn

    from attviz.app import EXTENSIONS

    params.setdefault("inline", True)
    # With HoloViews imported, Panel loads BokehJS through HoloViews, unless an earlier
    # hv.extension() did. If that load was from a CDN and failed offline, nothing would bring BokehJS
    # now: publish the full inline bundle ourselves in that case.
    already = getattr(hv.extension, "_loaded", False)
    names = list(dict.fromkeys((*EXTENSIONS, *extensions)))
    pn.extension(*names, **params)
    if already and params["inline"] and _in_kernel():
        from panel.io.notebook import load_notebook

        load_notebook(True, reloading=False)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and hasattr(ip, "kernel")


def notice_html(target: str | None = None) -> str:
    """The plain-HTML notice shown in place of an explorer whose JavaScript did not load.

    With ``target`` (the id of the output's root element) a script hides it once Panel's JavaScript
    is loaded or the output has rendered; without, it stays.
    """
    import panel as pn
    from panel.config import panel_extension

    if not panel_extension._loaded:
        first = (
            "<b>attviz explorer:</b> Panel's notebook extension is not loaded, so nothing interactive can "
            "be shown here. Run <code>attviz.extension()</code> first (Panel with its JavaScript embedded; "
            "works offline), then run this cell again."
        )
    else:
        first = (
            "<b>attviz explorer:</b> waiting for Panel's JavaScript. If this message stays, it did not load: "
            "most often the notebook is offline and Panel fetches its JavaScript from a CDN by default "
            "(<code>pn.extension()</code>). Run <code>attviz.extension()</code> instead (Panel with its "
            "JavaScript embedded; works offline), then run this cell again."
        )
        if not pn.config.inline:
            first += " Here Panel is set to load it from the CDN (<code>pn.config.inline</code> is False)."
    second = "A saved notebook shows the explorer only after its cells are run again (live kernel, trusted notebook)."
    notice_id = f"attviz-notice-{uuid.uuid4().hex}"
    div = f'<div id="{notice_id}" class="{NOTICE_CLASS}" style="{_NOTICE_STYLE}">{first}<br>{second}</div>'
    if target is None:
        return div
    return div + _HIDE_SCRIPT % {"notice": notice_id, "target": html.escape(target, quote=True)}


def with_notice(bundle: Any) -> Any:
    """Put the notice in front of the ``text/html`` of a Panel mimebundle ``(data, metadata)``."""
    if bundle is None:
        return None
    data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
    if "text/html" not in data:
        return bundle  # ipywidgets or VS Code comms: not an HTML output
    target = None
    for value in (metadata or {}).values():
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            target = value["id"]
    data = {**data, "text/html": notice_html(target) + data["text/html"]}
    return (data, metadata) if isinstance(bundle, tuple) else data


def repr_mimebundle(obj: Any, include: Any = None, exclude: Any = None) -> Any:
    """The notebook output of ``obj`` (a Panel object, or anything with ``__panel__`` such as the
    explorer) with the notice in front; as a method: ``_repr_mimebundle_ = repr_mimebundle``.

    Without Panel's notebook extension Panel returns nothing (the cell would show a bare repr): the
    output is then the notice alone.
    """
    import panel as pn

    if isinstance(obj, pn.viewable.Viewer):
        bundle = pn.viewable.Viewer._repr_mimebundle_(obj, include, exclude)
    else:
        bundle = pn.panel(obj.__panel__() if hasattr(obj, "__panel__") else obj)._repr_mimebundle_(include, exclude)
    if bundle is None:
        return {"text/html": notice_html(), "text/plain": f"<{type(obj).__name__}: run attviz.extension() first>"}, {}
    return with_notice(bundle)
