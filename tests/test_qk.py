"""Attention kept as queries and keys (attviz.qk, attviz.qk_capture): every model family rebuilds its
eager weights, or falls back to matrices with its reason; stores, tiles, rows and q/k as data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attviz
from attviz.errors import AttvizError
from attviz.qk import QKAttention, Rule, band_mask
from tests.conftest import TEXTS

# (model type, config keywords, tokenizer fixture, causal)
FAMILIES = {
    "bert": ({"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 32}, "bert"),
    "distilbert": ({"dim": 24, "n_layers": 2, "n_heads": 3, "hidden_dim": 32}, "bert"),
    "roberta": (
        {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 32,
         "pad_token_id": 0},
        "bert",
    ),
    "modernbert": (
        {
            "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3, "intermediate_size": 32,
            "local_attention": 8, "global_attn_every_n_layers": 2, "pad_token_id": 0, "eos_token_id": 102,
            "bos_token_id": 101, "cls_token_id": 101, "sep_token_id": 102,
        },
        "bert",
    ),
    "gpt2": ({"n_embd": 24, "n_layer": 2, "n_head": 3}, "bpe"),
    "llama": (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 32},
        "bpe",
    ),
    "qwen2": (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 32},
        "bpe",
    ),
    "mistral": (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 32, "sliding_window": 6},
        "bpe",
    ),
    "gemma2": (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 32, "head_dim": 8, "sliding_window": 6},
        "bpe",
    ),
}  # fmt: skip


def _model(model_type: str, config: dict, tokenizer):
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    vocab = {"vocab_size": len(tokenizer)}
    if model_type in ("gpt2",):
        vocab["n_positions"] = 128
    else:
        vocab["max_position_embeddings"] = 128
    if model_type not in ("bert", "distilbert", "roberta", "modernbert"):
        vocab.update(
            pad_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    cfg = AutoConfig.for_model(model_type, **{**config, **vocab})
    return AutoModel.from_config(cfg, attn_implementation="eager").eval()


def _eager(model, ids: list[int]) -> list[np.ndarray]:
    """The model's own eager float32 weights for one unpadded document, per layer ``(head, T, T)``."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    return [a[0].numpy() for a in out.attentions]


@pytest.fixture(params=sorted(FAMILIES))
def family(request, bert_tokenizer, bpe_tokenizer):
    config, tok = FAMILIES[request.param]
    tokenizer = bert_tokenizer if tok == "bert" else bpe_tokenizer
    return request.param, _model(request.param, config, tokenizer), tokenizer


def test_every_family_rebuilds_its_eager_weights(family):
    """Padded batches of all lengths: each document's rebuilt weights equal a direct eager call on that
    document alone (float32), within the int16 encoding's error; the first-batch check saw ≤ 1e-4."""
    name, model, tokenizer = family
    corpus = attviz.extract(TEXTS, model=model, tokenizer=tokenizer, attention="qk", batch_size=8, progress=False)
    assert corpus.attrs["qk_check"]["error"] <= 1e-4, corpus.attrs["qk_check"]
    assert "attention_fallback" not in corpus.attrs
    assert model.config._attn_implementation == "eager"  # restored after the job
    for doc in corpus:
        assert doc.qk() is not None
        ids = tokenizer(doc.text)["input_ids"]
        assert len(ids) == doc.n_tokens
        expected = _eager(model, ids)
        rebuilt = doc.attention.values
        for layer, weights in enumerate(expected):
            np.testing.assert_allclose(rebuilt[layer], weights, atol=5e-4, err_msg=f"{name} layer {layer}")
    rules = [r for doc in corpus for r in doc.qk().rules]
    if name in ("gpt2", "llama", "qwen2", "mistral", "gemma2"):
        assert all(r.causal for r in rules)
    if name == "mistral":  # a 6-token window is a band of 5 earlier keys
        assert {(r.left, r.right) for r in rules if r.left >= 0} == {(5, 0)}
    if name == "gemma2":
        assert all(r.softcap for r in rules)


