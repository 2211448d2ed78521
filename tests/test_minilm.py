"""Integration with the real bundled all-MiniLM-L6-v2 on the demo texts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attviz.cli import main
from attviz.demo import demo_records, label_descriptions
from attviz.extract import extract

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample():
    records = demo_records()
    by_length = sorted(records, key=lambda r: len(r["text"]))
    return by_length[:3] + by_length[30:33] + by_length[-2:]  # headlines, paragraphs, the longest


def test_stored_attention_equals_a_direct_model_call(minilm, sample, tmp_path):
    corpus = extract(
        [r["text"] for r in sample],
        ids=[r["id"] for r in sample],
        model=minilm,
        batch_size=4,
        store=tmp_path / "s.zarr",
        progress=False,
    )
    model, tok = minilm.model, minilm.tokenizer
    for doc, record in zip(corpus, sample, strict=True):
        enc = tok(record["text"], return_tensors="pt")
        with torch.inference_mode():
            direct = torch.stack(model(**enc, output_attentions=True).attentions, 1)[0].numpy()
        assert direct.shape == (6, 12, enc["input_ids"].shape[1], enc["input_ids"].shape[1])
        stored = doc.attention.values.astype(np.float32)
        # float16 storage: relative precision 2**-11 on values <= 1
        np.testing.assert_allclose(stored, direct, atol=5e-4, rtol=1e-3)
        assert doc.tokens == tok.convert_ids_to_tokens(enc["input_ids"][0])


def test_zero_shot_predictions_match_sentence_transformers(minilm, sample):
    from sentence_transformers import SentenceTransformer

    from attviz.models import bundled_model_path

    descriptions = label_descriptions()
    corpus = extract(
        [r["text"] for r in sample],
        labels=[r["label"] for r in sample],
        model=minilm,
        label_descriptions=descriptions,
        progress=False,
    )
    # independent computation with sentence-transformers' own pipeline (mean pooling + normalise)
    st = SentenceTransformer(str(bundled_model_path()), device="cpu")
    st.max_seq_length = 512  # it truncates at 256 by default; attviz keeps the model's 512 positions
    docs = st.encode([r["text"] for r in sample], normalize_embeddings=True)
    labels = st.encode(list(descriptions.values()), normalize_embeddings=True)
    expected = torch.softmax(torch.tensor(docs @ labels.T) / 0.05, dim=-1).numpy()
    np.testing.assert_allclose(corpus.probabilities.to_numpy(), expected, atol=2e-3)
    assert corpus.table["prediction"].tolist() == [list(descriptions)[i] for i in expected.argmax(1)]


def test_cli_extract_100_lines_with_bundled_model(tmp_path, capsys):
    records = demo_records()
    lines = [r["text"] for r in records]
    lines += [s.strip() + "." for r in records for s in r["text"].split(". ")[1:] if len(s) > 20][: 100 - len(lines)]
    assert len(lines) == 100
    (tmp_path / "in.txt").write_text("\n".join(lines), encoding="utf-8")
    assert main(["extract", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.zarr"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == 100 and info["layers"] == 6 and info["heads"] == 12
    assert info["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    from transformers import AutoTokenizer

    from attviz.models import bundled_model_path

    tok = AutoTokenizer.from_pretrained(bundled_model_path())
    assert info["tokens"] == sum(len(tok(line)["input_ids"]) for line in lines)
    assert info["compression_ratio"] > 1.0


def test_demo_corpus_is_built_once_and_cached(tmp_path, monkeypatch):
    from attviz.demo import demo_corpus, demo_store_path

    monkeypatch.setenv("ATTVIZ_CACHE", str(tmp_path))
    corpus = demo_corpus(progress=False)
    assert len(corpus) == 64 and demo_store_path().parent == tmp_path
    table = corpus.table
    assert set(table["label"]) == {"world", "sports", "business", "science"}
    accuracy = table["correct"].astype(bool).mean()
    assert 0.6 < accuracy < 1.0  # real predictions: mostly right, some ambiguous texts wrong
    mtime = demo_store_path().stat().st_mtime
    again = demo_corpus(progress=False)
    assert demo_store_path().stat().st_mtime == mtime and len(again) == 64
