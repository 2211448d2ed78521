"""What the built-in views share: token labels, class colours, plot titles and the mouse wheel.

- **Token labels**: :func:`token_labels` are readable (:func:`attviz.tokenization.display_tokens`:
  ``Ġthe`` → ``·the``, ``Ċ`` → ``↵``, ``▁the`` → ``·the``); :func:`hover_labels` add the raw token.
  Bokeh draws tick labels and hover fields as text (it escapes hover fields), so neither needs HTML
  escaping; HTML built in Python escapes them with :func:`html.escape`.
- **Class colours**: :func:`class_colour` is a function of the label string alone, so a class has
  the same colour in every corpus and view.
- **Titles**: every plot is titled (:func:`title_hook`) with the view's ``title`` input, or else
  what :func:`describe` reads from the data.
- **Heads**: statistics over heads are the registered aggregations (:func:`over_heads`).
- **Wheel**: :func:`page_scroll_hook` leaves the mouse wheel to the page: the wheel-zoom tool stays in
  the toolbar, inactive until the user picks it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

import colorcet
import numpy as np
import xarray as xr

from attviz import aggregations
from attviz.tokenization import display_tokens

#: The fixed categorical palette of class colours: colorcet's ``glasbey_category10`` (Category10 first,
#: then Glasbey's distinct colours) without the 7 pastels too pale to see on white (249 colours).
CLASS_PALETTE: tuple[str, ...] = tuple(
    c for c in colorcet.palette["glasbey_category10"] if min(int(c[i : i + 2], 16) for i in (1, 3, 5)) <= 200
)

#: The ``doc`` of every view's ``title`` parameter (an input of :data:`attviz.views.base.INPUTS`).
TITLE_DOC = (
    "Title of the plots: what is shown (document, layer/head or head reduction, aggregation), one short line "
    "(from the explorer); empty: read from the data."
)


def class_colour(label: Any) -> str:
    """The colour of a class label: :data:`CLASS_PALETTE` indexed by the CRC-32 of its UTF-8 text.

    Stable across corpora, sessions and processes (unlike Python's salted ``hash``).
    """
    return CLASS_PALETTE[zlib.crc32(str(label).encode("utf-8")) % len(CLASS_PALETTE)]


# -- heads -------------------------------------------------------------------------------------------
def head_rows(data: xr.DataArray) -> xr.DataArray:
    """``data`` as ``(head, token)``: legacy AttViz vectors ``(vector, token)`` count as heads."""
    row_dim = next(d for d in data.dims if d != "token")
    return (data.rename({row_dim: "head"}) if row_dim != "head" else data).transpose("head", "token")


def over_heads(name: str, rows: xr.DataArray) -> np.ndarray:
    """The registered aggregation ``name`` (``min``, ``max``, ``mean``) over the heads of ``rows``, as float64."""
    return np.asarray(aggregations.get(name, over="head")(rows).values, dtype=np.float64)


# -- titles ------------------------------------------------------------------------------------------
def plain_text(text: Any) -> str:
    """``text`` for a Bokeh title or axis label, shown literally (Bokeh reads ``$$…$$``, ``\\[…\\]``,
    ``\\(…\\)`` there as TeX): the opening delimiters are split by a zero-width space."""
    text = str(text)
    for delimiter in ("$$", "\\[", "\\("):
        text = text.replace(delimiter, delimiter[0] + "\u200b" + delimiter[1])
    return text


def describe(array: Any, default: str = "") -> str:
    """A short title read from a DataArray: its long name, and the layer and head it was taken from."""
    if not isinstance(array, xr.DataArray):
        return default
    parts = [str(array.attrs.get("long_name") or array.name or default or "attention")]
    for dim in ("layer", "head"):
        coord = array.coords.get(dim)
        if coord is not None and coord.ndim == 0 and dim not in array.dims:
            value = coord.values.item()
            parts.append(f"{dim} {value}")
    return " · ".join(parts)


def title_hook(get_title: Callable[[], str]) -> Callable[[Any, Any], None]:
    """A HoloViews hook setting the figure's title to ``get_title()`` (as plain text) on every update."""

    def hook(plot: Any, element: Any) -> None:
        set_title(plot.state, get_title())

    return hook


def set_title(figure: Any, text: str) -> None:
    """Set the title of a Bokeh ``figure`` to ``text`` as plain text (:func:`plain_text`), only when it changed."""
    title = figure.title
    text = plain_text(text)
    if title is not None and title.text != text:
        title.text = text


def page_scroll_hook(plot: Any, element: Any) -> None:
    """A HoloViews hook leaving the mouse wheel to the page (``active_scroll=None``; the tool stays)."""
    toolbar = plot.state.toolbar
    if toolbar.active_scroll is not None:
        toolbar.active_scroll = None


# -- token labels --------------------------------------------------------------------------------------
def token_texts(array: xr.DataArray, dim: str) -> list[str]:
    """The raw token strings of a token dim (``""`` without a ``<dim>_text`` coord)."""
    coord = array.coords.get(f"{dim}_text")
    return [str(t) for t in coord.values] if coord is not None else [""] * array.sizes[dim]


def token_positions(array: xr.DataArray, dim: str) -> np.ndarray:
    """Document positions of a token dim (its index coord), as int64."""
    if dim in array.coords:
        return np.asarray(array[dim].values, dtype=np.int64)
    return np.arange(array.sizes[dim], dtype=np.int64)


def _with_positions(labels: list[str], positions: tuple[int, ...]) -> list[str]:
    return [t if p == i else f"{t} ({p})" for i, (t, p) in enumerate(zip(labels, positions, strict=True))]


@lru_cache(maxsize=64)
def _display(raw: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`display_tokens` of one token dim, cached by the raw tokens alone: the tick and hover labels,
    and the query and key dims of one matrix (the same tokens), share it."""
    return tuple(display_tokens(raw))


@lru_cache(maxsize=64)
def _labels(raw: tuple[str, ...], positions: tuple[int, ...], hover: bool) -> tuple[str, ...]:
    """The labels of one token dim, cached: a head or layer change of the same document (every view
    asks again) costs a dictionary lookup instead of ~10 ms of :func:`display_tokens` at 512 tokens."""
    shown = list(_display(raw))
    if hover:
        shown = [s if s == r else f"{s} (raw: {r})" for s, r in zip(shown, raw, strict=True)]
    return tuple(_with_positions(shown, positions))


def _key(array: xr.DataArray, dim: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    return tuple(token_texts(array, dim)), tuple(token_positions(array, dim).tolist())


def token_labels(array: xr.DataArray, dim: str) -> list[str]:
    """Readable label per index of a token dim, ``"label (position)"`` where position != index."""
    return list(_labels(*_key(array, dim), hover=False))


def hover_labels(array: xr.DataArray, dim: str) -> list[str]:
    """:func:`token_labels` with the raw token added where it differs (``·the (raw: Ġthe)``)."""
    return list(_labels(*_key(array, dim), hover=True))


class AxisLabels(NamedTuple):
    """Token labels of a ``(query, key)`` plot: ticks (readable) and hover (readable and raw)."""

    query: list[str]
    key: list[str]
    query_hover: list[str]
    key_hover: list[str]

    @classmethod
    def of(cls, array: Any) -> AxisLabels:
        """The labels of an array with ``query`` and ``key`` dims (empty for anything else)."""
        if not (isinstance(array, xr.DataArray) and {"query", "key"} <= set(array.dims)):
            return cls([], [], [], [])
        query, key = _key(array, "query"), _key(array, "key")  # read once per dim (a head change asks again)
        return cls(
            list(_labels(*query, hover=False)),
            list(_labels(*key, hover=False)),
            list(_labels(*query, hover=True)),
            list(_labels(*key, hover=True)),
        )


def same_values(a: Any, b: Any) -> bool:
    """Whether two values (arrays: same shape and values, NaN equal to NaN in float arrays) are the same."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        nan = a.dtype.kind in "fc" and b.dtype.kind in "fc"  # isnan is undefined for str and object arrays
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=nan)
    return a == b


class TapEvents:
    """``event(x=..., y=...)`` calls the subscribers, as a Bokeh tap on the figure does (tests, scripts)."""

    def __init__(self) -> None:
        self.subscribers: list[Any] = []

    def add_subscriber(self, callback: Any) -> None:
        self.subscribers.append(callback)

    def event(self, x: float | None = None, y: float | None = None) -> None:
        for callback in self.subscribers:
            callback(x=x, y=y)


def update_bokeh(pane: Any, update: Callable[[], None]) -> None:
    """Run ``update``, which changes Bokeh models shown by ``pane`` (a ``pn.pane.Bokeh``), so the
    changes reach every browser showing them together.

    In a served session the changes are made inside Panel's ``unlocked`` (all events of one update
    go out in one message, with Panel's own, instead of one message per property after the server
    went idle), or on the next tick when this thread does not hold the document; in a notebook
    they are pushed over the comm. Outside any session ``update`` simply runs.
    """
    from panel.io.document import unlocked
    from panel.io.notebook import push
    from panel.io.state import state

    views = [state._views[ref] for ref in list(getattr(pane, "_models", {})) if ref in state._views]
    docs = {id(doc): doc for _, _, doc, _ in views if doc is not None}
    for doc in docs.values():
        if doc.session_context is not None and not state._unblocked(doc):
            doc.add_next_tick_callback(lambda: update_bokeh(pane, update))
            return
    with unlocked():
        update()
    for _, root, doc, comm in views:
        if comm is not None and "embedded" not in root.tags:
            push(doc, comm)


def shown_when(condition: Any, pane: Any) -> Any:
    """``pane`` in a Column that is visible while ``condition`` (a param reference) holds.

    Never toggle ``visible`` on a HoloViews pane itself: Panel then copies the served design's
    ImportedStyleSheet objects into its inner Bokeh pane's str-only ``stylesheets``, the TypeError
    fails the whole patch, and no view of the session updates any more (panel 1.9).
    """
    import panel as pn

    return pn.Column(pane, visible=condition, sizing_mode="stretch_width")
