"""AggregatePlot: the three series, log/linear scales, tap selection, in-place updates, export backend."""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest
import xarray as xr
from bokeh.models import GlyphRenderer, HoverTool, Line, LogScale, Scatter, Span, WheelZoomTool
from bokeh.plotting import figure

from attviz.corpus import token_coords, token_frame
from attviz.views.aggregate import AggregatePlot, log_floor, plot_frames

# 3 heads × 4 tokens; per token min [0, 0, 0, 0.1], max [0.2, 0.5, 0.6, 1.5]
ROWS = np.array([[0.1, 0.0, 0.3, 1.5], [0.2, 0.1, 0.0, 0.4], [0.0, 0.5, 0.6, 0.1]])
AGGREGATE = np.array([0.2, 0.3, 0.4, 0.5])


def vectors(values, texts=None) -> xr.DataArray:
    values = np.asarray(values, dtype=float)
    tokens = token_frame(texts or [f"t{i}" for i in range(values.shape[1])])
    coords = {"head": np.arange(len(values)), **token_coords(tokens, "token")}
    return xr.DataArray(values, dims=("head", "token"), coords=coords, name="attention_received")


def aggregate(values) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=float), dims="token", name="mean", attrs={"long_name": "mean"})


def rendered(view: AggregatePlot):
    root = pn.panel(view).get_root()
    return root, next(iter(root.select({"type": figure})))


def series(fig) -> dict[str, GlyphRenderer]:
    out = {}
    for r in fig.select({"type": GlyphRenderer}):
        if isinstance(r.glyph, Line):
            out["line"] = r
        elif isinstance(r.glyph, Scatter):
            out["extreme" if r.glyph.marker == "triangle" else "other"] = r
    return out


@pytest.fixture
def view():
    v = AggregatePlot()
    v.param.update(
        data=vectors(ROWS, ["a", "<img src=x onerror=alert(1)>", "&amp;", "d"]), aggregate=aggregate(AGGREGATE)
    )
    return v


def test_series_by_hand(view):
    _, fig = rendered(view)
    s = series(fig)
    assert len(list(fig.select({"type": GlyphRenderer}))) == 3  # one glyph per series
    line = s["line"].data_source.data
    np.testing.assert_allclose(line["attention"], AGGREGATE)
    np.testing.assert_allclose(line["min"], [0, 0, 0, 0.1])
    np.testing.assert_allclose(line["max"], [0.2, 0.5, 0.6, 1.5])
    assert list(line["token_text"]) == ["a", "<img src=x onerror=alert(1)>", "&amp;", "d"]  # hover: escaped by Bokeh
    assert fig.xaxis[0].formatter.args["labels"] == ["a", "<img src=x onerror=alert(1)>", "&amp;", "d"]  # canvas text
    assert list(fig.xaxis[0].ticker.ticks) == [0, 1, 2, 3]
    extreme = s["extreme"].data_source.data
    np.testing.assert_array_equal(extreme["token"], [0, 1, 2, 3, 0, 1, 2, 3])
    np.testing.assert_allclose(extreme["attention"], [0, 0, 0, 0.1, 0.2, 0.5, 0.6, 1.5])
    assert len(s["other"].data_source.data["attention"]) == 3 * 4
    assert s["line"].glyph.line_color == "#F9822C" and s["extreme"].glyph.fill_color == "red"
    hover = next(iter(fig.select({"type": HoverTool})))
    assert hover.tooltips == [
        ("token", "@{token_text} (@{token})"),
        ("value", "@{value}{0.000}"),
        ("min", "@{min}{0.000}"),
        ("max", "@{max}{0.000}"),
    ]  # Bokeh escapes @fields unless formatted {safe}
    assert fig.yaxis[0].axis_label == "mean" and fig.xaxis[0].axis_label == "token"


def test_linear_autoscales_above_one(view):
    _, fig = rendered(view)
    assert fig.y_range.end >= 1.5 and fig.y_range.start <= 0


def test_log_scale_with_zeros_uses_a_floor(view):
    assert log_floor(ROWS) == pytest.approx(0.01)  # smallest positive (0.1) / 10
    assert log_floor(np.zeros(3)) == 1e-6
    view.scale = "log"
    _, fig = rendered(view)
    assert isinstance(fig.y_scale, LogScale)
    for r in series(fig).values():
        y = np.asarray(r.data_source.data["attention"])
        assert np.isfinite(y).all() and (y > 0).all() and y.min() >= 0.01
    np.testing.assert_allclose(series(fig)["extreme"].data_source.data["attention"][:3], [0.01] * 3)
    assert "values ≤ 0.01 drawn at 0.01" in fig.yaxis[0].axis_label
    np.testing.assert_allclose(series(fig)["line"].data_source.data["min"], [0, 0, 0, 0.1])  # hover: true values


def test_tap_selects_the_nearest_token(view):
    rendered(view)
    view._tap.event(x=2.3, y=0.1)
    assert view.selected_token == 2
    view._tap.event(x=2.6, y=0.1)
    assert view.selected_token == 3
    view._tap.event(x=99.0, y=0.1)
    assert view.selected_token == 3  # clipped to the last token
    view._tap.event(x=-5.0, y=0.1)
    assert view.selected_token == 0


