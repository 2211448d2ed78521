"""CorpusView and the explorer's corpus statistics: sub-tabs, links to the documents, notices."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.models import HoverTool

from attviz.explorer import Explorer, statistics_job
from attviz.layout import TABS, ExplorerLayout
from attviz.views.corpus import SUB_TABS, CorpusView, strongest_token
from tests.analysis.synthetic import synthetic_corpus

hv.extension("bokeh")


def corpus_tab(explorer: Explorer) -> tuple[ExplorerLayout, CorpusView]:
    """The explorer's layout with the Corpus tab shown and its statistics computed."""
    layout = ExplorerLayout(explorer)
    layout.tabs.active = list(layout.tabs._names).index("Corpus")
    assert explorer.wait_for_statistics(120)
    return layout, layout.views["corpus"]


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_corpus()


@pytest.fixture
def explorer(synthetic):
    return Explorer({"synthetic": synthetic})


def test_the_corpus_tab_is_a_builtin_tab():
    assert TABS["Corpus"] == ("corpus",)


def test_statistics_are_computed_only_when_the_corpus_tab_is_shown(synthetic):
    explorer = Explorer({"synthetic": synthetic})
    layout = ExplorerLayout(explorer)
    assert explorer.corpus_statistics is None and "corpus_statistics" not in explorer.needed
    assert Explorer({"synthetic": synthetic}).corpus_statistics is None  # needed=None does not ask for them
    layout.tabs.active = list(layout.tabs._names).index("Corpus")
    assert "corpus_statistics" in explorer.needed
    assert explorer.wait_for_statistics(60)
    assert explorer.corpus_statistics is statistics_job(synthetic).result
    assert explorer.corpus_status == ""


def test_every_sub_tab_builds(explorer):
    _, view = corpus_tab(explorer)
    root = pn.panel(view).get_root()
    assert root is not None
    for i, title in enumerate(SUB_TABS):
        view.sub_tabs.active = i
        assert view.sub_tabs._names[i] == title
        pn.panel(view.sub_tabs[i]).get_root()


def test_the_grid_hover_shows_every_metric(explorer):
    _, view = corpus_tab(explorer)
    root = pn.panel(view._grid_pane()).get_root()
    hover = [t for t in root.select({"type": HoverTool}) if t.tooltips]
    names = " ".join(name for name, _ in hover[0].tooltips)
    for word in ("previous token", "first token", "pattern", "offset"):
        assert word in names


def test_a_click_on_a_grid_cell_selects_the_head(explorer):
    _, view = corpus_tab(explorer)
    view.on_grid_tap(x=2, y=1)
    assert (explorer.layer, explorer.head) == (1, 2)
    assert "Layer 1, head 2" in view.head_info.object
    top = view.top_documents_table.value
    assert len(top) and top["rank"].iloc[0] == "top" and top["rank"].str.startswith("decile").any()
    # untrusted text reaches the page as plain text
    assert view.top_documents_table.formatters["text"] == "plaintext"
    assert view.top_documents_table.formatters["id"] == "plaintext"
    assert view.top_tokens_table.formatters["type"] == "plaintext"
    explorer.param.update(layer=0, head=1)  # two-way: the explorer moves the view
    assert (view.layer, view.head) == (0, 1)


def test_the_grid_shows_the_known_heads(explorer):
    _, view = corpus_tab(explorer)
    view.metric = "previous"
    frame = view.grid().data
    value = frame.set_index(["layer_pos", "head_pos"])["value"]
    assert value[(0, 0)] == pytest.approx(1.0, abs=0.02)  # head (0, 0) attends to the previous token
    view.metric = "sink"
    assert view.grid().data.set_index(["layer_pos", "head_pos"])["value"][(0, 1)] == pytest.approx(1.0)


def test_a_point_of_the_scatter_selects_its_head(explorer):
    _, view = corpus_tab(explorer)
    row = int(np.flatnonzero((view._atlas["layer"] == 1) & (view._atlas["head"] == 0))[0])
    view.on_scatter_select([row])
    assert (explorer.layer, explorer.head) == (1, 0)


