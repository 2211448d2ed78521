"""The paths a user takes off the demo, in Chromium, with the server log checked (issue #11).

One server serves ``attviz serve gpt2.zarr t5.zarr bert.zarr`` (tiny random models, real
extraction); each test opens its own session. Every test fails on a console error (the ``page``
fixture) and on any traceback or error the server logs while it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import corpora
from tests.browser.conftest import _wait_until, idle
from tests.browser.test_explorer import ExplorerServer, colors, open_explorer, serve_explorer


@pytest.fixture(scope="module")
def stores(tiny_gpt2, tiny_t5, tiny_bert_classifier, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("stores")
    paths = []
    for name, corpus in (
        ("gpt2.zarr", corpora.decoder_corpus(*tiny_gpt2)),
        ("t5.zarr", corpora.encoder_decoder_corpus(*tiny_t5)),
        ("bert.zarr", corpora.encoder_corpus(*tiny_bert_classifier)),
    ):
        corpus.save(folder / name)
        paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def server(stores) -> Iterator[ExplorerServer]:
    from attviz.app import create_app

    yield from serve_explorer(lambda: create_app(stores, live=False))


def alerts(page: Any) -> list[str]:
    return [t for t in page.locator(".alert-danger").all_inner_texts() if t.strip()]


def test_uploading_the_original_attviz_json(page, server, server_log, screenshot):
    """#11 (1): the real AttViz file through 'Open a file' showed a recursion error and kept the old views."""
    explorer = open_explorer(page, server)
    page.locator(".card-header", has_text="Open a file").click()
    page.locator("input[type=file]").set_input_files(str(corpora.LEGACY_JSON))
    _wait_until(lambda: explorer.source == "public-example1", timeout=20)
    legacy = explorer.corpora["public-example1"]
    first = legacy[legacy.ids[0]]
    _wait_until(lambda: explorer.kind == "vectors" and explorer.document is first)
    idle(page)
    # the text view shows the legacy document's tokens, coloured
    expected = [t.strip() for t in first.tokens[:5]]

    def shown() -> list[str]:
        return [t.strip() for t in page.locator(".attviz-token").all_inner_texts()[:5]]

    try:
        _wait_until(lambda: shown() == expected)
    except AssertionError:
        raise AssertionError(f"the text view shows {shown()}, not the uploaded document's {expected}") from None
    assert not page.locator(".attviz-error").count() and not alerts(page)
    page.get_by_text("Opened public-example1").wait_for()
    # no layer slider for data without layers; the vector slider stays
    assert not page.locator(".bk-Slider", has_text="Layer").is_visible()
    screenshot(page, "upload-legacy-json")


def test_switching_from_gpt2_to_t5(page, server, server_log, screenshot):
    """#11 (2): GPT-2 -> T5 kept the GPT-2 matrix, offered no encoder/decoder/cross, logged tracebacks."""
    explorer = open_explorer(page, server)
    corpus = page.get_by_label("Corpus", exact=True).first
    corpus.select_option("gpt2.zarr")
    _wait_until(lambda: explorer.source == "gpt2.zarr")
    page.locator(".bk-tab", has_text="Matrix").click()
    idle(page)
    corpus.select_option("t5.zarr")
    _wait_until(lambda: explorer.source == "t5.zarr" and explorer.kind == "encoder")
    idle(page)
    for kind in ("encoder", "decoder", "cross"):
        page.locator(".bk-btn-group button", has_text=kind).click()
        _wait_until(lambda kind=kind: explorer.kind == kind)
        idle(page)
        t5 = explorer.corpora["t5.zarr"][explorer.doc_id].get(kind)
        assert explorer.matrix.sizes == {"query": t5.sizes["query"], "key": t5.sizes["key"]}
    assert not alerts(page)
    screenshot(page, "gpt2-to-t5")


def test_every_head_combination(page, server, server_log):
    """#11 (3): 'AttViz entropy (head disagreement)' raised a DimsError; each option recolours or says why."""
    explorer = open_explorer(page, server)
    page.get_by_label("Corpus", exact=True).first.select_option("bert.zarr")
    _wait_until(lambda: explorer.source == "bert.zarr")
    idle(page)
    reduction = page.get_by_label("Combine heads")
    options = reduction.locator("option").evaluate_all("os => os.map(o => o.textContent)")
    assert any("attviz_entropy" in o for o in options) and any("selected head" in o for o in options)
    seen = set()
    for label in options:
        reduction.select_option(label=label)
        value = label[label.rindex("(") + 1 : -1] if label.endswith(")") else "head"
        _wait_until(lambda value=value: explorer.head_reduction == value)
        idle(page)
        assert not alerts(page), (label, alerts(page))
        _wait_until(lambda: explorer.token_vector is not None)
        shown = colors(page)
        assert len(shown) == explorer.token_vector.sizes["token"]
        seen.add("|".join(shown))
    assert len(seen) >= 3  # the combinations colour the tokens differently


