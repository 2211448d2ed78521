"""netCDF export and reader: round trips of matrix, encoder-decoder and vector corpora."""

from __future__ import annotations

from pathlib import Path

import h5netcdf
import numpy as np
import pytest
import xarray as xr

from attviz import Corpus, Document, InputError, attention_array, token_frame, vector_array
from attviz.readers import read
from attviz.readers.legacy import AttVizJSONReader
from attviz.readers.netcdf import NetCDFReader, open_netcdf, write_netcdf

DATA = Path(__file__).parent / "data"
UNICODE = ["héllo", "wörld", "<b>&amp;"]


def _tokens(texts: list[str], special_ends: bool = True) -> object:
    n = len(texts)
    special = [special_ends and i in (0, n - 1) for i in range(n)]
    return token_frame(
        texts,
        word=[-1 if s else i for i, s in enumerate(special)],
        start=[2 * i for i in range(n)],
        end=[2 * i + 1 for i in range(n)],
        special=special,
    )


def _attention(rng: np.random.Generator, layers: int, heads: int, queries: int, keys: int) -> np.ndarray:
    values = rng.random((layers, heads, queries, keys)).astype(np.float32)
    return values / values.sum(-1, keepdims=True)


def self_corpus() -> Corpus:
    rng = np.random.default_rng(0)
    docs = []
    for i, n in enumerate((3, 5)):
        texts = ["[CLS]", *UNICODE[: n - 2], "[SEP]"]
        tokens = _tokens(texts)
        docs.append(
            Document(
                id=f"doc-{i}",
                text="héllo wörld <b>&amp;",
                arrays={"self": attention_array(_attention(rng, 2, 3, n, n), tokens, heads=[0, 2, 5])},
                label="pos" if i else "neg",
                prediction="pos",
                probabilities={"pos": 0.75, "neg": 0.25},
                meta={"split": "test", "note": "ünïcode"},
            )
        )
    return Corpus(docs, attrs={"model": "random", "settings": {"layers": 2, "heads": 3}, "flag": True, "none": None})


def encoder_decoder_corpus() -> Corpus:
    rng = np.random.default_rng(1)
    source = _tokens(["héllo", "wörld", "</s>"], special_ends=False)
    target = _tokens(["<pad>", "bonjour", "<b>&amp;", "le", "monde"], special_ends=False)
    arrays = {
        "encoder": attention_array(_attention(rng, 2, 2, 3, 3), source, name="encoder"),
        "decoder": attention_array(_attention(rng, 2, 2, 5, 5), target, name="decoder"),
        "cross": attention_array(_attention(rng, 2, 2, 5, 3), target, source, name="cross"),
    }
    doc = Document(id="translation", text="héllo wörld", arrays=arrays, target="bonjour le monde")
    return Corpus([doc], attrs={"model": "t5-like"})


def vectors_corpus() -> Corpus:
    return AttVizJSONReader().read(DATA / "string_numbers.json")


def _assert_same(before: Corpus, after: Corpus) -> None:
    assert after.ids == before.ids
    assert after.label_names == before.label_names
    for a, b in zip(before, after, strict=True):
        assert b.text == a.text and b.kinds == a.kinds
        assert (b.label, b.prediction, b.target) == (a.label, a.prediction, a.target)
        if a.probabilities:
            assert b.probabilities == pytest.approx(a.probabilities)
        for kind in a.kinds:
            x, y = a.get(kind), b.get(kind)
            assert y.dims == x.dims and y.dtype == x.dtype and y.name == x.name
            np.testing.assert_array_equal(np.asarray(y.values), np.asarray(x.values))
            for name, coord in x.coords.items():
                assert y[name].dtype == coord.dtype, name
                assert y[name].values.tolist() == coord.values.tolist(), name
            assert y.attrs["long_name"] == x.attrs["long_name"]


def test_self_round_trip(tmp_path):
    corpus = self_corpus()
    corpus.dataset["score"] = ("doc", np.array([0.5, 1.5]), {"long_name": "a custom column"})
    path = tmp_path / "corpus.nc"
    corpus.to_netcdf(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.nc"]  # no temporary file left
    opened = NetCDFReader().read(path)
    _assert_same(corpus, opened)
    assert opened.attrs == {"model": "random", "settings": {"layers": 2, "heads": 3}, "flag": True, "none": None}
    assert opened.path == str(path)
    doc = opened["doc-1"]
    assert doc.tokens == ["[CLS]", "héllo", "wörld", "<b>&amp;", "[SEP]"]
    assert doc.token_table()["special"].dtype == bool
    assert doc.attention["head"].values.tolist() == [0, 2, 5]
    assert doc.meta == {"split": "test", "note": "ünïcode"}
    assert opened.table["label"].tolist() == ["neg", "pos"]
    assert opened.table["split"].tolist() == ["test", "test"]
    assert opened.probabilities.loc["doc-0", "neg"] == pytest.approx(0.25)
    assert opened.table["score"].tolist() == [0.5, 1.5]
    assert opened.dataset["score"].attrs["long_name"] == "a custom column"


def test_documents_load_lazily(tmp_path, monkeypatch):
    path = tmp_path / "corpus.nc"
    write_netcdf(self_corpus(), path)
    opened = open_netcdf(path)
    calls = []
    original = xr.open_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs.get("group"))
        return original(*args, **kwargs)

    monkeypatch.setattr(xr, "open_dataset", counting)
    doc = opened[1]
    assert calls == []  # the table is in memory; no group is opened for the Document itself
    assert doc.attention.shape == (2, 3, 5, 5)
    assert calls == ["docs/d000001/self"]