def test_selection_does_not_touch_the_series(view):
    root, fig = rendered(view)
    source = series(fig)["line"].data_source
    before = dict(source.data)
    changes: list[str] = []
    source.on_change("data", lambda attr, old, new: changes.append(attr))
    view.selected_token = 1
    assert changes == [] and source.data.keys() == before.keys()
    spans = list(root.select({"type": Span}))
    assert [s.location for s in spans] == [1.0]
    _, fresh = rendered(view)  # a later render (e.g. shown again) starts from the current selection
    assert [s.location for s in fresh.select({"type": Span})] == [1.0]
    view.selected_token = None
    assert np.isnan(spans[0].location)


def test_new_data_updates_the_same_figure(view):
    root, fig = rendered(view)
    line = series(fig)["line"]
    view.param.update(data=vectors(ROWS[:, :2] * 2), aggregate=aggregate([3.0, 4.0]))  # a new, shorter document
    assert next(iter(root.select({"type": figure}))) is fig and series(fig)["line"] is line
    np.testing.assert_allclose(line.data_source.data["attention"], [3, 4])
    assert fig.y_range.end >= 4 and len(series(fig)["other"].data_source.data["token"]) == 3 * 2


def test_svg_backend_for_export(view):
    _, fig = rendered(view)
    assert fig.output_backend == "canvas"
    view.backend = "svg"
    _, fig = rendered(view)
    assert fig.output_backend == "svg"


def test_placeholder_and_long_document():
    v = AggregatePlot()
    rendered(v)  # no data: an empty plot, no error; a later render shows the current data
    rows = np.random.default_rng(0).random((12, 4096))
    v.data = vectors(rows)
    _, fig = rendered(v)
    assert len(series(fig)["other"].data_source.data["attention"]) == 12 * 4096
    mean = series(fig)["line"].data_source.data["attention"]
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=1e-6)  # the mean aggregation sums in float32


def test_plot_frames_keeps_true_values_for_hover():
    rows = xr.DataArray([[0.0, 2.0]], dims=("head", "token"))
    frames = plot_frames(rows, np.array([0.0, 2.0]), ["a", "b"], "log")
    assert frames["floor"] == pytest.approx(0.2)
    np.testing.assert_allclose(frames["line"]["attention"], [0.2, 2.0])
    np.testing.assert_allclose(frames["line"]["value"], [0.0, 2.0])


def test_demo_document():
    from attviz.aggregations.vectors import AttentionReceived
    from attviz.demo import demo_corpus

    doc = demo_corpus(progress=False)[0]
    received = AttentionReceived()(doc.attention.isel(layer=1)).compute()
    v = AggregatePlot()
    v.param.update(data=received, aggregate=received.mean("head"), selected_token=3)
    _, fig = rendered(v)
    assert len(series(fig)["line"].data_source.data["attention"]) == doc.n_tokens
    assert fig.yaxis[0].axis_label == "attention received (mean over queries)"


def test_extremes_are_the_registered_aggregations(view, monkeypatch):
    from attviz import aggregations

    calls = []
    original = aggregations.get

    def recording(name, **params):
        calls.append((name, params))
        return original(name, **params)

    monkeypatch.setattr(aggregations, "get", recording)
    view.data = vectors(ROWS[:, ::-1])  # the tokens in reverse order
    assert ("min", {"over": "head"}) in calls and ("max", {"over": "head"}) in calls
    _, fig = rendered(view)
    line = series(fig)["line"].data_source.data
    np.testing.assert_allclose(line["min"], [0.1, 0, 0, 0])
    np.testing.assert_allclose(line["max"], [1.5, 0.6, 0.5, 0.2])


def test_legacy_vectors_count_as_heads():
    data = vectors(ROWS).rename(head="vector").assign_coords(vector=["mean", "max", "min"])
    v = AggregatePlot(data=data)  # no aggregate: the mean over the rows
    line = series(rendered(v)[1])["line"].data_source.data
    np.testing.assert_allclose(line["min"], [0, 0, 0, 0.1])
    np.testing.assert_allclose(line["attention"], ROWS.mean(axis=0), rtol=1e-6)


def test_readable_tokens_title_and_the_wheel_scrolls_the_page():
    v = AggregatePlot()
    v.param.update(data=vectors(ROWS, ["<s>", "ĠHel", "lo", "Ċ"]), aggregate=aggregate(AGGREGATE))
    _, fig = rendered(v)
    assert fig.xaxis[0].formatter.args["labels"] == ["<s>", "·Hel", "lo", "↵"]
    line = series(fig)["line"].data_source.data
    assert list(line["token_text"]) == ["<s>", "·Hel (raw: ĠHel)", "lo", "↵ (raw: Ċ)"]
    assert fig.title.text == "mean"  # the line's long name without a title
    v.title = "doc 1 · layer 2 · mean over heads · attention received"
    assert fig.title.text == "doc 1 · layer 2 · mean over heads · attention received"
    assert any(isinstance(t, WheelZoomTool) for t in fig.toolbar.tools) and fig.toolbar.active_scroll is None
    v.max_labels = 2  # more tokens than labels: position ticks, labels when zoomed in
    assert type(fig.xaxis[0].ticker).__name__ == "BasicTicker"
