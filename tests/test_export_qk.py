"""Exported pages of documents kept as queries and keys: the q/k payload decodes (in Python, as the
page decodes it) to weights within the bound the page states, is chosen where it is smaller than the
uint8 matrices, and carries documents up to 8,192 tokens without a window."""

from __future__ import annotations

import html
import time

import numpy as np
import pytest

import attviz
from attviz import Corpus, Document, token_frame
from attviz.export import QK_MAX_TOKENS, decode_qk_layer, export_html
from attviz.export.qkpayload import shuffle16, unshuffle16
from attviz.qk import QKAttention, Rule, band_mask
from tests.test_export import decoded, make_doc, parse_page

CAUSAL = (0.25, -1, 0, None)


def qk_doc(
    n: int,
    *,
    layers: int = 2,
    heads: int = 4,
    key_heads: int = 2,
    dim: int = 16,
    rules: list[tuple] | None = None,
    bias: bool = False,
    seed: int = 0,
    spread: float = 1.5,
    doc_id: str | None = None,
) -> Document:
    """A document kept as random queries and keys (float32), with the rules asked for (default causal)."""
    rng = np.random.default_rng(seed)
    rules = [Rule(*r) for r in (rules or [CAUSAL] * layers)]
    query = (rng.standard_normal((layers, heads, n, dim)) * spread).astype(np.float32)
    key = (rng.standard_normal((layers, key_heads, n, dim)) * spread + 0.7).astype(np.float32)
    offsets = None
    if bias:
        offsets = (rng.standard_normal((layers, heads, 2 * n - 1)) * 0.5).astype(np.float32)
    words = [f"t{i}" for i in range(n - 1)]
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    ends = [0, *(starts + [len(w) for w in words])]
    tokens = token_frame(["<s>", *words], start=[0, *starts], end=ends, special=[True] + [False] * (n - 1))
    kept = QKAttention(
        query=query,
        key=key,
        lse=np.zeros((layers, heads, n), np.float32),
        rules=rules,
        bias=offsets,
        groups=heads // key_heads,
        query_tokens=tokens,
        key_tokens=tokens,
    )
    kept.lse = np.stack([_lse(kept, layer) for layer in range(layers)])
    return Document(id=doc_id or f"qk-{n}", text=" ".join(words), arrays={"self": kept})


