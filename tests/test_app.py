"""The served app: corpora and the model are shared per process, each session has its own state."""

from __future__ import annotations

import json
from pathlib import Path

import panel as pn
import pytest

from attviz import app
from attviz.corpus import Corpus
from attviz.errors import AttvizError
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


def test_the_live_model_follows_the_corpus_settings(tmp_path):
    settings = {"label_descriptions": {"pets": "animals at home"}, "max_length": 64}
    attrs = {"name": "tiny", "model": "tiny-bert", "settings": json.dumps(settings)}
    Corpus(list(corpus_of()), attrs=attrs).save(tmp_path / "tiny.zarr")
    live = app.live_model(app.load_corpora([str(tmp_path / "tiny.zarr")]))
    assert (live.name, live.label_descriptions, live.max_length) == ("tiny-bert", {"pets": "animals at home"}, 64)


LEGACY = [
    Path(__file__).parents[1] / ".." / "shared" / "reference" / "original-examples" / "public-example1.json",
    Path(__file__).parent / "readers" / "data" / "string_numbers.json",
]


@pytest.mark.parametrize("legacy", LEGACY, ids=["public-example1", "string_numbers"])
def test_a_corpus_that_records_no_model_loads_none(legacy, monkeypatch, capsys):
    if not legacy.exists():
        pytest.skip(f"{legacy} is not in this checkout")
    loads: list = []
    monkeypatch.setattr("attviz.live._load", lambda model: loads.append(model))
    monkeypatch.setattr(app, "_try_load", lambda live: loads.append(live))
    monkeypatch.setattr(app, "warm_rasterizer", lambda: None)
    app.warm([str(legacy)])  # `attviz serve public-example1.json` warms up like this
    assert "live input is off (pass --model" in capsys.readouterr().err
    explorer = app.create_app([str(legacy)]).explorer
    assert explorer.live_model is None and loads == []  # no MiniLM behind the user's back
    with pytest.raises(AttvizError, match="no model is loaded"):
        explorer.extract_live("A text.")
    pn.state.clear_caches()
    asked = app.create_app([str(legacy)], "minilm").explorer  # --model: the user asked for one
    assert asked.live_model.name == "sentence-transformers/all-MiniLM-L6-v2" and loads == []  # loaded on use


def test_the_live_model_comes_from_the_first_corpus_that_records_one(tmp_path):
    plain = Corpus(list(corpus_of()), attrs={"name": "plain"})
    made = Corpus(list(corpus_of()), attrs={"name": "made", "model": "tiny-bert"})
    other = Corpus(list(corpus_of()), attrs={"name": "other", "model": "tiny-gpt2", "settings": '{"max_length": 9}'})
    assert app.live_model({"plain": plain, "made": made, "other": other}).name == "tiny-bert"
    pn.state.clear_caches()
    assert app.live_model({"plain": plain}) is None and app.live_model({}) is None
    # --model: the settings of the corpus that model made
    assert app.live_model({"made": made, "other": other}, "tiny-gpt2").max_length == 9
    pn.state.clear_caches()
    demo = Corpus(list(corpus_of()), attrs={"model": "sentence-transformers/all-MiniLM-L6-v2"})
    assert app.live_model({"demo": demo}).name == "sentence-transformers/all-MiniLM-L6-v2"
