"""The document's text coloured by attention (the AttViz text view).

The text is rebuilt from the original string and the token character offsets, so readers see the
document as written (no ``##`` pieces); special tokens without a span ([CLS], [SEP]) are small
badges. Words are :func:`attviz.aggregations.words.word_units` (as ``merge_words`` merges them); the
hover shows the readable pieces (:func:`attviz.tokenization.display_token`) and the raw ones. The
browser side is one :class:`~attviz.views.text_client.TokenText` (a Panel ``JSComponent``): Python
computes the colours, the client only places spans (token text as ``textContent``, never markup)
and re-colours them in place when values change. The "Figure" card draws the same text and head
rows as a Bokeh plot (its save tool gives a PNG) and offers it as an SVG file
(:mod:`attviz.views.text_figure`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from attviz.aggregations.words import word_starts
from attviz.corpus import tokens_of
from attviz.tokenization import display_token, is_byte_level, token_string
from attviz.views import text_figure
from attviz.views.base import View
from attviz.views.common import (
    TITLE_DOC,
    describe,
    head_rows,
    over_heads,
    page_scroll_hook,
    same_values,
    title_hook,
)
from attviz.views.text_client import CSS, TokenText, _float32, head_rgb

#: Background colour of the highlight mode (the AttViz orange, as in the aggregate plot).
HIGHLIGHT_RGB = text_figure.HIGHLIGHT


def scale_values(values: np.ndarray, scale: str, reference: float | None = None) -> np.ndarray:
    """Map values to colour intensities in [0, 1].

    ``"max"`` divides by ``reference`` (default: the maximum of ``values``) so the strongest token
    is fully coloured; ``"absolute"`` keeps the values and clips them to [0, 1]. NaN gives 0.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    if scale == "max":
        top = np.max(values, initial=0.0) if reference is None else reference
        values = values / top if top > 0 else np.zeros_like(values)
    elif scale != "absolute":
        raise ValueError(f"unknown scale {scale!r} (expected 'max' or 'absolute')")
    return np.clip(values, 0.0, 1.0)


def row_alpha(intensity: np.ndarray) -> np.ndarray:
    """The classic AttViz rule for the multi-head rows: alpha = 7/8·v + 1/8 (never fully blank)."""
    return 7 / 8 * np.asarray(intensity, dtype=np.float64) + 1 / 8


def css_colors(alpha: np.ndarray, rgb: tuple[int, int, int] = HIGHLIGHT_RGB) -> list[str]:
    """CSS ``rgba(...)`` strings for intensities ``alpha`` (3 decimals)."""
    r, g, b = rgb
    return [f"rgba({r}, {g}, {b}, {a:.3f})" for a in np.asarray(alpha, dtype=np.float64)]


def clean_token(token: str, byte_level: bool | None = None) -> str:
    """A token's text without sub-word markers (``##ing`` → ``ing``, ``Ġthe``/``▁the`` → ``the``), for
    text rebuilt without offsets; a token of white space only keeps its readable label (``Ċ`` → ``↵``)."""
    if token.startswith("##") and len(token) > 2:
        return token[2:]
    return token_string(token, byte_level).strip() or display_token(token, byte_level) or token


def offsets_usable(tokens: pd.DataFrame, text: str | None) -> bool:
    """Whether the token offsets index into ``text`` (false for legacy data with all-zero offsets)."""
    if not text or len(tokens) == 0:
        return False
    ends = tokens["end"].to_numpy()
    return bool(ends.max() > 0 and ends.max() <= len(text) and (tokens["start"].to_numpy() <= ends).all())


def unit_starts(tokens: pd.DataFrame, level: str) -> np.ndarray:
    """First token position of each display unit: every token, or the words of
    :func:`~attviz.aggregations.words.word_units` (a special token is never part of a word)."""
    n = len(tokens)
    if level == "token" or n == 0:
        return np.arange(n)
    if level != "word":
        raise ValueError(f"unknown level {level!r} (expected 'token' or 'word')")
    return word_starts(tokens["word"].to_numpy(), tokens["special"].to_numpy())


