"""The text view as a figure: the coloured text with one thin row per head, as SVG and as a Bokeh plot.

One layout (:func:`place`) of the units the view shows, in a monospaced font so it needs no text
measuring: wrapped lines of token boxes (highlight colour behind the text, the head rows under
it), the in-between text and a legend. :func:`to_svg` writes it as a standalone SVG document (the
view's "SVG" download, built on the server); :func:`to_holoviews` draws the same boxes and labels as
a Bokeh plot whose save tool gives the PNG. Token text is data: escaped in the SVG, canvas text in
Bokeh.
"""

from __future__ import annotations

import html
import re
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import holoviews as hv
import numpy as np
from bokeh.core.properties import value

from attviz.tokenization import NEWLINE_MARK

FONT_SIZE = 14  # pixels, text
BADGE_SIZE = 10  # pixels, special tokens
LEGEND_SIZE = 12  # pixels, the legend
CHAR = 0.6 * FONT_SIZE  # width of one monospaced character
BADGE_CHAR = 0.6 * BADGE_SIZE
PAD = 2  # pixels left and right of a token's text inside its box
TEXT_H = 20  # height of a token's box
ROW_H, ROW_GAP = 3, 1  # each head row under a token
LINE_GAP = 8
MARGIN = 10
TITLE_H = 26
LEGEND_H = 22
FONT_FAMILY = "DejaVu Sans Mono, Menlo, Consolas, monospace"
HIGHLIGHT = (249, 130, 44)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def columns(text: str) -> int:
    """Monospaced columns of ``text``: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@dataclass
class Box:
    """A filled rectangle (pixels from the top left) with its colour ``"r, g, b"`` and opacity."""

    x: float
    y: float
    w: float
    h: float
    rgb: str
    alpha: float


@dataclass
class Label:
    """A line of text: its left edge ``x`` and vertical middle ``y`` (pixels)."""

    x: float
    y: float
    text: str
    badge: bool = False


@dataclass
class Placed:
    """Everything the figure draws, in pixels."""

    width: float
    height: float
    title: str
    boxes: list[Box] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    legend: list[Label] = field(default_factory=list)
    swatches: list[Box] = field(default_factory=list)


def place(
    labels: Sequence[str],
    gaps: Sequence[str],
    badges: Sequence[bool],
    *,
    intensity: np.ndarray | None,
    row_alpha: np.ndarray,
    head_rgb: Sequence[str],
    head_names: Sequence[str],
    title: str,
    legend: str,
    tail: str = "",
    width: int = 960,
) -> Placed:
    """Lay out the units: ``intensity`` (0..1 per unit, or None: no highlight) colours the box behind
    the text; ``row_alpha`` (rows × units, may be empty) the head rows in ``head_rgb`` (``"r, g, b"``)."""
    n_rows = row_alpha.shape[0] if row_alpha.size else 0
    line_h = TEXT_H + n_rows * (ROW_H + ROW_GAP) + LINE_GAP
    out = Placed(width=width, height=0, title=title)
    x, line = 0.0, 0
    top = MARGIN + (TITLE_H if title else 0)

    def advance(text: str) -> None:  # in-between text: spaces move on, line breaks start a line
        nonlocal x, line
        for k, part in enumerate(text.split("\n")):
            if k:
                x, line = 0.0, line + 1
            if part.strip():
                if x + columns(part) * CHAR > width - 2 * MARGIN and x > 0:
                    x, line = 0.0, line + 1
                out.labels.append(Label(MARGIN + x, top + line * line_h + TEXT_H / 2, part))
            x += columns(part) * CHAR

    for i, label in enumerate(labels):
        advance(gaps[i] if i < len(gaps) else "")
        badge = bool(badges[i])
        shown = label.replace("\n", NEWLINE_MARK) or " "
        w = columns(shown) * (BADGE_CHAR if badge else CHAR) + 2 * PAD
        if x + w > width - 2 * MARGIN and x > 0:
            x, line = 0.0, line + 1
        left, y = MARGIN + x, top + line * line_h
        if intensity is not None:
            out.boxes.append(Box(left, y, w, TEXT_H, ", ".join(map(str, HIGHLIGHT)), float(intensity[i])))
        for r in range(n_rows):
            row_y = y + TEXT_H + ROW_GAP + r * (ROW_H + ROW_GAP)
            out.boxes.append(Box(left, row_y, w, ROW_H, head_rgb[r], float(row_alpha[r, i])))
        out.labels.append(Label(left + PAD, y + TEXT_H / 2, shown, badge))
        x += w
        if "\n" in label:
            x, line = 0.0, line + 1
    advance(tail)
    y = top + (line + 1) * line_h + LINE_GAP
    for legend_line in textwrap.wrap(legend, max(20, int((width - 2 * MARGIN) / (0.6 * LEGEND_SIZE)))):
        out.legend.append(Label(MARGIN, y + LEGEND_H / 2, legend_line))
        y += LEGEND_H
    x = 0.0
    for rgb, name in zip(head_rgb[:n_rows], head_names, strict=False):
        if x + 16 + columns(name) * CHAR > width - 2 * MARGIN and x > 0:
            x, y = 0.0, y + LEGEND_H
        out.swatches.append(Box(MARGIN + x, y + 5, 10, 10, rgb, 1.0))
        out.legend.append(Label(MARGIN + x + 14, y + LEGEND_H / 2, name))
        x += 14 + columns(name) * CHAR + 12
    out.height = y + (LEGEND_H if n_rows else 0) + MARGIN
    return out


# -- SVG ---------------------------------------------------------------------------------------------
def _xml(text: str) -> str:
    """Escaped text for an SVG element or attribute (characters XML forbids become U+FFFD)."""
    return html.escape(_NOT_XML.sub("\ufffd", text), quote=True)


def _rect(box: Box, extra: str = "") -> str:
    return (
        f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" '
        f'fill="rgb({box.rgb})" fill-opacity="{box.alpha:.3f}"{extra}/>'
    )


def _text(label: Label, size: int, colour: str = "#222") -> str:
    return (
        f'<text x="{label.x:.1f}" y="{label.y:.1f}" font-size="{size}" fill="{colour}" '
        f'dominant-baseline="central" xml:space="preserve">{_xml(label.text)}</text>'
    )


def to_svg(placed: Placed) -> str:
    """A standalone SVG document of the figure (the token text escaped)."""
    w, h = placed.width, placed.height
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" '
        f'font-family="{FONT_FAMILY}">',
        f"<title>{_xml(placed.title)}</title>" if placed.title else "",
        f'<rect width="{w:.0f}" height="{h:.0f}" fill="white"/>',
    ]
    if placed.title:
        parts.append(
            _text(Label(MARGIN, MARGIN + TITLE_H / 2 - 4, placed.title), FONT_SIZE, "#000").replace(
                "<text ", '<text font-weight="bold" ', 1
            )
        )
    parts += [_rect(box) for box in placed.boxes]
    for label in placed.labels:
        if label.badge:
            width = columns(label.text) * BADGE_CHAR + 2 * PAD
            frame = Box(label.x - PAD, label.y - TEXT_H / 2 + 2, width, TEXT_H - 4, "255, 255, 255", 0.0)
            parts.append(_rect(frame, ' stroke="#ccc"'))
        parts.append(_text(label, BADGE_SIZE if label.badge else FONT_SIZE, "#777" if label.badge else "#222"))
    parts += [_rect(box) for box in placed.swatches]
    parts += [_text(label, LEGEND_SIZE, "#555") for label in placed.legend]
    parts.append("</svg>")
    return "\n".join(p for p in parts if p) + "\n"


def _hex(rgb: str) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb.split(","))


# -- Bokeh ------------------------------------------------------------------------------------------
def to_holoviews(placed: Placed) -> hv.Overlay:
    """The figure as HoloViews elements on pixel axes (y down): boxes, token labels, badges, legend."""
    boxes = placed.boxes + placed.swatches
    rects = hv.Rectangles(
        {
            "x0": [b.x for b in boxes],
            "y0": [b.y for b in boxes],
            "x1": [b.x + b.w for b in boxes],
            "y1": [b.y + b.h for b in boxes],
            "colour": [_hex(b.rgb) for b in boxes],
            "alpha": [b.alpha for b in boxes],
        },
        vdims=["colour", "alpha"],
    ).opts(color="colour", alpha="alpha", line_alpha=0, default_tools=["save"])

    def labels(items: list[Label], size: int, colour: str) -> hv.Labels:
        data = ([t.x for t in items], [t.y for t in items], [t.text for t in items])
        return hv.Labels(data, vdims="text").opts(
            text_align="left",
            text_baseline="middle",
            text_font_size=f"{size}px",
            text_color=colour,
            text_font=value("monospace"),  # a bare string would name a column
            default_tools=["save"],
        )

    text = labels([t for t in placed.labels if not t.badge], FONT_SIZE, "#222222")
    badges = labels([t for t in placed.labels if t.badge], BADGE_SIZE, "#777777")
    legend = labels(placed.legend, LEGEND_SIZE, "#555555")
    return rects * text * badges * legend