def _lse(kept: QKAttention, layer: int) -> np.ndarray:
    out = []
    for head in range(kept.shape[1]):
        step = max(1, (1 << 22) // kept.shape[3])
        rows = []
        for r in range(0, kept.shape[2], step):
            scores = kept.logits(layer, head, slice(r, r + step)).astype(np.float64)
            top = scores.max(axis=1, keepdims=True)
            rows.append((top + np.log(np.exp(scores - top).sum(axis=1, keepdims=True)))[:, 0])
        out.append(np.concatenate(rows))
    return np.stack(out).astype(np.float32)


def weights(doc: Document, layer: int, head: int) -> np.ndarray:
    """The stored queries' and keys' weights of one head (float64 softmax of float32 logits)."""
    scores = doc.qk().logits(layer, head).astype(np.float64)
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return scores / scores.sum(axis=1, keepdims=True)


def pooled(values: np.ndarray, block: int) -> np.ndarray:
    """Max-pool a ``(rows, n)`` array by ``block`` in both directions (the page's image)."""
    rows, n = values.shape
    side_r, side = -(-rows // block), -(-n // block)
    padded = np.zeros((side_r * block, side * block), values.dtype)
    padded[:rows, :n] = values
    return padded.reshape(side_r, block, side, block).max(axis=(1, 3))


# -- the format by hand ----------------------------------------------------------------------------
def test_shuffle_is_low_bytes_then_high_bytes():
    values = np.array([1.0, -2.0, 0.5], np.float16)  # 0x3c00, 0xc000, 0x3800
    raw = shuffle16(values)
    assert raw == bytes([0x00, 0x00, 0x00, 0x3C, 0xC0, 0x38])
    np.testing.assert_array_equal(unshuffle16(raw, 3), values)


@pytest.mark.parametrize("compress", [True, False])
def test_payload_holds_float16_queries_centred_keys_and_the_pages_lse(compress):
    doc = qk_doc(40, layers=1, heads=2, key_heads=1, dim=8)
    manifest, blobs = parse_page(export_html(doc, payload="qk", compress=compress))
    entry = manifest["docs"][0]
    assert entry["payload"] == "qk" and entry["qk"]["key_heads"] == [0, 0] and entry["qk"]["dim"] == 8
    assert entry["qk"]["rules"] == [list(CAUSAL)]
    page = decode_qk_layer(blobs[entry["blobs"][0]], entry, 0, manifest["encoding"])
    kept = doc.qk()
    np.testing.assert_array_equal(page.query, kept.query[0].astype(np.float16).astype(np.float32))
    centred = kept.key[0] - kept.key[0].mean(axis=1, keepdims=True)
    np.testing.assert_array_equal(page.key, centred.astype(np.float16).astype(np.float32))
    for head in range(2):  # rows sum to 1 with the carried lse, and the mask is kept
        w = page.weights(head)
        np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-6)
        assert (w[~band_mask(40, 40, -1, 0)] == 0).all()


# -- decoded weights within the stated bound -----------------------------------------------------------
RULES = {
    "causal": dict(rules=[CAUSAL, CAUSAL]),
    "sliding window and softcap": dict(rules=[(0.3, 5, 0, None), (0.3, -1, 0, 4.0)]),
    "bidirectional with bias": dict(rules=[(0.25, -1, -1, None)] * 2, bias=True, key_heads=4),
    "banded both ways": dict(rules=[(0.25, 3, 7, None), (0.2, -1, -1, 2.0)], bias=True),
}


@pytest.mark.parametrize("name", list(RULES))
def test_decoded_weights_are_within_the_stated_bound(name):
    doc = qk_doc(96, seed=len(name), **RULES[name])
    page = export_html(doc, payload="qk")
    manifest, blobs = parse_page(page)
    entry = manifest["docs"][0]
    stated = manifest["qk_error"]
    assert stated == entry["qk"]["max_error"] and 0 < stated < 1 / 510
    assert f"within {stated:.3g} of the stored queries' and keys' weights" in html.unescape(page)
    worst = 0.0
    for layer in range(2):
        shown = decoded(manifest, blobs, 0, layer)
        np.testing.assert_allclose(shown.sum(axis=2), 1, atol=1e-5)
        for head in range(4):
            worst = max(worst, float(np.abs(shown[head] - weights(doc, layer, head)).max()))
    assert worst <= stated * (1 + 1e-3) + 1e-6  # the stated error is the measured largest one (to float32)
    assert worst >= stated * 0.5  # and measured, not a loose bound


def test_a_real_model_exports_within_the_bound(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    text = " ".join(["the cat sat on the mat and looked at the dog"] * 12)
    corpus = attviz.extract([text], model=model, tokenizer=tokenizer, attention="qk", progress=False)
    manifest, blobs = parse_page(export_html(corpus, payload="qk"))
    source = corpus[0].attention.values
    for layer in range(len(manifest["docs"][0]["layers"])):
        error = np.abs(decoded(manifest, blobs, 0, layer) - source[layer]).max()
        assert error <= manifest["qk_error"] * (1 + 1e-4) + 1e-6


# -- which payload -------------------------------------------------------------------------------------
def test_auto_keeps_the_smaller_payload():
    short, long = qk_doc(12, doc_id="short"), qk_doc(600, doc_id="long", seed=1)
    both = Corpus([short, long, make_doc("matrices", 20)])
    manifest, _ = parse_page(export_html(both))
    assert [d["payload"] for d in manifest["docs"]] == ["matrix", "qk", "matrix"]
    assert manifest["matrix_error"] <= 1 / 510 * (1 + 1e-6) and 0 < manifest["qk_error"] < 1 / 510
    matrices = export_html(both, payload="matrix")
    assert [d["payload"] for d in parse_page(matrices)[0]["docs"]] == ["matrix"] * 3
    assert len(export_html(long)) < len(export_html(long, payload="matrix"))
    with pytest.raises(attviz.errors.InputError, match="unknown payload"):
        export_html(long, payload="f16")


def test_long_documents_export_whole_up_to_8192_tokens():
    doc = qk_doc(3000, layers=1, heads=2, key_heads=1, dim=8)
    manifest, blobs = parse_page(export_html(doc))
    entry = manifest["docs"][0]
    assert entry["payload"] == "qk" and len(entry["tokens"]) == entry["n_tokens"] == 3000
    assert not any("are exported" in note for note in entry["notes"])
    rows = decode_qk_layer(blobs[entry["blobs"][0]], entry, 0).weights(1, [0, 1500, 2999])
    np.testing.assert_allclose(rows, weights(doc, 0, 1)[[0, 1500, 2999]], atol=manifest["qk_error"] * 1.0001)
    matrices = parse_page(export_html(doc, payload="matrix"))[0]["docs"][0]
    assert len(matrices["tokens"]) == 2048 and "Tokens 1–2,048 of 3,000" in matrices["notes"][0]


def test_a_window_keeps_the_documents_normalisation():
    doc = qk_doc(200, layers=1, heads=2, key_heads=2, dim=8, rules=[(0.25, -1, -1, None)], bias=True)
    manifest, blobs = parse_page(export_html(doc, payload="qk", window=(50, 150)))
    entry = manifest["docs"][0]
    assert (entry["start"], len(entry["tokens"])) == (50, 100)
    assert any("Tokens 51–150 of 200 are exported" in note for note in entry["notes"])
    shown = decoded(manifest, blobs, 0, 0)
    bound = manifest["qk_error"] * 1.0001
    for head in range(2):
        np.testing.assert_allclose(shown[head], weights(doc, 0, head)[50:150, 50:150], atol=bound)
    assert (shown.sum(axis=2) < 1).all()  # attention outside the window is left out


def test_beyond_8192_tokens_a_qk_document_is_windowed():
    doc = qk_doc(QK_MAX_TOKENS + 10, layers=1, heads=1, key_heads=1, dim=4)
    entry = parse_page(export_html(doc))[0]["docs"][0]
    assert entry["payload"] == "qk" and len(entry["tokens"]) == QK_MAX_TOKENS
    assert "Tokens 1–8,192 of 8,202 are exported" in entry["notes"][0]


def test_layers_and_heads_subsets():
    doc = qk_doc(64, layers=3, heads=4, key_heads=2, rules=[CAUSAL] * 3)
    manifest, blobs = parse_page(export_html(doc, payload="qk", layers=[2], heads=[3, 0]))
    entry = manifest["docs"][0]
    assert (entry["layers"], entry["heads"], entry["qk"]["key_heads"]) == ([2], [3, 0], [1, 0])
    shown = decoded(manifest, blobs, 0, 0)
    np.testing.assert_allclose(shown[0], weights(doc, 2, 3), atol=manifest["qk_error"] * 1.0001)
    np.testing.assert_allclose(shown[1], weights(doc, 2, 0), atol=manifest["qk_error"] * 1.0001)


# -- real MiniLM -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_minilm_qk_page_is_smaller_at_512_tokens(tmp_path):
    from attviz.demo import demo_records

    text = " ".join(r["text"] for r in demo_records())
    corpus = attviz.extract([text], max_length=512, attention="qk", progress=False)
    assert corpus[0].n_tokens == 512
    start = time.perf_counter()
    qk_page = export_html(corpus, tmp_path / "qk.html")
    elapsed = time.perf_counter() - start
    matrix_page = export_html(corpus, tmp_path / "matrix.html", payload="matrix")
    manifest, blobs = parse_page(qk_page)
    assert manifest["docs"][0]["payload"] == "qk"
    source = np.asarray(corpus[0].attention.values, dtype=np.float32)
    worst = max(np.abs(decoded(manifest, blobs, 0, layer) - source[layer]).max() for layer in range(6))
    assert worst <= manifest["qk_error"] * (1 + 1e-4) and manifest["qk_error"] < 1 / 510
    print(
        f"\nMiniLM 512 tokens: q/k page {len(qk_page) / 1e6:.2f} MB ({elapsed:.2f} s), matrix page "
        f"{len(matrix_page) / 1e6:.2f} MB; max error {worst:.2e} (stated {manifest['qk_error']:.2e})"
    )
    assert len(qk_page) < 0.7 * len(matrix_page)
