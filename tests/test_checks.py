"""The attention self-check (issue #14, part 5): row sums, NaN/inf, uniform and sink-dominated heads, at
extraction (matrices, q/k, a store, a float16 overflow) and on open (``attviz info``, the explorer)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import attviz
from attviz import checks
from attviz.cli import main
from attviz.explorer import Explorer
from attviz.readers.tensors import from_tensors


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def clean(layers: int = 3, heads: int = 4, n: int = 12, seed: int = 0) -> np.ndarray:
    """Softmax rows of moderate logits: no row flat, no key taking 90 % of a head."""
    return softmax(np.random.default_rng(seed).normal(0, 1.0, (layers, heads, n, n))).astype(np.float32)


@pytest.mark.parametrize("n", [5, 64, 513])
def test_float16_softmax_rows_are_never_flagged(n):
    for seed in range(3):
        logits = np.random.default_rng(seed).normal(0, 4.0, (2, 3, n, n))
        stored = softmax(logits).astype(np.float16)
        result = checks.check_matrix(stored, dtype=np.float16)
        assert result["counts"]["row_sum"] == 0 and result["counts"]["nonfinite"] == 0
        sums = stored.astype(np.float64).sum(-1)
        assert result["max_row_error"] == pytest.approx(np.abs(sums - 1).max(), abs=1e-6)
        assert result["max_row_error"] <= result["tolerance"] < 2e-3  # tight: a real error of 2e-3 is caught


def test_each_failure_is_found_where_it_is():
    a = clean()
    a[0, 1, 5] *= 0.5  # a row summing to 0.5
    a[1, 2, 3, 4] = np.nan
    a[2, 0] = 1 / 12  # uniform
    a[2, 3] = 0.05 / 11
    a[2, 3, :, 7] = 0.95  # every row puts 95 % on key 7
    result = checks.check_matrix(a)
    assert result["row_sum"] == [[0, 1, 1, pytest.approx(0.5, abs=1e-6)]]
    assert result["nonfinite"] == [[1, 2, 1]]
    assert result["uniform"] == [[2, 0, 1.0]]
    assert result["sink"] == [[2, 3, 7, pytest.approx(0.95, abs=1e-4)]]
    assert result["counts"] == {"nonfinite": 1, "row_sum": 1, "uniform": 1, "sink": 1}
    assert checks.check_matrix(clean())["counts"] == dict.fromkeys(["nonfinite", "row_sum", "uniform", "sink"], 0)
    # the positions named are the stored ones where a store keeps a subset of layers and heads
    subset = checks.check_matrix(a[:, 1:3], layer_ids=[1, 3, 5], head_ids=[7, 9])
    assert subset["row_sum"][0][:2] == [1, 7] and subset["nonfinite"] == [[3, 9, 1]]


def test_causal_heads():
    n = 10
    causal = np.tril(np.ones((n, n)))
    uniform = causal / causal.sum(-1, keepdims=True)  # flat over the keys each row can see
    previous = np.eye(n, k=-1)
    previous[0, 0] = 1.0
    a = np.stack([uniform, previous])[None].astype(np.float32)
    result = checks.check_matrix(a)
    assert result.get("uniform") == [[0, 0, 1.0]]
    assert result["counts"]["row_sum"] == 0 and "sink" not in result  # the previous-token head is neither


def test_sampled_rows_find_the_same_heads():
    a = clean(n=300, seed=1)
    a[1, 2] = 0.08 / 299
    a[1, 2, :, 0] = 0.92
    full, sampled = checks.check_matrix(a), checks.check_matrix(a, sample=64)
    assert sampled["rows"] == 64 and full["rows"] == 300
    assert sampled["sink"] == full["sink"] == [[1, 2, 0, pytest.approx(0.92, abs=1e-4)]]


def test_extraction_checks_matrices_and_qk_alike(tiny_bert, minilm):
    """A tiny random BERT's logits are near 0, so every head is uniform; MiniLM's heads are not. The q/k
    document (its rows rebuilt from queries and keys) and the matrices say the same."""
    model, tokenizer = tiny_bert
    text = "The quick brown fox jumps over the lazy dog near the river bank today."
    for mode in ("matrices", "qk"):
        corpus = attviz.extract([text], model=model, tokenizer=tokenizer, attention=mode, progress=False)
        result = corpus[0].meta["attention_check"]["kinds"]["self"]
        every = [(layer, head) for layer in range(2) for head in range(3)]
        assert sorted(tuple(entry[:2]) for entry in result["uniform"]) == every
        assert result["counts"]["row_sum"] == result["counts"]["nonfinite"] == 0
        assert corpus.attrs["attention_check"]["uniform"]["heads"] == {f"self/{la}/{he}": 1 for la, he in every}
    real = {}
    for mode in ("matrices", "qk"):
        corpus = attviz.extract([text], model=minilm.model, tokenizer=minilm.tokenizer, attention=mode, progress=False)
        real[mode] = corpus[0].meta["attention_check"]["kinds"]["self"]
        assert real[mode]["counts"]["uniform"] == real[mode]["counts"]["row_sum"] == 0
    assert [e[:3] for e in real["qk"].get("sink", [])] == [e[:3] for e in real["matrices"].get("sink", [])]
    for a, b in zip(real["qk"].get("sink", []), real["matrices"].get("sink", []), strict=True):
        assert a[3] == pytest.approx(b[3], abs=2e-3)


def test_store_keeps_the_check_and_reading_it_back_agrees(tiny_bert, tmp_path):
    model, tokenizer = tiny_bert
    texts = ["A first short text.", "And a second one, somewhat longer than the first."]
    store = tmp_path / "s.zarr"
    attviz.extract(texts, model=model, tokenizer=tokenizer, store=store, attention="matrices", progress=False)
    corpus = attviz.open_corpus(str(store))
    summary = corpus.attrs["attention_check"]
    assert summary["documents"] == 2 and summary["row_sum"]["documents"] == 0
    for doc in corpus:
        stored = doc.meta["attention_check"]
        again = checks.check_document(doc, sample=None, refresh=True)  # the float16 values read back
        assert again["kinds"]["self"]["counts"] == stored["kinds"]["self"]["counts"]
        assert again["kinds"]["self"]["max_row_error"] <= stored["kinds"]["self"]["tolerance"]
    assert checks.summarize([(doc.id, doc.meta["attention_check"]) for doc in corpus]) == summary


def test_float16_overflow_says_so(bert_tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        attn_implementation="eager",
    )
    model = BertModel(config).eval()
    with torch.no_grad():  # logits of ~1e6: beyond float16's 65504
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(3000.0)
            layer.attention.self.key.weight.mul_(3000.0)
    model = model.half()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = attviz.extract(
            ["hello world, a test of overflow"],
            model=model,
            tokenizer=bert_tokenizer,
            attention="matrices",
            progress=False,
        )
    message = " ".join(str(w.message) for w in caught)
    assert "NaN or infinite attention" in message and "float16 overflowed" in message and "--dtype float32" in message
    nonfinite = corpus[0].meta["attention_check"]["kinds"]["self"]["nonfinite"]
    assert sorted(entry[:2] for entry in nonfinite) == [[0, 0], [0, 1], [1, 0], [1, 1]]


def broken_npz(path, sink_head=(0, 1)):
    """An .npz of 2 layers × 2 heads where layer 1 head 0's row 2 sums to 0.7, and ``sink_head`` is a sink."""
    tokens = ["[CLS]", "one", "two", "three", "four", "five", "[SEP]"]
    a = clean(2, 2, len(tokens), seed=3)
    a[1, 0, 2] *= 0.7
    layer, head = sink_head
    a[layer, head] = 0.04 / 6
    a[layer, head, :, 6] = 0.96
    np.savez(path, attention=a, tokens=np.array(tokens))
    return path


