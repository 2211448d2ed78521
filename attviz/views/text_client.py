"""Browser side of the text view: :class:`TokenText`, a Panel ``JSComponent`` placing coloured spans.

Python computes everything (labels, colours, alphas); the client only places spans (token text as
``textContent``, never markup) and re-colours them in place when values change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import param
from bokeh.palettes import Category10_10, Category20_20
from panel.custom import JSComponent

CSS = """
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


def head_rgb(n: int) -> list[str]:
    """``"r, g, b"`` colours of ``n`` head rows (Category10, or Category20 beyond 10 heads)."""
    palette = Category10_10 if n <= 10 else Category20_20
    return [", ".join(str(int(palette[i % len(palette)][k : k + 2], 16)) for k in (1, 3, 5)) for i in range(n)]
