"""The document's text coloured by attention (the AttViz text view).

The text is rebuilt from the original string and the token character offsets, so readers see the
document as written (no ``##`` pieces); special tokens without a span ([CLS], [SEP]) are small
badges. The browser side is one :class:`TokenText` (a Panel ``JSComponent``): Python computes the
colours, the client only places spans (token text as ``textContent``, never markup) and re-colours
them in place when values change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr
from bokeh.palettes import Category10_10, Category20_20
from panel.custom import JSComponent

from attviz.corpus import tokens_of
from attviz.views.base import View

#: Background colour of the highlight mode (the AttViz orange, as in the aggregate plot).
HIGHLIGHT_RGB = (249, 130, 44)
_MARKERS = ("Ġ", "▁")


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


def clean_token(token: str) -> str:
    """A token string for display: the ``##``, ``Ġ`` and ``▁`` sub-word markers removed."""
    cleaned = token[2:] if token.startswith("##") and len(token) > 2 else token.lstrip("".join(_MARKERS))
    return cleaned or token


def offsets_usable(tokens: pd.DataFrame, text: str | None) -> bool:
    """Whether the token offsets index into ``text`` (false for legacy data with all-zero offsets)."""
    if not text or len(tokens) == 0:
        return False
    ends = tokens["end"].to_numpy()
    return bool(ends.max() > 0 and ends.max() <= len(text) and (tokens["start"].to_numpy() <= ends).all())


def unit_starts(tokens: pd.DataFrame, level: str) -> np.ndarray:
    """First token position of each display unit: every token, or runs of pieces of one word."""
    n = len(tokens)
    if level == "token" or n == 0:
        return np.arange(n)
    if level != "word":
        raise ValueError(f"unknown level {level!r} (expected 'token' or 'word')")
    word = tokens["word"].to_numpy()
    same = (word[1:] == word[:-1]) & (word[1:] >= 0) & ~tokens["special"].to_numpy()[1:]
    return np.flatnonzero(np.concatenate([[True], ~same]))


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
    with_offsets = offsets_usable(tokens, text)
    out = Layout([], [], [], [], [], [], "")
    cursor = 0 if len(units) and units[0] == 0 else None  # leading text only at the document start
    for u in units:
        a, b = int(bounds[u]), int(bounds[u + 1]) - 1
        pieces = raw[a : b + 1]
        badge = bool(special[a] or (with_offsets and start[a] == end[b]))
        label = "".join(map(clean_token, pieces))
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
        out.pieces.append(" · ".join(pieces))
    if with_offsets and cursor is not None and at_end:
        out.tail = text[cursor:]
    return out


_CSS = """
.attviz-body { white-space: pre-wrap; line-height: 1.9; font-size: 15px; }
.attviz-token { cursor: pointer; border-radius: 3px; }
.attviz-token.attviz-with-rows { display: inline-flex; flex-direction: column; vertical-align: top; }
.attviz-row { display: block; height: 3px; margin-top: 1px; }
.attviz-special { font-size: 10px; color: #777; border: 1px solid #ccc; padding: 0 2px; margin: 0 2px; }
.attviz-selected { outline: 2px solid #222; outline-offset: 1px; }
.attviz-note, .attviz-legend { font-size: 12px; color: #555; }
.attviz-swatch { display: inline-block; width: 60px; height: 10px; margin: 0 4px; vertical-align: middle; }
.attviz-head { display: inline-block; width: 10px; height: 10px; margin: 0 2px 0 8px; }
"""