def pieces_text(pieces: list[str], byte_level: bool) -> str:
    """The hover's line of a unit's pieces: readable, and the raw tokens where they differ."""
    shown = [display_token(p, byte_level) for p in pieces]
    line = " | ".join(shown)
    return line if shown == pieces else f"{line}\nraw: {' '.join(pieces)}"


@dataclass
class Layout:
    """What the client draws for a window of display units (parallel lists, one item per unit)."""

    first: list[int]
    last: list[int]
    labels: list[str]
    gaps: list[str]
    badges: list[bool]
    pieces: list[str]
    tail: str


def layout_units(
    tokens: pd.DataFrame, text: str | None, starts: np.ndarray, units: np.ndarray, *, at_end: bool = True
) -> Layout:
    """Labels and in-between text of the units ``units`` (indices into ``starts``, in order).

    With usable offsets a label is ``text[start:end]`` and the gap before it ``text[prev_end:start]``
    (the rest of the text follows the last unit when ``at_end``); otherwise labels are the cleaned
    token strings joined by spaces (no space before ``##`` pieces).
    """
    n = len(tokens)
    bounds = np.append(starts, n)
    raw = tokens["text"].tolist()
    start, end = tokens["start"].to_numpy(), tokens["end"].to_numpy()
    special = tokens["special"].to_numpy()
    byte_level = is_byte_level(raw)
    with_offsets = offsets_usable(tokens, text)
    out = Layout([], [], [], [], [], [], "")
    cursor = 0 if len(units) and units[0] == 0 else None  # leading text only at the document start
    for u in units:
        a, b = int(bounds[u]), int(bounds[u + 1]) - 1
        pieces = raw[a : b + 1]
        badge = bool(special[a] or (with_offsets and start[a] == end[b]))
        label = "".join(clean_token(p, byte_level) for p in pieces)
        if with_offsets and not badge:
            s, e = int(start[a]), int(end[b])
            gap = "" if cursor is None else text[cursor:s]
            label = text[max(s, cursor or 0) : e] or label
            cursor = max(e, cursor or 0)
        elif with_offsets or not out.labels or pieces[0].startswith("##"):
            gap = ""  # a badge sits where it is; no space before the first unit or a ## piece
        else:
            gap = " "
        out.first.append(a)
        out.last.append(b)
        out.labels.append(label)
        out.gaps.append(gap)
        out.badges.append(badge)
        out.pieces.append(pieces_text(pieces, byte_level))
    if with_offsets and cursor is not None and at_end:
        out.tail = text[cursor:]
    return out


_EMPTY: dict[str, Any] = {
    **{k: [] for k in ("labels", "gaps", "badges", "first", "last", "pieces", "colors", "head_names", "head_rgb")},
    **{
        "values": _float32(np.zeros(0)),
        "head_values": _float32(np.zeros((0, 0))),
        "row_alpha": _float32(np.zeros((0, 0))),
    },
    **{"tail": "", "legend": "", "note": "Nothing to show: choose a document."},
}
_REFRESH_ON = ("data", "aggregate", "heads", "text", "mode", "level", "scale", "show_special", "max_tokens")


