"""The query–key space (attviz.analysis.qkspace, issue #13; AttentionViz, Yeh et al. 2023): normalisation
that keeps every attention weight, a deterministic PCA equal to an independent eigen-decomposition,
queries and keys from the store or recomputed by the model, the points table and seeded sampling."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import attviz
from attviz.analysis.qkspace import QKSpace, normalise_qk, pca_2d, qk_space, qk_vectors
from attviz.errors import AttvizError
from tests.conftest import TEXTS

LABELS = ["a", "b", "a", "b", "a"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def _eigen_pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the two leading principal axes and their variance ratios, from the covariance matrix's
    eigen-decomposition (not an SVD of the data)."""
    centred = x - x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    top = np.argsort(values)[::-1][:2]
    return centred @ vectors[:, top], values[top] / values.sum()


def _same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> None:
    for column in range(a.shape[1]):
        sign = np.sign(a[:, column] @ b[:, column]) or 1.0
        np.testing.assert_allclose(a[:, column], sign * b[:, column], atol=atol)


@pytest.fixture(scope="module")
def bert_qk(tiny_bert):
    model, tokenizer = tiny_bert
    return attviz.extract(TEXTS, model=model, tokenizer=tokenizer, labels=LABELS, attention="qk", progress=False)


@pytest.fixture(scope="module")
def bert_matrices(tiny_bert):
    model, tokenizer = tiny_bert
    return attviz.extract(
        TEXTS[:3], model=model, tokenizer=tokenizer, labels=LABELS[:3], attention="matrices", progress=False
    )


@pytest.fixture(scope="module")
def gpt2_qk(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    return attviz.extract(TEXTS, model=model, tokenizer=tokenizer, attention="qk", progress=False)


# -- normalisation -------------------------------------------------------------------------------
def test_normalising_keeps_every_softmax_row_and_equalises_centroids_and_mean_norms():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(30, 8)) * 4.0 + 2.0  # queries far from the keys and larger
    k = rng.normal(size=(25, 8)) * 0.3 - 5.0
    nq, nk = normalise_qk(q, k)
    assert nq.dtype == np.float64 and nq.shape == q.shape and nk.shape == k.shape
    for scale in (1 / np.sqrt(8), 1.0):
        np.testing.assert_allclose(_softmax(nq @ nk.T * scale), _softmax(q @ k.T * scale), rtol=0, atol=1e-12)
    # q·k changes by one constant per query (translation), never by a factor (temperature)
    shift = nq @ nk.T - q @ k.T
    np.testing.assert_allclose(shift, shift[:, :1] * np.ones((1, len(k))), atol=1e-9)
    np.testing.assert_allclose(nq.mean(axis=0), nk.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(nq, axis=1).mean(), np.linalg.norm(nk, axis=1).mean(), rtol=1e-9)
    # before, neither held
    assert np.linalg.norm(q.mean(axis=0) - k.mean(axis=0)) > 1
    assert abs(np.linalg.norm(q, axis=1).mean() - np.linalg.norm(k, axis=1).mean()) > 1


def test_normalising_a_stored_head_rebuilds_its_causal_weights(gpt2_qk):
    doc = gpt2_qk[3]
    kept = doc.qk()
    rule = kept.rules[1]
    q, k = qk_vectors(doc, 1, 2)
    nq, nk = normalise_qk(q.astype(np.float64), k.astype(np.float64))
    logits = nq @ nk.T * rule.scaling
    logits[np.triu(np.ones(logits.shape, dtype=bool), 1)] = -np.inf  # GPT-2 is causal
    np.testing.assert_allclose(_softmax(logits), kept.matrix(1, 2), atol=2e-6)


