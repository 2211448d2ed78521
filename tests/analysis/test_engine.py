"""The corpus statistics engine and its contrasts on a corpus whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats as scipy_stats

from attviz.analysis import engine
from attviz.analysis.differences import class_ranking, compare_stores, contrast, log_values, qq_data, token_log_odds
from attviz.analysis.engine import corpus_statistics
from attviz.corpus import Corpus, Document, attention_array
from tests.analysis.synthetic import synthetic_corpus


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus()


@pytest.fixture(scope="module")
def stats(corpus):
    return corpus_statistics(corpus)


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory):
    return corpus.save(tmp_path_factory.mktemp("engine") / "synthetic.zarr")


def test_atlas_finds_the_heads_built_in(stats):
    atlas = stats.atlas().set_index(["layer", "head"])
    assert atlas.loc[(0, 0), "previous"] == pytest.approx(1.0)
    assert atlas.loc[(0, 0), "distance"] < 1.0  # row 0 attends to itself: distance (T-1)/T
    assert atlas.loc[(0, 1), "sink"] == pytest.approx(1.0)
    assert atlas.loc[(0, 1), "first"] == pytest.approx(1.0)
    assert atlas.loc[(0, 0), "pattern"] == "diagonal"
    assert atlas.loc[(0, 1), "pattern"] == "vertical"
    assert atlas.loc[(0, 0), "offset"] == -1
    # head (1, 2) is uniform but for one token: its normalised entropy is close to 1, and it is no sink
    assert atlas.loc[(1, 2), "entropy"] > 0.97
    assert atlas.loc[(1, 2), "sink"] == 0


def test_token_values_are_per_document_means(corpus, stats):
    values = stats.token_values(layer=1, head=2)
    good = values[values["type"] == "good"].set_index("id")["value"]
    for doc in corpus:
        t = doc.n_tokens
        expected = 2 / (t + 1) if doc.label == "pos" else 1 / t
        assert good[doc.id] == pytest.approx(expected, rel=1e-6)
    # a type repeated within a document is one entry (its mean) with its count
    counts = values.groupby(["id", "type"]).size()
    assert counts.max() == 1
    doc = corpus[0]
    the = sum(1 for token in doc.tokens if token == "the")
    if the:
        row = values[(values["id"] == doc.id) & (values["type"] == "the")]
        assert int(row["count"].iloc[0]) == the


def test_store_statistics_are_cached_and_equal_the_in_memory_path(store, stats, monkeypatch):
    first = corpus_statistics(store)
    # the store keeps float16 weights: the in-memory float32 numbers within float16 rounding
    xr.testing.assert_allclose(first.heads, stats.heads, atol=2e-3, rtol=0)
    xr.testing.assert_allclose(first.tokens, stats.tokens, atol=1e-3, rtol=0)
    assert (engine.statistics_path(store.path, first.settings) / "stats.json").is_file()

    def fail(*_, **__):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(engine, "document_statistics", fail)
    again = corpus_statistics(store)
    xr.testing.assert_equal(again.heads, first.heads)
    xr.testing.assert_equal(again.tokens, first.tokens)
    np.testing.assert_allclose(again.similarity.values, first.similarity.values)
    # other settings are another cache entry, computed again
    with pytest.raises(AssertionError, match="recomputed"):
        corpus_statistics(store, epsilon=0.5)


def test_the_cache_is_ignored_when_the_documents_changed(store, tmp_path):
    stats = corpus_statistics(store)
    table = stats.documents.iloc[:-1]
    assert engine.load_statistics(store.path, stats.settings, table) is None


def test_a_local_cluster_gives_the_single_process_numbers(store):
    distributed = pytest.importorskip("distributed")
    stats = corpus_statistics(store)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        remote = corpus_statistics(store, client=client, cache=False)
    xr.testing.assert_equal(remote.heads, stats.heads)
    xr.testing.assert_equal(remote.tokens, stats.tokens)
    np.testing.assert_array_equal(remote.similarity.values, stats.similarity.values)


def test_similarity_is_the_mean_js_distance_of_sampled_documents(corpus, stats):
    from attviz.analysis.similarity import js_distance

    sim = stats.similarity.values
    assert sim.shape == (6, 6)
    np.testing.assert_allclose(np.diag(sim), 0, atol=1e-6)
    rng = np.random.default_rng(0)
    sampled = rng.choice(len(corpus), size=min(len(corpus), engine.SIMILARITY_DOCUMENTS), replace=False)
    expected = np.mean([js_distance(corpus[int(i)].attention.values) for i in sampled], axis=0)  # T < 32: all rows
    np.testing.assert_allclose(sim, expected, rtol=1e-6)


def test_class_contrast_on_tokens_finds_the_doubled_token(corpus, stats):
    table = contrast(stats, "label", "pos", "neg", on="tokens")
    top = table.iloc[0]
    assert (top["type"], top["layer"], top["head"]) == ("good", 1, 2)
    assert top["delta"] == pytest.approx(1.0)  # every pos document above every neg one
    pos = [2 / (d.n_tokens + 1) for d in corpus if d.label == "pos"]
    neg = [1 / d.n_tokens for d in corpus if d.label == "neg"]
    expected = scipy_stats.mannwhitneyu(pos, neg, method="asymptotic")
    assert top["p_mannwhitney"] == pytest.approx(expected.pvalue, rel=1e-6)
    assert top["p_ks"] == pytest.approx(scipy_stats.ks_2samp(pos, neg).pvalue, rel=1e-6)
    assert top["q_mannwhitney"] >= top["p_mannwhitney"]
    assert top["delta_low"] <= top["delta"] <= top["delta_high"]
    # the heads built the same in both classes separate nothing
    built = table[(table["layer"] == 0) & (table["head"] == 0)]
    assert (built["q_mannwhitney"] > 0.05).all()


def test_head_contrasts_correct_vs_wrong_use_one_value_per_document(stats):
    table = contrast(stats, "correct", on="heads")
    assert table.attrs["a"] == "correct" and table.attrs["b"] == "wrong"
    wrong = int((stats.documents["correct"] == False).sum())  # noqa: E712
    assert set(table["n_b"]) == {wrong}
    assert set(table["n_a"]) == {len(stats.documents) - wrong}


def test_one_class_against_the_rest(stats):
    table = contrast(stats, "label", "pos", on="heads", metrics=["entropy"])
    assert table.attrs["b"] == "neg"  # two classes: the other one
    with pytest.raises(Exception, match="no documents"):
        contrast(stats, "label", "nothing")


def test_weighted_log_odds_by_count_and_by_attention(stats):
    counts = token_log_odds(stats, "label", "pos", "neg")
    good = counts.set_index("type").loc["good"]
    assert good["count_a"] == good["count_b"] == 12  # one per document in each class
    attention = token_log_odds(stats, "label", "pos", "neg", weight="attention", layer=1, head=2).set_index("type")
    # by count "good" separates nothing (one per document); weighted by the attention it receives in head
    # (1, 2), twice as much in pos documents, it does
    by_count = counts.set_index("type").loc["good", "z"]
    assert abs(by_count) < 0.5
    assert attention.loc["good", "z"] > by_count + 1


def test_class_ranking_distributions_and_qq_use_each_class_own_data(stats):
    ranking = class_ranking(stats, "label", layer=1, head=2, k=3)
    assert ranking[ranking["class"] == "pos"].iloc[0]["type"] == "good"
    samples = log_values(stats, "label", statistic="max", layer=1, head=2)
    assert set(samples) == {"pos", "neg"}
    qq = qq_data(samples)
    assert not np.array_equal(qq["pos"]["observed"].to_numpy(), qq["neg"]["observed"].to_numpy())
    expected = scipy_stats.probplot(samples["neg"])
    np.testing.assert_allclose(qq["neg"]["observed"], expected[0][1])


def test_store_a_vs_store_b_pairs_the_same_texts(corpus, tmp_path):
    # store B: the same texts, head (1, 2) uniform everywhere (a "checkpoint" that lost the effect)
    docs = []
    for doc in corpus:
        a = doc.attention.values.copy()
        a[1, 2] = 1 / a.shape[-1]
        tokens = doc.token_table()
        arrays = {"self": attention_array(a, tokens)}
        docs.append(Document(id="b-" + doc.id, text=doc.text, arrays=arrays, label=doc.label))
    other = corpus_statistics(Corpus(docs))
    base = corpus_statistics(corpus)
    table = compare_stores(base, other, on="tokens")
    assert table.attrs["documents"] == len(corpus)
    row = table[(table["type"] == "good") & (table["layer"] == 1) & (table["head"] == 2)].iloc[0]
    pos = [(2 / (d.n_tokens + 1), 1 / d.n_tokens) for d in corpus if d.label == "pos"]
    neg = [(1 / d.n_tokens, 1 / d.n_tokens) for d in corpus if d.label == "neg"]
    a, b = np.array([p[0] for p in pos + neg]), np.array([p[1] for p in pos + neg])
    assert row["p_wilcoxon"] == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue, rel=1e-3)
    same = table[(table["layer"] == 0) & (table["head"] == 0)]
    assert (same["p_wilcoxon"] == 1).all()  # unchanged head: every pair equal


def test_statistics_need_matrices():
    from attviz.corpus import token_frame, vector_array

    tokens = token_frame(["a", "b"])
    doc = Document(id="v", text="a b", arrays={"vectors": vector_array(np.ones((1, 2)), tokens, ["mean"])})
    with pytest.raises(engine.StatisticsError, match="no attention matrices"):
        corpus_statistics(Corpus([doc]))


def test_documents_frame_has_the_table(stats):
    assert isinstance(stats.documents, pd.DataFrame)
    top = stats.top_documents(0, 1, "sink", n=3)
    assert len(top) >= 3 and {"rank", "id", "index", "label"} <= set(top.columns)
    assert top["rank"].str.startswith("decile").any()


def test_a_decoder_corpus_gets_induction_scores_from_its_model(tiny_gpt2):
    from attviz import extract
    from attviz.analysis.atlas import induction_scores

    model, tokenizer = tiny_gpt2
    corpus = extract(["one two three four", "five six seven eight nine"], model=model, tokenizer=tokenizer)
    assert corpus.attrs.get("causal")
    stats = corpus_statistics(corpus, model=model)
    atlas = stats.atlas()
    expected = induction_scores(model)
    np.testing.assert_allclose(atlas["induction"].to_numpy(), expected.ravel())
    # causal attention: the entropy of row i is normalised by ln(i + 1), so it stays within [0, 1]
    assert ((atlas["entropy"] >= 0) & (atlas["entropy"] <= 1 + 1e-6)).all()
    # an encoder corpus gets none unless asked
    assert "induction" not in corpus_statistics(synthetic_corpus(6)).atlas()


def test_a_qk_store_gives_the_numbers_of_its_rebuilt_matrices(tiny_bert, tmp_path):
    from attviz import extract

    model, tokenizer = tiny_bert
    texts = ["the cat sat on the mat.", "a dog ran far away. it came home!", "hello world"]
    qk = extract(texts, model=model, tokenizer=tokenizer, attention="qk", store=tmp_path / "qk.zarr")
    assert all(doc.qk() is not None for doc in qk)
    fast = corpus_statistics(qk, cache=False)
    rebuilt = Corpus(
        [Document(id=d.id, text=d.text, arrays={"self": d.attention.compute()}, label=d.label) for d in qk]
    )
    slow = corpus_statistics(rebuilt, cache=False)
    xr.testing.assert_allclose(fast.heads, slow.heads, rtol=1e-5, atol=1e-6)
    xr.testing.assert_allclose(fast.tokens, slow.tokens, rtol=1e-5, atol=1e-6)


def test_fuji_similarity_ranks_the_same_token_occurrences(stats):
    from attviz.analysis.similarity import aufuji

    fuji = stats.fuji()
    assert fuji.shape == (6, 6)
    np.testing.assert_allclose(np.diag(fuji.values), 1.0)
    values = stats.tokens["value"].values  # fewer entries than max_entries: all of them, in order
    a, b = values[:, 0, 0], values[:, 1, 2]  # flat heads 0 and 5
    assert fuji.values[0, 5] == pytest.approx(aufuji(a, b, step="exp"))


def test_statistics_of_changed_documents_replace_the_stale_cache(corpus, tmp_path):
    store = Corpus(list(corpus)[:8]).save(tmp_path / "s.zarr")
    first = corpus_statistics(store)
    target = engine.statistics_path(store.path, first.settings)
    grown = Corpus(list(corpus)[:10]).save(tmp_path / "s.zarr", overwrite=True)
    # a store rewritten in place keeps no stats/ group; put the old one back as if it had survived
    if not target.exists():
        first_again = engine.CorpusStatistics(
            first.heads, first.tokens, first.similarity, first.documents, first.settings
        )
        engine.save_statistics(grown.path, first_again)
    assert engine.load_statistics(grown.path, first.settings, grown.table) is None  # stale: other documents
    second = corpus_statistics(grown)
    assert second.heads.sizes["doc"] == 10
    again = engine.load_statistics(grown.path, first.settings, grown.table)  # replaced, not kept
    assert again is not None and again.heads.sizes["doc"] == 10