class TextView(View):
    """The document's text coloured by attention, with AttViz's thin per-head rows.

    At ``level="word"`` the pieces of a word are one span whose value is the **maximum** of its
    pieces (for the aggregate and for each head); hovering lists the pieces.

    The "Figure" card (closed until opened) shows what is in the window as a Bokeh plot (the save
    tool gives a PNG) and offers the SVG file (:meth:`svg`).
    """

    description = "Document text coloured by attention (highlight or one thin row per head)"
    requires = ("token_vectors",)

    aggregate = param.Parameter(default=None, doc="Token vector that colours the text (from the explorer).")
    heads = param.List(
        default=[],
        item_type=int,
        doc="Heads shown as rows and in the hover (positions for legacy vectors); empty: all.",
    )
    text = param.String(default=None, allow_None=True, doc="The document's original text (offsets index into it).")
    mode = param.Selector(
        default="highlight", objects=["highlight", "rows", "both"], doc="Colour the text, draw a row per head, or both."
    )
    level = param.Selector(default="token", objects=["token", "word"], doc="One span per token or per word.")
    scale = param.Selector(
        default="max", objects=["max", "absolute"], doc="max: the strongest token is fully coloured; absolute: [0, 1]."
    )
    show_special = param.Boolean(default=True, doc="Show special tokens ([CLS], [SEP]) as small badges.")
    max_tokens = param.Integer(default=2048, bounds=(16, 16384), doc="Most tokens rendered at once (a window).")
    window_start = param.Integer(
        default=0, bounds=(0, None), softbounds=(0, 4096), doc="First token of the window shown (long documents)."
    )
    title = param.String(default="", doc=TITLE_DOC)
    figure_width = param.Integer(default=960, bounds=(320, 4000), doc="Width of the exported figure in pixels.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._component = TokenText(sizing_mode="stretch_width", stylesheets=[CSS])
        self._component.param.watch(self._from_client, "selected_token")
        self._slider = pn.widgets.IntSlider.from_param(self.param.window_start, start=0, end=1, visible=False)
        self._layout: pn.layout.Panel | None = None
        self._shown: dict[str, Any] = {}  # what the figure draws: the last refresh's units and colours
        self._structures: list[tuple[Any, Any, dict[str, Any]]] = []  # (data, settings, structure), latest first
        self._figure = pn.pane.HoloViews(None, linked_axes=False, sizing_mode="fixed")
        download = pn.widgets.FileDownload(
            callback=self._svg_file, filename="attviz-text.svg", label="Download SVG", embed=False, width=180
        )
        self._card = pn.Card(
            pn.pane.Markdown("PNG: the save tool above the figure. SVG:", margin=(5, 10)),
            download,
            self._figure,
            title="Figure (PNG, SVG)",
            collapsed=True,
            sizing_mode="stretch_width",
        )
        self._card.param.watch(lambda _: self._draw_figure(), "collapsed")
        self._refresh()

    def _rows(self) -> tuple[np.ndarray, list[str], np.ndarray, pd.DataFrame]:
        """(rows × tokens values, row names, aggregate per token, token table) of ``data``."""
        rows, names, tokens, picked = self._picked_rows()
        return rows, names, self._aggregate_values(rows, picked), tokens

    def _picked_rows(self) -> tuple[np.ndarray, list[str], pd.DataFrame, xr.DataArray]:
        """(rows × tokens values, row names, token table, the picked rows as a DataArray) of ``data``."""
        data = self.data if self.data.ndim == 2 else self.data.expand_dims(vector=["value"])
        row_dim = next(d for d in data.dims if d != "token")
        data = data.transpose(row_dim, "token")
        labels = data[row_dim].values.tolist()
        if self.heads:
            pick = [i for i, h in enumerate(labels) if h in self.heads] if row_dim == "head" else self.heads
            pick = [i for i in pick if 0 <= i < len(labels)] or list(range(len(labels)))
            data, labels = data.isel({row_dim: pick}), [labels[i] for i in pick]
        rows = np.asarray(data.values, dtype=np.float64)
        names = [f"H{h}" if row_dim == "head" else str(h) for h in labels]
        return rows, names, tokens_of(self.data, "token"), data

    def _aggregate_values(self, rows: np.ndarray, picked: xr.DataArray) -> np.ndarray:
        agg = self.aggregate
        if isinstance(agg, xr.DataArray) and agg.dims == ("token",) and agg.sizes["token"] == rows.shape[1]:
            return np.asarray(agg.values, dtype=np.float64)
        if len(rows):  # standalone use without an explorer: colour by the mean over the rows
            return over_heads("mean", head_rows(picked))
        return np.zeros(rows.shape[1])

    def _structure(self) -> dict[str, Any] | None:
        """Everything but the colouring vector's part, cached for the last 4 (``data``, settings): a head
        change (a new ``aggregate``, the same layer's rows) costs only the colours, and so does going back
        to a document just shown (the explorer keeps its arrays)."""
        key = (self.heads and tuple(self.heads), self.text, self.level, self.show_special, self.window_start,
               self.max_tokens, self.mode, self.scale)  # fmt: skip
        for data, cached_key, cached in self._structures:
            if data is self.data and cached_key == key:
                return cached
        rows, names, tokens, picked = self._picked_rows()
        n, maxed = len(tokens), self.scale == "max"
        starts = unit_starts(tokens, self.level)
        rows_u = np.fmax.reduceat(rows, starts, axis=1) if n else rows
        shown = np.ones(len(starts), bool) if self.show_special else ~tokens["special"].to_numpy()[starts]
        end = min(n, self.window_start + self.max_tokens)
        units = np.flatnonzero(shown & (starts >= self.window_start) & (starts < end))
        if self.window_start > 0 and not len(units):  # a shorter document: back to its start
            return None
        alphas = np.zeros((0, 0))
        if self.mode != "highlight":
            row_tops = np.nanmax(np.where(shown, rows_u, np.nan), axis=1, initial=0.0)
            scaled = [scale_values(r, self.scale, t if maxed else None) for r, t in zip(rows_u, row_tops, strict=True)]
            alphas = row_alpha(np.reshape(scaled, rows_u.shape))[:, units]
        structure = {
            "rows": rows,
            "picked": picked,
            "names": names,
            "n": n,
            "starts": starts,
            "shown": shown,
            "end": end,
            "units": units,
            "alphas": alphas,
            "layout": layout_units(tokens, self.text, starts, units, at_end=end == n),
            "head_values": _float32(rows_u[:, units]),
            "row_alpha": _float32(alphas),
        }
        self._structures = [(self.data, key, structure), *self._structures[:3]]  # back and forth between documents
        return structure

    def _legend(self, top: float) -> str:
        full = f"{top:.3g} (the document's maximum)" if self.scale == "max" else "1 (absolute; values above 1 clipped)"
        legend = f"0 = no colour, full colour = {full}. " if self.mode != "rows" else ""
        if self.mode != "highlight":
            by = "that head's maximum" if self.scale == "max" else "nothing (absolute)"
            legend += f"Rows: one per head, alpha = 7/8·v + 1/8 with v scaled by {by}:"
        return legend

    @param.depends(*_REFRESH_ON, "window_start", watch=True)
    def _refresh(self) -> None:
        if self.data is None:
            self._update(**_EMPTY)
            self._shown = {}
            self._draw_figure()
            return
        structure = self._structure()
        if structure is None:  # a shorter document: back to its start
            self.window_start = 0
            return
        n, maxed, units, starts = structure["n"], self.scale == "max", structure["units"], structure["starts"]
        agg = self._aggregate_values(structure["rows"], structure["picked"])
        agg_u = np.fmax.reduceat(agg, starts) if n else agg
        top = float(np.nanmax(agg_u[structure["shown"]], initial=0.0))
        intensity = scale_values(agg_u, self.scale, top if maxed else None)[units]
        step = max(1, self.max_tokens // 4)
        self._slider.param.update(end=max(1, n - self.max_tokens), step=step, visible=n > self.max_tokens)
        names, layout = structure["names"], structure["layout"]
        rgb, legend = head_rgb(len(names)), self._legend(top)
        self._shown = {
            "layout": layout,
            "intensity": intensity if self.mode != "rows" else None,
            "row_alpha": np.asarray(structure["alphas"]),
            "head_names": names,
            "head_rgb": rgb,
            "legend": legend,
        }
        self._draw_figure()
        end = structure["end"]
        self._update(
            **vars(layout),
            values=_float32(agg_u[units]),
            colors=css_colors(intensity) if self.mode != "rows" else [],
            head_names=names,
            head_rgb=rgb,
            head_values=structure["head_values"],
            row_alpha=structure["row_alpha"],
            legend=legend,
            note=f"tokens {self.window_start + 1}–{end} of {n}" if n > self.max_tokens else "",
        )

    def _update(self, **values: Any) -> None:
        """Send the changed values only (an unchanged structure is not re-rendered by the client)."""
        values.update(mode=self.mode, selected_token=self.selected_token)
        values["colors_range"] = css_colors(np.array([0.0, 1.0]))
        current = self._component.param.values()
        self._component.param.update(**{k: v for k, v in values.items() if not same_values(current[k], v)})

    @param.depends("selected_token", watch=True)
    def _to_client(self) -> None:
        token = self.selected_token
        if token is not None and self.data is not None:  # outside the window: move the window to it
            n = self.data.sizes["token"]
            if 0 <= token < n and not self.window_start <= token < self.window_start + self.max_tokens:
                self.window_start = max(0, min(token - self.max_tokens // 2, n - self.max_tokens))
        self._component.selected_token = token

    def _from_client(self, event: param.parameterized.Event) -> None:
        self.selected_token = event.new

    # -- the figure ---------------------------------------------------------------------------------
    def plot_title(self) -> str:
        """The figure's title: the ``title`` input, else the name of the colouring vector."""
        return self.title or describe(self.aggregate if isinstance(self.aggregate, xr.DataArray) else self.data)

    def placed(self, with_title: bool = True) -> text_figure.Placed:
        """The figure of what the view shows now (the window's units, colours and head rows)."""
        shown, title = self._shown, self.plot_title() if with_title else ""
        if not shown:
            return text_figure.place(
                [], [], [], intensity=None, row_alpha=np.zeros((0, 0)), head_rgb=[], head_names=[],
                title=title, legend="Nothing to show: choose a document.", width=self.figure_width,
            )  # fmt: skip
        layout = shown["layout"]
        return text_figure.place(
            layout.labels,
            layout.gaps,
            layout.badges,
            intensity=shown["intensity"],
            row_alpha=shown["row_alpha"],
            head_rgb=shown["head_rgb"],
            head_names=shown["head_names"],
            title=title,
            legend=shown["legend"],
            tail=layout.tail,
            width=self.figure_width,
        )

    def svg(self) -> str:
        """The figure as a standalone SVG document (token text escaped)."""
        return text_figure.to_svg(self.placed())

    def _svg_file(self) -> io.BytesIO:
        return io.BytesIO(self.svg().encode("utf-8"))

    def figure(self) -> hv.Overlay:
        """The figure as a HoloViews overlay on pixel axes, with the save tool only (PNG); the title is Bokeh's."""
        placed = self.placed(with_title=False)
        return text_figure.to_holoviews(placed).opts(
            xlim=(0, placed.width),
            ylim=(0, placed.height),
            invert_yaxis=True,
            frame_width=int(placed.width),
            frame_height=int(placed.height),
            xaxis=None,
            yaxis=None,
            show_grid=False,
            show_frame=False,
            toolbar="above",
            default_tools=["save"],
            hooks=[title_hook(self.plot_title), page_scroll_hook],
        )

    @param.depends("title", "figure_width", watch=True)
    def _draw_figure(self) -> None:
        if not self._card.collapsed:  # drawn only while the card is open
            self._figure.object = self.figure()

    def __panel__(self) -> pn.layout.Panel:
        if self._layout is None:
            controls = pn.Param(
                self.param,
                parameters=["mode", "level", "scale", "show_special"],
                widgets={"mode": pn.widgets.RadioButtonGroup, "scale": pn.widgets.RadioButtonGroup},
                default_layout=pn.Row,
                show_name=False,
            )
            self._layout = pn.Column(controls, self._slider, self._component, self._card, sizing_mode="stretch_width")
        return self._layout
