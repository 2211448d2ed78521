"""A store that keeps token vectors only (a storage policy), served without a model: the browser
colours tokens from the stored vectors and says plainly that the matrices are not there."""

from __future__ import annotations

import numpy as np
import pytest

from tests.browser.conftest import _wait_for_panel, _wait_until, start_server, stop_server
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


def test_a_vectors_only_store_colours_tokens_from_the_stored_vectors(page, page_log, vector_store, screenshot):
    from attviz.app import create_app
    from attviz.corpus import Corpus

    apps = []

    def factory():
        template = create_app([str(vector_store)], live=False)
        apps.append(template)
        return template

    url, thread = start_server(factory)
    try:
        page.goto(url)
        _wait_for_panel(page)
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
        notice = page.locator(".alert-info", has_text="keeps token vectors only")
        notice.first.wait_for()
        # the Model tab shows the stored head summary; the Matrix tab has nothing to draw and says so
        tab(page, "Model").click()
        page.wait_for_timeout(300)
        tab(page, "Matrix").click()
        page.wait_for_timeout(300)
        assert not explorer.message.startswith("view "), explorer.message
        screenshot(page, "vectors-only-store")
        assert not page_log.blocked
    finally:
        stop_server(thread)
