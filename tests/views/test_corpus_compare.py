"""The Corpus tab's store A vs store B contrast: two corpora over the same texts, paired by text."""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest
from scipy import stats as scipy_stats

from attviz import explorer as explorer_module
from attviz.corpus import Corpus, Document, attention_array
from attviz.explorer import Explorer
from attviz.layout import ExplorerLayout
from attviz.views.corpus import STORE, SUB_TABS, CorpusView
from tests.analysis.synthetic import synthetic_corpus


def store_b(corpus: Corpus, *, heads: int | None = None) -> Corpus:
    """The same texts with head (1, 2) uniform everywhere (a "checkpoint" that lost the effect), or with
    only the first ``heads`` heads (a model of another shape)."""
    docs = []
    for doc in corpus:
        a = doc.attention.values.copy()
        a[1, 2] = 1 / a.shape[-1]
        if heads is not None:
            a = a[:, :heads]
        arrays = {"self": attention_array(a, doc.token_table())}
        docs.append(Document(id="b-" + doc.id, text=doc.text, arrays=arrays, label=doc.label))
    return Corpus(docs)


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_corpus()


@pytest.fixture(scope="module")
def uniform(synthetic):
    return store_b(synthetic)


def store_tab(explorer: Explorer, name: str | None = None, on: str = "tokens") -> CorpusView:
    """The Corpus tab's Contrasts sub-tab on "another store" (``name``: the default), statistics computed."""
    layout = ExplorerLayout(explorer)
    layout.tabs.active = list(layout.tabs._names).index("Corpus")
    assert explorer.wait_for_statistics(120)
    view = layout.views["corpus"]
    pn.panel(view).get_root()
    view.sub_tabs.active = SUB_TABS.index("Contrasts")
    view.param.update(contrast_by=STORE, contrast_on=on, **({"store_b": name} if name else {}))
    assert explorer.wait_for_statistics(120)
    return view


def test_store_a_vs_store_b_finds_the_changed_head(synthetic, uniform):
    explorer = Explorer({"A": synthetic, "B": uniform})
    view = store_tab(explorer)
    assert explorer.store_source == "B" and explorer.other_corpus_statistics is not None
    table = view.contrast_table.value
    assert (table["type"].iloc[0], table["layer"].iloc[0], table["head"].iloc[0]) == ("good", 1, 2)
    assert {"p_wilcoxon", "q_wilcoxon", "p_mannwhitney", "δ"} <= set(table.columns)
    # the paired values: "good" gets 2/(T+1) in "pos" documents of A, 1/T in "neg" ones and everywhere in B
    a = np.array([2 / (d.n_tokens + 1) if d.label == "pos" else 1 / d.n_tokens for d in synthetic])
    b = np.array([1 / d.n_tokens for d in synthetic])
    assert table["p_wilcoxon"].iloc[0] == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue, rel=1e-3)
    assert view.contrast_table.formatters["type"] == "plaintext"
    view.open_contrast_row(0)  # selects head (1, 2) and opens a document of A at its "good"
    assert (explorer.layer, explorer.head) == (1, 2)
    doc = synthetic[explorer.doc_id]
    assert doc.token_table()["text"].iloc[explorer.selected_token] == "good"
    for pane in view.contrast_area.objects:
        pane.get_root()
    view.contrast_table.page = 2
    explorer.param.update(layer=0, head=0)  # another head: the same table, on the same page
    assert view.contrast_table.page == 2 and view.contrast_table.value["type"].iloc[0] == "good"
    view.contrast_on = "heads"  # unchanged heads: every pair equal
    heads = view.contrast_table.value
    assert (heads[(heads["layer"] == 0) & (heads["head"] == 0)]["p_wilcoxon"] == 1).all()


def test_switching_back_shows_each_settings_table_again(synthetic, uniform):
    explorer = Explorer({"A": synthetic, "B": uniform})
    view = store_tab(explorer)
    assert "p_wilcoxon" in view.contrast_table.value
    view.param.update(contrast_by="label", group_a="pos", group_b="neg")
    assert "p_wilcoxon" not in view.contrast_table.value
    view.contrast_by = STORE
    assert "p_wilcoxon" in view.contrast_table.value and "p_wilcoxon" in view.contrast_frame


