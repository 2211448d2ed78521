"""The corpus statistics as CSV tables and as one self-contained, offline HTML report (issue #13).

:func:`compute_tables` derives every table once from :class:`~attviz.analysis.engine.CorpusStatistics`:
the head atlas, the head similarity (labelled ``L{layer}H{head}``), and with a grouping (``by``: gold
label, prediction or correct/wrong) the head and token contrasts, the weighted log-odds of token types
and the per-class token ranking; with a second store's statistics (``compare``) store A vs store B on
heads and on tokens. :func:`write_tables` writes them as CSV files into a folder; :func:`write_report`
writes one HTML file with Bokeh inline (no CDN, no request of any kind: a Content-Security-Policy allows
only the page's own scripts, by hash), the plots drawn in the browser and the tables as HTML. Token text
is untrusted input: everything put into the HTML is escaped, and the text inside Bokeh's data is
escaped by Bokeh's embedding and only ever drawn on a canvas.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attviz.analysis.engine import CorpusStatistics, group_of
from attviz.atomic import atomic_path, write_text
from attviz.errors import InputError

TOP_ROWS = 20  # rows of each contrast table shown in the report
CI_ROWS = 50  # rows of each contrast table (smallest p first) with a bootstrap interval for Cliff's delta
TABLES_VERSION = 1  # bump when a table changes: cached tables of another version are computed again
MAX_CLASSES = 12  # classes with their own ranking, histogram and QQ plot in the report
RANKING_K = 15  # token types per class in the report's ranking bars
BY_CHOICES = ("gold", "label", "predicted", "prediction", "correct")  # the groupings a contrast takes

#: What the contrast tables rest on (the head metrics' own references come from the atlas).
CONTRAST_REFERENCES = (
    'Mann & Whitney 1947, "On a Test of Whether one of Two Random Variables is Stochastically Larger than '
    'the Other", https://doi.org/10.1214/aoms/1177730491',
    'Cliff 1993, "Dominance statistics: Ordinal analyses to answer ordinal questions", '
    "https://doi.org/10.1037/0033-2909.114.3.494",
    'Benjamini & Hochberg 1995, "Controlling the False Discovery Rate", '
    "https://doi.org/10.1111/j.2517-6161.1995.tb02031.x",
    'Efron & Tibshirani 1993, "An Introduction to the Bootstrap" (percentile intervals)',
    "Monroe, Colaresi & Quinn 2008, \"Fightin' Words: Lexical Feature Selection and Evaluation for "
    'Identifying the Content of Political Conflict", https://doi.org/10.1093/pan/mpn018',
    'Wilcoxon 1945, "Individual Comparisons by Ranking Methods", https://doi.org/10.2307/3001968',
)


def metric_order(stats: CorpusStatistics) -> list[str]:
    """The statistics' head metrics in the atlas's display order (then any others)."""
    from attviz.analysis.atlas import HEAD_METRICS

    present = list(stats.metrics)
    return [m for m in HEAD_METRICS if m in present] + [m for m in present if m not in HEAD_METRICS]


def head_labels(stats: CorpusStatistics) -> list[str]:
    """``L{layer}H{head}`` for every head, in the flat order ``layer position · H + head position``."""
    layers, heads = stats.heads["layer"].values, stats.heads["head"].values
    return [f"L{int(layer)}H{int(head)}" for layer in layers for head in heads]


def references(stats: CorpusStatistics | None = None) -> list[str]:
    """The papers behind the head metrics, the similarity, the token vectors and the contrasts."""
    from attviz.aggregations.vectors import ATTVIZ, CLARK, VIG
    from attviz.analysis.atlas import HEAD_METRICS

    found = [metric.reference for metric in HEAD_METRICS.values()]
    found += [CLARK + " (head similarity, §6)", VIG + " (attention received)", ATTVIZ, *CONTRAST_REFERENCES]
    return list(dict.fromkeys(found))


def default_by(stats: CorpusStatistics, by: str | None) -> str | None:
    """The grouping to contrast: ``by`` itself (checked), else ``label`` where the corpus has two or more
    gold labels, else None (no contrast)."""
    if by is not None:
        if by not in BY_CHOICES:
            raise InputError(f"--by {by!r}: choose gold, predicted or correct")
        values = group_of(stats.documents, by).dropna()  # raises InputError without the column
        if values.nunique() < 2:
            raise InputError(f"grouping by {by} needs two groups of documents; the corpus has {values.nunique()}")
        return by
    if "label" in stats.documents and stats.documents["label"].dropna().nunique() >= 2:
        return "label"
    return None


@dataclass
class Tables:
    """Every table of the statistics (name → DataFrame), what they were grouped by, and notes."""

    frames: dict[str, pd.DataFrame]
    by: str | None = None
    groups: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)


def compute_tables(
    stats: CorpusStatistics,
    *,
    by: str | None = None,
    compare: CorpusStatistics | None = None,
    resamples: int = 1000,
    ci_rows: int | None = CI_ROWS,
    cache: str | os.PathLike | None = None,
    compare_id: str | None = None,
) -> Tables:
    """Every table: ``atlas``, ``similarity``; with a grouping ``contrast_heads``, ``contrast_tokens``,
    ``log_odds``, ``class_ranking``; with ``compare`` ``compare_heads``, ``compare_tokens``.

    ``cache``: a folder (the statistics' ``stats/<key>`` group of the store) where the tables are kept
    and looked up, keyed by the documents, the grouping, the test settings and ``compare_id`` (what names
    the second store; without it, tables with ``compare`` are not cached)."""
    by = default_by(stats, by)
    key = None
    if cache is not None and (compare is None or compare_id is not None):
        key = _tables_key(stats, by, compare, compare_id, resamples, ci_rows)
        found = load_tables(Path(cache) / f"tables-{key}")
        if found is not None:
            return found
    tables = _compute(stats, by, compare, resamples=resamples, ci_rows=ci_rows)
    if key is not None:
        try:
            save_tables(Path(cache) / f"tables-{key}", tables)
        except OSError as exc:  # a read-only store: the tables are still returned
            tables.notes.append(f"tables not cached in {cache}: {exc}")
    return tables


def _compute(stats, by, compare, *, resamples: int, ci_rows: int | None) -> Tables:
    from attviz.analysis.differences import class_ranking, compare_stores, contrast, token_log_odds

    frames: dict[str, pd.DataFrame] = {"atlas": stats.atlas()}
    notes = list(stats.problems)
    if stats.similarity is not None:
        labels = head_labels(stats)
        frames["similarity"] = pd.DataFrame(
            np.asarray(stats.similarity.values), index=pd.Index(labels, name="head"), columns=labels
        )
    tables = Tables(frames, by=by, notes=notes)
    tests = {"resamples": resamples, "ci_rows": ci_rows}
    if by is not None:
        heads = contrast(stats, by, on="heads", **tests)
        frames["contrast_heads"] = heads
        tables.groups = (str(heads.attrs["a"]), str(heads.attrs["b"]))
        frames["contrast_tokens"] = contrast(stats, by, on="tokens", **tests)
        try:
            frames["log_odds"] = token_log_odds(stats, by)
        except InputError as exc:
            notes.append(f"no log-odds table: {exc}")
        frames["class_ranking"] = class_ranking(stats, by)
    else:
        notes.append("no contrasts: the corpus has fewer than two gold labels (choose a grouping with --by)")
    if compare is not None:
        frames["compare_heads"] = compare_stores(stats, compare, on="heads", **tests)
        frames["compare_tokens"] = compare_stores(stats, compare, on="tokens", **tests)
    return tables


def _tables_key(stats, by, compare, compare_id, resamples, ci_rows) -> str:
    def documents(s: CorpusStatistics) -> str:
        return hashlib.sha1("\n".join(map(str, s.documents.index)).encode()).hexdigest()

    blob = {
        "version": TABLES_VERSION,
        "settings": stats.settings.key(),
        "documents": documents(stats),
        "by": by,
        "resamples": resamples,
        "ci_rows": ci_rows,
        "compare": None
        if compare is None
        else {"id": compare_id, "settings": compare.settings.key(), "documents": documents(compare)},
    }
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def save_tables(folder: Path, tables: Tables) -> Path:
    """Keep ``tables`` in ``folder`` (one small zarr group per table and a JSON index; atomically)."""
    import shutil
    import uuid

    import xarray as xr

    from attviz.zarr3 import write_dataset

    if folder.exists():
        return folder
    temporary = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    temporary.mkdir(parents=True)
    try:
        index = {"by": tables.by, "groups": tables.groups, "notes": tables.notes, "frames": {}}
        for i, (name, frame) in enumerate(tables.frames.items()):
            flat = frame.reset_index() if name == "similarity" else frame.reset_index(drop=True)
            columns = [str(c) for c in flat.columns]
            data = {f"c{j}": ("row", flat.iloc[:, j].to_numpy()) for j in range(len(columns))}
            write_dataset(temporary / f"t{i}", xr.Dataset(data))
            attrs = {k: v for k, v in frame.attrs.items() if isinstance(v, str | int | float | bool | None)}
            index["frames"][name] = {"group": f"t{i}", "columns": columns, "attrs": attrs}
        (temporary / "tables.json").write_text(json.dumps(index), encoding="utf-8")
        try:
            os.replace(temporary, folder)
        except OSError:
            if not folder.exists():
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # another process kept the same tables first
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def load_tables(folder: Path) -> Tables | None:
    """The tables :func:`save_tables` kept in ``folder``, or None."""
    from attviz.zarr3 import read_dataset

    index_file = folder / "tables.json"
    if not index_file.is_file():
        return None
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        frames = {}
        for name, entry in index["frames"].items():
            ds = read_dataset(folder / entry["group"])
            if ds is None:
                return None
            columns = entry["columns"]
            frame = pd.DataFrame({c: ds[f"c{j}"].values for j, c in enumerate(columns)}, columns=columns)
            if name == "similarity":
                frame = frame.set_index("head")
            frame.attrs.update(entry["attrs"])
            frames[name] = frame
    except (OSError, ValueError, KeyError):
        return None
    groups = tuple(index["groups"]) if index.get("groups") else None
    return Tables(frames, by=index.get("by"), groups=groups, notes=list(index.get("notes", [])))


def write_tables(
    stats: CorpusStatistics,
    folder: str | os.PathLike,
    *,
    by: str | None = None,
    compare: CorpusStatistics | None = None,
    tables: Tables | None = None,
) -> dict[str, Path]:
    """Write every table of :func:`compute_tables` as ``<folder>/<name>.csv`` (each atomically);
    returns name → path."""
    tables = tables or compute_tables(stats, by=by, compare=compare)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, frame in tables.frames.items():
        path = folder / f"{name}.csv"
        write_text(path, frame.to_csv(index=name == "similarity"))
        written[name] = path
    return written


# -- the summary ------------------------------------------------------------------------------
def summary(stats: CorpusStatistics, tables: Tables, *, top: int = 3) -> str:
    """A few lines for a terminal: the documents, the top heads per metric, the top contrasts."""
    from attviz.analysis.atlas import HEAD_METRICS

    atlas = tables.frames["atlas"]
    layers, heads = stats.heads.sizes["layer"], stats.heads.sizes["head"]
    lines = [
        f"{len(stats.documents)} documents, {layers} layers × {heads} heads; aggregation {stats.settings.aggregation}"
    ]
    lines.append("top heads per metric (mean over documents):")
    for metric in metric_order(stats):
        best = atlas.nlargest(top, metric)
        cells = ", ".join(f"L{r.layer}H{r.head} {getattr(r, metric):.3g}" for r in best.itertuples())
        name = HEAD_METRICS[metric].long_name if metric in HEAD_METRICS else metric
        lines.append(f"  {metric:<11} {cells}   ({name})")
    if "pattern" in atlas:
        counts = atlas["pattern"].value_counts()
        lines.append("patterns: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    if tables.groups:
        a, b = tables.groups
        lines.append(f"contrasts by {tables.by}: {a} vs {b}")
        for name, key in (("heads", "metric"), ("tokens", "type")):
            frame = tables.frames.get(f"contrast_{name}")
            if frame is None or frame.empty:
                continue
            lines.append(f"  top {name} (Mann-Whitney, q: Benjamini-Hochberg):")
            for row in frame.head(top * 2).itertuples():
                lines.append(
                    f"    {str(getattr(row, key))!r:<16} L{row.layer}H{row.head}  "
                    f"mean {row.mean_a:.3g} vs {row.mean_b:.3g}  delta {row.delta:+.2f}  q {row.q_mannwhitney:.2g}"
                )
    for name in ("compare_heads", "compare_tokens"):
        frame = tables.frames.get(name)
        if frame is not None and not frame.empty:
            row = frame.iloc[0]
            key = "metric" if "metric" in frame else "type"
            lines.append(
                f"store A vs B ({name.split('_')[1]}, {frame.attrs.get('documents')} paired documents): "
                f"top {row[key]!r} L{row['layer']}H{row['head']} mean {row['mean_a']:.3g} vs {row['mean_b']:.3g}, "
                f"Wilcoxon p {row['p_wilcoxon']:.2g}"
            )
    lines.extend(f"note: {note}" for note in tables.notes)
    return "\n".join(lines)


# -- the HTML report --------------------------------------------------------------------------
def _finite(values: Any) -> list[float | None]:
    """Floats for Bokeh's JSON with NaN as None (drawn as gaps)."""
    array = np.asarray(values, dtype=np.float64)
    return [float(v) if np.isfinite(v) else None for v in array]


def _atlas_models(stats: CorpusStatistics, atlas: pd.DataFrame) -> tuple[Any, Any]:
    """The atlas grid (a metric picked with a Select) and a scatter of two metrics."""
    from bokeh.layouts import column, row
    from bokeh.models import ColorBar, ColumnDataSource, CustomJS, Div, HoverTool, LinearColorMapper, Select
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    from attviz.analysis.atlas import HEAD_METRICS

    metrics = metric_order(stats)
    info = {
        m: {
            "long": HEAD_METRICS[m].long_name if m in HEAD_METRICS else m,
            "units": HEAD_METRICS[m].units if m in HEAD_METRICS else "",
            "higher": HEAD_METRICS[m].higher if m in HEAD_METRICS else "",
            "ref": HEAD_METRICS[m].reference if m in HEAD_METRICS else "",
        }
        for m in metrics
    }
    first = metrics[0]
    data: dict[str, Any] = {
        "layer": atlas["layer"].astype(int).tolist(),
        "head": atlas["head"].astype(int).tolist(),
        "label": [f"L{int(r.layer)}H{int(r.head)}" for r in atlas.itertuples()],
        "pattern": atlas["pattern"].astype(str).tolist() if "pattern" in atlas else [""] * len(atlas),
        **{m: _finite(atlas[m]) for m in metrics},
    }
    data["value"] = list(data[first])
    data["x"], data["y"] = list(data[first]), list(data[metrics[min(1, len(metrics) - 1)]])
    source = ColumnDataSource(data, name="attviz-atlas-source")

    def bounds(metric: str) -> tuple[float, float]:
        finite = [v for v in data[metric] if v is not None]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        return (low, high) if high > low else (low - 0.5, high + 0.5)

    low, high = bounds(first)
    mapper = LinearColorMapper(palette=Viridis256, low=low, high=high, nan_color="#dddddd")
    n_layers, n_heads = stats.heads.sizes["layer"], stats.heads.sizes["head"]
    grid = figure(
        title=f"{first}: {info[first]['long']}",
        width=min(900, 120 + 46 * n_heads),
        height=min(700, 90 + 40 * n_layers),
        x_range=(-0.5, n_heads - 0.5),
        y_range=(n_layers - 0.5, -0.5),
        x_axis_label="head",
        y_axis_label="layer",
        tools="save",
        toolbar_location="right",
        name="attviz-atlas",
    )
    grid.rect(
        "head", "layer", 0.96, 0.96, source=source, fill_color={"field": "value", "transform": mapper}, line_color=None
    )
    grid.add_tools(HoverTool(tooltips=[("head", "@label"), ("value", "@value{0.000}"), ("pattern", "@pattern")]))
    grid.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
    grid.xaxis.ticker = list(range(n_heads))
    grid.yaxis.ticker = list(range(n_layers))
    grid.grid.visible = False
    describe = Div(text="", name="attviz-atlas-info", width=700)
    pick = Select(title="Metric", value=first, options=metrics, name="attviz-atlas-metric", width=220)
    ranges = {m: bounds(m) for m in metrics}
    set_metric = CustomJS(
        args=dict(source=source, mapper=mapper, plot=grid, info=info, ranges=ranges, div=describe),
        code="""
const m = cb_obj.value;
const data = Object.assign({}, source.data);
data.value = data[m];
source.data = data;
mapper.low = ranges[m][0]; mapper.high = ranges[m][1];
plot.title.text = m + ": " + info[m].long;
const codes = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => codes[c]);
div.text = "<p><b>" + esc(info[m].long) + "</b> (" + esc(info[m].units) + "): high = " + esc(info[m].higher) +
  ". " + esc(info[m].ref) + "</p>";
""",
    )
    pick.js_on_change("value", set_metric)
    describe.text = (
        f"<p><b>{html.escape(info[first]['long'])}</b> ({html.escape(info[first]['units'])}): high = "
        f"{html.escape(info[first]['higher'])}. {html.escape(info[first]['ref'])}</p>"
    )

    # the scatter of two metrics, coloured by layer
    layer_mapper = LinearColorMapper(palette=Viridis256, low=0, high=max(1, n_layers - 1))
    x_pick = Select(title="x", value=first, options=metrics, name="attviz-scatter-x", width=200)
    y_pick = Select(
        title="y", value=metrics[min(1, len(metrics) - 1)], options=metrics, name="attviz-scatter-y", width=200
    )
    scatter = figure(
        width=520,
        height=440,
        x_axis_label=x_pick.value,
        y_axis_label=y_pick.value,
        title="heads: two metrics (colour: layer)",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        name="attviz-scatter",
    )
    scatter.scatter("x", "y", source=source, size=9, alpha=0.8, color={"field": "layer", "transform": layer_mapper})
    scatter.add_tools(HoverTool(tooltips=[("head", "@label"), ("x", "@x{0.000}"), ("y", "@y{0.000}")]))
    axis_code = """
const data = Object.assign({}, source.data);
data[axis] = data[cb_obj.value];
source.data = data;
label.axis_label = cb_obj.value;
"""
    x_pick.js_on_change("value", CustomJS(args=dict(source=source, axis="x", label=scatter.xaxis[0]), code=axis_code))
    y_pick.js_on_change("value", CustomJS(args=dict(source=source, axis="y", label=scatter.yaxis[0]), code=axis_code))
    return column(pick, grid, describe), column(row(x_pick, y_pick), scatter)


def _similarity_model(stats: CorpusStatistics) -> Any:
    """The head similarity (Jensen–Shannon distance) as a heatmap in the clustering's leaf order."""
    from bokeh.models import ColorBar, CustomJSHover, FixedTicker, HoverTool, LinearColorMapper
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    order = np.asarray(stats.head_order())
    labels = np.asarray(head_labels(stats))[order]
    matrix = np.asarray(stats.similarity.values, dtype=np.float64)[np.ix_(order, order)]
    n = len(order)
    finite = matrix[np.isfinite(matrix)]
    mapper = LinearColorMapper(
        palette=Viridis256[::-1], low=0.0, high=float(finite.max()) if finite.size else 1.0, nan_color="#dddddd"
    )
    side = int(min(760, max(360, 8 * n + 120)))
    plot = figure(
        width=side,
        height=side,
        x_range=(0, n),
        y_range=(n, 0),
        title=f"head similarity: Jensen-Shannon distance ({stats.similarity.attrs.get('documents', '?')} documents)",
        tools="box_zoom,reset,save",
        name="attviz-similarity",
    )
    plot.image(image=[matrix.astype(np.float32)], x=0, y=0, dw=n, dh=n, color_mapper=mapper)  # row i at y in [i, i+1]
    step = max(1, n // 36)
    ticks = list(range(0, n, step))
    for axis in (plot.xaxis[0], plot.yaxis[0]):
        axis.ticker = FixedTicker(ticks=[t + 0.5 for t in ticks])
        axis.major_label_overrides = {t + 0.5: str(labels[t]) for t in ticks}
    plot.xaxis.major_label_orientation = 1.2
    name = CustomJSHover(args=dict(labels=labels.tolist()), code="return labels[Math.floor(value)] || ''")
    plot.add_tools(
        HoverTool(
            tooltips=[("heads", "$y{custom} · $x{custom}"), ("JS distance", "@image{0.000}")],
            formatters={"$x": name, "$y": name},
        )
    )
    plot.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
    plot.grid.visible = False
    return plot


def _class_models(stats: CorpusStatistics, tables: Tables) -> list[Any]:
    """Per class: its token ranking (mean, max behind), its log-value histogram and its QQ plot."""
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    from attviz.analysis.differences import log_values, qq_data

    ranking = tables.frames.get("class_ranking")
    if ranking is None or tables.by is None:
        return []
    samples = log_values(stats, tables.by)
    qq = qq_data(samples)
    classes = sorted({str(c) for c in ranking["class"]} | set(samples))[:MAX_CLASSES]
    rows = []
    for name in classes:
        parts = []
        part = ranking[ranking["class"].astype(str) == name].head(RANKING_K)
        if len(part):
            types = [str(t) for t in part["type"]]
            source = ColumnDataSource(
                {
                    "type": types,
                    "mean": _finite(part["mean"]),
                    "max": _finite(part["max"]),
                    "std": _finite(part["std"].fillna(0)),
                    "documents": part["documents"].astype(int).tolist(),
                }
            )
            bars = figure(
                y_range=list(reversed(types)),
                width=360,
                height=60 + 18 * len(types),
                title=f"{name}: top token types (mean, max behind)",
                tools="save",
                x_axis_label="attention received",
                name=f"attviz-ranking-{len(rows)}",
            )
            bars.hbar(y="type", right="max", height=0.8, source=source, color="#c6dbef")
            bars.hbar(y="type", right="mean", height=0.5, source=source, color="#2171b5")
            bars.add_tools(
                HoverTool(
                    tooltips=[
                        ("type", "@type"),
                        ("mean", "@mean{0.0000} ± @std{0.0000}"),
                        ("max", "@max{0.0000}"),
                        ("documents", "@documents"),
                    ]
                )
            )
            parts.append(bars)
        sample = samples.get(name)
        if sample is not None and len(sample) > 1:
            counts, edges = np.histogram(sample, bins=min(40, max(5, len(sample) // 5)))
            hist = figure(
                width=320,
                height=260,
                title=f"{name}: log10 max value per type (n={len(sample)})",
                tools="save",
                x_axis_label="log10 value",
                name=f"attviz-hist-{len(rows)}",
            )
            hist.quad(
                top=counts.tolist(),
                bottom=0,
                left=edges[:-1].tolist(),
                right=edges[1:].tolist(),
                fill_color="#6baed6",
                line_color="white",
            )
            parts.append(hist)
        frame = qq.get(name)
        if frame is not None:
            plot = figure(
                width=320,
                height=260,
                title=f"{name}: normal QQ (r={frame.attrs['r']:.3f})",
                tools="save",
                x_axis_label="theoretical quantile",
                y_axis_label="observed",
                name=f"attviz-qq-{len(rows)}",
            )
            plot.scatter(frame["theoretical"].tolist(), frame["observed"].tolist(), size=4, alpha=0.6)
            plot.line(frame["theoretical"].tolist(), frame["fit"].tolist(), color="#d62728")
            parts.append(plot)
        if parts:
            rows.append(row(*parts))
    return rows


def _table_html(frame: pd.DataFrame, columns: list[str], *, rows: int = TOP_ROWS, css: str = "") -> str:
    """The first ``rows`` rows of ``frame`` as an HTML table; every cell escaped."""
    columns = [c for c in columns if c in frame]
    if frame.empty or not columns:
        return "<p class='note'>(no rows)</p>"

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            text = "" if not np.isfinite(value) else f"{value:.4g}"
            return f"<td class='num'>{text}</td>"
        if isinstance(value, int | np.integer):
            return f"<td class='num'>{int(value)}</td>"
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in frame[columns].head(rows).itertuples(index=False)
    )
    more = f"<p class='note'>{len(frame) - rows} more rows in the CSV tables.</p>" if len(frame) > rows else ""
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


CONTRAST_COLUMNS = [
    "layer",
    "head",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "delta",
    "delta_low",
    "delta_high",
    "p_mannwhitney",
    "q_mannwhitney",
    "ks",
    "q_ks",
]
COMPARE_COLUMNS = [
    "layer",
    "head",
    "n_a",
    "mean_a",
    "mean_b",
    "delta",
    "p_wilcoxon",
    "q_wilcoxon",
    "p_mannwhitney",
    "q_mannwhitney",
]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; } td.num { text-align: right; }
th { background: #f3f3f3; } .note { color: #666; font-size: 0.9em; } dl.meta dt { font-weight: 600; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 0.9em; }
ol.refs { font-size: 0.85em; color: #444; } .plots { display: flex; flex-wrap: wrap; gap: 24px; }
"""


def render_report(
    stats: CorpusStatistics,
    tables: Tables,
    *,
    title: str | None = None,
    corpus_info: Mapping[str, Any] | None = None,
) -> str:
    """The report's HTML (a string)."""
    from bokeh.document import Document as BokehDocument
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    import attviz

    esc = html.escape
    atlas = tables.frames["atlas"]
    models: dict[str, Any] = {}
    models["atlas"], models["scatter"] = _atlas_models(stats, atlas)
    if stats.similarity is not None:
        models["similarity"] = _similarity_model(stats)
    for i, model in enumerate(_class_models(stats, tables)):
        models[f"class{i}"] = model
    document = BokehDocument()
    for model in models.values():
        document.add_root(model)
    script, divs = components(models, wrap_script=False)
    bundle = bundle_for_objs_and_resources([document], INLINE)
    scripts = [*bundle.js_raw, script]
    from attviz.export.page import offline_csp

    csp = offline_csp(scripts)
    info = dict(corpus_info or {})
    title = title or f"attviz corpus statistics: {info.get('name') or 'corpus'}"
    layers, heads = stats.heads.sizes["layer"], stats.heads.sizes["head"]
    meta = {
        "corpus": info.get("path") or info.get("name") or "(in memory)",
        "documents": f"{len(stats.documents):,}",
        "model": info.get("model") or "(unknown)",
        "heads": f"{layers} layers × {heads} heads",
        "settings": stats.settings.to_json(),
        "grouping": (f"{tables.by}: {tables.groups[0]} vs {tables.groups[1]}" if tables.groups else "none"),
        "attviz": attviz.__version__ if hasattr(attviz, "__version__") else "",
    }
    if stats.similarity is not None:
        meta["similarity"] = f"mean over {stats.similarity.attrs.get('documents', '?')} sampled documents"
    if "compare" in info:
        meta["store B"] = info["compare"]
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n",
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">\n',
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n",
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n",
        *(f"<style>{css}</style>\n" for css in bundle.css_raw),
        "</head>\n<body>\n<header>\n",
        f"<h1>{esc(title)}</h1>\n<dl class='meta'>",
        *(f"<dt>{esc(k)}</dt><dd>{esc(str(v))}</dd>" for k, v in meta.items() if v),
        "</dl>\n",
        *(f"<p class='note'>{esc(note)}</p>\n" for note in tables.notes),
        "</header>\n<main>\n",
        "<h2>Head atlas</h2>\n<p class='note'>Each metric's mean over documents per head (one value per document "
        "first). Pick the metric; hover a cell for its value and its pattern class (Kovaleva et al. 2019).</p>\n",
        f"<div class='plots'>{divs['atlas']}{divs['scatter']}</div>\n",
        "<details><summary>the atlas as a table</summary>\n",
        _table_html(
            atlas.assign(label=[f"L{int(r.layer)}H{int(r.head)}" for r in atlas.itertuples()]),
            ["label", "pattern", "offset", "offset_weight", *metric_order(stats)],
            rows=len(atlas),
            css="atlas",
        )
        if len(atlas) <= 200
        else "<p class='note'>(more than 200 heads: see atlas.csv)</p>",
        "</details>\n",
    ]
    if "similarity" in divs:
        parts += [
            "<h2>Head similarity</h2>\n<p class='note'>Mean Jensen-Shannon distance between two heads' attention "
            "rows over the same tokens (Clark et al. 2019, §6), heads in average-linkage cluster order.</p>\n",
            divs["similarity"],
        ]
    if tables.groups:
        a, b = (esc(g) for g in tables.groups)
        parts.append(f"<h2>Contrasts: {esc(str(tables.by))} {a} vs {b}</h2>\n")
        parts.append(
            "<p class='note'>One value per document; Mann-Whitney U and Kolmogorov-Smirnov tests, Cliff's delta "
            "with a percentile bootstrap interval, q: Benjamini-Hochberg across each table. Sorted by p.</p>\n"
        )
        parts.append("<h3>Heads (head-atlas metrics)</h3>\n")
        parts.append(_table_html(tables.frames["contrast_heads"], ["metric", *CONTRAST_COLUMNS]))
        parts.append("<h3>Token types (attention received per document)</h3>\n")
        parts.append(_table_html(tables.frames["contrast_tokens"], ["type", *CONTRAST_COLUMNS]))
        odds = tables.frames.get("log_odds")
        if odds is not None:
            parts.append(f"<h3>Weighted log-odds of token types (Monroe et al. 2008): {a} side, then {b} side</h3>\n")
            columns = ["type", "count_a", "count_b", "documents", "log_odds", "z"]
            parts.append("<div class='plots'>")
            for side in (odds, odds.iloc[::-1].reset_index(drop=True)):
                parts.append(f"<div>{_table_html(side, columns, rows=TOP_ROWS // 2)}</div>")
            parts.append("</div>\n")
        class_divs = [divs[k] for k in divs if k.startswith("class")]
        if class_divs:
            parts.append(
                "<h2>Per class: token ranking, log-value distribution, QQ plot</h2>\n<p class='note'>Each class "
                "on its own documents (the original AttViz plotted the pooled data for every class): the mean "
                "over the class's documents of the attention a token type receives, its maximum behind; the "
                "distribution of log10 of each type's maximum and its normal QQ plot.</p>\n"
            )
            parts.extend(class_divs)
    for name, heading in (("compare_heads", "heads"), ("compare_tokens", "token types")):
        frame = tables.frames.get(name)
        if frame is not None:
            if name == "compare_heads":
                parts.append(
                    f"<h2>Store A vs store B</h2>\n<p class='note'>{frame.attrs.get('documents', '?')} documents "
                    "paired by text; Wilcoxon signed-rank test on the pairs, plus the unpaired tests.</p>\n"
                )
            key = "metric" if name == "compare_heads" else "type"
            parts.append(f"<h3>{heading}</h3>\n{_table_html(frame, [key, *COMPARE_COLUMNS])}")
    parts.append("<h2>References</h2>\n<ol class='refs'>")
    parts.extend(f"<li>{esc(ref)}</li>" for ref in references(stats))
    parts.append("</ol>\n</main>\n")
    parts.extend(f"<script>{s}</script>\n" for s in scripts)
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def corpus_info(corpus: Any) -> dict[str, Any]:
    """What the report's header says about a corpus: its path or name and its model."""
    attrs = dict(getattr(corpus, "attrs", {}) or {})
    path = getattr(corpus, "path", None)
    return {
        "path": str(path) if path else None,
        "name": Path(str(path)).name if path else attrs.get("name"),
        "model": attrs.get("model"),
    }


def write_report(
    stats: CorpusStatistics,
    path: str | os.PathLike,
    *,
    by: str | None = None,
    compare: CorpusStatistics | None = None,
    title: str | None = None,
    corpus: Any = None,
    tables: Tables | None = None,
) -> Path:
    """Write the statistics as one self-contained HTML file (atomically: a temporary file, then a
    rename); ``corpus``: the corpus (or a dict) the header describes. Returns the path."""
    tables = tables or compute_tables(stats, by=by, compare=compare)
    info = corpus if isinstance(corpus, Mapping) else corpus_info(corpus) if corpus is not None else {}
    page = render_report(stats, tables, title=title, corpus_info=info)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return target


__all__ = [
    "Tables",
    "compute_tables",
    "corpus_info",
    "head_labels",
    "references",
    "render_report",
    "summary",
    "write_report",
    "write_tables",
]