def test_t5_and_bart_keep_encoder_decoder_and_cross_with_their_bias(tiny_t5, bert_tokenizer):
    """T5 (relative position bias, no 1/√d scaling) and BART (causal decoder on the kernel's is_causal
    path): q/k rebuild every kind like the eager extraction does."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    bart = BartForConditionalGeneration(
        BartConfig(
            vocab_size=bert_tokenizer.vocab_size, d_model=24, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=32, decoder_ffn_dim=32,
            max_position_embeddings=128, pad_token_id=0, bos_token_id=101, eos_token_id=102,
            decoder_start_token_id=101, forced_eos_token_id=None,
        )
    ).eval()  # fmt: skip
    targets = ["A cat.", "Rates cut by the bank today.", "Wow!", "Sports and weather news.", "Hello there."]
    for model in (tiny_t5[0], bart):
        runs = {
            mode: attviz.extract(
                TEXTS, model=model, tokenizer=bert_tokenizer, targets=targets, attention=mode, progress=False
            )
            for mode in ("qk", "matrices")
        }
        assert runs["qk"].attrs["qk_check"]["error"] <= 1e-4
        for qk, matrices in zip(*runs.values(), strict=True):
            for kind in ("encoder", "decoder", "cross"):
                assert qk.qk(kind) is not None
                np.testing.assert_allclose(qk.get(kind).values, matrices.get(kind).values, atol=1e-3)
        t5_bias = runs["qk"][3].qk("encoder").bias
        if model is tiny_t5[0]:
            assert t5_bias is not None and np.abs(t5_bias).max() > 0  # the relative bias is kept
            assert runs["qk"][3].qk("cross").bias is None  # cross attention has none
            assert runs["qk"][3].qk("decoder").rules[0].causal


def test_a_model_that_never_calls_the_interface_keeps_matrices_and_says_why(bert_tokenizer, capsys):
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    model = DebertaV2Model(
        DebertaV2Config(vocab_size=bert_tokenizer.vocab_size, hidden_size=24, num_hidden_layers=2,
                        num_attention_heads=3, intermediate_size=32)
    ).eval()  # fmt: skip
    corpus = attviz.extract(TEXTS[:2], model=model, tokenizer=bert_tokenizer, attention="auto")
    assert "never calls" in corpus.attrs["attention_fallback"]
    assert "kept attention matrices" in capsys.readouterr().err
    assert corpus[0].qk() is None and corpus[0].attention.shape[0] == 2
    with pytest.raises(AttvizError, match="never calls"):
        attviz.extract(TEXTS[:2], model=model, tokenizer=bert_tokenizer, attention="qk", progress=False)


def test_auto_keeps_each_document_in_the_smaller_encoding(tiny_bert, tmp_path):
    """head dim 8: q/k (8·2+4 bytes a vector twice, 4 for the lse) beat float16 matrices from ~24 tokens."""
    model, tokenizer = tiny_bert
    long_text = " ".join(TEXTS)
    store = tmp_path / "s.zarr"
    corpus = attviz.extract(
        [TEXTS[4], long_text], model=model, tokenizer=tokenizer, store=store, progress=False, attention="auto"
    )
    short, long = corpus
    assert short.qk() is None and long.qk() is not None
    assert corpus.attrs["format_version"] == 3 and corpus.attrs["qk_documents"] == 1
    matrices = attviz.extract(
        [TEXTS[4], long_text], model=model, tokenizer=tokenizer, attention="matrices", progress=False
    )
    for doc, reference in zip(corpus, matrices, strict=True):
        np.testing.assert_allclose(doc.attention.values, reference.attention.values, atol=1e-3)
    files = {p.name for p in (tmp_path / "s.zarr" / "docs" / "d000001").iterdir()}
    assert files == {"zarr.json", "self_qk"}  # one shard a document: q, k, scales, lse


def test_a_qk_store_round_trips_and_reads_one_layer_at_a_time(tiny_gpt2, tmp_path):
    model, tokenizer = tiny_gpt2
    memory = attviz.extract(TEXTS, model=model, tokenizer=tokenizer, attention="qk", progress=False)
    stored = attviz.extract(
        TEXTS, model=model, tokenizer=tokenizer, attention="qk", store=tmp_path / "g.zarr", progress=False
    )
    for a, b in zip(memory, stored, strict=True):
        np.testing.assert_array_equal(a.attention.values, b.attention.values)
        np.testing.assert_array_equal(a.queries(1, 2).values, b.queries(1, 2).values)
    copy = stored.save(tmp_path / "copy.zarr")  # re-saving keeps q/k
    assert copy[3].qk() is not None
    np.testing.assert_array_equal(copy[3].attention.values, stored[3].attention.values)
    lazy = attviz.Corpus.open(tmp_path / "g.zarr")[3]
    assert lazy.attention.sel(layer=1, head=0).values.shape == (lazy.n_tokens, lazy.n_tokens)
    assert set(lazy.qk()._cache) <= {("query", 1), ("key", 1)}  # only layer 1 was read


def test_queries_and_keys_are_the_models(tiny_bert):
    """doc.queries / doc.keys equal BERT's own query/key projections of each layer's input."""
    model, tokenizer = tiny_bert
    doc = attviz.extract([TEXTS[3]], model=model, tokenizer=tokenizer, attention="qk", progress=False)[0]
    ids = torch.tensor([tokenizer(TEXTS[3])["input_ids"]])
    for layer in range(2):
        with torch.inference_mode():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            attention = model.encoder.layer[layer].attention.self
            q = attention.query(hidden[layer])[0].view(-1, 3, 8)
            k = attention.key(hidden[layer])[0].view(-1, 3, 8)
        for head in range(3):
            queries, keys = doc.queries(layer, head), doc.keys(layer, head)
            assert queries.dims == ("query", "dim") and list(queries["query_text"].values) == doc.tokens
            np.testing.assert_allclose(queries.values, q[:, head].numpy(), atol=2e-4 * float(q.abs().max()))
            np.testing.assert_allclose(keys.values, k[:, head].numpy(), atol=2e-4 * float(k.abs().max()))
    matrices = attviz.extract([TEXTS[3]], model=model, tokenizer=tokenizer, attention="matrices", progress=False)[0]
    with pytest.raises(KeyError, match="as matrices"):
        matrices.queries(0, 0)


def test_layer_and_head_subsets_under_grouped_queries(bpe_tokenizer):
    """Heads 1 and 3 of a grouped-query Llama (2 key heads): each attends with its own key head."""
    model = _model("llama", FAMILIES["llama"][0], bpe_tokenizer)
    policy = attviz.StoragePolicy(layers=(1,), heads=(1, 3))
    doc = attviz.extract(
        [TEXTS[3]], model=model, tokenizer=bpe_tokenizer, attention="qk", policy=policy, progress=False
    )[0]
    expected = _eager(model, bpe_tokenizer(TEXTS[3])["input_ids"])
    assert list(doc.attention["layer"].values) == [1] and list(doc.attention["head"].values) == [1, 3]
    np.testing.assert_allclose(doc.attention.values[0], expected[1][[1, 3]], atol=5e-4)
    assert doc.keys(1, 1).shape[0] == doc.n_tokens
    assert not np.allclose(doc.keys(1, 1).values, doc.keys(1, 3).values)  # key heads 0 and 1
    with pytest.raises(KeyError, match="not stored"):
        doc.queries(0, 1)


def test_vectors_and_summaries_from_qk_equal_those_from_matrices(tiny_bert):
    model, tokenizer = tiny_bert
    policy = attviz.StoragePolicy(vectors=("attention_received", "entropy"), summary=True)
    runs = [
        attviz.extract(TEXTS, model=model, tokenizer=tokenizer, attention=mode, policy=policy, progress=False)
        for mode in ("qk", "matrices")
    ]
    for a, b in zip(*runs, strict=True):
        for kind in ("self_vectors", "self_summary"):
            np.testing.assert_allclose(a.get(kind).values, b.get(kind).values, atol=1e-4)


# -- the rebuild itself (numpy), against a direct softmax --------------------------------------------
def _random_qk(n=40, m=40, heads=4, key_heads=2, dim=8, rule=None, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(1, heads, n, dim)).astype(np.float32)
    k = rng.normal(size=(1, key_heads, m, dim)).astype(np.float32)
    rel = rng.normal(size=(1, heads, n + m - 1)).astype(np.float32) if bias else None
    rule = rule or Rule(0.35, 5, 0, softcap=3.0)
    attention = QKAttention(q, k, lse=None, rules=[rule], bias=rel, groups=heads // key_heads)
    scores = np.einsum("hqd,hkd->hqk", q[0], np.repeat(k[0], heads // key_heads, axis=0)) * rule.scaling
    if rule.softcap:
        scores = rule.softcap * np.tanh(scores / rule.softcap)
    if rel is not None:
        i, j = np.arange(n)[:, None], np.arange(m)[None, :]
        scores = scores + rel[0][:, j - i + n - 1]
    scores = np.where(band_mask(n, m, rule.left, rule.right), scores, -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    from scipy.special import logsumexp

    attention.lse = logsumexp(scores, axis=-1)[None].astype(np.float32)
    return attention, expected


def test_matrix_rows_tiles_and_received_agree_with_a_direct_softmax(monkeypatch):
    import attviz.qk as qk

    monkeypatch.setattr(qk, "BLOCK_ELEMENTS", 40 * 7)  # blocks of 7 rows: spans cut by the window and the diagonal
    attention, expected = _random_qk()
    for head in range(4):
        np.testing.assert_allclose(attention.matrix(0, head), expected[head], atol=1e-6)
        np.testing.assert_allclose(attention.rows(0, head, 7), expected[head, 7], atol=1e-6)
        np.testing.assert_allclose(
            attention.tile(0, head, slice(10, 30), slice(5, 25)), expected[head, 10:30, 5:25], atol=1e-6
        )
        np.testing.assert_allclose(attention.received(0, head), expected[head].sum(0), atol=1e-5)
    assert np.allclose(attention.matrix(0, 1)[np.triu_indices(40, 1)], 0)  # causal
    assert attention.matrix(0, 1)[20, 14] == 0 and attention.matrix(0, 1)[20, 15] > 0  # window of 5 earlier keys


def test_received_is_block_wise(monkeypatch):
    import attviz.qk as qk

    attention, expected = _random_qk(n=64, m=64, rule=Rule(0.3), bias=False)
    monkeypatch.setattr(qk, "BLOCK_ELEMENTS", 64 * 5)  # 5 rows a block
    seen = []
    original = QKAttention.logits

    def spy(self, layer, head, rows=slice(None), cols=slice(None)):
        seen.append(rows)
        return original(self, layer, head, rows, cols)

    monkeypatch.setattr(QKAttention, "logits", spy)
    np.testing.assert_allclose(attention.received(0, 2), expected[2].sum(0), atol=1e-5)
    assert sorted(s.stop - s.start for s in seen) == [4] + [5] * 12


def test_an_old_matrix_store_still_opens(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    corpus = attviz.extract(
        TEXTS, model=model, tokenizer=tokenizer, attention="matrices", store=tmp_path / "m.zarr", progress=False
    )
    assert corpus.attrs["format_version"] == 1 and "qk" not in corpus.dataset
    assert all(doc.qk() is None for doc in corpus)


# -- long documents in the explorer ------------------------------------------------------------------
@pytest.fixture
def long_doc_corpus(tiny_gpt2, tmp_path):
    """A causal store kept as q/k; its first document counts as long under ``layer_memory=1 << 16``."""
    model, tokenizer = tiny_gpt2
    text = " ".join(TEXTS * 2)
    store = tmp_path / "l.zarr"
    return attviz.extract(
        [text, TEXTS[0]], model=model, tokenizer=tokenizer, attention="qk", store=store, progress=False
    )


def test_a_long_document_is_explored_from_tiles_and_block_wise_vectors(long_doc_corpus):
    from attviz.explorer import Explorer

    doc = long_doc_corpus[0]
    full = doc.attention.values  # the reference: every matrix, rebuilt at once
    ex = Explorer(long_doc_corpus, layer_memory=1 << 16)
    ex.param.update(layer=1, head=2, head_reduction="head")
    assert ex.matrix.chunks is not None  # tiles, computed when drawn
    np.testing.assert_allclose(ex.matrix.values, full[1, 2], atol=1e-6)
    np.testing.assert_allclose(ex.token_vector.values, full[1, 2].mean(0), atol=1e-6)  # attention received
    assert ex.layer_matrices is None and "head summary needs every head" in ex.notice
    ex.head = 0
    np.testing.assert_allclose(ex.token_vector.values, full[1, 0].mean(0), atol=1e-6)
    ex.vector = "attention_from"
    ex.selected_token = 5  # the token colour follows the selected query: one row
    np.testing.assert_allclose(ex.token_vector.values, full[1, 0, 5], atol=1e-6)
    ex.vector = "entropy"  # each row's entropy, block by block of rows
    p = full[1, 0]
    expected = -(p * np.log(np.where(p > 0, p, 1))).sum(-1)
    np.testing.assert_allclose(ex.token_vector.values, expected, atol=1e-5)
    ex.vector = "diagonal"
    assert "'diagonal' needs whole matrices" in ex.notice and "attention_received" in ex.notice
    ex.head_reduction = "mean"
    assert "show the selected head ('mean'" in ex.notice
    ex.doc_id = long_doc_corpus[1].id  # a short document of the same store: the usual path
    assert ex.matrix.chunks is None and ex.layer_matrices is not None


def test_the_matrix_view_draws_a_lazy_matrix_block_by_block(long_doc_corpus, monkeypatch):
    import attviz.qk as qk_module
    from attviz.views.matrix import MatrixView, lazy_max_pool, max_pool, pool_factors

    qk = long_doc_corpus[0].qk()
    lazy = qk.head_array(1, 1, tile=(7, 11))
    full = lazy.values
    monkeypatch.setattr(qk_module, "BLOCK_ELEMENTS", 300)  # pooled: many blocks of rows, across tiles
    windows = (((0, full.shape[0], 0, full.shape[1]), (9, 13)), ((5, 40, 3, 30), (4, 6)), ((0, 50, 0, 50), (50, 50)))
    for window, pixels in windows:
        r0, r1, c0, c1 = window
        expected = max_pool(full[r0:r1, c0:c1], *pixels)
        np.testing.assert_allclose(lazy_max_pool(lazy.data, *window, *pixels), expected)
        factors = pool_factors(r1 - r0, c1 - c0, *pixels)
        np.testing.assert_allclose(qk.pooled(1, 1, slice(r0, r1), slice(c0, c1), *factors), expected, atol=1e-7)
    view = MatrixView(data=lazy, rasterize_above=16)
    image = view._source.data["image"][0]
    assert view._pool is not None and view._values.size == 0  # drawn from q/k, never held whole
    assert image.shape[0] <= view._pixels()[0] and image.max() == pytest.approx(full.max())


@pytest.mark.slow
def test_the_readme_recipe_runs_as_written():
    """The README's queries-and-keys recipe, executed as written (the bundled MiniLM, offline)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- qk-recipe -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(block, "README.md (qk recipe)", "exec"), scope)
    doc = scope["doc"]
    assert doc.qk() is not None and doc.n_tokens > 400
    full = doc.attention.sel(layer=5, head=3).values
    np.testing.assert_allclose(doc.qk().tile(5, 3, slice(0, 64), slice(0, 64)), full[:64, :64], atol=1e-5)
    np.testing.assert_allclose(doc.qk().received(5, 3), full.sum(0), atol=1e-3)