def test_layout_compact_prediction_and_visible_choices(page, server, server_log, screenshot):
    """#11 (9): the prediction card took ~40 % of the screen; chosen toggle buttons looked unchosen."""
    explorer = open_explorer(page, server)
    page.get_by_label("Corpus", exact=True).first.select_option("bert.zarr")
    _wait_until(lambda: explorer.source == "bert.zarr")
    idle(page)
    header = page.locator(".card-header", has_text="Prediction:")
    header.wait_for()
    assert header.bounding_box()["height"] < 60  # one line until opened
    from attviz.layout import _prediction_line

    page.get_by_text(_prediction_line(explorer.document), exact=True).wait_for()
    group = page.locator(".bk-btn-group", has_text="highlight")
    backgrounds = group.locator("button").evaluate_all(
        "bs => bs.map(b => [b.classList.contains('bk-active'), getComputedStyle(b).backgroundColor])"
    )
    chosen = {color for active, color in backgrounds if active}
    others = {color for active, color in backgrounds if not active}
    assert len(chosen) == 1 and not chosen & others, backgrounds
    screenshot(page, "layout-compact")


@pytest.fixture(scope="module")
def qk_server(tiny_gpt2, tmp_path_factory) -> Iterator[ExplorerServer]:
    """``attviz serve qk.zarr``: a GPT-2 store kept as queries and keys; each session opens its longest
    document under a small ``layer_memory``, so it is explored a head and a tile at a time."""
    from attviz.app import create_app

    path = tmp_path_factory.mktemp("qk") / "qk.zarr"
    corpora.qk_corpus(*tiny_gpt2).save(path)

    def make() -> Any:
        template = create_app([str(path)], live=False)
        explorer = template.explorer
        explorer.layer_memory = corpora.LONG
        explorer.doc_id = explorer.corpora[explorer.source].ids[-1]
        return template

    yield from serve_explorer(make)


def test_a_long_document_kept_as_queries_and_keys(page, qk_server, server_log, screenshot):
    """The matrix is drawn from tiles, a head change recolours the tokens from block-wise sums, the
    notice says what is shown; no error in the page or the server log."""
    from tests.browser.test_explorer import alpha, tab, wait_for_colors_other_than

    explorer = open_explorer(page, qk_server)
    doc = explorer.document
    assert doc.qk() is not None and explorer.matrix.chunks is not None
    page.get_by_text("views show the selected head", exact=False).first.wait_for()
    before = colors(page)
    handle = page.locator(".bk-Slider").filter(has_text="Head:").locator(".noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    _wait_until(lambda: explorer.head == 1)
    after = wait_for_colors_other_than(page, before)
    full = doc.attention.isel(layer=explorer.layer, head=1).values  # the reference: the whole matrix
    assert max(range(len(after)), key=lambda i: alpha(after[i])) == int(full.mean(0).argmax())
    tab(page, "Matrix").click()
    idle(page)
    _wait_until(lambda: explorer.matrix is not None and explorer.matrix.chunks is not None)
    assert not alerts(page)
    screenshot(page, "long-qk-matrix")


def test_a_file_whose_attention_fails_its_check(page, server, server_log, tmp_path):
    """#14 (5): attention that does not check out (a row summing to 0.7, a sink head) is a notice on the
    page, for the document and for the head shown, never an error."""
    from tests.test_checks import broken_npz

    explorer = open_explorer(page, server)
    page.locator(".card-header", has_text="Open a file").click()
    page.locator("input[type=file]").set_input_files(str(broken_npz(tmp_path / "broken.npz")))
    _wait_until(lambda: explorer.source == "broken", timeout=20)
    idle(page)
    notice = page.locator(".alert-info", has_text="Attention check: rows that do not sum to 1 in self L1 H0")
    notice.wait_for()
    assert "sink-dominated" not in notice.inner_text()
    explorer.param.update(layer=0, head=1)
    page.locator(".alert-info", has_text="Layer 0 head 1 is sink-dominated in this document: 96%").wait_for()
    assert not alerts(page)