def test_info_checks_a_file_on_open(tmp_path, capsys):
    path = broken_npz(tmp_path / "broken.npz")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "error: 1 document(s) with rows that do not sum to 1 (up to 0.3 off)" in out
    assert "rows that do not sum to 1 in self L1 H0" in out
    assert "sink-dominated head(s): self L0 H1 (e.g. 96% on '[SEP]')" in out
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["attention_check"]["row_sum"]["documents"] == 1
    assert info["attention_check"]["sink"]["heads"] == {"self/0/1": 1}
    assert info["attention_check_documents"][0]["error"] is True
    assert main(["info", str(path), "--no-check"]) == 0  # nothing stored with an .npz: nothing checked
    assert "0 document(s) checked, 1 not checked (attviz info --check)" in capsys.readouterr().out


def test_explorer_notices(tmp_path):
    corpus = attviz.open_corpus(str(broken_npz(tmp_path / "broken.npz")))
    explorer = Explorer(corpus)
    explorer.param.update(layer=0, head=0)
    assert explorer.notice.startswith("Attention check: rows that do not sum to 1 in self L1 H0 (up to 0.3 off)")
    assert "sink-dominated" not in explorer.notice  # the sink notice is for its head only
    explorer.head = 1
    assert "Layer 0 head 1 is sink-dominated in this document: 96% of its attention on '[SEP]'" in explorer.notice
    assert explorer.message == ""  # a notice, never a failure


def test_from_tensors_document_is_checked_like_a_stored_one():
    a = clean(1, 2, 6, seed=4)
    corpus = from_tensors(list(a[:, None]), ["[CLS]", "a", "b", "c", "d", "[SEP]"])
    result = checks.check_document(corpus[0], sample=None)
    assert result["kinds"]["self"]["counts"] == dict.fromkeys(["nonfinite", "row_sum", "uniform", "sink"], 0)
    assert corpus[0].meta["attention_check"] is result  # kept: checked once


def test_info_checks_a_large_unchecked_corpus_only_when_asked(tmp_path, capsys, monkeypatch):
    from attviz import info

    path = broken_npz(tmp_path / "broken.npz")
    monkeypatch.setattr(info, "AUTO_CHECK_DOCUMENTS", 0)  # as if it were a big store written before the checks
    assert main(["info", str(path)]) == 0
    assert "0 document(s) checked, 1 not checked (attviz info --check)" in capsys.readouterr().out
    assert main(["info", str(path), "--check"]) == 0
    assert "error: 1 document(s) with rows that do not sum to 1" in capsys.readouterr().out
