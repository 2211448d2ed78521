"""ModelOverview: the layers × heads grid, statistic switch, hover, tap, outline in place."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import xarray as xr
from bokeh.models import GlyphRenderer, HoverTool, Plot, Quad
from bokeh.models import Image as ImageGlyph

from attviz.views.model import ModelOverview

hv.extension("bokeh")

# (layer, head, statistic): value = 10 * layer + head for entropy, 100 + that for distance.
ENTROPY = np.array([[0, 1, 2], [10, 11, 12]], dtype=np.float32)


def summary(layers=(0, 1), heads=(0, 1, 2)):
    values = np.stack([ENTROPY, ENTROPY + 100], axis=-1)
    return xr.DataArray(
        values,
        dims=("layer", "head", "statistic"),
        coords={
            "layer": list(layers),
            "head": list(heads),
            "statistic": ["entropy", "distance"],
            "statistic_units": ("statistic", ["nat", "token"]),
        },
        name="head_summary",
    )


def render(view):
    return pn.panel(view).get_root()


def image(root) -> GlyphRenderer:
    (renderer,) = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, ImageGlyph)]
    return renderer


def outline(root) -> GlyphRenderer:
    (renderer,) = [r for r in root.select({"type": GlyphRenderer}) if isinstance(r.glyph, Quad)]
    return renderer


def test_values_in_their_cells_layer_on_y_head_on_x():
    root = render(ModelOverview(data=summary()))
    data = image(root).data_source.data
    np.testing.assert_array_equal(data["image"][0], ENTROPY)  # row = layer, column = head
    np.testing.assert_array_equal(data["stat_distance"][0], ENTROPY + 100)
    assert (data["x"][0], data["y"][0], data["dw"][0], data["dh"][0]) == (-0.5, -0.5, 3.0, 2.0)
    plot = root.select_one({"type": Plot})
    assert (plot.y_range.start, plot.y_range.end) == (1.5, -0.5)  # layer 0 on top
    assert plot.xaxis[0].formatter.args["labels"] == ["0", "1", "2"]
    assert plot.height == 220  # the minimum; about 28 px per layer beyond


def test_hover_shows_every_statistic():
    root = render(ModelOverview(data=summary()))
    hover = next(t for t in root.select_one({"type": Plot}).tools if isinstance(t, HoverTool))
    assert hover.tooltips == [
        ("layer", "@{layer_id}"),
        ("head", "@{head_id}"),
        ("entropy (nat)", "@{stat_entropy}{0.000}"),
        ("distance (token)", "@{stat_distance}{0.000}"),
    ]


def test_statistic_switch_changes_the_values():
    view = ModelOverview(data=summary())
    root = render(view)
    assert view.param.statistic.objects == ["entropy", "distance"] and view.statistic == "entropy"
    renderer = image(root)
    view.statistic = "distance"
    assert image(root) is renderer
    np.testing.assert_array_equal(renderer.data_source.data["image"][0], ENTROPY + 100)


def test_tap_sets_layer_and_head_and_the_outline_moves_in_place():
    view = ModelOverview(data=summary(layers=(4, 5), heads=(7, 8, 9)))
    root = render(view)
    box = outline(root)
    assert len(box.data_source.data["left"]) == 0
    view._tap.event(x=2.2, y=0.9)  # column 2, row 1
    assert (view.layer, view.head) == (5, 9)
    assert outline(root) is box
    data = box.data_source.data
    assert (data["left"][0], data["right"][0], data["bottom"][0], data["top"][0]) == (1.5, 2.5, 0.5, 1.5)
    image_data = image(root).data_source.data["image"][0]
    view.param.update(layer=4, head=7)  # as the explorer would
    assert (data := box.data_source.data)["left"][0] == -0.5 and data["bottom"][0] == -0.5
    assert image(root).data_source.data["image"][0] is image_data  # the grid was not redrawn


def test_a_plain_layer_head_array():
    data = xr.DataArray(ENTROPY, dims=("layer", "head"), name="entropy", attrs={"units": "nat"})
    view = ModelOverview(data=data)
    root = render(view)
    np.testing.assert_array_equal(image(root).data_source.data["image"][0], ENTROPY)
    assert view.param.statistic.objects == ["entropy"]


def test_placeholder_without_data():
    view = ModelOverview()
    placeholder, controls, plot = view.__panel__().objects
    render(view)
    assert placeholder.visible and not plot.visible and not controls.visible
    view.data = summary()
    assert not placeholder.visible and plot.visible and controls.visible


def test_the_statistic_widget_recolours_the_grid():
    view = ModelOverview(data=summary())
    root = render(view)
    statistic, cmap = view.__panel__().objects[1].objects
    assert statistic.values == ["entropy", "distance"] and statistic.value == "entropy"
    statistic.value = "distance"  # as a user picks it
    assert view.statistic == "distance"
    np.testing.assert_array_equal(image(root).data_source.data["image"][0], ENTROPY + 100)
    view.data = summary().sel(statistic=["entropy"])  # another summary: the options follow
    assert statistic.values == ["entropy"] and statistic.value == "entropy"
    assert cmap.value == "viridis" and "magma" in cmap.values


def test_demo_document():
    from attviz import aggregations
    from attviz.demo import demo_corpus

    doc = demo_corpus(progress=False)[0]
    data = aggregations.get("head_summary")(doc.attention)
    view = ModelOverview()
    root = render(view)
    view.data = data
    assert view.statistic == "entropy"
    expected = data.sel(statistic="entropy").transpose("layer", "head").values
    np.testing.assert_allclose(image(root).data_source.data["image"][0], expected, rtol=1e-6)
    assert root.select_one({"type": Plot}).height == 28 * 6 + 110
    view.statistic = "self"
    np.testing.assert_allclose(image(root).data_source.data["image"][0], data.sel(statistic="self").values, rtol=1e-6)


def test_title_names_the_statistic_and_the_document():
    view = ModelOverview(data=summary())
    root = render(view)
    (plot,) = root.select({"type": Plot})
    assert plot.title.text == "entropy (nat) per layer and head"
    view.statistic = "distance"
    assert plot.title.text == "distance (token) per layer and head"
    view.title = "doc 4"
    assert plot.title.text == "distance (token) per layer and head · doc 4"
    assert plot.toolbar.active_scroll is None
