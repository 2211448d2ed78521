"""Extraction from tiny random encoder, decoder and encoder-decoder models."""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd
import pytest
import torch

from attviz.errors import AttentionUnavailableError, InputError, StoreError
from attviz.extract import extract
from attviz.models import LoadedModel, check_attentions
from attviz.store import partial_path
from tests.conftest import TEXTS

FP16 = 2e-3  # float16 has ~3 decimal digits; rows of attention sum to 1 within this


def _plain(text: str) -> str:
    """Lower-case and strip accents, as the uncased WordPiece tokenizer normalises."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def _direct(model, tokenizer, text, **kw):
    """Attention of one text from a direct model call, no batching: (L, H, T, T) float32."""
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=kw.pop("max_length", 128))
    with torch.inference_mode():
        out = model(
            **{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")},
            output_attentions=True,
            **kw,
        )
    return torch.stack(out.attentions, 1)[0].numpy()


def test_encoder_shapes_rows_padding_and_offsets(tiny_bert):
    model, tok = tiny_bert
    corpus = extract(TEXTS, model=model, tokenizer=tok, batch_size=2, progress=False, device="cpu")
    assert len(corpus) == len(TEXTS)
    assert corpus.attrs["layers"] == 2 and corpus.attrs["heads"] == 3 and corpus.attrs["causal"] == 0
    for doc, text in zip(corpus, TEXTS, strict=True):
        ids = tok(text)["input_ids"]
        att = doc.attention
        assert att.dims == ("layer", "head", "query", "key")
        assert att.shape == (2, 3, len(ids), len(ids))  # padding stripped: T x T for its own T
        assert att.dtype == (np.float32 if doc.qk() is not None else np.float16)  # q/k rebuild float32
        np.testing.assert_allclose(att.values.astype(np.float32).sum(-1), 1.0, atol=FP16)
        # same numbers as an unbatched, unpadded direct call
        np.testing.assert_allclose(att.values.astype(np.float32), _direct(model, tok, text), atol=1e-3)
        table = doc.token_table()
        assert table["text"].iloc[0] == "[CLS]" and table["text"].iloc[-1] == "[SEP]"
        assert table["special"].tolist() == [True] + [False] * (len(ids) - 2) + [True]
        for row in table[~table["special"]].itertuples():
            piece = row.text.removeprefix("##")
            assert _plain(text[row.start : row.end]) == piece
        words = table.loc[~table["special"], "word"].to_numpy()
        assert words[0] == 0 and (np.diff(words) >= 0).all()
        assert att.coords["query_text"].values.tolist() == doc.tokens
    # "photosynthesis" is split into several pieces that share one word index
    doc = corpus[2]
    first_word = doc.token_table().query("word == 1")
    assert len(first_word) > 1 and "".join(t.removeprefix("##") for t in first_word["text"]) == "photosynthesis"


def test_decoder_is_causal_and_bpe_offsets(tiny_gpt2):
    model, tok = tiny_gpt2
    corpus = extract(TEXTS, model=model, tokenizer=tok, batch_size=3, progress=False, device="cpu")
    assert corpus.attrs["causal"] == 1
    for doc, text in zip(corpus, TEXTS, strict=True):
        values = doc.attention.values.astype(np.float32)
        n = len(tok(text)["input_ids"])
        assert values.shape == (2, 3, n, n)
        assert not np.triu(values, k=1).any()  # exactly zero above the diagonal
        np.testing.assert_allclose(values.sum(-1), 1.0, atol=FP16)
        np.testing.assert_allclose(values, _direct(model, tok, text), atol=1e-3)
        table = doc.token_table()
        for row in table.itertuples():
            # byte-level BPE: offsets cover the token's characters (the leading space is trimmed)
            assert text[row.start : row.end] == tok.convert_tokens_to_string([row.text]).strip()


def test_encoder_decoder_keeps_all_three_kinds(tiny_t5):
    model, tok = tiny_t5
    targets = ["le chat", "les marchés montent fortement", "incroyable", "un match", "salut"]
    corpus = extract(TEXTS, model=model, tokenizer=tok, targets=targets, batch_size=2, progress=False, device="cpu")
    assert corpus.attrs["kinds"] == ["encoder", "decoder", "cross"]
    for doc, text, target in zip(corpus, TEXTS, targets, strict=True):
        n = len(tok(text)["input_ids"])
        m = len(tok(text_target=target)["input_ids"]) + 1  # + the decoder start token
        enc, dec, cross = doc.get("encoder"), doc.get("decoder"), doc.get("cross")
        assert enc.shape == (2, 3, n, n) and dec.shape == (2, 3, m, m) and cross.shape == (2, 3, m, n)
        for array in (enc, dec, cross):
            np.testing.assert_allclose(array.values.astype(np.float32).sum(-1), 1.0, atol=FP16)
        assert not np.triu(dec.values.astype(np.float32), k=1).any()
        assert cross.coords["query_text"].values.tolist() == doc.token_table("target")["text"].tolist()
        assert cross.coords["key_text"].values.tolist() == doc.tokens
        assert doc.target == target
        # teacher forcing matches a direct call
        enc_in = tok(text, return_tensors="pt")
        dec_ids = torch.tensor([[tok.pad_token_id, *tok(text_target=target)["input_ids"]]])
        with torch.inference_mode():
            out = model(**enc_in, decoder_input_ids=dec_ids, output_attentions=True)
        np.testing.assert_allclose(
            cross.values.astype(np.float32), torch.stack(out.cross_attentions, 1)[0].numpy(), atol=1e-3
        )


def test_encoder_decoder_generates_targets_when_none_given(tiny_t5):
    model, tok = tiny_t5
    corpus = extract(TEXTS[:2], model=model, tokenizer=tok, progress=False, device="cpu", max_new_tokens=5)
    for doc in corpus:
        assert doc.target  # the generated text, teacher-forced back in
        assert doc.get("decoder").sizes["query"] == len(doc.token_table("target"))


def test_classifier_head_gives_probabilities(tiny_bert_classifier):
    model, tok = tiny_bert_classifier
    corpus = extract(
        TEXTS, model=model, tokenizer=tok, labels=["pos", "neg", "pos", None, "neutral"], progress=False, device="cpu"
    )
    assert corpus.label_names == ["neg", "neutral", "pos"]
    probs = corpus.probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for doc, text in zip(corpus, TEXTS, strict=True):
        with torch.inference_mode():
            logits = model(**tok(text, return_tensors="pt")).logits[0]
        expected = torch.softmax(logits, -1).numpy()
        np.testing.assert_allclose(probs.loc[doc.id].to_numpy(), expected, atol=1e-4)
        assert doc.prediction == ["neg", "neutral", "pos"][int(expected.argmax())]
    table = corpus.table
    assert pd.isna(table.loc["doc-0003", "label"]) and table["correct"].isna().sum() == 1


def test_sliding_windows_cover_the_text(tiny_bert):
    model, tok = tiny_bert
    long = " ".join(f"word{i} is here" for i in range(40))
    corpus = extract(
        [long, "short text"],
        model=model,
        tokenizer=tok,
        ids=["long", "short"],
        max_length=32,
        long_texts="window",
        stride=8,
        progress=False,
        device="cpu",
    )
    windows = [d for d in corpus if d.source_id == "long"]
    assert len(windows) > 2 and [d.id for d in windows] == [f"long#w{k}" for k in range(len(windows))]
    assert corpus["short"].source_id == "short"
    for doc in windows:
        assert doc.n_tokens <= 32
        assert long[doc.source_start : doc.source_start + len(doc.text)] == doc.text
        for row in doc.token_table().query("~special").itertuples():
            assert doc.text[row.start : row.end] == row.text.removeprefix("##")
    # consecutive windows overlap and together reach the end of the text
    assert windows[1].source_start < windows[0].source_start + len(windows[0].text)
    assert windows[-1].source_start + len(windows[-1].text) == len(long.rstrip())


def test_truncation_is_reported_in_table(tiny_bert):
    model, tok = tiny_bert
    corpus = extract(
        ["one two three four five six seven eight nine ten"],
        model=model,
        tokenizer=tok,
        max_length=6,
        progress=False,
        device="cpu",
    )
    assert corpus[0].n_tokens == 6 and corpus[0].tokens[-1] == "[SEP]"


def test_resume_after_interruption_gives_the_same_store(tiny_bert, tmp_path):
    model, tok = tiny_bert
    texts = [f"document number {i} " + "word " * (i % 7) for i in range(12)]
    reference = extract(
        texts, model=model, tokenizer=tok, batch_size=3, store=tmp_path / "ref.zarr", progress=False, device="cpu"
    )
    calls = []

    def stop_after_two_batches(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")

    store = tmp_path / "resumed.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(
            texts,
            model=model,
            tokenizer=tok,
            batch_size=3,
            store=store,
            progress=False,
            callback=stop_after_two_batches,
            device="cpu",
        )
    assert not store.exists() and partial_path(store).exists()
    with pytest.raises(StoreError, match="resume"):
        from attviz import Corpus

        Corpus.open(store)
    seen = []
    resumed = extract(
        texts,
        model=model,
        tokenizer=tok,
        batch_size=3,
        store=store,
        progress=False,
        callback=lambda done, total: seen.append(done),
        device="cpu",
    )
    assert seen[0] == 9  # 6 documents were kept, so the first new batch brings it to 9
    assert not partial_path(store).exists()
    assert resumed.ids == reference.ids
    for a, b in zip(resumed, reference, strict=True):
        np.testing.assert_array_equal(a.attention.values, b.attention.values)
        assert a.tokens == b.tokens


def test_resume_refuses_other_settings(tiny_bert, tmp_path):
    model, tok = tiny_bert
    store = tmp_path / "s.zarr"

    def crash(done, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        extract(
            TEXTS, model=model, tokenizer=tok, batch_size=1, store=store, progress=False, callback=crash, device="cpu"
        )
    with pytest.raises(StoreError, match="different settings"):
        extract(TEXTS[:3], model=model, tokenizer=tok, store=store, progress=False, device="cpu")
    corpus = extract(TEXTS[:3], model=model, tokenizer=tok, store=store, progress=False, overwrite=True, device="cpu")
    assert len(corpus) == 3


def test_model_without_attention_weights_is_a_clear_error(bert_tokenizer):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=32,
        attn_implementation="sdpa",
    )
    model = BertModel(config).eval()
    from attviz.extract import run_batch
    from attviz.tokenization import make_batches, tokenize

    loaded = LoadedModel(model, bert_tokenizer, "sdpa-bert", encoder_decoder=False)
    units = tokenize(loaded, ["hello world"], ["a"], None, max_length=32)
    # run_batch's matrices run eager attention for the pass (SDPA would return an empty tuple) and restore SDPA
    ((_, arrays, _),) = run_batch(loaded, make_batches(units, 1)[0])
    assert arrays["self"].numpy().shape == (2, 3, 4, 4)
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(AttentionUnavailableError, match="returned 1 self attention matrices for 2 layers"):
        check_attentions((torch.zeros(1, 1, 2, 2),), "self", "m", 2)
    # through the public path the model is switched to eager and works
    corpus = extract(["hello world"], model=model, tokenizer=bert_tokenizer, progress=False, device="cpu")
    assert corpus[0].attention.sizes["layer"] == 2


def test_bad_inputs_are_reported(tiny_bert):
    model, tok = tiny_bert
    with pytest.raises(InputError, match=r"texts\[1\]: text 1 is empty"):
        extract(["fine", "  "], model=model, tokenizer=tok, progress=False)
    with pytest.raises(InputError, match="repeats"):
        extract(["a", "b"], ids=["x", "x"], model=model, tokenizer=tok, progress=False)
    with pytest.raises(InputError, match="not one string"):
        extract("just one string", model=model, tokenizer=tok, progress=False)
    with pytest.raises(InputError, match="2 labels for 1 texts"):
        extract(["a"], labels=["x", "y"], model=model, tokenizer=tok, progress=False)