def test_a_store_without_attention_is_recomputed_as_queries_and_keys(tiny_gpt2):
    """A vectors-only store opened with its model: the long document comes back as q/k, exactly the
    attention a q/k extraction keeps."""
    from attviz.explorer import Explorer
    from attviz.live import LiveModel
    from attviz.models import prepare_model

    model, tokenizer = tiny_gpt2
    texts = [TEXTS[4], " ".join(TEXTS * 2)]
    policy = attviz.StoragePolicy(matrices=False, vectors=("attention_received",))
    stored = attviz.extract(texts, model=model, tokenizer=tokenizer, policy=policy, progress=False)
    live = LiveModel(name=stored.attrs["model"], loader=lambda: prepare_model(model, tokenizer, device="cpu"))
    explorer = Explorer(stored, live_model=live)
    explorer.doc_id = stored.ids[1]
    doc = explorer.document
    assert doc.meta["recomputed"] and doc.qk() is not None
    reference = attviz.extract(texts[1:], model=model, tokenizer=tokenizer, attention="qk", progress=False)[0]
    np.testing.assert_allclose(doc.attention.values, reference.attention.values, atol=1e-6)


@pytest.mark.slow
def test_a_store_written_before_queries_and_keys_opens_and_explores(minilm):
    """tests/data/store-format1.zarr was written by attviz 6f82a08 (before issue #12): it opens, every
    view's outputs derive, and its matrices equal a fresh extraction's."""
    from pathlib import Path

    from attviz.explorer import Explorer

    old = attviz.Corpus.open(Path(__file__).parent / "data" / "store-format1.zarr")
    assert old.attrs["format_version"] == 1 and all(doc.qk() is None for doc in old)
    explorer = Explorer(old)
    assert explorer.message == "" and explorer.matrix is not None and explorer.head_summary is not None
    fresh = attviz.extract([doc.text for doc in old], model=minilm, attention="matrices", progress=False)
    for a, b in zip(old, fresh, strict=True):
        np.testing.assert_allclose(
            a.attention.values.astype(np.float32), b.attention.values.astype(np.float32), atol=2e-3
        )