_ESM = """
export function render({ model }) {
  const root = document.createElement("div");
  const note = document.createElement("div");
  const body = document.createElement("div");
  const legend = document.createElement("div");
  note.className = "attviz-note"; body.className = "attviz-body"; legend.className = "attviz-legend";
  root.append(note, body, legend);
  let spans = [], byToken = new Map(), selected = null, pending = false;
  const fmt = (v) => (v === undefined || Number.isNaN(v)) ? "-" : Number(v).toFixed(3);
  const cell = (a, r, i) => (a && a.shape && a.shape.length === 2 && r < a.shape[0]) ? a[r * a.shape[1] + i]
    : undefined;
  const el = (tag, cls) => { const e = document.createElement(tag); e.className = cls; return e; };

  function build() {
    pending = false; body.replaceChildren(); spans = []; byToken = new Map(); selected = null;
    const nRows = model.mode === "highlight" ? 0 : model.head_names.length;
    const frag = document.createDocumentFragment();
    for (let i = 0; i < model.labels.length; i++) {
      if (model.gaps[i]) frag.appendChild(document.createTextNode(model.gaps[i]));
      const span = el("span", model.badges[i] ? "attviz-token attviz-special" : "attviz-token");
      span.dataset.index = String(model.first[i]);
      span.dataset.unit = String(i);
      const label = el("span", "attviz-label");
      label.textContent = model.labels[i];
      span.appendChild(label);
      if (nRows) {
        span.classList.add("attviz-with-rows");
        for (let r = 0; r < nRows; r++) span.appendChild(el("span", "attviz-row"));
      }
      for (let p = model.first[i]; p <= model.last[i]; p++) byToken.set(p, span);
      spans.push(span); frag.appendChild(span);
    }
    if (model.tail) frag.appendChild(document.createTextNode(model.tail));
    body.appendChild(frag);
    note.textContent = model.note;
    recolor(); select();
  }

  function recolor() {
    if (pending) return;
    const colors = model.colors, alpha = model.row_alpha, rgb = model.head_rgb;
    spans.forEach((span, i) => {
      span.style.backgroundColor = i < colors.length ? colors[i] : "";
      const bars = span.querySelectorAll(".attviz-row");
      bars.forEach((bar, r) => {
        const a = cell(alpha, r, i);
        bar.style.backgroundColor = `rgba(${rgb[r]}, ${a === undefined ? 0 : a.toFixed(3)})`;
      });
    });
    legend.replaceChildren();
    if (model.colors.length) {
      const sw = el("span", "attviz-swatch");
      sw.style.background = `linear-gradient(to right, ${model.colors_range[0]}, ${model.colors_range[1]})`;
      legend.appendChild(sw);
    }
    legend.appendChild(document.createTextNode(model.legend));
    if (model.mode !== "highlight") model.head_names.forEach((name, r) => {
      const box = el("span", "attviz-head");
      box.style.backgroundColor = `rgb(${rgb[r]})`;
      legend.append(box, document.createTextNode(name));
    });
  }

  function select() {
    if (selected) selected.classList.remove("attviz-selected");
    selected = byToken.get(model.selected_token) || null;
    if (selected) selected.classList.add("attviz-selected");
  }

  function tooltip(i) {
    const lines = [`${model.pieces[i]}`, `value: ${fmt(model.values[i])}`];
    const parts = model.head_names.map((name, r) => `${name} ${fmt(cell(model.head_values, r, i))}`);
    for (let k = 0; k < parts.length; k += 4) lines.push(parts.slice(k, k + 4).join("  "));
    return lines.join("\\n");
  }

  body.addEventListener("click", (ev) => {
    const span = ev.target.closest(".attviz-token");
    if (span) model.selected_token = Number(span.dataset.index);
  });
  body.addEventListener("mouseover", (ev) => {
    const span = ev.target.closest(".attviz-token");
    if (span) span.title = tooltip(Number(span.dataset.unit));
  });
  const schedule = () => { if (!pending) { pending = true; queueMicrotask(build); } };
  model.on(["labels", "gaps", "tail", "badges", "first", "last", "pieces", "mode", "head_names", "note"], schedule);
  model.on(["colors", "row_alpha", "head_rgb", "legend"], () => recolor());
  model.on("selected_token", () => select());
  build();
  return root;
}
"""


class TokenText(JSComponent):
    """Browser side of :class:`TextView`: spans of text coloured by precomputed values."""

    labels = param.List(default=[], item_type=str, doc="Displayed text of each unit (token or word).")
    gaps = param.List(default=[], item_type=str, doc="Original text before each unit.")
    tail = param.String(default="", doc="Original text after the last unit.")
    badges = param.List(default=[], doc="Whether each unit is drawn as a badge (special token).")
    first = param.List(default=[], doc="Token position of each unit's first piece (its data-index).")
    last = param.List(default=[], doc="Token position of each unit's last piece.")
    pieces = param.List(default=[], doc="The token pieces of each unit (hover).")
    values = param.Array(default=np.zeros(0, np.float32), doc="The aggregate value of each unit (hover).")
    colors = param.List(default=[], doc="CSS background colour of each unit (empty: no highlight).")
    colors_range = param.List(default=["", ""], doc="CSS colours of 0 and of full intensity (legend).")
    head_names = param.List(default=[], doc="Name of each head row.")
    head_rgb = param.List(default=[], doc="'r, g, b' colour of each head row.")
    head_values = param.Array(default=np.zeros((0, 0), np.float32), doc="Value per head row and unit (hover).")
    row_alpha = param.Array(default=np.zeros((0, 0), np.float32), doc="Alpha per head row and unit (empty: no rows).")
    mode = param.Selector(default="highlight", objects=["highlight", "rows", "both"], doc="Display mode.")
    legend = param.String(default="", doc="What 0 and full colour mean.")
    note = param.String(default="", doc="A line above the text (e.g. the window shown).")
    selected_token = param.Integer(default=None, allow_None=True, doc="Position of the selected token.")

    _esm = _ESM


def _float32(values: Any) -> np.ndarray:
    """Values sent to the client: float32 arrays travel as binary buffers (fast for 4,096 × 12)."""
    return np.ascontiguousarray(values, dtype=np.float32)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.shape(a) == np.shape(b) and np.array_equal(a, b, equal_nan=True)
    return a == b


