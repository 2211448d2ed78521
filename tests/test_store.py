"""The zarr store: round trips, laziness per layer, atomic writes, resume, uint8 storage, clear errors."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from attviz import Corpus, Document, StoreError, attention_array, token_frame, vector_array
from attviz.corpus import table_row
from attviz.store import (
    StoreWriter,
    describe_encoding,
    document_payload,
    partial_path,
    quantize_rows,
    quantize_rows_torch,
    write_corpus,
)
from attviz.zarr3 import read_dataset


def _corpus(n_docs: int = 4, seed: int = 0) -> Corpus:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        t = 3 + i
        values = rng.random((2, 3, t, t)).astype(np.float32)
        values /= values.sum(-1, keepdims=True)
        texts = ["[CLS]", *(f"wörd{j}<b>" for j in range(t - 2)), "[SEP]"]
        tokens = token_frame(
            texts,
            word=[-1, *range(t - 2), -1],
            start=[0, *range(0, 2 * (t - 2), 2), 0],
            end=[0, *range(1, 2 * (t - 2), 2), 0],
            special=[True, *[False] * (t - 2), True],
        )
        docs.append(
            Document(
                id=f"d{i}",
                text="x " * t,
                arrays={"self": attention_array(values, tokens)},
                label="a" if i % 2 else "b",
                prediction="a",
                probabilities={"a": 0.75, "b": 0.25},
            )
        )
    return Corpus(docs, attrs={"model": "random", "layers": 2, "heads": 3})


def test_round_trip_is_identical(tmp_path):
    corpus = _corpus()
    opened = corpus.save(tmp_path / "c.zarr")
    assert len(opened) == len(corpus) and opened.ids == corpus.ids
    assert opened.attrs["model"] == "random" and opened.attrs["complete"]
    for a, b in zip(corpus, opened, strict=True):
        assert b.attention.dtype == np.float16  # float16 on disk, and back
        np.testing.assert_array_equal(b.attention.values, a.attention.values.astype(np.float16))
        assert b.tokens == a.tokens and b.text == a.text and b.label == a.label
        for name in ("query_word", "query_start", "query_end", "query_special", "key_text"):
            np.testing.assert_array_equal(b.attention[name].values, a.attention[name].values)
        assert b.probabilities == {"a": 0.75, "b": 0.25}
    table = opened.table
    assert table["correct"].tolist() == [False, True, False, True]
    assert table["confidence"].tolist() == [0.75] * 4
    assert list(opened.probabilities.columns) == ["b", "a"] or list(opened.probabilities.columns) == ["a", "b"]
    # a store opened again and saved elsewhere is still identical
    again = opened.save(tmp_path / "again.zarr")
    np.testing.assert_array_equal(again[3].attention.values, opened[3].attention.values)


def test_vectors_round_trip(tmp_path):
    tokens = token_frame(["markets", "rally"], start=[0, 8], end=[7, 13])
    doc = Document(
        id="v",
        text="markets rally",
        arrays={"vectors": vector_array(np.array([[0.25, 0.5], [0.125, 1.0]]), tokens, ["0", "mean"])},
    )
    opened = Corpus([doc]).save(tmp_path / "v.zarr")
    vectors = opened[0].vectors
    assert vectors.dims == ("vector", "token") and vectors["vector"].values.tolist() == ["0", "mean"]
    np.testing.assert_array_equal(vectors.values, [[0.25, 0.5], [0.125, 1.0]])
    assert opened[0].tokens == ["markets", "rally"] and not opened[0].has_matrices
    with pytest.raises(KeyError, match="per-token vectors only"):
        opened[0].attention  # noqa: B018


def test_one_layer_loads_without_the_others(tmp_path):
    path = tmp_path / "c.zarr"
    corpus = _corpus(2).save(path)
    # a document's matrix is one file (a zarr v3 shard) with one inner chunk per layer, indexed at the end
    files = sorted(p.name for p in (path / "docs" / "d000001" / "self").iterdir())
    assert files == ["c.0.0.0.0", "zarr.json"]
    array = zarr.open_array(path / "docs" / "d000001" / "self", mode="r")
    assert array.chunks == (1, *array.shape[1:]) and array.shards == array.shape
    # spoil the bytes of layer 0 inside the shard: layer 1 still loads, layer 0 no longer does
    shard = path / "docs" / "d000001" / "self" / "c.0.0.0.0"
    data = bytearray(shard.read_bytes())
    n_layers = array.shape[0]
    index = np.frombuffer(bytes(data[-(16 * n_layers + 4) : -4]), dtype="<u8").reshape(n_layers, 2)
    offset, size = (int(v) for v in index[0])
    data[offset : offset + size] = b"\xff" * size
    shard.write_bytes(bytes(data))
    expected = corpus[1].attention.isel(layer=1).values.copy()
    reopened = Corpus.open(path)
    np.testing.assert_array_equal(reopened[1].attention.isel(layer=1).values, expected)
    assert reopened[1].attention.chunks[0] == (1, 1)  # one dask chunk per layer
    with pytest.raises(Exception):  # noqa: B017 - the codec's own error for corrupt bytes
        reopened[1].attention.isel(layer=0).load()


def test_lookup_by_id_and_errors(tmp_path):
    corpus = _corpus(3).save(tmp_path / "c.zarr")
    assert corpus["d2"].id == "d2" and corpus[-1].id == "d2"
    with pytest.raises(KeyError, match="no document with id 'nope'"):
        corpus["nope"]
    with pytest.raises(IndexError):
        corpus[3]
    with pytest.raises(StoreError, match="no such store"):
        Corpus.open(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match="not an attviz store"):
        Corpus.open(tmp_path / "empty.zarr")


def test_existing_store_is_kept_until_a_new_one_is_complete(tmp_path):
    path = tmp_path / "c.zarr"
    _corpus(2).save(path)
    with pytest.raises(StoreError, match="already exists"):
        _corpus(3).save(path)

    class Boom(Corpus):
        def __iter__(self):
            yield from list(super().__iter__())[:1]
            raise RuntimeError("disk full")

    broken = Boom(list(_corpus(3)))
    with pytest.raises(RuntimeError, match="disk full"):
        broken.save(path, overwrite=True)
    assert len(Corpus.open(path)) == 2  # the old store is untouched
    assert partial_path(path).exists()  # the half-written one never took its place
    with pytest.raises(StoreError, match="unfinished extraction"):
        Corpus.open(partial_path(path))
    assert len(_corpus(3).save(path, overwrite=True)) == 3


def test_truncated_progress_line_is_redone(tmp_path):
    path = tmp_path / "p.zarr"
    writer = StoreWriter(path, fingerprint="job")
    doc = _corpus(1)[0]
    arrays, attrs, tokens = document_payload(doc)
    writer.write(0, {"doc_id": "d0", "text": "x"}, tokens, arrays, attrs)
    writer.close()
    with open(partial_path(path) / "progress.jsonl", "a") as handle:
        handle.write('{"index": 1, "group": "d0000')  # a crash in the middle of a line
    resumed = StoreWriter(path, fingerprint="job")
    assert resumed.done == {0}
    resumed.close()
    shutil.rmtree(partial_path(path))


def _write(writer: StoreWriter, index: int, doc: Document) -> None:
    arrays, attrs, tokens = document_payload(doc)
    writer.write(index, table_row(doc), tokens, arrays, attrs)


def test_zarr_and_xarray_read_the_directly_written_store(tmp_path):
    corpus = _corpus(3)
    path = tmp_path / "c.zarr"
    corpus.save(path)
    root = zarr.open_group(path, mode="r")
    for i, doc in enumerate(corpus):
        array = root[f"docs/d{i:06d}/self"]
        assert array.dtype == np.float16 and array.chunks == (1, 3, 3 + i, 3 + i)
        np.testing.assert_array_equal(array[...], doc.attention.values.astype(np.float16))
        assert array.attrs["layer"] == [0, 1] and array.attrs["head"] == [0, 1, 2]
    ds = xr.open_zarr(path, group="docs/d000002", consolidated=False)
    assert ds["self"].dims == ("layer", "head", "query", "key")
    np.testing.assert_array_equal(ds["self"].values, corpus[2].attention.values.astype(np.float16))
    # attviz reads its table and tokens directly; xarray reads the very same datasets
    for group in ("table", "tokens"):
        direct, through_xarray = read_dataset(path / group), xr.open_zarr(path, group=group).load()
        for ds in (direct, through_xarray):
            for name in ds.variables:
                if ds[name].dtype.kind in "OUT":
                    ds[name] = ds[name].astype(object)
        xr.testing.assert_identical(direct, through_xarray)
    assert read_dataset(path / "table")["probability"].values.tolist() == [[0.75, 0.25]] * 3
    # the consolidated metadata is exactly what zarr-python itself would write
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(copy)
    assert json.loads((copy / "zarr.json").read_text()) == json.loads((path / "zarr.json").read_text())


def test_resume_after_a_crash_gives_the_same_store(tmp_path):
    corpus = _corpus(4)
    reference = corpus.save(tmp_path / "ref.zarr")
    path = tmp_path / "c.zarr"
    writer = StoreWriter(path, fingerprint="job")
    _write(writer, 0, corpus[0])
    _write(writer, 1, corpus[1])
    writer.flush()
    # killed in the middle of document 2: its files exist, its progress line does not
    half = partial_path(path) / "docs" / "d000002" / "self"
    half.mkdir(parents=True)
    (half / "c.0.0.0.0").write_bytes(b"garbage")
    writer._progress.close()
    with pytest.raises(StoreError, match="different settings"):
        StoreWriter(path, fingerprint="other job")
    with pytest.raises(StoreError, match="compression 'lz4', not 'uint8'"):
        StoreWriter(path, fingerprint="job", compression="uint8")
    resumed = StoreWriter(path, fingerprint="job")
    assert resumed.done == {0, 1}
    for i in (2, 3):
        _write(resumed, i, corpus[i])
    resumed.finalize(corpus.attrs)
    assert not partial_path(path).exists()
    opened = Corpus.open(path)
    assert opened.ids == reference.ids and opened.attrs["documents"] == 4
    for a, b in zip(opened, reference, strict=True):
        np.testing.assert_array_equal(a.attention.values, b.attention.values)
        assert a.tokens == b.tokens and a.token_table().equals(b.token_table())
    assert opened.table.equals(reference.table)


def _hand_doc() -> Document:
    rows = np.array(
        [
            [[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]],
            [[0.0, 0.0, 0.0], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]],
        ],
        dtype=np.float32,
    )[None]  # (layer 1, head 2, query 3, key 3)
    return Document(id="h", text="a b c", arrays={"self": attention_array(rows, token_frame(["a", "<b>", "&amp;"]))})


def test_uint8_rows_decode_to_the_values_worked_out_by_hand(tmp_path):
    doc = _hand_doc()
    path = write_corpus(Corpus([doc]), tmp_path / "q.zarr", compression="uint8")
    root = zarr.open_group(path, mode="r")  # plain zarr reads both arrays
    q, scale = root["docs/d000000/self"][...], root["docs/d000000/self_scale"][...]
    assert q.dtype == np.uint8 and scale.dtype == np.float32
    # scale = row max / 255; q = round(value / scale) (0.25 / (0.5/255) = 127.5 rounds up to 128)
    np.testing.assert_array_equal(
        q[0], [[[255, 0, 0], [255, 128, 128], [102, 153, 255]], [[0, 0, 0], [128, 255, 128], [255, 255, 255]]]
    )
    np.testing.assert_allclose(scale[0], [[1 / 255, 0.5 / 255, 0.5 / 255], [0, 0.5 / 255, 1 / 765]], rtol=1e-7)
    opened = Corpus.open(path)
    att = opened[0].attention
    assert att.dtype == np.float32 and att.dims == doc.attention.dims
    assert att["query_text"].values.tolist() == ["a", "<b>", "&amp;"]
    expected = [
        [[1, 0, 0], [0.5, 128 / 510, 128 / 510], [0.2, 0.3, 0.5]],
        [[0, 0, 0], [128 / 510, 0.5, 128 / 510], [1 / 3, 1 / 3, 1 / 3]],
    ]
    np.testing.assert_allclose(att.values[0], expected, rtol=1e-6, atol=1e-7)
    # the encoding and its error bound (max scale / 2 = 1/510) are recorded, and the error stays within it
    assert opened.attrs["matrix_encoding"] == "uint8-row-scale" and opened.attrs["format_version"] == 2
    assert opened.attrs["max_abs_error"] == pytest.approx(1 / 510, abs=1e-7)
    assert np.abs(att.values - doc.attention.values).max() <= opened.attrs["max_abs_error"] + 1e-7
    assert describe_encoding(opened.attrs) == "uint8 per row × float32 scale, zstd-1 (max abs error 0.001961)"
    assert att.chunks[0] == (1,)  # still lazy, one chunk per layer
    lossless = Corpus([doc]).save(tmp_path / "f.zarr")
    assert lossless.attrs["matrix_encoding"] == "float16" and lossless.attrs["max_abs_error"] == 0
    assert describe_encoding(lossless.attrs) == "float16, blosc-lz4-5-bitshuffle (lossless)"
    # re-saving a quantised corpus losslessly keeps the error it already carries
    again = opened.save(tmp_path / "again.zarr")
    assert again.attrs["matrix_encoding"] == "float16" and again.attrs["max_abs_error"] > 0


def test_quantize_rows_bound_nan_and_negative():
    rng = np.random.default_rng(1)
    values = rng.random((3, 4, 50, 50)).astype(np.float16)
    q, scale = quantize_rows(values)
    decoded = q.astype(np.float32) * scale[..., None]
    error = np.abs(decoded - values.astype(np.float32))
    assert (error <= scale[..., None] / 2 + 1e-7).all()
    assert error.max() <= 1 / 510
    rows = np.array([[0.5, np.nan, 0.5], [0.2, 0.8, 0.0]], dtype=np.float32)
    q, scale = quantize_rows(rows)
    assert np.isnan(scale[0]) and q[1].tolist() == [64, 255, 0]  # a row with NaN decodes as NaN
    with pytest.raises(StoreError, match="non-negative"):
        quantize_rows(np.array([[0.5, -0.1]]))
    # the torch version (for quantising on the device) gives the very same bytes
    import torch

    for array in (values, rows, np.array([[np.inf, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)):
        expected, got = quantize_rows(array), quantize_rows_torch(torch.from_numpy(array))
        np.testing.assert_array_equal(got.q, expected.q)
        np.testing.assert_array_equal(got.scale, expected.scale)
    with pytest.raises(StoreError, match="non-negative"):
        quantize_rows_torch(torch.tensor([[0.5, -0.1]]))


def test_extract_to_a_uint8_store(tiny_bert, tmp_path):
    from attviz.extract import extract
    from tests.conftest import TEXTS

    model, tok = tiny_bert
    # uint8 quantises matrices: kept as matrices whatever $ATTVIZ_ATTENTION says
    kw = {
        "model": model,
        "tokenizer": tok,
        "batch_size": 2,
        "progress": False,
        "device": "cpu",
        "attention": "matrices",
    }
    exact = extract(TEXTS, store=tmp_path / "f.zarr", **kw)
    quantised = extract(TEXTS, store=tmp_path / "q.zarr", compression="uint8", **kw)
    assert quantised.attrs["matrix_encoding"] == "uint8-row-scale" and 0 < quantised.attrs["max_abs_error"] <= 1 / 510
    for a, b in zip(exact, quantised, strict=True):
        assert a.attention.dims == b.attention.dims and a.tokens == b.tokens
        error = np.abs(a.attention.values.astype(np.float32) - b.attention.values).max()
        assert error <= quantised.attrs["max_abs_error"] + 1e-6


def test_a_lazy_corpus_keeps_only_its_most_recent_documents(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    corpus = _corpus(6).save(tmp_path / "c.zarr")
    reference = Corpus.open(tmp_path / "c.zarr")  # the same stored values, its own cache
    corpus.cache_size = 2
    first = corpus[0]
    assert corpus[0] is first  # cached
    corpus[1], corpus[2]  # two newer documents push document 0 out
    again = corpus[0]
    assert again is not first
    np.testing.assert_array_equal(again.attention.values, reference[0].attention.values)
    assert len(corpus._cache) == 2
    # many threads (sessions of one app) reading at once: every document is the right one
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: corpus[i % 6].id, range(600)))
    assert ids == [reference[i % 6].id for i in range(600)] and len(corpus._cache) == 2
