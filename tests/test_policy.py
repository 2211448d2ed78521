"""Storage policies: matrix subsets, token-level aggregations and head summaries reduced during
extraction, their stores, and the device-side capture (run here on the CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

from attviz import aggregations
from attviz.capture import Capture, materialize
from attviz.corpus import Corpus
from attviz.errors import AttvizError
from attviz.extract import estimate_bytes, extract
from attviz.models import prepare_model
from attviz.policy import StoragePolicy, parse_aggregation, parse_indices
from attviz.readers import read
from attviz.store import Quantized, quantize_rows
from attviz.tokenization import tokenize
from tests.conftest import TEXTS

VECTORS = ("attention_received", "attention_from:query=0", "entropy:normalised=true", "diagonal")
FP16 = 2e-3  # the reference is computed from float16 matrices; the policy reduces float32 ones


def _full(model, tok, texts=TEXTS):
    return extract(texts, model=model, tokenizer=tok, batch_size=2, progress=False, device="cpu")


def test_parsing_and_validation():
    assert parse_indices("0,2-4, 7") == (0, 2, 3, 4, 7)
    assert parse_indices([3, 1]) == (3, 1) and parse_indices(None) is None
    with pytest.raises(AttvizError, match="ranges like 0,2-4"):
        parse_indices("a-b")
    assert parse_aggregation("attention_from:query=-1") == ("attention_from", {"query": -1})
    assert parse_aggregation("entropy:normalised=true,causal=false") == (
        "entropy",
        {"normalised": True, "causal": False},
    )
    with pytest.raises(AttvizError, match="keeps nothing"):
        StoragePolicy(matrices=False)
    with pytest.raises(AttvizError, match="no aggregation 'nope'"):
        StoragePolicy(vectors=("nope",))
    with pytest.raises(AttvizError, match=r"gives dims \('layer', 'query', 'key'\)"):
        StoragePolicy(vectors=("mean",))  # the mean over heads is not a token vector
    with pytest.raises(AttvizError, match="keeps no matrices"):
        StoragePolicy(matrices=False, layers="0", vectors=("entropy",))
    with pytest.raises(AttvizError, match="distinct"):
        StoragePolicy(heads="1,1")
    policy = StoragePolicy(layers="1", heads="0,2", vectors="attention_received", summary=True)
    assert policy.describe() == "matrices (layers 1; heads 0,2) + vectors attention_received + head summary"
    assert StoragePolicy.from_settings(json.loads(json.dumps(policy.settings()))) == policy
    assert policy.matrix_bytes_share(2, 3) == pytest.approx(2 / 6)


def test_layer_out_of_range_is_refused_before_running(tiny_bert):
    model, tok = tiny_bert
    with pytest.raises(AttvizError, match=r"layer 5 does not exist: the model has 2 layers \(0..1\)"):
        extract(TEXTS, model=model, tokenizer=tok, progress=False, policy=StoragePolicy(layers="5"))


def test_matrix_subset_keeps_exactly_those_layers_and_heads(tiny_bert, tmp_path):
    model, tok = tiny_bert
    full = _full(model, tok)
    policy = StoragePolicy(layers="1", heads="0,2")
    for corpus in (
        extract(TEXTS, model=model, tokenizer=tok, batch_size=2, progress=False, policy=policy),
        extract(TEXTS, model=model, tokenizer=tok, batch_size=2, progress=False, policy=policy, store=tmp_path / "s"),
    ):
        for doc, ref in zip(corpus, full, strict=True):
            att = doc.attention
            assert att["layer"].values.tolist() == [1] and att["head"].values.tolist() == [0, 2]
            np.testing.assert_array_equal(att.values, ref.attention.sel(layer=[1], head=[0, 2]).values)
    kept = "matrices" if corpus.attrs["attention_mode"] == "matrices" else "attention"  # q/k where smaller
    assert corpus.attrs["storage_policy"] == f"{kept} (layers 1; heads 0,2)"


def test_vectors_and_summary_equal_the_aggregations_of_the_full_matrices(tiny_bert, tmp_path):
    model, tok = tiny_bert
    full = _full(model, tok)
    policy = StoragePolicy(matrices=False, vectors=VECTORS, summary=True)
    memory = extract(TEXTS, model=model, tokenizer=tok, batch_size=2, progress=False, policy=policy)
    stored = extract(
        TEXTS, model=model, tokenizer=tok, batch_size=2, progress=False, policy=policy, store=tmp_path / "v.zarr"
    )
    summary_agg = aggregations.get("head_summary")
    for corpus in (memory, stored):
        assert corpus.attrs["storage_policy"] == "vectors " + ", ".join(VECTORS) + " + head summary"
        for doc, ref in zip(corpus, full, strict=True):
            assert doc.kinds == ["self_vectors", "self_summary"] and not doc.has_matrices
            vectors = doc.get("self_vectors")
            assert vectors.dims == ("vector", "layer", "head", "token")
            assert vectors["vector"].values.tolist() == list(VECTORS)
            assert vectors["token_text"].values.tolist() == ref.tokens  # the tokens come along
            assert doc.tokens == ref.tokens
            for spec in VECTORS:
                name, params = parse_aggregation(spec)
                expected = aggregations.get(name, **params)(ref.attention.astype(np.float32))
                got = vectors.sel(vector=spec)
                np.testing.assert_allclose(got.values, expected.transpose("layer", "head", "token").values, atol=FP16)
            summary = doc.get("self_summary")
            expected = summary_agg(ref.attention.astype(np.float32))
            assert summary["statistic"].values.tolist() == expected["statistic"].values.tolist()
            assert summary["statistic_units"].values.tolist() == expected["statistic_units"].values.tolist()
            np.testing.assert_allclose(summary.values, expected.values, atol=5 * FP16)
    # a hand-checkable value: attention received by each key is the column mean over queries
    doc, ref = memory[0], full[0]
    column_means = ref.attention.values.astype(np.float32)[1, 2].mean(axis=0)
    np.testing.assert_allclose(
        doc.get("self_vectors").sel(vector="attention_received").values[1, 2], column_means, atol=FP16
    )
    # the store holds no matrices: plain zarr sees only the small arrays
    root = zarr.open_group(tmp_path / "v.zarr", mode="r")
    assert sorted(root["docs/d000000"].array_keys()) == ["self_summary", "self_vectors"]
    for a, b in zip(memory, stored, strict=True):
        np.testing.assert_array_equal(a.get("self_vectors").values, b.get("self_vectors").values)
        np.testing.assert_array_equal(a.get("self_summary").values, b.get("self_summary").values)


def test_policy_stores_round_trip_through_save_and_netcdf(tiny_bert, tmp_path):
    model, tok = tiny_bert
    policy = StoragePolicy(matrices=False, vectors=("attention_received",), summary=True)
    corpus = extract(TEXTS[:2], model=model, tokenizer=tok, progress=False, policy=policy)
    for again in (corpus.save(tmp_path / "again.zarr"), _netcdf(corpus, tmp_path / "c.nc")):
        for a, b in zip(corpus, again, strict=True):
            assert b.kinds == a.kinds and b.tokens == a.tokens
            for kind in a.kinds:
                x, y = a.get(kind), b.get(kind)
                assert x.dims == y.dims
                np.testing.assert_allclose(x.values, y.values, rtol=1e-6)
                for coord in x.coords:
                    assert x[coord].values.tolist() == y[coord].values.tolist(), coord


def _netcdf(corpus: Corpus, path) -> Corpus:
    corpus.to_netcdf(path)
    return read(path)


def test_decoder_and_encoder_decoder_policies(tiny_gpt2, tiny_t5):
    model, tok = tiny_gpt2
    policy = StoragePolicy(matrices=False, vectors=("entropy:causal=true,normalised=true",))
    corpus = extract(TEXTS[:3], model=model, tokenizer=tok, progress=False, policy=policy)
    assert corpus.attrs["causal"] == 1  # found from the device tensors, without matrices on the host
    first = corpus[0].get("self_vectors").values
    assert np.all(first[..., 0] == 0)  # the first token of a decoder sees one key: entropy 0
    model, tok = tiny_t5
    policy = StoragePolicy(heads="0", vectors=("attention_received",))
    corpus = extract(TEXTS[:2], model=model, tokenizer=tok, targets=["a b", "c"], progress=False, policy=policy)
    doc = corpus[0]
    # cross attention keeps its matrices (head 0) but no token vectors: its two axes are different texts
    assert sorted(doc.kinds) == sorted(["encoder", "decoder", "cross", "encoder_vectors", "decoder_vectors"])
    assert doc.get("cross")["head"].values.tolist() == [0]
    assert doc.get("decoder_vectors").sizes["token"] == doc.get("decoder").sizes["key"]


def test_kept_layers_must_exist_in_the_decoder_too(bert_tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=bert_tokenizer.vocab_size,
        d_model=16,
        d_kv=8,
        d_ff=16,
        num_layers=3,  # the encoder has a layer 2, the decoder does not
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=bert_tokenizer.pad_token_id,
        pad_token_id=bert_tokenizer.pad_token_id,
        attn_implementation="eager",
    )
    model = T5ForConditionalGeneration(config).eval()
    with pytest.raises(AttvizError, match=r"layer 2 does not exist: the model has 2 layers"):
        extract(
            ["a b"],
            model=model,
            tokenizer=bert_tokenizer,
            targets=["a"],
            progress=False,
            policy=StoragePolicy(layers="2"),
        )
    corpus = extract(
        ["a b"], model=model, tokenizer=bert_tokenizer, targets=["a"], progress=False, policy=StoragePolicy(layers="1")
    )
    assert [corpus[0].get(k)["layer"].values.tolist() for k in ("encoder", "decoder", "cross")] == [[1], [1], [1]]


def test_estimated_bytes_follow_the_policy(tiny_bert):
    model, tok = tiny_bert
    loaded = prepare_model(model, tok, device="cpu")
    units = tokenize(loaded, TEXTS, [str(i) for i in range(len(TEXTS))], None, max_length=128)
    full = estimate_bytes(loaded, units)
    assert full == sum(2 * 3 * len(u.input_ids) ** 2 * 2 for u in units)
    assert estimate_bytes(loaded, units, StoragePolicy(layers="0")) == full // 2
    vectors = StoragePolicy(matrices=False, vectors=("attention_received", "entropy"))
    assert estimate_bytes(loaded, units, vectors) == sum(2 * 4 * 2 * 3 * len(u.input_ids) for u in units)


def test_equal_length_batches_run_without_a_mask_and_give_the_same_attention(tiny_bert):
    model, tok = tiny_bert
    texts = ["one two three four", "five six seven eight", "nine ten eleven twelve"]
    lengths = {len(tok(t)["input_ids"]) for t in texts}
    assert len(lengths) == 1  # one unpadded batch
    batched = extract(texts, model=model, tokenizer=tok, batch_size=3, progress=False)
    single = extract(texts, model=model, tokenizer=tok, batch_size=1, progress=False)
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a.attention.values, b.attention.values, atol=FP16)


def test_capture_quantises_on_the_device_to_the_same_bytes_as_the_host():
    torch.manual_seed(0)
    attentions = [torch.softmax(torch.randn(2, 3, 5, 5), -1) for _ in range(2)]  # 2 layers, batch of 2
    sizes = [(5, 5), (3, 3)]  # the second document is padded
    host = Capture(StoragePolicy()).kind("self", attentions, sizes)
    device = Capture(StoragePolicy(), quantize_on_device=True).kind("self", attentions, sizes)
    for plain, quantised in zip(host, device, strict=True):
        values = materialize(plain["self"])
        got = materialize(quantised["self"])
        assert isinstance(got, Quantized) and values.dtype == np.float16
        expected = quantize_rows(values)
        np.testing.assert_array_equal(got.q, expected.q)
        np.testing.assert_array_equal(got.scale, expected.scale)
    assert materialize(host[1]["self"]).shape == (2, 3, 3, 3)


def test_a_prepared_4d_mask_gives_the_same_attention_as_the_2d_one(tiny_bert):
    from attviz.extract import run_batch
    from attviz.tokenization import make_batches

    model, tok = tiny_bert
    loaded = prepare_model(model, tok, device="cpu")
    units = tokenize(loaded, TEXTS, [str(i) for i in range(len(TEXTS))], None, max_length=128)
    batch = make_batches(units, len(units))[0]
    assert len({len(u.input_ids) for u in batch}) > 1  # padded
    plain = run_batch(loaded, batch, None, Capture(four_d_mask=False))
    ready = run_batch(loaded, batch, None, Capture(four_d_mask=True))
    for (_, a, _), (_, b, _) in zip(plain, ready, strict=True):
        np.testing.assert_array_equal(materialize(a["self"]), materialize(b["self"]))
    # auto: never on the CPU, never for a causal model, and only once the first batch showed it is not causal
    assert Capture().prepared_mask(loaded) is False
    config = type("Config", (), {"model_type": "bert"})()
    gpu_like = type("Loaded", (), {"device": torch.device("cuda"), "encoder_decoder": False, "config": config})()
    capture = Capture()
    assert capture.prepared_mask(gpu_like) is False  # not known yet
    capture.causal = False
    assert capture.prepared_mask(gpu_like) is True
    capture.causal = True
    assert capture.prepared_mask(gpu_like) is False
    capture.causal, config.model_type = False, "modernbert"  # sliding-window layers: its own mask
    assert capture.prepared_mask(gpu_like) is False