def head_rgb(n: int) -> list[str]:
    """``"r, g, b"`` colours of ``n`` head rows (Category10, or Category20 beyond 10 heads)."""
    palette = Category10_10 if n <= 10 else Category20_20
    return [", ".join(str(int(palette[i % len(palette)][k : k + 2], 16)) for k in (1, 3, 5)) for i in range(n)]


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

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._component = TokenText(sizing_mode="stretch_width", stylesheets=[_CSS])
        self._component.param.watch(self._from_client, "selected_token")
        self._slider = pn.widgets.IntSlider.from_param(self.param.window_start, start=0, end=1, visible=False)
        self._layout: pn.layout.Panel | None = None
        self._refresh()

    def _rows(self) -> tuple[np.ndarray, list[str], np.ndarray, pd.DataFrame]:
        """(rows × tokens values, row names, aggregate per token, token table) of ``data``."""
        data = self.data if self.data.ndim == 2 else self.data.expand_dims(vector=["value"])
        row_dim = next(d for d in data.dims if d != "token")
        data = data.transpose(row_dim, "token")
        labels = data[row_dim].values.tolist()
        if self.heads:
            pick = [i for i, h in enumerate(labels) if h in self.heads] if row_dim == "head" else self.heads
            pick = [i for i in pick if 0 <= i < len(labels)] or list(range(len(labels)))
            data, labels = data.isel({row_dim: pick}), [labels[i] for i in pick]
        rows = np.asarray(data.values, dtype=np.float64)
        agg = self.aggregate
        if isinstance(agg, xr.DataArray) and agg.dims == ("token",) and agg.sizes["token"] == rows.shape[1]:
            agg_values = np.asarray(agg.values, dtype=np.float64)
        else:  # standalone use without an explorer: colour by the mean over the rows
            agg_values = np.nanmean(rows, axis=0) if len(rows) else np.zeros(rows.shape[1])
        names = [f"H{h}" if row_dim == "head" else str(h) for h in labels]
        return rows, names, agg_values, tokens_of(self.data, "token")

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
            return
        rows, names, agg, tokens = self._rows()
        n, maxed = len(tokens), self.scale == "max"
        starts = unit_starts(tokens, self.level)
        agg_u = np.fmax.reduceat(agg, starts) if n else agg
        rows_u = np.fmax.reduceat(rows, starts, axis=1) if n else rows
        shown = np.ones(len(starts), bool) if self.show_special else ~tokens["special"].to_numpy()[starts]
        top = float(np.nanmax(agg_u[shown], initial=0.0))
        end = min(n, self.window_start + self.max_tokens)
        units = np.flatnonzero(shown & (starts >= self.window_start) & (starts < end))
        if self.window_start > 0 and not len(units):  # a shorter document: back to its start
            self.window_start = 0
            return
        alphas = np.zeros((0, 0))
        if self.mode != "highlight":
            row_tops = np.nanmax(np.where(shown, rows_u, np.nan), axis=1, initial=0.0)
            scaled = [scale_values(r, self.scale, t if maxed else None) for r, t in zip(rows_u, row_tops, strict=True)]
            alphas = row_alpha(np.reshape(scaled, rows_u.shape))[:, units]
        intensity = scale_values(agg_u, self.scale, top if maxed else None)[units]
        step = max(1, self.max_tokens // 4)
        self._slider.param.update(end=max(1, n - self.max_tokens), step=step, visible=n > self.max_tokens)
        self._update(
            **vars(layout_units(tokens, self.text, starts, units, at_end=end == n)),
            values=_float32(agg_u[units]),
            colors=css_colors(intensity) if self.mode != "rows" else [],
            head_names=names,
            head_rgb=head_rgb(len(names)),
            head_values=_float32(rows_u[:, units]),
            row_alpha=_float32(alphas),
            legend=self._legend(top),
            note=f"tokens {self.window_start + 1}–{end} of {n}" if n > self.max_tokens else "",
        )

    def _update(self, **values: Any) -> None:
        """Send the changed values only (an unchanged structure is not re-rendered by the client)."""
        values.update(mode=self.mode, selected_token=self.selected_token)
        values["colors_range"] = css_colors(np.array([0.0, 1.0]))
        current = self._component.param.values()
        self._component.param.update(**{k: v for k, v in values.items() if not _same(current[k], v)})

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

    def __panel__(self) -> pn.layout.Panel:
        if self._layout is None:
            controls = pn.Param(
                self.param,
                parameters=["mode", "level", "scale", "show_special"],
                widgets={"mode": pn.widgets.RadioButtonGroup, "scale": pn.widgets.RadioButtonGroup},
                default_layout=pn.Row,
                show_name=False,
            )
            self._layout = pn.Column(controls, self._slider, self._component, sizing_mode="stretch_width")
        return self._layout
