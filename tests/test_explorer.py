"""The Explorer's param state: derived outputs by hand, what recomputes when, linking, actions."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import param
import pytest
import xarray as xr

from attviz.corpus import Corpus, Document, attention_array, token_frame, vector_array
from attviz.errors import InputError
from attviz.explorer import Explorer, explore
from attviz.live import LiveModel
from attviz.views import View

# Two layers, two heads, three tokens; rows sum to 1. Layer 1 is layer 0 reversed along key.
A = np.array(
    [
        [
            [[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]],  # layer 0, head 0
            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.1, 0.3, 0.6]],  # layer 0, head 1
        ],
        [
            [[0.25, 0.25, 0.5], [0.0, 1.0, 0.0], [0.6, 0.2, 0.2]],
            [[0.0, 0.0, 1.0], [0.0, 0.5, 0.5], [0.6, 0.3, 0.1]],
        ],
    ],
    dtype=np.float32,
)
TOKENS = token_frame(["[CLS]", "cat", "[SEP]"], word=[-1, 0, -1], start=[0, 0, 3], end=[0, 3, 3], special=[1, 0, 1])


def corpus_of(n: int = 2) -> Corpus:
    docs = [
        Document(
            id=f"d{i}",
            text="cat",
            arrays={"self": attention_array(A if i == 0 else A[..., ::-1], TOKENS)},
            label="pets",
            prediction="pets" if i == 0 else "cars",
            probabilities={"pets": 0.9, "cars": 0.1} if i == 0 else {"pets": 0.4, "cars": 0.6},
        )
        for i in range(n)
    ]
    return Corpus(docs, attrs={"name": "tiny"})


@pytest.fixture
def explorer() -> Explorer:
    return Explorer(corpus_of(), head_reduction="head")


def events_on(obj: param.Parameterized, names: list[str]) -> list[str]:
    seen: list[str] = []
    obj.param.watch(lambda *events: seen.extend(e.name for e in events), names)
    return seen


OUTPUTS = ["matrix", "layer_matrices", "head_vectors", "token_vector", "head_summary", "table", "document"]


def test_outputs_are_the_hand_computed_slices(explorer):
    assert explorer.source == "tiny" and explorer.doc_id == "d0"
    assert explorer.param.layer.bounds == (0, 1) and explorer.param.head.bounds == (0, 1)
    np.testing.assert_allclose(explorer.matrix.values, A[0, 0])
    # attention received: mean over queries of each key column, for each head of layer 0
    np.testing.assert_allclose(explorer.head_vectors.values, A[0].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(explorer.token_vector.values, [0.7 / 3, 1.45 / 3, 0.85 / 3], rtol=1e-6)
    explorer.param.update(layer=1, head=1)
    np.testing.assert_allclose(explorer.matrix.values, A[1, 1])
    explorer.head_reduction = "mean"
    np.testing.assert_allclose(explorer.matrix.values, A[1].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(explorer.token_vector.values, A[1].mean(axis=(0, 1)), rtol=1e-6)
    explorer.head_reduction = "max"
    np.testing.assert_allclose(explorer.token_vector.values, A[1].mean(axis=1).max(axis=0), rtol=1e-6)
    assert explorer.head_summary.dims == ("layer", "head", "statistic")
    assert list(explorer.table["id"]) == ["d0", "d1"] and explorer.message == ""


def test_a_head_change_updates_each_dependent_exactly_once_and_nothing_else(explorer):
    seen = events_on(explorer, OUTPUTS)
    before = {name: explorer.computed(name) for name in ("attention", "head_vectors", "head_summary", "matrix")}
    explorer.head = 1
    assert sorted(seen) == ["matrix", "token_vector"]
    assert explorer.computed("attention") == before["attention"]
    assert explorer.computed("head_vectors") == before["head_vectors"]
    assert explorer.computed("head_summary") == before["head_summary"]
    assert explorer.computed("matrix") == before["matrix"] + 1
    seen.clear()
    explorer.head = 0  # back: served from the cache, still one event each
    assert sorted(seen) == ["matrix", "token_vector"]
    assert explorer.computed("matrix") == before["matrix"] + 1


def test_picking_a_head_under_a_head_combination_shows_that_head(explorer):
    # Issue #11 (6): a click in the model grid set layer and head, and under "mean" nothing changed.
    explorer.head_reduction = "mean"
    seen = events_on(explorer, OUTPUTS)
    explorer.param.update(layer=1, head=1)  # what a click on a model-grid cell does
    assert explorer.head_reduction == "head"
    np.testing.assert_allclose(explorer.matrix.values, A[1, 1])
    np.testing.assert_allclose(explorer.token_vector.values, A[1, 1].mean(axis=0), rtol=1e-6)
    assert {"matrix", "token_vector"} <= set(seen)


def test_a_layer_change_recomputes_layer_outputs_but_not_the_document(explorer):
    seen = events_on(explorer, OUTPUTS)
    explorer.layer = 1
    assert sorted(seen) == ["head_vectors", "layer_matrices", "matrix", "token_vector"]
    # no transform: the stored array is read one layer at a time, never upcast whole
    assert explorer.computed("attention") == 0 and explorer.computed("layer_matrices") == 2
    assert explorer.computed("head_summary") == 1


def test_changing_the_token_vector_recomputes_only_what_depends_on_it(explorer):
    seen = events_on(explorer, OUTPUTS)
    matrices = explorer.computed("matrix")
    explorer.vector = "diagonal"
    assert sorted(seen) == ["head_vectors", "token_vector"]
    assert explorer.computed("matrix") == matrices
    np.testing.assert_allclose(explorer.token_vector.values, np.diagonal(A[0, 0]))


def test_attention_from_follows_the_selected_token(explorer):
    explorer.vector = "attention_from"
    explorer.selected_token = 2
    np.testing.assert_allclose(explorer.token_vector.values, A[0, 0, 2])
    seen = events_on(explorer, OUTPUTS)
    explorer.selected_token = 1
    assert sorted(seen) == ["head_vectors", "token_vector"]
    np.testing.assert_allclose(explorer.token_vector.values, A[0, 0, 1])
    assert explorer.vector_aggregation.query == 1  # its 'query' widget shows the followed token (#11, 6)
    explorer.vector_aggregation.query = 2  # moving the query slider moves the selection
    assert explorer.selected_token == 2
    np.testing.assert_allclose(explorer.token_vector.values, A[0, 0, 2])
    explorer.follow_selection = False
    explorer.selected_token = 0  # no longer followed: the query stays where it was
    assert explorer.vector_aggregation.query == 2
    np.testing.assert_allclose(explorer.token_vector.values, A[0, 0, 2])


def test_a_selection_without_a_following_vector_changes_no_output(explorer):
    seen = events_on(explorer, OUTPUTS)
    explorer.selected_token = 1
    assert seen == []


def test_editing_the_aggregation_parameters_recomputes(explorer):
    explorer.param.update(vector="attention_from", follow_selection=False)
    explorer.vector_aggregation.query = -1
    np.testing.assert_allclose(explorer.token_vector.values, A[0, 0, 2])


def test_opening_another_document_resets_the_selection(explorer):
    explorer.selected_token = 2
    explorer.doc_id = "d1"
    assert explorer.selected_token is None
    np.testing.assert_allclose(explorer.matrix.values, A[0, 0, :, ::-1])
    explorer.step(1)
    assert explorer.doc_id == "d0"


def test_transforms_change_the_token_axis(explorer):
    explorer.transform = "drop_special"
    assert explorer.matrix.sizes == {"query": 1, "key": 1}
    explorer.transform = "rollout"
    assert "head" not in explorer.attention.dims and explorer.head_vectors.sizes["head"] == 1
    np.testing.assert_allclose(explorer.matrix.values.sum(-1), 1.0, rtol=1e-5)


def test_a_query_outside_the_text_is_a_notice_not_a_crash(explorer):
    explorer.param.update(vector="attention_from", follow_selection=False)
    explorer.vector_aggregation.query = 99
    assert "query 99 of 3 tokens" in explorer.notice and explorer.token_vector is None
    explorer.vector_aggregation.query = 0
    assert explorer.message == ""


def test_legacy_vectors_are_shown_with_the_attviz_aggregates():
    values = np.array([[0.1, 0.5], [0.3, 0.1], [0.2, 0.0]])
    doc = Document(id="x", text="a b", arrays={"vectors": vector_array(values, token_frame(["a", "b"]), list("pqr"))})
    explorer = Explorer(Corpus([doc]))
    assert explorer.kind == "vectors" and explorer.matrix is None
    assert explorer.head_vectors.dims == ("vector", "token")
    np.testing.assert_allclose(explorer.token_vector.values, [0.2, 0.2])
    explorer.head_reduction = "attviz_max_min"
    np.testing.assert_allclose(explorer.token_vector.values, [0.2, 0.5])
    assert "median" not in explorer.param.head_reduction.objects.values()  # not offered for vectors
    assert not explorer.has_layers and explorer.has_heads  # no layer slider for legacy data


class Linked(View):
    description = "test view"
    requires = ("matrix", "token_vector")
    layer = param.Integer(default=0)
    aggregate = param.Parameter()

    def __panel__(self):
        return None


def test_views_are_bound_to_the_outputs_and_linked_both_ways(explorer):
    from attviz.layout import bind_view

    first, second = Linked(), Linked()
    assert bind_view(explorer, first) == {"matrix", "token_vector"}
    bind_view(explorer, second)
    assert first.data is explorer.matrix and first.aggregate is explorer.token_vector
    first.selected_token = 2
    assert explorer.selected_token == 2 and second.selected_token == 2
    second.layer = 1
    assert explorer.layer == 1 and first.layer == 1
    np.testing.assert_allclose(first.data.values, A[1, 0])  # the reference followed the new output
    explorer.head = 1
    np.testing.assert_allclose(second.data.values, A[1, 1])


def test_only_the_outputs_visible_views_need_are_derived(explorer):
    explorer.needed = {"document", "attention", "matrix"}
    summaries = explorer.computed("head_summary")
    explorer.doc_id = "d1"
    np.testing.assert_allclose(explorer.matrix.values, A[0, 0, :, ::-1])
    assert explorer.computed("head_summary") == summaries  # the Model tab is hidden: not computed
    explorer.needed = None  # shown again: derived now
    assert explorer.computed("head_summary") == summaries + 1 and explorer.head_summary is not None


def test_sessions_do_not_share_state():
    corpus = corpus_of()
    one, two = Explorer(corpus), Explorer(corpus)
    one.param.update(doc_id="d1", layer=1, selected_token=2)
    one.add_corpus("extra", corpus_of(1))
    assert (two.doc_id, two.layer, two.selected_token) == ("d0", 0, None)
    assert list(two.corpora) == ["tiny"] and list(one.corpora) == ["tiny", "extra"]


def test_add_corpus_makes_names_unique_and_switches(explorer):
    assert explorer.add_corpus("tiny", corpus_of(1)) == "tiny (2)"
    assert explorer.source == "tiny (2)" and explorer.param.doc_id.objects == ["d0"]


def test_a_bad_upload_names_the_file_and_keeps_the_session(explorer):
    with pytest.raises(InputError, match=r"broken\.json"):
        explorer.add_file("broken.json", b'[{"text": "x", "tokens": 3}]')
    with pytest.raises(InputError, match="empty"):
        explorer.add_file("empty.nc", b"")
    assert explorer.source == "tiny" and explorer.matrix is not None


def test_a_zip_that_escapes_its_folder_is_refused(explorer):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(InputError, match="outside its folder"):
        explorer.add_file("evil.zip", buffer.getvalue())


def test_a_zipped_store_and_an_exported_document_open_as_corpora(explorer, tmp_path):
    store = corpus_of().save(tmp_path / "tiny.zarr")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((tmp_path / "tiny.zarr").rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tmp_path))
    name = explorer.add_file("tiny.zip", buffer.getvalue())
    assert explorer.source == name == "tiny (2)" and len(store) == 2
    np.testing.assert_allclose(explorer.matrix.values, A[0, 0], atol=1e-3)  # float16 on disk
    explorer.doc_id = "d1"
    name = explorer.add_file("d1.nc", explorer.export_document())
    assert explorer.corpora[name].ids == ["d1"]
    np.testing.assert_allclose(explorer.matrix.values, A[0, 0, :, ::-1], atol=1e-3)


def test_comparison_matrix_follows_layer_and_head(explorer):
    explorer.param.update(compare_source="tiny", compare_doc_id="d1", layer=1, head=1)
    np.testing.assert_allclose(explorer.other_matrix.values, A[1, 1, :, ::-1])


def test_live_input_adds_documents_to_the_session(tiny_bert):
    model, tokenizer = tiny_bert
    from attviz.models import prepare_model

    live = LiveModel(loader=lambda: prepare_model(model, tokenizer, device="cpu"))
    explorer = Explorer(corpus_of(), live_model=live)
    assert explorer.run_live("The cat sat.") == "live-1"
    assert explorer.source == "live" and explorer.document.text == "The cat sat."
    assert explorer.run_live("A dog ran.") == "live-2"
    assert explorer.corpora["live"].ids == ["live-1", "live-2"]
    assert explorer.matrix.sizes["query"] == len(tokenizer("A dog ran.")["input_ids"])
    assert isinstance(explorer.matrix, xr.DataArray)


def test_explore_opens_paths_and_the_demo(tmp_path):
    corpus_of().save(tmp_path / "tiny.zarr")
    assert explore(str(tmp_path / "tiny.zarr")).source == "tiny.zarr"


def test_a_document_without_matrices_is_recomputed_with_the_same_model(tiny_bert):
    model, tokenizer = tiny_bert
    from attviz.models import prepare_model

    live = LiveModel("tiny", loader=lambda: prepare_model(model, tokenizer, device="cpu"))
    kept = Document(id="kept", text="The cat sat.", label="pets")  # e.g. a store with a token-level policy
    explorer = Explorer(Corpus([kept], attrs={"name": "light", "model": "tiny"}), live_model=live)
    assert explorer.document.meta["recomputed"] == "tiny" and explorer.document.label == "pets"
    assert explorer.matrix.sizes["query"] == len(tokenizer("The cat sat.")["input_ids"])
    assert explorer.computed("recomputed") == 1
    explorer.layer = 1
    assert explorer.computed("recomputed") == 1  # cached, not run again
    other_model = Explorer(Corpus([kept], attrs={"name": "light", "model": "another"}), live_model=live)
    assert other_model.matrix is None and other_model.computed("recomputed") == 0


def test_the_current_document_exports_as_an_offline_page(explorer):
    explorer.doc_id = "d1"
    page = explorer.export_page()
    assert "attviz-manifest" in page and '"d1"' in page and '"d0"' not in page
    assert "<script src=" not in page


def test_the_export_card_passes_the_chosen_quantisation_to_the_page(explorer):
    from attviz.layout_cards import export_card
    from tests.test_export import parse_page

    card = export_card(explorer)
    page_button, scale = card.objects[:2]
    assert scale.value == "row" and scale.values == ["row", "matrix"]
    assert parse_page(page_button.callback().getvalue())[0]["quantization"] == "row"
    scale.value = "matrix"  # as a user clicks it
    manifest, _ = parse_page(page_button.callback().getvalue())
    assert manifest["quantization"] == "matrix" and manifest["docs"][0]["id"] == explorer.doc_id


def test_a_store_of_token_vectors_is_explored_without_matrices(tiny_bert, tmp_path):
    from attviz.extract import extract
    from attviz.models import prepare_model
    from attviz.policy import StoragePolicy

    model, tokenizer = tiny_bert
    policy = StoragePolicy(matrices=False, vectors=("attention_received", "attention_from:query=-1"), summary=True)
    texts = ["The cat sat on the mat.", "Rates fall."]
    corpus = extract(texts, model=model, tokenizer=tokenizer, progress=False, policy=policy, store=tmp_path / "v.zarr")
    explorer = Explorer(corpus)
    stored = corpus[0].get("self_vectors")
    assert explorer.param.kind.objects == ["self"] and explorer.param.layer.bounds == (0, 1)
    assert explorer.matrix is None and explorer.layer_matrices is None
    explorer.param.update(vector="attention_received", layer=1, head=2, head_reduction="head")
    np.testing.assert_array_equal(explorer.token_vector.values, stored.sel(vector="attention_received")[1, 2].values)
    assert explorer.token_vector["token_text"].values.tolist() == corpus[0].tokens
    assert "keeps token vectors only (showing attention_received)" in explorer.notice and explorer.message == ""
    explorer.head_reduction = "max"  # reductions over heads work on the stored vectors too
    expected = stored.sel(vector="attention_received")[1].values.max(axis=0)
    np.testing.assert_allclose(explorer.token_vector.values, expected)
    # attention_from is stored with query=-1: that one is shown even though the widget says query=0
    explorer.vector = "attention_from"
    np.testing.assert_allclose(
        explorer.token_vector.values, stored.sel(vector="attention_from:query=-1")[1].values.max(0)
    )
    explorer.vector = "entropy"  # not stored: said plainly, nothing crashes
    assert explorer.token_vector is None and "only attention_received, attention_from:query=-1" in explorer.notice
    # the head summary comes from the store
    summary = explorer.head_summary
    assert summary.dims == ("layer", "head", "statistic")
    np.testing.assert_array_equal(summary.values, corpus[0].get("self_summary").values)
    # with the corpus's own model loaded, the matrices come back on demand
    live = LiveModel(corpus.attrs["model"], loader=lambda: prepare_model(model, tokenizer, device="cpu"))
    again = Explorer(corpus, live_model=live)
    assert again.matrix is not None and again.document.meta["recomputed"] == corpus.attrs["model"]
    assert again.message == "" and again.notice == ""
    # a store of other vectors opens on the first one it keeps
    only = StoragePolicy(matrices=False, vectors=("entropy:normalised=true",))
    entropy = extract(texts, model=model, tokenizer=tokenizer, progress=False, policy=only)
    opened = Explorer(entropy)
    assert opened.vector == "entropy" and opened.token_vector is not None
    assert "showing entropy:normalised=true" in opened.notice


def test_every_tab_renders_a_store_of_token_vectors(tiny_bert, tmp_path):
    from bokeh.document import Document as BokehDocument

    from attviz.extract import extract
    from attviz.layout import ExplorerLayout
    from attviz.policy import StoragePolicy

    model, tokenizer = tiny_bert
    policy = StoragePolicy(matrices=False, vectors=("attention_received",), summary=True)
    corpus = extract(["The cat sat.", "Rates fall."], model=model, tokenizer=tokenizer, progress=False, policy=policy)
    explorer = Explorer(corpus)
    layout = ExplorerLayout(explorer)
    layout.panel().get_root(BokehDocument())
    for tab in range(len(layout.tabs)):
        layout.tabs.active = tab  # each tab's views update on show
        assert not explorer.message.startswith("view "), explorer.message
    explorer.head = 1
    explorer.doc_id = corpus.ids[1]
    assert explorer.token_vector is not None and not explorer.message.startswith("view ")


def test_documents_evicted_from_the_corpus_show_their_own_attention(tmp_path):
    corpus = corpus_of(4).save(tmp_path / "c.zarr")
    reference = Corpus.open(tmp_path / "c.zarr")  # the same stored values, its own cache
    corpus.cache_size = 1  # every switch loads a new Document object
    explorer = Explorer(corpus)
    for doc_id in ["d0", "d1", "d2", "d3", "d0", "d2", "d1", "d3"] * 3:
        explorer.doc_id = doc_id
        expected = reference[doc_id].attention.values.astype(np.float32)
        np.testing.assert_array_equal(explorer.attention.values, expected)


def test_cache_keys_hold_their_objects_by_identity():
    import gc
    import weakref

    from attviz.cache import Ref as _Ref

    a, b = Document(id="x", text="t"), Document(id="x", text="t")
    assert a == b and _Ref(a) != _Ref(b) and _Ref(a) == _Ref(a) and hash(_Ref(a)) == id(a)
    key = (_Ref(a), "self", "none")
    gone = weakref.ref(a)
    del a
    gc.collect()
    assert gone() is not None  # alive while the key is: its id() cannot be handed to a new object
    del key
    gc.collect()
    assert gone() is None


def test_the_selected_token_follows_a_transform_change(tiny_bert):
    from attviz.extract import extract

    model, tokenizer = tiny_bert
    text = "An unbelievable photosynthesis result."
    corpus = extract([text], model=model, tokenizer=tokenizer, progress=False)
    tokens = corpus[0].token_table()
    explorer = Explorer(corpus)
    # a word piece inside "photosynthesis" (not its first piece)
    piece = next(i for i in tokens.index if tokens.loc[i, "text"].startswith("##") and tokens.loc[i, "start"] > 15)
    word = text[tokens.loc[piece, "start"] : tokens.loc[piece, "end"]]
    assert word and word in "photosynthesis"
    explorer.selected_token = int(piece)
    explorer.transform = "merge_words"
    merged = explorer.attention
    chosen = explorer.selected_token
    assert chosen is not None
    assert text[int(merged["query_start"][chosen]) : int(merged["query_end"][chosen])] == "photosynthesis"
    explorer.transform = "drop_special"  # the merged word maps to the piece its first character is in
    dropped = explorer.attention
    start = int(dropped["query_start"][explorer.selected_token])
    assert start == text.index("photosynthesis")
    explorer.transform = "none"
    explorer.selected_token = 0  # [CLS]
    explorer.transform = "drop_special"
    assert explorer.selected_token is None  # dropped with the special tokens
    explorer.transform = "none"
    last = len(tokens) - 1  # [SEP] survives merging words: the same special token
    explorer.selected_token = last
    explorer.transform = "merge_words"
    assert explorer.attention["query_text"].values[explorer.selected_token] == "[SEP]"
    explorer.doc_id = explorer.doc_id  # no change: the selection stays
    assert explorer.selected_token is not None


def test_a_store_of_some_layers_and_heads_shows_the_model_numbers(tiny_bert):
    from attviz.extract import extract
    from attviz.layout import _kept_text
    from attviz.policy import StoragePolicy

    model, tokenizer = tiny_bert
    corpus = extract(
        ["The cat sat."],
        model=model,
        tokenizer=tokenizer,
        progress=False,
        policy=StoragePolicy(layers="1", heads="0,2"),
    )
    explorer = Explorer(corpus, head_reduction="head")
    assert explorer.param.layer.bounds == (0, 0) and explorer.param.head.bounds == (0, 1)
    explorer.head = 1
    assert _kept_text(explorer) == (
        "<small>model layer <b>1</b> (of kept 1); model head <b>2</b> (of kept 0, 2)</small>"
    )
    np.testing.assert_array_equal(explorer.matrix.values, corpus[0].attention.sel(layer=1, head=2).values)
    explorer.head_reduction = "mean"
    assert "model head <b>all kept</b>" in _kept_text(explorer)
    assert _kept_text(Explorer(corpus_of())) == ""  # every layer and head: nothing to say


def test_the_prediction_card_title_says_the_prediction_in_one_line():
    from attviz.layout import _prediction_line

    right = Document(id="a", text="t", label="pets", prediction="pets", probabilities={"pets": 0.9, "cars": 0.1})
    wrong = Document(id="b", text="t", label="pets", prediction="cars", probabilities={"pets": 0.4, "cars": 0.6})
    assert _prediction_line(right) == "Prediction: pets 90.0 % ✓"
    assert _prediction_line(wrong) == "Prediction: cars 60.0 % ✗ (gold pets)"
    assert _prediction_line(Document(id="c", text="t", label="pets")) == "Gold label: pets"
    assert _prediction_line(None) == "Prediction"