def test_normalising_float32_stays_float32_and_degenerate_sets_are_only_translated():
    q = np.ones((4, 3), dtype=np.float32)  # every query equal: no scale equalises the norms
    k = np.arange(12, dtype=np.float32).reshape(4, 3)
    nq, nk = normalise_qk(q, k)
    assert nq.dtype == np.float32 and nk.dtype == np.float32
    np.testing.assert_array_equal(nq, q)
    np.testing.assert_allclose(nk.mean(axis=0), q.mean(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        normalise_qk(np.ones((3, 2)), np.ones((3, 4)))


# -- projection -----------------------------------------------------------------------------------
def test_pca_of_a_hand_built_set():
    x = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + np.array([5.0, -3.0])
    scores, explained = pca_2d(x)
    # variances 8/4 and 2/4 along the axes: ratios 0.8 and 0.2, scores the centred coordinates
    assert explained == pytest.approx((0.8, 0.2))
    np.testing.assert_allclose(scores, [[-2, 0], [2, 0], [0, 1], [0, -1]], atol=1e-12)


def test_pca_equals_an_eigen_decomposition_and_its_sign_is_fixed():
    x = np.random.default_rng(3).normal(size=(40, 6)) @ np.diag([5, 3, 1, 0.5, 0.2, 0.1])
    scores, explained = pca_2d(x)
    reference, ratios = _eigen_pca(x)
    _same_up_to_sign(scores, reference, atol=1e-9)
    np.testing.assert_allclose(explained, ratios, rtol=1e-9)
    flipped, _ = pca_2d(-x)  # the same cloud mirrored gets the same map orientation rule
    for column in range(2):
        _, _, vt = np.linalg.svd(x - x.mean(axis=0))
        loading = vt[column] if vt[column][np.argmax(np.abs(vt[column]))] > 0 else -vt[column]
        np.testing.assert_allclose(scores[:, column], (x - x.mean(axis=0)) @ loading, atol=1e-9)
        np.testing.assert_allclose(flipped[:, column], (-x + x.mean(axis=0)) @ loading, atol=1e-9)


def test_qk_space_projects_the_normalised_joint_set(bert_qk):
    space = qk_space(bert_qk, 1, 0, method="pca")
    assert isinstance(space, QKSpace) and space.method == "pca" and not space.sampled
    assert (space.layer, space.head, space.kind) == (1, 0, "self")
    queries = np.concatenate([bert_qk[i].queries(1, 0).values for i in range(len(bert_qk))])
    keys = np.concatenate([bert_qk[i].keys(1, 0).values for i in range(len(bert_qk))])
    nq, nk = normalise_qk(queries.astype(np.float64), keys.astype(np.float64))
    points = space.points
    joint, offset_q, offset_k = [], 0, 0
    for i in range(len(bert_qk)):  # the points' order: per document its queries, then its keys
        n = bert_qk[i].n_tokens
        joint += [nq[offset_q : offset_q + n], nk[offset_k : offset_k + n]]
        offset_q, offset_k = offset_q + n, offset_k + n
    reference, ratios = _eigen_pca(np.concatenate(joint))
    _same_up_to_sign(points[["x", "y"]].to_numpy(), reference, atol=1e-5)
    np.testing.assert_allclose(space.explained, ratios, rtol=1e-5)


# -- queries and keys ------------------------------------------------------------------------------
def test_qk_vectors_of_a_qk_corpus_are_the_stored_ones(bert_qk):
    doc = bert_qk[1]
    q, k = qk_vectors(doc, 0, 2)
    assert q.dtype == np.float32 and k.dtype == np.float32
    np.testing.assert_array_equal(q, doc.queries(0, 2).values)
    np.testing.assert_array_equal(k, doc.keys(0, 2).values)
    assert q.shape == (doc.n_tokens, 8)


def test_a_matrices_corpus_is_recomputed_by_the_model(bert_matrices, bert_qk, tiny_bert):
    model, tokenizer = tiny_bert
    doc = bert_matrices[1]
    assert doc.qk() is None
    q, k = qk_vectors(doc, 1, 1, model=model, tokenizer=tokenizer)
    reference_q, reference_k = bert_qk[1].queries(1, 1).values, bert_qk[1].keys(1, 1).values
    for got, want in ((q, reference_q), (k, reference_k)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())
    # and they rebuild the weights the matrices corpus stored (float16)
    logits = q.astype(np.float64) @ k.T.astype(np.float64) / np.sqrt(q.shape[1])
    np.testing.assert_allclose(_softmax(logits), doc.attention.sel(layer=1, head=1).values, atol=2e-3)


def test_without_a_model_the_error_says_what_is_missing(bert_matrices):
    with pytest.raises(AttvizError, match=r"keeps no queries and keys.*no model was given.*model="):
        qk_vectors(bert_matrices[0], 0, 0)
    # the corpus records the random model by a name that cannot be loaded again
    with pytest.raises(AttvizError, match=r"keeps no queries and keys.*could not be loaded.*model="):
        qk_space(bert_matrices, 0, 0, method="pca")


def test_qk_space_of_a_matrices_corpus_with_the_model_equals_the_qk_one(bert_matrices, bert_qk, tiny_bert):
    model, tokenizer = tiny_bert
    recomputed = qk_space(bert_matrices, 0, 1, method="pca", model=model, tokenizer=tokenizer)
    kept = qk_space(bert_qk, 0, 1, method="pca", documents=[0, 1, 2])
    columns = ["doc", "doc_id", "position", "token", "role", "label"]
    assert recomputed.points[columns].equals(kept.points[columns])
    scale = np.abs(kept.points[["x", "y"]].to_numpy()).max()
    _same_up_to_sign(recomputed.points[["x", "y"]].to_numpy(), kept.points[["x", "y"]].to_numpy(), atol=2e-3 * scale)


# -- points and sampling ---------------------------------------------------------------------------
def test_points_hold_both_roles_of_every_token_with_their_labels(bert_qk):
    points = qk_space(bert_qk, 0, 0, method="pca").points
    assert list(points.columns) == [
        "doc", "doc_id", "position", "token", "role", "label", "prediction", "special", "x", "y"
    ]  # fmt: skip
    assert len(points) == 2 * sum(doc.n_tokens for doc in bert_qk)
    for i, doc in enumerate(bert_qk):
        mine = points[points["doc"] == i]
        assert set(mine["doc_id"]) == {doc.id} and set(mine["label"]) == {LABELS[i]}
        assert mine["prediction"].isna().all()
        for role in ("query", "key"):
            rows = mine[mine["role"] == role]
            assert list(rows["position"]) == list(range(doc.n_tokens))
            assert list(rows["token"]) == doc.tokens
            assert list(rows["special"]) == [t in ("[CLS]", "[SEP]") for t in doc.tokens]
    assert np.isfinite(points[["x", "y"]].to_numpy()).all()


def test_documents_restrict_the_space(bert_qk):
    space = qk_space(bert_qk, 0, 0, method="pca", documents=[4, "doc-0001", -1])
    assert sorted(set(space.points["doc"])) == [1, 4]
    assert len(space.points) == 2 * (bert_qk[1].n_tokens + bert_qk[4].n_tokens)


def test_sampling_is_seeded_keeps_query_and_key_together_and_respects_max_points(bert_qk):
    total = 2 * sum(doc.n_tokens for doc in bert_qk)
    a = qk_space(bert_qk, 0, 0, method="pca", max_points=31, seed=7)
    b = qk_space(bert_qk, 0, 0, method="pca", max_points=31, seed=7)
    c = qk_space(bert_qk, 0, 0, method="pca", max_points=31, seed=8)
    assert a.sampled and len(a.points) == 30 < total  # 15 tokens, each with its query and key
    assert a.points.equals(b.points)
    tokens = {role: set(map(tuple, a.points[a.points["role"] == role][["doc", "position"]].to_numpy()))
              for role in ("query", "key")}  # fmt: skip
    assert tokens["query"] == tokens["key"] and len(tokens["query"]) == 15
    assert not c.points[["doc", "position"]].equals(a.points[["doc", "position"]])
    whole = qk_space(bert_qk, 0, 0, method="pca", max_points=total)
    assert not whole.sampled and len(whole.points) == total


# -- UMAP ---------------------------------------------------------------------------------------------
def test_auto_uses_umap_when_it_is_installed(bert_qk, monkeypatch):
    seen = {}

    class FakeUMAP:
        def __init__(self, n_components, random_state):
            seen["args"] = (n_components, random_state)

        def fit_transform(self, x):
            seen["shape"] = x.shape
            return x[:, :2] * 10

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    space = qk_space(bert_qk, 0, 0, seed=5, documents=[0])
    assert space.method == "umap" and space.explained is None
    n = bert_qk[0].n_tokens
    assert seen == {"args": (2, 5), "shape": (2 * n, 8)}
    q, k = normalise_qk(*(v.astype(np.float64) for v in qk_vectors(bert_qk[0], 0, 0)))
    np.testing.assert_allclose(space.points[["x", "y"]].to_numpy(), np.concatenate([q, k])[:, :2] * 10, rtol=1e-5)


def test_without_umap_auto_is_pca_and_umap_is_a_clear_error(bert_qk, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    assert qk_space(bert_qk, 0, 0, documents=[0]).method == "pca"
    with pytest.raises(AttvizError, match="umap-learn"):
        qk_space(bert_qk, 0, 0, method="umap", documents=[0])
    with pytest.raises(ValueError, match="method"):
        qk_space(bert_qk, 0, 0, method="tsne")


# -- other kinds and stores ----------------------------------------------------------------------------
def test_cross_attention_has_decoder_queries_and_encoder_keys(tiny_t5):
    model, tokenizer = tiny_t5
    targets = ["Le chat.", "Les marchés montent fortement aujourd'hui."]
    corpus = attviz.extract(
        TEXTS[:2], model=model, tokenizer=tokenizer, targets=targets, attention="qk", progress=False
    )
    space = qk_space(corpus, 1, 2, kind="cross", method="pca")
    assert space.kind == "cross"
    for i, doc in enumerate(corpus):
        mine = space.points[space.points["doc"] == i]
        assert list(mine[mine["role"] == "query"]["token"]) == list(doc.token_table("target")["text"])
        assert list(mine[mine["role"] == "key"]["token"]) == doc.tokens
        q, k = qk_vectors(doc, 1, 2, kind="cross")
        np.testing.assert_array_equal(q, doc.queries(1, 2, "cross").values)
        np.testing.assert_array_equal(k, doc.keys(1, 2, "cross").values)
    sampled = qk_space(corpus, 1, 2, kind="cross", method="pca", max_points=9, seed=1)
    assert sampled.sampled and len(sampled.points) <= 9


def test_a_store_gives_the_space_of_the_corpus_in_memory(bert_qk, tmp_path):
    stored = bert_qk.save(tmp_path / "qk.zarr")
    a = qk_space(stored, 1, 2, method="pca", max_points=40, seed=3)
    b = qk_space(bert_qk, 1, 2, method="pca", max_points=40, seed=3)
    assert a.points.equals(b.points) and a.explained == b.explained