def test_opening_a_top_document_sets_the_document_and_its_strongest_token(explorer, synthetic):
    _, view = corpus_tab(explorer)
    view.on_grid_tap(x=1, y=0)  # the sink head: every query on token 0
    view.open_top_document(2)
    doc_id = view._top_frame["id"].iloc[2]
    assert explorer.doc_id == doc_id
    assert explorer.selected_token == 0
    assert strongest_token(synthetic[doc_id], 0, 1) == 0


def test_opening_a_top_token_marks_it_in_its_document(explorer, synthetic):
    _, view = corpus_tab(explorer)
    view.on_grid_tap(x=2, y=1)  # the head that doubles "good" in "pos" documents
    tokens = view.top_tokens_table.value
    row = int(np.flatnonzero(tokens["type"] == "good")[0])
    view.open_top_token(row)
    doc = synthetic[explorer.doc_id]
    assert doc.label == "pos"
    assert doc.token_table()["text"].iloc[explorer.selected_token] == "good"


def test_the_similarity_click_selects_a_head(explorer):
    _, view = corpus_tab(explorer)
    order = view._order()
    assert sorted(order) == list(range(6))
    view.on_similarity_tap(x=3, y=0)
    assert explorer.layer * 3 + explorer.head == order[3]
    assert view.similarity().data["head_x"].iloc[0].startswith("L")


def test_contrast_on_tokens_finds_good(explorer):
    _, view = corpus_tab(explorer)
    view.sub_tabs.active = SUB_TABS.index("Contrasts")
    view.param.update(contrast_by="label", group_a="pos", group_b="neg", contrast_on="tokens")
    table = view.contrast_table.value
    assert (table["type"].iloc[0], table["layer"].iloc[0], table["head"].iloc[0]) == ("good", 1, 2)
    assert {"p_mannwhitney", "q_mannwhitney", "δ", "δ low", "δ high"} <= set(table.columns)
    view.open_contrast_row(0)  # selects head (1, 2) and opens a "pos" document at its "good"
    assert (explorer.layer, explorer.head) == (1, 2)
    doc = explorer.corpora["synthetic"][explorer.doc_id]
    assert doc.label == "pos" and doc.token_table()["text"].iloc[explorer.selected_token] == "good"
    kinds = [type(o).__name__ for o in view.contrast_area.objects]
    assert kinds.count("Tabulator") == 2 and kinds.count("HoloViews") == 2
    for pane in view.contrast_area.objects:
        pane.get_root()


def test_contrasts_are_computed_only_on_their_sub_tab(explorer):
    _, view = corpus_tab(explorer)
    view.sub_tabs.active = SUB_TABS.index("Head atlas")
    view.param.update(contrast_on="tokens")
    assert view.contrast_area.objects == []
    view.sub_tabs.active = SUB_TABS.index("Contrasts")
    assert view.contrast_area.objects


def test_the_query_key_space_without_a_model_says_why(explorer):
    _, view = corpus_tab(explorer)
    view.on_grid_tap(x=0, y=0)
    with ThreadPoolExecutor(1) as pool:  # a loop of its own (a browser test may run one in this thread)
        pool.submit(asyncio.run, view._on_compute()).result()
    assert "Failed" in view.qk_status.object and "model" in view.qk_status.object


def test_query_key_selection_opens_the_token(explorer):
    from attviz.analysis.qkspace import COLUMNS, QKSpace

    _, view = corpus_tab(explorer)
    points = pd.DataFrame(
        {
            "doc": [0, 1],
            "doc_id": ["d0", "d1"],
            "position": [2, 3],
            "token": ["<b>x</b>", "good"],
            "role": ["query", "key"],
            "label": ["pos", "neg"],
            "prediction": ["neg", "neg"],
            "special": [False, False],
            "x": [0.0, 1.0],
            "y": [0.0, 1.0],
        }
    )[COLUMNS]
    view.show_qk(QKSpace(points, "pca", (0.5, 0.3), 0, 0, "self", False))
    for colour in ("role", "token", "label", "position"):
        view.qk_colour = colour
        view.qk_plot.objects[0].get_root()
    view.select_points([1])
    assert list(view.selection_table.value["token"]) == ["good"]
    view.select_bounds((-0.5, -0.5, 0.5, 0.5))
    assert list(view.selection_table.value["doc_id"]) == ["d0"]
    assert view.selection_table.formatters["token"] == "plaintext"
    view.open_selected(0)
    assert (explorer.doc_id, explorer.selected_token) == ("d0", 2)


