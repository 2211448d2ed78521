"""DocumentBrowser and Predictions: hand-made corpora, Bokeh models built without a browser."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.models import FactorRange
from bokeh.plotting import figure
from panel.models.tabulator import DataTabulator

from attviz.corpus import Corpus, Document
from attviz.views.common import class_colour
from attviz.views.documents import (
    DocumentBrowser,
    Predictions,
    class_probabilities,
    document_rows,
    prediction_summary_html,
    snippet_html,
)

XSS = "<img src=x onerror=alert(1)>"


def make_corpus() -> Corpus:
    return Corpus(
        [
            Document("w1", "Fishing accord signed.", label="world", prediction="world", probabilities={"world": 0.9}),
            Document("w2", f"{XSS} talks &amp; collapse", label="world", prediction="business"),
            Document("b1", "The central BANK raised rates.", label="business", prediction="business"),
            Document("b2", "Bank shares fell.", label="business", prediction="world"),
            Document("s1", "A comet.", label="science", prediction="science"),
            Document("x1", "No labels."),
        ]
    )


@pytest.fixture
def corpus_table() -> pd.DataFrame:
    return make_corpus().table


@pytest.fixture
def browser(corpus_table):
    view = DocumentBrowser()
    root = pn.panel(view).get_root()
    view.data = corpus_table
    return view, root


def model_of(root) -> DataTabulator:
    (model,) = root.select({"type": DataTabulator})
    return model


def shown_ids(view: DocumentBrowser) -> list[str]:
    return list(view._table.current_view["id"])


# -- pure helpers ------------------------------------------------------------------------------
def test_snippet_is_escaped_and_cut():
    assert snippet_html(XSS) == "&lt;img src=x onerror=alert(1)&gt;"
    assert snippet_html("a &amp; b") == "a &amp;amp; b"
    assert snippet_html("x" * 100) == "x" * 80 + "…"
    assert snippet_html("one\n two\t three") == "one two three"


def test_snippet_centres_the_escaped_match():
    text = "a" * 100 + " <b>Bank</b> " + "z" * 100
    snippet = snippet_html(text, "bank")
    # Of the 80 - 4 characters around the match a third (25: 21 a and " <b>") come before it, 51 after.
    assert snippet == "…" + "a" * 21 + " &lt;b&gt;<mark>Bank</mark>&lt;/b&gt; " + "z" * 46 + "…"
    assert snippet_html("short bank", "BANK") == "short <mark>bank</mark>"
    assert snippet_html("no match here", "zzz") == "no match here"
    assert snippet_html("x<y", "<") == "x<mark>&lt;</mark>y"
    assert snippet_html("rates  rose\n today", "RATES   rose") == "<mark>rates rose</mark> today"
    # "İ".lower() is two characters: the match is still found at its place in the original.
    assert snippet_html("İstanbul bank", "bank") == "İstanbul <mark>bank</mark>"


def test_document_rows(corpus_table):
    rows = document_rows(corpus_table)
    assert list(rows.columns) == ["id", "snippet", "gold", "predicted", "confidence", "correct", "length"]
    assert list(rows.index) == list(range(6))
    assert list(rows["id"]) == ["w1", "w2", "b1", "b2", "s1", "x1"]
    assert list(rows["correct"]) == ["✓", "✗", "✓", "✗", "✓", ""]
    assert list(rows["gold"])[-1] == "" and list(rows["predicted"])[-1] == ""
    assert rows["snippet"][1] == "&lt;img src=x onerror=alert(1)&gt; talks &amp;amp; collapse"
    assert rows["confidence"][0] == pytest.approx(0.9)
    assert np.isnan(rows["confidence"][1])
    assert list(rows["length"]) == [0] * 6
    assert list(document_rows(pd.DataFrame()).columns) == list(rows.columns)


# -- DocumentBrowser ---------------------------------------------------------------------------
def test_placeholder_without_corpus():
    view = DocumentBrowser()
    pn.panel(view).get_root()
    assert view._count.object == "no corpus"
    assert view._table.value.empty


def test_every_column_renders_as_text(browser):
    _, root = browser
    columns = {column["field"]: column for column in model_of(root).configuration["columns"]}
    for field in ("id", "gold", "predicted", "correct", "length"):
        assert columns[field]["formatter"] == "plaintext", field
    # The snippet is HTML (for <mark>), escaped by snippet_html; confidence a Bokeh NumberFormatter.
    assert columns["snippet"]["formatter"] == "html"
    bokeh_columns = {column.field: column for column in model_of(root).columns}
    assert bokeh_columns["confidence"].formatter.format == "0.0%"


def test_table_and_count(browser):
    view, root = browser
    assert view._count.object == "6 of 6 documents"
    assert shown_ids(view) == ["w1", "w2", "b1", "b2", "s1", "x1"]
    assert list(model_of(root).source.data["id"]) == ["w1", "w2", "b1", "b2", "s1", "x1"]
    assert view.param.class_filter.objects == ["", "business", "science", "world"]


def test_search_is_case_insensitive_over_id_and_text(browser):
    view, root = browser
    view.search = "bank"
    assert shown_ids(view) == ["b1", "b2"]
    assert view._count.object == "2 of 6 documents"
    assert list(model_of(root).source.data["snippet"]) == [
        "The central <mark>BANK</mark> raised rates.",
        "<mark>Bank</mark> shares fell.",
    ]
    assert view._table.value["snippet"][2] == "The central BANK raised rates."  # the value is untouched
    view.search = "W2"
    assert shown_ids(view) == ["w2"]
    view.search = "onerror"
    assert list(model_of(root).source.data["snippet"]) == [
        "&lt;img src=x <mark>onerror</mark>=alert(1)&gt; talks &amp;amp; collapse"
    ]
    view.search = ""
    assert len(shown_ids(view)) == 6


def test_class_and_error_filters(browser):
    view, _ = browser
    view.class_filter = "world"  # gold or predicted
    assert shown_ids(view) == ["w1", "w2", "b2"]
    view.misclassified_only = True
    assert shown_ids(view) == ["w2", "b2"]
    assert view._count.object == "2 of 6 documents"
    view.class_filter = ""
    assert shown_ids(view) == ["w2", "b2"]
    view.search = "bank"
    assert shown_ids(view) == ["b2"]


def test_selecting_a_row_sets_doc_id(browser):
    view, _ = browser
    view._table.selection = [3]
    assert view.doc_id == "b2"
    # A click on the selected row deselects it in Tabulator; the document stays current and selected.
    view._table.selection = []
    assert view.doc_id == "b2"
    assert view._table.selection == [3]


def test_doc_id_from_outside_selects_in_place(browser):
    view, root = browser
    model = model_of(root)
    view.doc_id = "s1"
    assert view._table.selection == [4]
    assert model_of(root) is model
    assert model.source.selected.indices == [4]
    view.doc_id = "missing"
    assert view._table.selection == []


def test_filtering_keeps_the_selection(browser):
    view, root = browser
    view.doc_id = "b1"
    view.search = "comet"  # hides b1
    assert view.doc_id == "b1"
    assert view._table.selection == [2]
    assert model_of(root).source.selected.indices == []
    view.search = ""
    assert model_of(root).source.selected.indices == [2]
    view.class_filter = "business"
    assert model_of(root).source.selected.indices == [1]  # business rows: w2 (predicted), b1, b2


def test_doc_id_turns_to_its_page():
    docs = [Document(f"d{i:02d}", f"text {i}", label="a", prediction="a") for i in range(23)]
    view = DocumentBrowser(page_size=5)
    pn.panel(view).get_root()
    view.data = Corpus(docs).table
    view.doc_id = "d17"
    assert view._table.page == 4
    assert view._table.selection == [17]
    view.search = "text 2"  # d02, d20, d21, d22
    view.doc_id = "d21"
    assert view._table.page == 1


def test_new_corpus_keeps_the_table(browser):
    view, root = browser
    model = model_of(root)
    view.doc_id = "b1"
    view.class_filter = "science"
    other = Corpus([Document("b1", "again", label="x", prediction="y"), Document("c", "z")]).table
    view.data = other
    assert model_of(root) is model
    assert view.class_filter == ""  # "science" is gone
    assert view.param.class_filter.objects == ["", "x", "y"]
    assert list(model.source.data["id"]) == ["b1", "c"]
    assert view._table.selection == [0]
    assert view._count.object == "2 of 2 documents"
    view.data = None
    assert view._count.object == "no corpus"


def test_demo_corpus_smoke():
    from attviz.demo import demo_corpus

    corpus = demo_corpus(progress=False)
    table = corpus.table
    view = DocumentBrowser()
    pn.panel(view).get_root()
    view.data = table
    assert view._count.object == f"{len(table)} of {len(table)} documents"
    view.misclassified_only = True
    assert len(view._table.current_view) == int((table["correct"] == False).sum())  # noqa: E712
    view.doc_id = corpus[0].id
    assert view._table.selection == [0]


# -- Predictions -------------------------------------------------------------------------------
WRONG = Document(
    "d",
    "text",
    label="world",
    prediction="business",
    probabilities={"world": 0.25, "<b>bold</b>": 0.15, "business": 0.6},
)


def test_class_probabilities_sorted_with_gold():
    frame = class_probabilities(WRONG)
    assert list(frame["class"]) == ["business", "world", "<b>bold</b>"]
    assert list(frame["percent"]) == pytest.approx([60.0, 25.0, 15.0])
    assert list(frame["colour"]) == [class_colour("business"), class_colour("world"), class_colour("<b>bold</b>")]
    assert list(frame["gold"]) == [False, True, False]
    assert list(frame["predicted"]) == [True, False, False]
    assert list(frame["label"]) == ["business", "world ◀ gold", "<b>bold</b>"]
    assert list(frame["outline"]) == [0.0, 2.5, 0.0]


def test_summary_bar_caption_flag_and_escaping():
    summary = prediction_summary_html(WRONG)
    assert summary.count('class="segment"') == 3
    # Segments in class order, widths = probabilities.
    assert summary.index("width:25.00%") < summary.index("width:15.00%") < summary.index("width:60.00%")
    assert "Class with the highest probability of 60.0% is" in summary
    assert "<b>business</b>." in summary
    assert "✗ predicted business, gold world" in summary
    assert "<b>bold</b>" not in summary
    assert 'title="&lt;b&gt;bold&lt;/b&gt;: 15.0%"' in summary


def test_summary_of_a_right_prediction_and_escaped_names():
    doc = Document("d", "t", label="<b>x</b>", prediction="<b>x</b>", probabilities={"<b>x</b>": 0.8, "y": 0.2})
    summary = prediction_summary_html(doc)
    assert "✓ predicted &lt;b&gt;x&lt;/b&gt;, gold &lt;b&gt;x&lt;/b&gt;" in summary
    assert "probability of 80.0% is" in summary
    assert "<b>x</b>" not in summary


def test_summary_without_probabilities_or_gold():
    assert "no predictions stored" in prediction_summary_html(Document("d", "t"))
    unlabelled = Document("d", "t", probabilities={"a": 0.3, "b": 0.7})
    assert "predicted b (no gold label)" in prediction_summary_html(unlabelled)
    assert "No document" in prediction_summary_html(None)


def test_predictions_view_updates_in_place():
    view = Predictions()
    root = pn.panel(view).get_root()
    assert not view._plot.visible
    view.data = WRONG
    assert view._plot.visible
    (fig,) = root.select({"type": figure})
    assert isinstance(fig.y_range, FactorRange)
    assert list(fig.y_range.factors) == ["<b>bold</b>", "world ◀ gold", "business"]  # bottom to top
    (renderer,) = fig.renderers
    data = renderer.data_source.data
    assert list(data["percent"]) == pytest.approx([15.0, 25.0, 60.0])
    assert list(data["line_width"]) == [0.0, 2.5, 0.0]

    view.data = Document("e", "t", label="a", prediction="a", probabilities={"a": 0.9, "b": 0.1})
    (same,) = root.select({"type": figure})
    assert same is fig
    assert list(fig.y_range.factors) == ["b", "a ◀ gold"]
    assert "✓ predicted a, gold a" in view._summary.object

    view.data = Document("f", "t")
    assert not view._plot.visible
    assert "no predictions stored" in view._summary.object


def test_predictions_on_a_demo_document():
    from attviz.demo import demo_corpus

    doc = demo_corpus(progress=False)[0]
    view = Predictions()
    pn.panel(view).get_root()
    start = time.perf_counter()
    view.data = doc
    elapsed = time.perf_counter() - start
    top = max(doc.probabilities, key=doc.probabilities.get)
    assert f"<b>{top}</b>." in view._summary.object
    assert elapsed < 1.0


def test_a_class_keeps_its_colour_in_every_corpus():
    # Two corpora listing their classes in different orders (and one with an extra class).
    one = Document("a", "t", label="world", probabilities={"world": 0.7, "business": 0.3})
    two = Document("b", "t", label="business", probabilities={"sport": 0.1, "business": 0.5, "world": 0.4})
    frames = [class_probabilities(d) for d in (one, two)]
    colours = [dict(zip(f["class"], f["colour"], strict=True)) for f in frames]
    assert colours[0]["world"] == colours[1]["world"] == class_colour("world") == "#d8afa1"
    assert colours[0]["business"] == colours[1]["business"] == class_colour("business")
    bar = prediction_summary_html(two)
    assert bar.index(f"background:{class_colour('sport')}") < bar.index(f"background:{class_colour('business')}")
    view = Predictions(data=two)
    (fig,) = pn.panel(view).get_root().select({"type": figure})
    (renderer,) = fig.renderers
    data = renderer.data_source.data
    assert dict(zip(data["label"], data["colour"], strict=True)) == {
        "sport": class_colour("sport"),
        "world": class_colour("world"),
        "business ◀ gold": class_colour("business"),
    }
    assert fig.title.text == "class probabilities · document b"
    assert [type(t).__name__ for t in fig.toolbar.tools] == ["HoverTool", "SaveTool"]
    assert fig.toolbar.active_scroll is None
    assert fig.height == 160  # the minimum (70 + 24 px per class = 142)
    view.data = Document("c", "t", probabilities={f"class {i}": 0.05 for i in range(20)})
    assert fig.height == 70 + 24 * 20  # room for every class


def test_table_marks_classes_with_their_colour(corpus_table):
    browser = DocumentBrowser(data=corpus_table)
    pn.panel(browser).get_root()
    styles = browser._table._get_style_data()["data"]
    rows = browser._rows
    gold, predicted = list(rows.columns).index("gold") + 1, list(rows.columns).index("predicted") + 1  # + index
    for i, row in rows.iterrows():
        cells = styles.get(i, {})
        for column, name in ((gold, row["gold"]), (predicted, row["predicted"])):
            expected = [("border-left", f"6px solid {class_colour(name)}")] if name else None
            assert cells.get(column) == expected