def test_float16_matrices_stay_float16(tmp_path):
    stored = self_corpus().save(tmp_path / "corpus.zarr")
    assert stored[0].attention.dtype == np.float16
    stored.to_netcdf(tmp_path / "corpus.nc")
    opened = open_netcdf(tmp_path / "corpus.nc")
    _assert_same(stored, opened)
    with h5netcdf.File(tmp_path / "corpus.nc", "r") as f:
        assert f["docs/d000000/self"].variables["self"].dtype == np.float16
        special = f["docs/d000000/self"].variables["query_special"]
        assert special.dtype == np.int8 and special.attrs["attviz_dtype"] == "bool"
        assert isinstance(f.attrs["attviz"], str)


def test_encoder_decoder_round_trip(tmp_path):
    corpus = encoder_decoder_corpus()
    corpus.to_netcdf(tmp_path / "t5.nc")
    opened = open_netcdf(tmp_path / "t5.nc")
    _assert_same(corpus, opened)
    doc = opened[0]
    assert doc.get("cross").shape == (2, 2, 5, 3)
    assert doc.token_table("target")["text"].tolist() == ["<pad>", "bonjour", "<b>&amp;", "le", "monde"]
    assert doc.token_table("source")["text"].tolist() == ["héllo", "wörld", "</s>"]
    root = xr.open_dataset(tmp_path / "t5.nc", engine="h5netcdf")
    with root:
        assert [str(s) for s in root["stream"].values] == ["source", "target"]
        assert root["token_count"].values.tolist() == [[3, 5]]
        assert root["token_text"].values.tolist()[3:5] == ["<pad>", "bonjour"]


def test_vectors_round_trip_keeps_legacy_meta(tmp_path):
    corpus = vectors_corpus()
    corpus.to_netcdf(tmp_path / "legacy.nc")
    opened = read(tmp_path / "legacy.nc")  # found by extension through the registry
    _assert_same(corpus, opened)
    assert opened[0].meta["vector_colors"] == {"0": "#1f77b4"}
    assert opened[0].meta["hilight"] == {"block": 0, "vectors": 1}
    assert opened[1].tokens == ["hé", "##llo", "wörld", "wins"]
    assert opened.attrs["source_format"] == "attviz-json"


def test_overwrites_atomically(tmp_path):
    path = tmp_path / "corpus.nc"
    write_netcdf(self_corpus(), path)
    write_netcdf(vectors_corpus(), path)
    assert open_netcdf(path).ids == ["markets-1", "sport-1"]

    def broken() -> object:
        raise RuntimeError("boom")

    bad = vectors_corpus()
    bad[1].arrays["vectors"] = broken  # the second document fails half-way through the write
    bad[1]._loaded.clear()
    with pytest.raises(RuntimeError, match="boom"):
        write_netcdf(bad, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.nc"]
    assert open_netcdf(path).ids == ["markets-1", "sport-1"]


def test_empty_corpus(tmp_path):
    write_netcdf(Corpus([]), tmp_path / "empty.nc")
    opened = open_netcdf(tmp_path / "empty.nc")
    assert len(opened) == 0 and opened.label_names == []


def test_vectors_with_nan(tmp_path):
    tokens = token_frame(UNICODE)
    values = np.array([[0.5, np.nan, 0.25]], dtype=np.float32)
    doc = Document(id="n", text=" ".join(UNICODE), arrays={"vectors": vector_array(values, tokens, ["v"])})
    write_netcdf(Corpus([doc]), tmp_path / "nan.nc")
    np.testing.assert_array_equal(open_netcdf(tmp_path / "nan.nc")[0].vectors.values, values)


def test_not_an_attviz_file(tmp_path):
    other = tmp_path / "other.nc"
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(other, engine="h5netcdf")
    with pytest.raises(InputError) as info:
        NetCDFReader().read(other)
    assert info.value.file == str(other)
    assert "not an attviz netCDF file" in str(info.value)
    assert "Corpus.to_netcdf" in info.value.expected

    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"CDF\x01 this is no HDF5 file")
    with pytest.raises(InputError, match=r"garbage\.nc: not a netCDF4/HDF5 file"):
        open_netcdf(garbage)
    with pytest.raises(InputError, match="no such file"):
        open_netcdf(tmp_path / "missing.nc")


def test_guess_can_open(tmp_path):
    reader = NetCDFReader()
    assert reader.guess_can_open(tmp_path / "a.nc") and reader.guess_can_open("b.NC4")
    assert not reader.guess_can_open(tmp_path / "a.json")
    assert not reader.guess_can_open(self_corpus())