def test_a_large_query_key_map_is_rasterized(explorer, monkeypatch):
    from bokeh.models import GlyphRenderer

    from attviz.analysis.qkspace import COLUMNS, QKSpace

    _, view = corpus_tab(explorer)
    monkeypatch.setattr("attviz.views.corpus.DATASHADE_ABOVE", 10)
    rng = np.random.default_rng(0)
    n = 200
    points = pd.DataFrame(
        {
            "doc": 0,
            "doc_id": "d0",
            "position": rng.integers(0, 9, n),
            "token": rng.choice(["good", "<i>x</i>"], n),
            "role": rng.choice(["query", "key"], n),
            "label": "pos",
            "prediction": "pos",
            "special": False,
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
        }
    )[COLUMNS]
    view.show_qk(QKSpace(points, "pca", None, 0, 0, "self", False))
    for colour, glyph in (("role", "ImageStack"), ("label", "ImageStack"), ("token", "Image"), ("position", "Image")):
        view.qk_colour = colour
        root = view.qk_plot.objects[0].get_root()
        assert glyph in [type(r.glyph).__name__ for r in root.select({"type": GlyphRenderer})]
    view.select_bounds((0, 0, 5, 5))
    inside = (points["x"] >= 0) & (points["y"] >= 0)
    assert len(view.selection_table.value) == int(inside.sum())


def test_statistics_the_view_cannot_show_are_a_notice(explorer):
    import dataclasses

    _, view = corpus_tab(explorer)
    pn.panel(view).get_root()
    bad = dataclasses.replace(explorer.corpus_statistics, _cache={})

    def atlas():
        raise ValueError("<b>no atlas</b>")

    bad.atlas = atlas
    view.data = bad
    assert view.problem.visible and "&lt;b&gt;no atlas" in view.problem.object
    view.data = explorer.corpus_statistics
    assert not view.problem.visible and view.sub_tabs.objects


def test_a_vectors_only_corpus_shows_a_notice():
    from tests import corpora

    explorer = Explorer({"legacy": corpora.legacy_corpus()})
    _, view = corpus_tab(explorer)
    assert explorer.corpus_statistics is None
    assert explorer.corpus_status.startswith("Corpus statistics are not available")
    assert "matrices" in explorer.corpus_status
    assert view.corpus_status == explorer.corpus_status
    assert explorer.message == ""  # a notice, not an error
    pn.panel(view).get_root()
    assert view.sub_tabs.objects == []


# -- the demo corpus ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    from attviz.demo import demo_corpus

    return demo_corpus(progress=False)


def test_demo_corpus_builds_every_sub_tab(demo):
    explorer = Explorer({"demo": demo})
    _, view = corpus_tab(explorer)
    pn.panel(view).get_root()
    assert view._atlas.shape[0] == 6 * 12
    view.on_grid_tap(x=5, y=3)
    assert (explorer.layer, explorer.head) == (3, 5)
    assert len(view.top_documents_table.value) >= 10
    view.open_top_document(0)
    assert explorer.doc_id == view._top_frame["id"].iloc[0] and explorer.selected_token is not None
    for i in range(len(SUB_TABS)):
        view.sub_tabs.active = i
        pn.panel(view.sub_tabs[i]).get_root()
    view.sub_tabs.active = SUB_TABS.index("Contrasts")
    assert len(view.contrast_table.value) > 0
    for pane in view.contrast_area.objects:
        pane.get_root()


@pytest.mark.slow
def test_demo_query_key_space(demo):
    explorer = Explorer({"demo": demo})
    _, view = corpus_tab(explorer)
    view.on_grid_tap(x=0, y=0)
    space = view.compute_qk()
    assert len(space.points) > 100
    assert view.qk_plot.objects
    view.qk_plot.objects[0].get_root()
