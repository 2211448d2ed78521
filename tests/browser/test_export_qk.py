"""Exported pages with documents kept as queries and keys, in Chromium: the weights the page computes
from float16 q/k (image, selected row and column, attention received, hover) equal the Python
reference decoder's, and an 8,192-token document exports without a window and renders."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attviz import Corpus
from attviz.export import decode_qk_layer, export_html
from tests.browser.test_export import CELL, TOOLTIP, open_page, serve_folder, settle
from tests.test_export import make_doc, parse_page
from tests.test_export_qk import pooled, qk_doc

IMAGE = """() => {
  const data = Bokeh.documents[0].get_model_by_name("attviz-image-source").data;
  return [data.dw[0], data.image[0].shape, Array.from(data.image[0])];
}"""
VALUES = "() => Array.from(attviz.values)"
# attviz.set directly: a widget's CustomJS runs asynchronously, after an ``await attviz.pending``.
SET_HEAD = """async (head) => {
  const start = performance.now();
  await attviz.set({ head });
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  return (performance.now() - start) / 1000;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``(folder, base URL)``: a folder served over HTTP on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("export-qk-site")
    for url in serve_folder(folder):
        yield folder, url


def reference(manifest: dict, blobs: dict, d: int, layer: int, head: str) -> np.ndarray:
    """The whole matrix the page shows (small documents), from the Python decoder."""
    entry = manifest["docs"][d]
    page = decode_qk_layer(blobs[entry["blobs"][layer]], entry, layer, manifest["encoding"])
    values = np.stack([page.weights(h) for h in range(len(entry["heads"]))])
    return {"mean": values.mean(0), "max": values.max(0)}.get(head, values[int(head) if head.isdigit() else 0])


def image(page: Any) -> tuple[int, np.ndarray]:
    n, shape, values = page.evaluate(IMAGE)
    return n, np.asarray(values, dtype=np.float32).reshape(shape)


@pytest.fixture(scope="module")
def mixed(site: tuple[Path, str]) -> tuple[str, dict, dict]:
    """A q/k document (grouped-query heads, bias, a band both ways) and a matrix one."""
    qk = qk_doc(300, rules=[(0.25, 40, 60, None), (0.25, -1, 0, 3.0)], bias=True, doc_id="qk")
    corpus = Corpus([qk, make_doc("matrices", 9, seed=2)])
    folder, base = site
    manifest, blobs = parse_page(export_html(corpus, folder / "mixed.html", payload="qk"))
    assert [d["payload"] for d in manifest["docs"]] == ["qk", "matrix"]
    return f"{base}/mixed.html", manifest, blobs


def test_qk_page_computes_what_python_decodes(page: Any, page_log: Any, mixed: tuple) -> None:
    url, manifest, blobs = mixed
    open_page(page, url)
    assert page_log.requests == [url]
    n, shown = image(page)
    assert n == 300 and shown.shape == (300, 300)
    np.testing.assert_allclose(shown, reference(manifest, blobs, 0, 0, "mean"), atol=1e-6)
    received = reference(manifest, blobs, 0, 0, "mean").mean(0)
    np.testing.assert_allclose(page.evaluate(VALUES), received, atol=1e-6)  # nothing selected: received
    page.get_by_label("Layer").select_option(label="layer 1")
    page.get_by_label("Heads").select_option(label="max over heads")
    settle(page)
    expected = reference(manifest, blobs, 0, 1, "max")
    np.testing.assert_allclose(image(page)[1], expected, atol=1e-6)
    page.locator("#attviz-text .attviz-token").nth(120).click()  # the selected row, computed alone
    np.testing.assert_allclose(page.evaluate(VALUES), expected[120], atol=1e-6)
    page.get_by_role("button", name="attention to the selected token").click()
    settle(page)
    np.testing.assert_allclose(page.evaluate(VALUES), expected[:, 120], atol=1e-6)
    page.get_by_label("Heads").select_option(label="head 3")
    settle(page)
    np.testing.assert_allclose(page.evaluate(VALUES), reference(manifest, blobs, 0, 1, "3")[:, 120], atol=1e-6)
    page.get_by_label("Document").select_option(label="matrices")  # the uint8 payload still works
    settle(page)
    assert image(page)[1].shape == (9, 9)
    page.get_by_label("Document").select_option(label="qk")
    settle(page)
    assert image(page)[1].shape == (300, 300)
    assert "of the stored queries" in page.locator("header").inner_text()


def test_hover_shows_the_computed_weight(page: Any, mixed: tuple) -> None:
    url, manifest, blobs = mixed
    open_page(page, url)
    matrix = reference(manifest, blobs, 0, 0, "mean")
    x, y = page.evaluate(CELL, [30, 50])
    page.mouse.move(x - 3, y - 3)
    page.mouse.move(x, y, steps=3)
    tips = page.locator(".bk-Tooltip")
    deadline = time.monotonic() + 10
    while not (texts := tips.evaluate_all(TOOLTIP)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "key: t49 #50" in texts[0] and f"attention: {matrix[30, 50]:.5f}" in texts[0]


def test_an_8192_token_document_exports_whole_and_renders(page: Any, site: tuple[Path, str]) -> None:
    folder, base = site
    doc = qk_doc(8192, layers=1, heads=2, key_heads=1, dim=16)
    start = time.perf_counter()
    html = export_html(doc, folder / "long-qk.html")
    generated = time.perf_counter() - start
    manifest, blobs = parse_page(html)
    entry = manifest["docs"][0]
    assert entry["payload"] == "qk" and len(entry["tokens"]) == 8192 and not entry["notes"]
    seconds = open_page(page, f"{base}/long-qk.html", timeout=120_000)
    n, shown = image(page)
    assert n == 8192 and shown.shape == (2048, 2048)  # max-pooled 4 × 4, never 8,192²
    decoder = decode_qk_layer(blobs[entry["blobs"][0]], entry, 0)
    rows = np.arange(4096, 4104)  # two pixel rows
    mean = (decoder.weights(0, rows) + decoder.weights(1, rows)) / 2
    np.testing.assert_allclose(shown[1024:1026], pooled(mean, 4), atol=1e-6)
    assert page.locator("#attviz-text .attviz-token").count() == 8192
    assert "no token selected" in page.locator("#attviz-status").inner_text()
    change = page.evaluate(SET_HEAD, "max")  # the max over heads: one pass over every row again
    maximum = np.maximum(decoder.weights(0, rows), decoder.weights(1, rows))
    np.testing.assert_allclose(image(page)[1][1024:1026], pooled(maximum, 4), atol=1e-6)
    row = page.evaluate("""() => { const t = performance.now(); attviz.select(5000); return performance.now() - t; }""")
    expected = np.maximum(decoder.weights(0, [5000]), decoder.weights(1, [5000]))[0]
    np.testing.assert_allclose(page.evaluate(VALUES), expected, atol=1e-6)
    print(
        f"\n8,192 tokens × 1 layer × 2 heads (dim 16, causal): {len(html) / 1e6:.1f} MB written in {generated:.1f} s;"
        f" page ready {seconds:.1f} s; head change to the max over heads {change:.2f} s; a selected row {row:.1f} ms"
    )
