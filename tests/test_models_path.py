"""A store extracted with a local model directory loads that model again for live input, from any
working directory; a moved directory is named with how to pass --model (issue #11, item 8a)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import panel as pn
import pytest

from attviz import app
from attviz.cli import main
from attviz.corpus import Corpus
from attviz.errors import AttvizError
from attviz.live import LiveModel
from attviz.models import BUNDLED_DISPLAY_NAME, load_model, model_display_name, same_model

TEXTS = ["The cat sat on the mat.", "Markets rally as rates fall."]


@pytest.fixture(autouse=True)
def clean_cache():
    yield
    pn.state.clear_caches()


@pytest.fixture
def model_dir(tmp_path, tiny_bert):
    model, tokenizer = tiny_bert
    path = tmp_path / "models" / "my-model-dir"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Serve from another working directory, where ``./my-model-dir`` means nothing."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def extract_store(tmp_path, monkeypatch, model_dir, *extra) -> str:
    """``attviz extract texts.txt -o s.zarr --model ./my-model-dir`` run next to the model directory."""
    monkeypatch.chdir(model_dir.parent)
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    store = tmp_path / "s.zarr"
    argv = ["extract", str(source), "-o", str(store), "--model", "./my-model-dir", "--quiet", "--device", "cpu"]
    assert main([*argv, *extra]) == 0
    return str(store)


def test_the_store_records_the_name_and_the_absolute_directory(tmp_path, monkeypatch, model_dir, capsys):
    store = extract_store(tmp_path, monkeypatch, model_dir)
    attrs = Corpus.open(store).attrs
    assert attrs["model"] == "my-model-dir"  # the display name stays the folder's name
    assert attrs["model_path"] == str(model_dir.resolve())
    capsys.readouterr()
    assert main(["info", store, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["model"], info["model_path"]) == ("my-model-dir", str(model_dir.resolve()))
    assert main(["info", store]) == 0
    assert f"model       my-model-dir ({model_dir.resolve()})" in capsys.readouterr().out


def test_serving_the_store_from_another_directory_runs_its_model(tmp_path, monkeypatch, model_dir, elsewhere):
    store = extract_store(tmp_path, monkeypatch, model_dir)
    monkeypatch.chdir(elsewhere)
    explorer = app.create_app([store]).explorer  # as `attviz serve s.zarr`, without --model
    assert explorer.live_model.name == "my-model-dir"
    live = explorer.extract_live(TEXTS[0])  # the hub would fail: this loads the recorded directory
    stored = Corpus.open(store)[0]
    assert live[0].tokens == stored.tokens
    np.testing.assert_allclose(live[0].get("self").values, stored.get("self").values, atol=2e-3)


def test_a_store_without_matrices_recomputes_them_with_the_recorded_directory(
    tmp_path, monkeypatch, model_dir, elsewhere
):
    store = extract_store(tmp_path, monkeypatch, model_dir, "--no-matrices", "--vectors", "entropy")
    monkeypatch.chdir(elsewhere)
    explorer = app.create_app([store]).explorer
    assert explorer.matrix is not None  # recomputed: the live model is the corpus's model
    assert explorer.document.meta["recomputed"] == "my-model-dir"
    assert explorer.matrix.sizes["query"] == len(explorer.document.tokens)


def test_a_moved_model_directory_is_named_with_how_to_pass_it(tmp_path, monkeypatch, model_dir, elsewhere, capsys):
    store = extract_store(tmp_path, monkeypatch, model_dir)
    moved = tmp_path / "moved" / "my-model-dir"
    shutil.move(model_dir, moved)
    monkeypatch.chdir(elsewhere)
    explorer = app.create_app([store]).explorer
    assert explorer.live_model.name == "my-model-dir"
    with pytest.raises(AttvizError) as error:
        explorer.extract_live("A dog ran.")  # what the live-input card shows after "Failed: "
    message = str(error.value)
    assert "'my-model-dir'" in message and str(model_dir.resolve()) in message and "--model" in message
    capsys.readouterr()
    app._try_load(explorer.live_model)  # what `attviz serve` prints when it warms up
    assert str(model_dir.resolve()) in capsys.readouterr().err
    # --model at its new place: live input works again, under the same name
    pn.state.clear_caches()
    again = app.create_app([store], str(moved)).explorer
    assert again.live_model.name == "my-model-dir"
    assert again.extract_live("A dog ran.")[0].text == "A dog ran."


def test_a_moved_directory_and_a_store_without_matrices(tmp_path, monkeypatch, model_dir, elsewhere):
    store = extract_store(tmp_path, monkeypatch, model_dir, "--no-matrices", "--vectors", "entropy")
    moved = tmp_path / "moved" / "my-model-dir"
    shutil.move(model_dir, moved)
    monkeypatch.chdir(elsewhere)
    again = app.create_app([store], str(moved)).explorer  # --model at its new place: matrices on demand
    assert again.matrix is not None and again.document.meta["recomputed"] == "my-model-dir"


def test_an_unloadable_model_does_not_break_a_store_without_matrices(tmp_path, monkeypatch, model_dir, elsewhere):
    store = extract_store(tmp_path, monkeypatch, model_dir, "--no-matrices", "--vectors", "entropy")
    shutil.move(model_dir, tmp_path / "moved")
    monkeypatch.chdir(elsewhere)
    explorer = app.create_app([store]).explorer
    assert explorer.matrix is None and explorer.token_vector is not None  # the stored entropy
    assert "my-model-dir" in explorer.message + explorer.notice


def test_an_unloadable_recorded_name_says_which_model_and_how_to_pass_another(elsewhere):
    corpus = Corpus([], attrs={"model": "no-such-local-model-anywhere"})  # an older store: the name only
    live = app.live_model({"old": corpus})
    with pytest.raises(AttvizError, match=r"(?s)'no-such-local-model-anywhere'.*--model"):
        live.loaded()


def test_a_python_api_model_loaded_from_a_directory_records_it(model_dir):
    from transformers import AutoModel, AutoTokenizer

    from attviz.extract import extract

    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    corpus = extract(TEXTS, model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), progress=False)
    assert corpus.attrs["model_path"] == str(model_dir.resolve())


def test_names_as_a_corpus_records_them(model_dir, monkeypatch, minilm):
    assert model_display_name(None) == model_display_name("minilm") == BUNDLED_DISPLAY_NAME
    assert LiveModel().name == LiveModel("MiniLM").name == BUNDLED_DISPLAY_NAME
    assert same_model("minilm", "sentence-transformers/all-MiniLM-L6-v2")
    assert model_display_name(str(model_dir) + "/") == "my-model-dir"
    monkeypatch.chdir(model_dir)
    assert model_display_name(".") == LiveModel(".").name == "my-model-dir"
    monkeypatch.chdir(model_dir.parent)
    assert same_model("./my-model-dir", "my-model-dir") and same_model(str(model_dir), "my-model-dir")
    assert not same_model("my-model-dir", "another") and not same_model(None, "my-model-dir")
    assert not same_model("", "")
    loaded = load_model("./my-model-dir", device="cpu")
    assert (loaded.name, loaded.path) == ("my-model-dir", str(model_dir.resolve()))
    assert (minilm.name, minilm.path) == (BUNDLED_DISPLAY_NAME, None)  # the bundled model is found by its name
