"""The zarr store: round trips, laziness per layer, atomic writes, clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from attviz import Corpus, Document, StoreError, attention_array, token_frame, vector_array
from attviz.store import StoreWriter, partial_path


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
    # remove the chunk of layer 0 from the disk: layer 1 still loads, layer 0 is missing data
    chunk = path / "docs" / "d000001" / "self" / "c" / "0" / "0" / "0" / "0"
    assert chunk.is_file()
    expected = corpus[1].attention.isel(layer=1).values.copy()
    chunk.unlink()
    reopened = Corpus.open(path)
    np.testing.assert_array_equal(reopened[1].attention.isel(layer=1).values, expected)
    assert reopened[1].attention.chunks[0] == (1, 1)  # one dask chunk per layer


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
    from attviz.store import document_payload

    arrays, attrs, tokens = document_payload(doc)
    writer.write(0, {"doc_id": "d0", "text": "x"}, tokens, arrays, attrs)
    writer.close()
    with open(partial_path(path) / "progress.jsonl", "a") as handle:
        handle.write('{"index": 1, "group": "d0000')  # a crash in the middle of a line
    resumed = StoreWriter(path, fingerprint="job")
    assert resumed.done == {0}
    resumed.close()
    shutil.rmtree(partial_path(path))
