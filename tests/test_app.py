"""The served app: corpora and the model are shared per process, each session has its own state."""

from __future__ import annotations

import panel as pn
import pytest

from attviz import app
from attviz.corpus import Corpus
from tests.test_explorer import corpus_of


@pytest.fixture
def store(tmp_path):
    corpus_of().save(tmp_path / "tiny.zarr")
    return str(tmp_path / "tiny.zarr")


@pytest.fixture(autouse=True)
def clean_cache():
    yield
    pn.state.clear_caches()


def test_sessions_share_the_corpora_and_model_but_not_state(store):
    one, two = app.create_app([store]), app.create_app([store])
    first, second = one.explorer, two.explorer
    assert first is not second
    assert first.corpora["tiny.zarr"] is second.corpora["tiny.zarr"]  # read once per process
    assert isinstance(first.corpora["tiny.zarr"], Corpus)
    assert first.live_model is second.live_model  # one model per process
    first.param.update(doc_id="d1", layer=1)
    assert (second.doc_id, second.layer) == ("d0", 0)
    first.add_corpus("mine", corpus_of(1))
    assert list(second.corpora) == ["tiny.zarr"]


def test_the_template_holds_controls_and_views(store):
    template = app.create_app([store], live=False)
    assert template.explorer.live_model is None
    assert len(template.sidebar) == 1 and len(template.main) == 1
    titles = template.main[0].objects[-1]._names
    assert titles[:6] == ["Text", "Matrix", "Heads", "Model", "Documents", "Compare"]


def test_the_live_model_follows_the_corpus_settings(store):
    corpora = app.load_corpora([store])
    live = app.live_model(corpora)
    assert live.label_descriptions is None and live.name  # the tiny corpus has no zero-shot labels
