"""Static HTML export: the payload decodes to the attention within the stated bound, the page is
self-contained and inert, long documents are windowed, and writes are atomic."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser

import numpy as np
import pytest

import attviz
from attviz import Corpus, Document, attention_array, token_frame
from attviz.errors import InputError
from attviz.export import decode_layer, decode_qk_layer, export_html, quantize_rows, write_atomic
from attviz.export.payload import pick_layers, pick_window, text_layout

XSS = "<img src=x onerror=window.__xss=1>"


def row_stochastic(shape: tuple[int, ...], seed: int = 0, sharpness: float = 3.0) -> np.ndarray:
    """Softmax rows of random logits (peaky like real attention)."""
    logits = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * np.float32(sharpness)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def make_doc(
    doc_id: str, n: int, layers: int = 2, heads: int = 3, seed: int = 0, words: list[str] | None = None, **fields
) -> Document:
    words = words or [f"w{i}" for i in range(n - 2)]
    text = " ".join(words)
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    tokens = token_frame(
        ["[CLS]", *words, "[SEP]"],
        word=[-1, *range(n - 2), -1],
        start=[0, *starts, 0],
        end=[0, *(starts + [len(w) for w in words]), 0],
        special=[True, *[False] * (n - 2), True],
    )
    array = attention_array(row_stochastic((layers, heads, n, n), seed), tokens)
    return Document(id=doc_id, text=text, arrays={"self": array}, **fields)


def parse_page(page: str) -> tuple[dict, dict[str, str]]:
    """The manifest and the payload texts of an exported page."""
    manifest = re.search(r"<script type='application/json' id='attviz-manifest'>(.*?)</script>", page).group(1)
    blobs = dict(re.findall(r"<script type='application/octet-stream' id='([^']+)'>([^<]*)</script>", page))
    return json.loads(manifest), blobs


def decoded(manifest: dict, blobs: dict[str, str], d: int, layer: int) -> np.ndarray:
    """The weights the page shows for one layer ``(heads, queries, keys)``, whatever its payload kind."""
    entry = manifest["docs"][d]
    n = len(entry["tokens"])
    if entry["payload"] == "qk":
        page = decode_qk_layer(blobs[entry["blobs"][layer]], entry, layer, manifest["encoding"])
        return np.stack([page.weights(h) for h in range(len(entry["heads"]))]).astype(np.float32)
    return decode_layer(blobs[entry["blobs"][layer]], len(entry["heads"]), n, n, manifest["encoding"])


# -- quantisation by hand ------------------------------------------------------------------------
def test_quantize_rows_by_hand():
    values = np.array([[0.0, 0.25, 1.0], [0.2, 0.05, 0.0], [0.0, 0.0, 0.0], [np.nan, 0.1, 0.5]])
    q, scale = quantize_rows(values)
    np.testing.assert_allclose(scale[:3], [1 / 255, 0.2 / 255, 0.0], rtol=1e-6)
    # 0.25 × 255 = 63.75 → 64; 0.05 / 0.2 × 255 = 63.75 → 64; a row with NaN is marked: scale NaN, q 0.
    assert q.tolist() == [[0, 64, 255], [255, 64, 0], [0, 0, 0], [0, 0, 0]]
    assert np.isnan(scale[3])
    assert q.dtype == np.uint8 and scale.dtype == np.float32
    with pytest.raises(ValueError, match="non-negative"):  # the store's rule: negative values are refused
        quantize_rows(np.array([[0.5, -1.0]]))


def test_quantize_per_matrix_by_hand():
    # Two 2×2 matrices: every row of a matrix shares its maximum / 255, taken over its finite rows;
    # a row with NaN is marked (scale NaN, q 0).
    values = np.array([[[0.5, 0.3], [0.1, 0.0]], [[np.nan, 1.0], [0.2, 0.03]]])
    q, scale = quantize_rows(values, per="matrix")
    np.testing.assert_allclose(scale, [[0.5 / 255] * 2, [np.nan, 0.2 / 255]], rtol=1e-6)
    # 0.3 / 0.5 × 255 = 153; 0.1 / 0.5 × 255 = 51; 0.03 / 0.2 × 255 = 38.25 → 38.
    assert q.tolist() == [[[255, 153], [51, 0]], [[0, 0], [255, 38]]]
    # Small blocks walk the rows in several steps and give the same result.
    assert (quantize_rows(values, block=2, per="matrix")[0] == q).all()
    with pytest.raises(ValueError, match="quantisation"):
        quantize_rows(values, per="column")


def test_matrix_quantization_keeps_the_bound_and_shrinks_the_page():
    doc = make_doc("a", 48, layers=2, heads=3, seed=4)
    source = doc.attention.values.astype(np.float32)
    row_page, matrix_page = export_html(doc), export_html(doc, quantization="matrix")
    manifest, blobs = parse_page(matrix_page)
    assert manifest["quantization"] == "matrix"
    assert "scale (one per head" in matrix_page and "scale (the row" in row_page  # the notes say which
    for layer in range(2):
        error = np.abs(decoded(manifest, blobs, 0, layer) - source[layer])
        top = source[layer].max(axis=(1, 2))  # per head
        assert (error.max(axis=(1, 2)) <= top / 510 * (1 + 1e-5)).all()
        assert error.max() <= manifest["max_error"] * (1 + 1e-5) <= 1 / 510
    assert len(matrix_page) < len(row_page)
    with pytest.raises(InputError, match="quantisation"):
        export_html(doc, quantization="log")


@pytest.mark.parametrize("encoding", ["deflate", "raw"])
def test_payload_round_trip_within_half_a_step(encoding):
    from attviz.export.payload import encode_layer

    values = row_stochastic((3, 40, 40), seed=1)
    q, scale = quantize_rows(values)
    back = decode_layer(encode_layer(q, scale, encoding), 3, 40, 40, encoding)
    error = np.abs(back - values)
    assert (error <= scale[..., None] / 2 * (1 + 1e-5) + 1e-9).all()
    assert error.max() <= 1 / 510


def test_window_and_layer_choices_by_hand():
    assert pick_window(100, 2048, None) == (0, 100)
    assert pick_window(4096, 2048, None) == (0, 2048)
    assert pick_window(4096, 2048, (1000, 1500)) == (1000, 1500)
    assert pick_window(4096, 2048, (1000, 9000)) == (1000, 3048)
    assert pick_window(300, 128, (500, 600)) == (0, 128)  # outside the document: its start
    assert pick_layers(6, 10, 100) == [0, 1, 2, 3, 4, 5]
    assert pick_layers(6, 10, 40) == [0, 2, 3, 5]
    assert pick_layers(6, 10, 30) == [0, 2, 5]
    assert pick_layers(6, 10, 20) == [0, 5]
    assert pick_layers(6, 10, 5) == [0]


def test_text_layout_uses_offsets_and_badges():
    tokens = token_frame(["[CLS]", "hi", "there", "##s", "[SEP]"], start=[0, 0, 3, 8, 0], end=[0, 2, 8, 9, 0],
                         special=[True, False, False, False, True])  # fmt: skip
    layout = text_layout(tokens, "Hi theres!", 0, 5)
    assert layout.labels == ["[CLS]", "Hi", "there", "s", "[SEP]"]
    assert layout.gaps == ["", "", " ", "", ""]
    assert layout.badges == [True, False, False, False, True]
    assert layout.tail == "!"
    window = text_layout(tokens, "Hi theres!", 2, 4)  # no text before a window that does not start at 0
    assert (window.labels, window.gaps, window.tail) == (["there", "s"], ["", ""], "")
    legacy = text_layout(token_frame(["a", "##b", "c"]), "", 0, 3)  # no offsets: tokens joined by spaces
    assert (legacy.labels, legacy.gaps) == (["a", "b", "c"], ["", "", " "])


# -- the page --------------------------------------------------------------------------------------
def test_payload_decodes_to_the_attention_within_the_stated_bound():
    doc = make_doc("a", 12, label="x", prediction="y", probabilities={"x": 0.3, "y": 0.7})
    manifest, blobs = parse_page(export_html(doc))
    source = doc.attention.values
    stated = manifest["max_error"]
    assert 0 < stated <= 1 / 510
    for layer in range(2):
        values = decoded(manifest, blobs, 0, layer)
        _, scale = quantize_rows(source[layer])
        error = np.abs(values - source[layer])
        assert (error <= scale[..., None] / 2 * (1 + 1e-5) + 1e-9).all()
        assert error.max() <= stated * (1 + 1e-5)
    assert manifest["docs"][0]["probabilities"] == [["x", pytest.approx(0.3)], ["y", pytest.approx(0.7)]]


class _Resources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.csp = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster"):
                self.links.append((tag, name, value or ""))
            if tag == "meta" and name == "content" and ("http-equiv", "Content-Security-Policy") in attrs:
                self.csp = value or ""


def test_page_is_self_contained():
    page = export_html(make_doc("a", 8))
    found = _Resources()
    found.feed(page)
    assert found.links == []  # no <script src>, <link href>, <img src>: everything is inline
    assert "default-src 'none'" in found.csp and "connect-src" not in found.csp  # the browser fetches nothing
    for style in re.findall(r"<style>(.*?)</style>", page, flags=re.S):
        assert "@import" not in style
        assert all(u.strip("'\" ").startswith("data:") for u in re.findall(r"url\(([^)]*)\)", style))
    assert "Bokeh" in page and len(page) > 1_000_000  # Bokeh's JavaScript is inline


def test_untrusted_text_stays_inert():
    words = [XSS, "$$x$$", "&amp;", "w"]
    doc = make_doc("</script><script>window.__xss=2</script>", 6, words=words, label="$$x$$", prediction=XSS)
    page = export_html(doc, title="<b>title</b> $$t$$")
    assert XSS not in page and "<b>title" not in page and "<script>window" not in page
    assert "&lt;b&gt;title&lt;/b&gt;" in page
    manifest, _ = parse_page(page)
    entry = manifest["docs"][0]
    assert entry["tokens"][1:5] == words  # intact once parsed; the page sets them as textContent
    assert entry["labels"][1:5] == words and "&amp;amp;" not in page
    assert entry["id"] == doc.id and entry["prediction"] == XSS


def test_multi_document_export_lists_every_document():
    docs = [make_doc(f"doc-{i}", 5 + i, seed=i, label="a", prediction="a" if i else "b") for i in range(3)]
    corpus = Corpus(docs, attrs={"model": "tiny"})
    page = export_html(corpus)
    manifest, blobs = parse_page(page)
    assert [d["id"] for d in manifest["docs"]] == ["doc-0", "doc-1", "doc-2"]
    assert manifest["docs"][0]["option"] == "doc-0 · a → b ✗"  # wrong predictions are flagged
    assert len(blobs) == 3 * 2
    np.testing.assert_allclose(decoded(manifest, blobs, 2, 1), docs[2].attention.values[1], atol=1 / 510)
    assert "attviz — tiny — 3 documents" in page
    only = parse_page(export_html(corpus, doc_ids=["doc-2", 0]))[0]
    assert [d["id"] for d in only["docs"]] == ["doc-2", "doc-0"]
    limited = export_html(corpus, max_documents=2)
    assert "The first 2 of 3 documents." in limited
    one_blob = len(parse_page(export_html(corpus, doc_ids=[0]))[1]["attviz-d0-l0"])
    small_page = export_html(corpus, max_page_bytes=2 * one_blob + 1)  # passed by the second document
    assert len(parse_page(small_page)[0]["docs"]) == 2
    assert "Only the first 2 documents of 3 are exported" in small_page and "attviz — tiny — 2 documents" in small_page
    with pytest.raises(InputError, match="no document 'nope'"):
        export_html(corpus, doc_ids=["nope"])
    with pytest.raises(InputError, match="unknown view"):
        export_html(corpus, views=("matrix", "arcs"))


def test_long_document_is_windowed_and_says_so():
    doc = make_doc("long", 300, layers=3, heads=2)
    manifest, blobs = parse_page(export_html(doc, max_tokens=128, window=(100, 260)))
    entry = manifest["docs"][0]
    assert (entry["start"], len(entry["tokens"]), entry["n_tokens"]) == (100, 128, 300)
    assert entry["tokens"][0] == "w99" and entry["lead"] and entry["trail"]
    assert any("Tokens 101–228 of 300 are exported" in note for note in entry["notes"])
    source = doc.attention.values[:, :, 100:228, 100:228]
    np.testing.assert_allclose(decoded(manifest, blobs, 0, 2), source[2], atol=1 / 510)
    # Over the byte budget: evenly spaced layers, first and last, and a note.
    manifest, _ = parse_page(export_html(doc, max_tokens=128, max_bytes=2 * 2 * 128 * 132))
    assert manifest["docs"][0]["layers"] == [0, 2]
    assert any("Layers 0, 2 of 3 are exported" in note for note in manifest["docs"][0]["notes"])
    manifest, _ = parse_page(export_html(doc, max_tokens=64, layers=[1], heads=[1]))
    assert (manifest["docs"][0]["layers"], manifest["docs"][0]["heads"]) == ([1], [1])


def test_views_choose_the_panels():
    doc = make_doc("a", 6, label="x", prediction="x")
    only_predictions = export_html(doc, views=("predictions",))
    assert parse_page(only_predictions)[1] == {}  # no attention payload at all
    assert "attviz-predictions" in only_predictions and "id='attviz-text'" not in only_predictions
    no_matrix = export_html(doc, views=("text",))
    assert "attviz-matrix" not in no_matrix and "id='attviz-text'" in no_matrix


def test_atomic_write(tmp_path):
    target = tmp_path / "page.html"
    html = export_html(make_doc("a", 6), target)
    assert target.read_text(encoding="utf-8") == html
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "partial \ud800 text")  # fails half way through writing
    assert target.read_text(encoding="utf-8") == html  # the old page is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # and no temporary file is left
    with pytest.raises(UnicodeEncodeError):
        write_atomic(tmp_path / "new.html", "\ud800")
    assert not (tmp_path / "new.html").exists()


def test_reads_a_store_path(tmp_path):
    corpus = Corpus([make_doc("a", 6), make_doc("b", 7, seed=3)]).save(tmp_path / "c.zarr")
    manifest, blobs = parse_page(export_html(tmp_path / "c.zarr", doc_ids=["b"]))
    assert [d["id"] for d in manifest["docs"]] == ["b"]
    np.testing.assert_allclose(decoded(manifest, blobs, 0, 0), corpus["b"].attention.values[0], atol=1 / 510)


def test_demo_corpus_export(tmp_path):
    from attviz.demo import demo_corpus

    corpus = demo_corpus(progress=False)
    start = time.perf_counter()
    page = export_html(corpus, tmp_path / "demo.html", doc_ids=corpus.ids[:8])
    elapsed = time.perf_counter() - start
    manifest, blobs = parse_page(page)
    assert len(manifest["docs"]) == 8 and len(blobs) == 8 * 6
    first = manifest["docs"][0]
    assert first["label"] == corpus[0].label and len(first["probabilities"]) == 4
    shown = zip(first["gaps"], first["labels"], first["badges"], strict=True)
    assert "".join(gap + ("" if badge else label) for gap, label, badge in shown) + first["tail"] == corpus[0].text
    print(f"\ndemo, 8 documents: {len(page) / 1e6:.2f} MB in {elapsed:.2f} s")


@pytest.mark.parametrize("n_tokens", [128, 512])
def test_minilm_export_size(n_tokens, tmp_path):
    """Real MiniLM attention (6 layers × 12 heads): file size and generation time."""
    from attviz.demo import demo_records

    text = " ".join(r["text"] for r in demo_records())
    corpus = attviz.extract([text], max_length=n_tokens, progress=False)
    assert corpus[0].n_tokens == n_tokens
    start = time.perf_counter()
    page = export_html(corpus, tmp_path / "page.html")
    elapsed = time.perf_counter() - start
    manifest, blobs = parse_page(page)
    source = np.asarray(corpus[0].attention.values, dtype=np.float32)
    worst = max(np.abs(decoded(manifest, blobs, 0, layer) - source[layer]).max() for layer in range(6))
    assert worst <= manifest["max_error"] * (1 + 1e-5)
    print(f"\nMiniLM {n_tokens} tokens: {len(page) / 1e6:.2f} MB in {elapsed:.2f} s; max error {worst:.2e}")
    assert len(page) <= 17e6


def test_documents_without_matrices_keep_text_and_predictions():
    from attviz import vector_array

    tokens = token_frame(["a", "b"], start=[0, 2], end=[1, 3])
    legacy = Document(id="legacy", text="a b", arrays={"vectors": vector_array(np.ones((1, 2)), tokens, ["v"])})
    manifest, blobs = parse_page(export_html(Corpus([make_doc("m", 5), legacy])))
    entry = manifest["docs"][1]
    assert blobs.keys() == {"attviz-d0-l0", "attviz-d0-l1"} and entry["blobs"] == [] and entry["layers"] == []
    assert entry["labels"] == ["a", "b"] and entry["gaps"] == ["", " "]
    assert "no attention matrices" in entry["notes"][0]
