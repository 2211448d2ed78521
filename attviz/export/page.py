"""The exported page: raw Bokeh models, small CustomJS callbacks, and one HTML file around them.

Bokeh draws the controls and the attention matrix (one ``Image`` glyph filled in the browser from the
decoded payload); the text and prediction panels are plain DOM built by ``app.js`` with
``textContent`` only. No user text goes into the Bokeh document: the page script reads it from the
JSON manifest. A Content-Security-Policy meta tag forbids every network request and every script but
the page's own (by hash), so even a token that escaped escaping could neither run nor phone home.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from importlib.resources import files
from typing import Any

import numpy as np
from bokeh.document import Document as BokehDocument
from bokeh.embed import components
from bokeh.embed.bundle import bundle_for_objs_and_resources
from bokeh.models import (
    BasicTicker,
    ColorBar,
    ColumnDataSource,
    CustomJS,
    CustomJSHover,
    CustomJSTickFormatter,
    HoverTool,
    LinearColorMapper,
    RadioButtonGroup,
    Range1d,
    Row,
    Select,
)
from bokeh.palettes import Blues256
from bokeh.plotting import figure
from bokeh.resources import INLINE

MODES = ("from", "to", "received")
MODE_LABELS = ("attention from the selected token", "attention to the selected token", "attention received (mean)")
_ASSETS = files("attviz.export")


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def build_models(n: int, n_docs: int, views: tuple[str, ...]) -> tuple[BokehDocument, list[Any]]:
    """The Bokeh document: controls, and the matrix figure when ``"matrix"`` is among ``views``.

    ``n`` is the first document's token count (the browser resizes everything on a document switch).
    Every model the page script uses has a ``name`` starting with ``attviz-``.
    """
    doc_select = Select(title="Document", options=[], value="0", name="attviz-doc", visible=n_docs > 1, width=320)
    layer_select = Select(title="Layer", options=[("0", "layer")], value="0", name="attviz-layer", width=120)
    head_select = Select(title="Heads", options=[("mean", "mean")], value="mean", name="attviz-head", width=170)
    mode = RadioButtonGroup(labels=list(MODE_LABELS), active=0, name="attviz-mode")
    for widget in (layer_select, head_select, mode):  # nothing to choose on a predictions-only page
        widget.visible = "text" in views or "matrix" in views
    doc_select.js_on_change("value", CustomJS(code="attviz.set({doc: Number(cb_obj.value)})"))
    layer_select.js_on_change("value", CustomJS(code="attviz.set({layer: Number(cb_obj.value)})"))
    head_select.js_on_change("value", CustomJS(code="attviz.set({head: cb_obj.value})"))
    mode.js_on_change("active", CustomJS(code=f"attviz.set({{mode: {list(MODES)!r}[cb_obj.active]}})"))
    controls = Row(doc_select, layer_select, head_select, mode, name="attviz-controls", margin=(0, 0, 8, 0))
    models: dict[str, Any] = {
        "docSelect": doc_select,
        "layerSelect": layer_select,
        "headSelect": head_select,
        "modeGroup": mode,
    }
    roots: list[Any] = [controls]
    if "matrix" in views:
        models.update(_matrix_figure(n))
        roots.append(models["figure"])
    document = BokehDocument()
    for root in roots:
        document.add_root(root)
    # CustomJS passes its args as named variables: gather them into one object for attviz.init.
    document.js_on_event("document_ready", CustomJS(args=models, code=f"attviz.init({{{', '.join(models)}}})"))
    return document, roots


def _matrix_figure(n: int) -> dict[str, Any]:
    side = max(n, 1)
    x_range = Range1d(-0.5, side - 0.5, name="attviz-x")
    y_range = Range1d(side - 0.5, -0.5, name="attviz-y")  # query 0 at the top
    fig = figure(
        name="attviz-matrix",
        x_range=x_range,
        y_range=y_range,
        width=640,
        height=600,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
        x_axis_label="key (attended to)",
        y_axis_label="query (attending)",
    )
    source = ColumnDataSource(
        {"image": [np.zeros((1, 1), np.float32)], "x": [-0.5], "y": [-0.5], "dw": [side], "dh": [side]},
        name="attviz-image-source",
    )
    mapper = LinearColorMapper(palette=list(reversed(Blues256)), low=0.0, high=1.0, name="attviz-mapper")
    image = fig.image(
        image="image", x="x", y="y", dw="dw", dh="dh", source=source, color_mapper=mapper, name="attviz-image"
    )
    highlight = ColumnDataSource({"left": [], "right": [], "bottom": [], "top": []}, name="attviz-highlight")
    fig.quad(
        left="left", right="right", bottom="bottom", top="top", source=highlight,
        fill_alpha=0.0, line_color="#f9822c", line_width=2, name="attviz-highlight-glyph",
    )  # fmt: skip
    label = CustomJSHover(code="return attviz.tokenLabel(value)")
    value = CustomJSHover(code="return attviz.cellLabel(value, special_vars)")  # exact where pooled
    fig.add_tools(
        HoverTool(
            renderers=[image],
            tooltips=[("query", "$y{custom}"), ("key", "$x{custom}"), ("attention", "@image{custom}")],
            formatters={"$x": label, "$y": label, "@image": value},
        )
    )
    fig.js_on_event("tap", CustomJS(code="attviz.tap(cb_obj.x, cb_obj.y)"))
    ticker = BasicTicker(min_interval=1, num_minor_ticks=0, desired_num_ticks=min(side, 30), name="attviz-ticker")
    formatter = CustomJSTickFormatter(code="return attviz.tickLabel(tick)")
    for axis in (fig.xaxis, fig.yaxis):
        axis.ticker = ticker
        axis.formatter = formatter
        axis.major_label_text_font_size = "10px"
    fig.xaxis.major_label_orientation = math.pi / 2
    fig.grid.visible = False
    fig.add_layout(ColorBar(color_mapper=mapper, width=12, name="attviz-colorbar"), "right")
    return {
        "figure": fig,
        "source": source,
        "mapper": mapper,
        "highlight": highlight,
        "xRange": x_range,
        "yRange": y_range,
        "ticker": ticker,
    }


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def read_manifest(page: str) -> dict[str, Any]:
    """The manifest an exported page carries (documents, payload kinds, stated errors)."""
    import re

    match = re.search(r"<script type='application/json' id='attviz-manifest'>(.*?)</script>", page, re.S)
    if match is None:
        raise ValueError("not an attviz page: no attviz-manifest script")
    return json.loads(match.group(1))


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def offline_csp(scripts: list[str]) -> str:
    """A Content-Security-Policy for an offline page: only these inline scripts (by hash), inline
    styles, data/blob images and fonts, and no network at all."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {' '.join(_sha256(s) for s in scripts)} 'unsafe-eval'",
            "style-src 'unsafe-inline'",
            "img-src data: blob:",
            "font-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def render_page(
    *,
    title: str,
    manifest: dict[str, Any],
    blobs: dict[str, str],
    views: tuple[str, ...],
    notes: list[str],
) -> str:
    """The whole HTML page (a string): Bokeh inline, the page script, the manifest and the payloads."""
    first = manifest["docs"][0] if manifest["docs"] else {"tokens": []}
    document, roots = build_models(len(first["tokens"]), len(manifest["docs"]), views)
    embed_script, divs = components(roots, wrap_script=False)
    bundle = bundle_for_objs_and_resources([document], INLINE)
    scripts = [*bundle.js_raw, _asset("app.js"), embed_script]
    csp = offline_csp(scripts)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n",
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n',
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n",
        f"<meta name='generator' content='attviz {esc(manifest['version'])}'>\n",
        f"<title>{esc(title)}</title>\n<style>{_asset('page.css')}</style>\n",
        *(f"<style>{css}</style>\n" for css in bundle.css_raw),
        "</head>\n<body>\n",
        f"<header><h1>{esc(title)}</h1>",
        *(f"<p class='attviz-note'>{esc(note)}</p>" for note in notes),
        "</header>\n",
        f"<div class='attviz-controls'>{divs[0]}</div>\n",
        "<p id='attviz-doc-notes' class='attviz-note attviz-warn'></p>\n",
        "<p id='attviz-error' class='attviz-error' hidden></p>\n",
        "<main class='attviz-grid'>\n",
    ]
    if "matrix" in views:
        parts.append(
            f"<section class='attviz-matrix'>{divs[1]}<p id='attviz-status' class='attviz-note'></p></section>\n"
        )
    parts.append("<section class='attviz-side'>\n")
    if "text" in views:
        parts.append("<h2>Text</h2><p id='attviz-legend' class='attviz-note'></p>")
        parts.append("<div id='attviz-text' class='attviz-text'></div>\n")
    if "predictions" in views:
        parts.append("<h2>Prediction</h2><div id='attviz-predictions'></div>\n")
    parts.append("</section>\n</main>\n")
    parts.append(f"<script type='application/json' id='attviz-manifest'>{script_json(manifest)}</script>\n")
    parts.extend(
        f"<script type='application/octet-stream' id='{name}'>{blob}</script>\n" for name, blob in blobs.items()
    )
    parts.extend(f"<script>{script}</script>\n" for script in scripts)
    parts.append("</body>\n</html>\n")
    return "".join(parts)