def test_the_store_choice_needs_a_second_corpus(synthetic):
    explorer = Explorer({"A": synthetic})
    layout = ExplorerLayout(explorer)
    view = layout.views["corpus"]
    assert STORE not in view.param.contrast_by.objects.values() and view.store_b is None
    explorer.add_corpus("B", store_b(synthetic), show=False)
    assert STORE in view.param.contrast_by.objects.values() and view.store_b == "B"


def test_the_default_store_is_the_compare_corpus(synthetic, uniform):
    c = store_b(synthetic)
    view = ExplorerLayout(Explorer({"A": synthetic, "B": uniform, "C": c})).views["corpus"]
    assert view.store_b == "B" and view.param.store_b.objects == ["B", "C"]
    explorer = Explorer({"A": synthetic, "B": uniform, "C": c}, compare_source="C")
    assert ExplorerLayout(explorer).views["corpus"].store_b == "C"


def test_store_statistics_are_computed_only_when_asked(synthetic):
    other = store_b(synthetic)
    explorer = Explorer({"A": synthetic, "B": other})
    layout = ExplorerLayout(explorer)
    layout.tabs.active = list(layout.tabs._names).index("Corpus")
    assert explorer.wait_for_statistics(120)
    view = layout.views["corpus"]
    view.sub_tabs.active = SUB_TABS.index("Contrasts")
    assert id(other) not in explorer_module._JOBS and explorer.other_corpus_statistics is None
    view.contrast_by = STORE
    assert explorer.store_source == "B" and id(other) in explorer_module._JOBS
    view.contrast_by = "label"
    assert explorer.store_source is None


def test_stores_of_different_heads_show_a_notice(synthetic):
    explorer = Explorer({"A": synthetic, "B": store_b(synthetic, heads=2)})
    view = store_tab(explorer, on="heads")
    assert explorer.other_corpus_statistics is not None
    alerts = [o for o in view.contrast_area.objects if isinstance(o, pn.pane.Alert)]
    assert alerts and "different heads" in alerts[0].object and alerts[0].alert_type == "warning"
    assert explorer.message == ""


def test_a_store_without_statistics_shows_why():
    from tests import corpora

    explorer = Explorer({"A": synthetic_corpus(), "legacy": corpora.legacy_corpus()})
    view = store_tab(explorer)
    assert explorer.other_corpus_status.startswith("Corpus statistics are not available for legacy")
    alerts = [o for o in view.contrast_area.objects if isinstance(o, pn.pane.Alert)]
    assert alerts and "not available for legacy" in alerts[0].object


def test_store_deltas_map_the_changed_head(synthetic, uniform):
    """The heat map under the A-vs-B table: head (1, 2), uniform in B, is the only head whose entropy
    differs (lower in A's "pos" documents, where it doubles the attention on "good"): its δ is Cliff's
    (mean sign of every a − b) of the two stores' entropies. On token types the table alone says it."""
    explorer = Explorer({"A": synthetic, "B": uniform})
    view = store_tab(explorer, on="heads")
    view.metric = "entropy"
    heat = view.store_deltas(view.contrast_frame).data
    changed = heat[(heat["layer"] == 1) & (heat["head"] == 2)]["delta"]
    a = explorer.corpus_statistics.head_values("entropy", 1, 2).to_numpy()
    b = explorer.other_corpus_statistics.head_values("entropy", 1, 2).to_numpy()
    assert changed.tolist() == [pytest.approx(np.sign(a[:, None] - b[None, :]).mean())]
    assert changed.iloc[0] < -0.4
    assert (heat.drop(changed.index)["delta"] == 0).all() and len(heat) == 2 * 3
    pane = view.contrast_area.objects[-1]
    assert isinstance(pane, pn.pane.HoloViews) and pane.object.vdims[0].name == "delta"
    pane.get_root()  # renders
    view.metric = "distance"  # the map follows the grid's metric
    distance = view.store_deltas(view.contrast_frame).data
    assert distance[(distance["layer"] == 1) & (distance["head"] == 2)]["delta"].iloc[0] != 0
    view.contrast_on = "tokens"
    assert view.store_deltas(view.contrast_frame) is None