def test_concurrent_extractions_of_one_model_keep_their_implementations(tiny_bert):
    """Two sessions of the explorer share one model: a q/k job and a matrices job at the same time must
    each run the forward pass they set up (no empty eager tuple, no silent fallback)."""
    from concurrent.futures import ThreadPoolExecutor

    model, tokenizer = tiny_bert

    def run(mode: str):
        return [
            attviz.extract(TEXTS, model=model, tokenizer=tokenizer, attention=mode, progress=False) for _ in range(4)
        ]

    with ThreadPoolExecutor(2) as pool:
        qk, matrices = pool.map(run, ["qk", "matrices"])
    assert all("attention_fallback" not in c.attrs and all(d.qk() is not None for d in c) for c in qk)
    for a, b in zip(qk[-1], matrices[-1], strict=True):
        np.testing.assert_allclose(a.attention.values, b.attention.values, atol=1e-3)


def test_long_documents_reduce_one_matrix_at_a_time(tiny_gpt2, monkeypatch):
    """Above REDUCE_BYTES the policy's vectors and head summary are computed from one rebuilt (query, key)
    matrix at a time, with the same values as from the whole document."""
    import attviz.capture as capture

    model, tokenizer = tiny_gpt2
    policy = attviz.StoragePolicy(vectors=("attention_received", "entropy", "attention_from:query=-1"), summary=True)
    texts = [" ".join(TEXTS), TEXTS[1]]
    whole = attviz.extract(texts, model=model, tokenizer=tokenizer, attention="qk", policy=policy, progress=False)
    calls = []
    original = capture._PerMatrix.matrix

    def spy(self, layer, head):
        calls.append((layer, head))
        return original(self, layer, head)

    monkeypatch.setattr(capture, "REDUCE_BYTES", 1 << 10)
    monkeypatch.setattr(capture._PerMatrix, "matrix", spy)
    split = attviz.extract(texts, model=model, tokenizer=tokenizer, attention="qk", policy=policy, progress=False)
    assert calls and set(calls) == {(layer, head) for layer in range(2) for head in range(3)}
    for a, b in zip(whole, split, strict=True):
        for kind in ("self_vectors", "self_summary"):
            np.testing.assert_allclose(a.get(kind).values, b.get(kind).values, atol=1e-6)
