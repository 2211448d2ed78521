"""A store that keeps token vectors only (a storage policy), served without a model: the browser
colours tokens from the stored vectors and says plainly that the matrices are not there."""

from __future__ import annotations

import numpy as np
import pytest

from tests.browser.conftest import _wait_until
from tests.browser.test_explorer import alpha, colors, tab


@pytest.fixture(scope="module")
def vector_store(tmp_path_factory, tiny_bert):
    from attviz.extract import extract
    from attviz.policy import StoragePolicy

    model, tokenizer = tiny_bert
    policy = StoragePolicy(matrices=False, vectors=("attention_received", "entropy"), summary=True)
    path = tmp_path_factory.mktemp("stores") / "vectors.zarr"
    texts = ["The cat sat on the warm mat near the door.", "Markets rally as rates fall."]
    extract(texts, model=model, tokenizer=tokenizer, progress=False, policy=policy, store=path)
    return path


def test_a_vectors_only_store_colours_tokens_from_the_stored_vectors(
    page, page_log, open_app, vector_store, screenshot
):
    from attviz.app import create_app
    from attviz.corpus import Corpus

    apps = []

    def factory():
        template = create_app([str(vector_store)], live=False)
        apps.append(template)
        return template

    open_app(factory)  # served until after the page closes (the fixtures' order)
    explorer = _wait_until(lambda: apps and apps[-1].explorer)
    page.locator(".attviz-token").first.wait_for()
    stored = Corpus.open(vector_store)[0].get("self_vectors")
    # the app's defaults (not changed from this thread: the session's document belongs to the server)
    assert (explorer.vector, explorer.head_reduction, explorer.layer) == ("attention_received", "mean", 0)
    expected = stored.sel(vector="attention_received").values[0].mean(axis=0)  # from the store, not the app

    def strongest(shown: list[str]) -> int:
        return max(range(len(shown)), key=lambda i: alpha(shown[i]))

    shown = _wait_until(lambda: (c := colors(page)) and strongest(c) == int(expected.argmax()) and c)
    assert len(shown) == len(expected)
    # the strongest colour is the stored vector's largest value, and the weakest its smallest
    assert min(range(len(shown)), key=lambda i: alpha(shown[i])) == int(np.argmin(expected))
    page.locator(".alert-info", has_text="keeps token vectors only").first.wait_for()
    # the Model tab shows the stored head summary; the Matrix tab has nothing to draw and says so
    tab(page, "Model").click()
    page.locator(".bk-tab.bk-active", has_text="Model").wait_for()
    tab(page, "Matrix").click()
    page.get_by_text("A store of token vectors only keeps none").wait_for()
    assert not explorer.message.startswith("view "), explorer.message
    screenshot(page, "vectors-only-store")
    assert not page_log.blocked
