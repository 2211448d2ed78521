"""Raw attention tensors (BertViz's input) into a Corpus: values, tokens, text, offsets, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attviz import InputError
from attviz.readers import read
from attviz.readers.tensors import TensorsReader, from_tensors, join_tokens, word_indices

BERT = ["[CLS]", "the", "cat", "##s", "sat", "[SEP]"]


def attentions(layers: int = 2, heads: int = 3, tokens: int = 6, *, batch: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        values = rng.random((heads, tokens, tokens)).astype(np.float32)
        values /= values.sum(-1, keepdims=True)
        out.append(values[None] if batch else values)
    return tuple(out)


def test_values_tokens_text_and_offsets():
    layers = attentions()
    corpus = from_tensors(layers, BERT)
    assert len(corpus) == 1 and corpus.ids == ["doc-0"]
    doc = corpus[0]
    attention = doc.attention
    assert attention.dims == ("layer", "head", "query", "key") and attention.dtype == np.float32
    np.testing.assert_array_equal(attention.values, np.stack([layer[0] for layer in layers]))
    assert doc.tokens == BERT
    assert doc.text == "the cats sat"
    table = doc.token_table()
    assert table["special"].tolist() == [True, False, False, False, False, True]
    assert table["word"].tolist() == [-1, 0, 1, 1, 2, -1]
    assert [doc.text[s:e] for s, e in zip(table["start"], table["end"], strict=True)] == [
        "", "the", "cat", "s", "sat", ""
    ]  # fmt: skip
    assert attention["query_text"].values.tolist() == attention["key_text"].values.tolist() == BERT
    assert corpus.attrs["source_format"] == "tensors"


def test_layers_without_batch_and_one_stacked_array():
    layers = attentions(batch=False)
    a = from_tensors(layers, BERT, id="x")[0].attention.values
    b = from_tensors(np.stack(layers), BERT)[0].attention.values
    np.testing.assert_array_equal(a, np.stack(layers))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("tokens", "text", "words"),
    [
        (["<|endoftext|>", "The", "Ġcat", "Ġsat", "."], "The cat sat.", [-1, 0, 1, 2, 2]),
        (["▁Hello", "▁wor", "ld", "</s>"], "Hello world", [0, 1, 1, -1]),
        (["<s>", "Ġhéllo", "Ġwörld", "</s>"], "héllo wörld", [-1, 0, 1, -1]),
    ],
)
def test_joining_byte_level_and_sentencepiece_tokens(tokens, text, words):
    special = [t in ("<|endoftext|>", "</s>", "<s>") for t in tokens]
    joined, starts, ends = join_tokens(tokens, special)
    assert joined == text
    assert word_indices(tokens, special) == words
    for token, start, end, is_special in zip(tokens, starts, ends, special, strict=True):
        assert joined[start:end] == ("" if is_special else token.lstrip("Ġ▁"))


def test_given_text_is_aligned_case_insensitively():
    doc = from_tensors(attentions(), BERT, text="The Cats sat!")[0]
    assert doc.text == "The Cats sat!"
    table = doc.token_table()
    assert list(zip(table["start"], table["end"], strict=True)) == [(0, 0), (0, 3), (4, 7), (7, 8), (9, 12), (12, 12)]


def test_given_offsets_and_special():
    offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (9, 12), (12, 12)]
    special = [True, False, False, False, False, False]
    doc = from_tensors(attentions(), BERT, text="the cats sat", offsets=offsets, special=special)[0]
    table = doc.token_table()
    assert table["start"].tolist() == [0, 0, 4, 7, 9, 12]
    assert table["special"].tolist() == special
    assert table["word"].tolist() == [-1, 0, 1, 1, 2, 3]


def test_torch_tensors_from_a_real_model(tiny_bert):
    torch = pytest.importorskip("torch")
    model, tokenizer = tiny_bert
    encoded = tokenizer("Unbelievable photosynthesis results!", return_tensors="pt")
    with torch.no_grad():
        output = model(**encoded, output_attentions=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    corpus = from_tensors(output.attentions, tokens)
    doc = corpus[0]
    expected = torch.stack(output.attentions)[:, 0].numpy()
    np.testing.assert_array_equal(doc.attention.values, expected)
    assert doc.tokens == tokens
    assert doc.text.replace(" ", "") == "".join(t.removeprefix("##") for t in tokens[1:-1])
    assert TensorsReader().guess_can_open((output.attentions, tokens))
    assert read((output.attentions, tokens)).ids == ["doc-0"]
    half = from_tensors(tuple(a.to(torch.bfloat16) for a in output.attentions), tokens)[0].attention
    assert half.dtype == np.float32
    np.testing.assert_allclose(half.values, expected, atol=1e-2)


def test_store_round_trip_within_float16(tmp_path):
    layers = attentions()
    corpus = from_tensors(layers, BERT, text="The cats sat", id="bert")
    stored = corpus.save(tmp_path / "t.zarr")
    doc = stored["bert"]
    assert doc.attention.dtype == np.float16
    np.testing.assert_allclose(
        np.asarray(doc.attention.values, dtype=np.float32), corpus[0].attention.values, atol=5e-4
    )
    assert doc.tokens == BERT and doc.text == "The cats sat"
    assert doc.token_table().equals(corpus[0].token_table())


# -- errors ------------------------------------------------------------------------------------------
def _error(*args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        from_tensors(*args, **kwargs)
    return info.value


def test_token_count_must_match():
    error = _error(attentions(), BERT[:-1])
    assert error.field == "tokens"
    assert "attention covers 6 tokens but 5 tokens were given" in error.reason
    assert error.expected == "6 tokens, one per attention row"


def test_layers_must_agree():
    layers = list(attentions())
    layers[1] = attentions(layers=1, heads=2)[0]
    error = _error(layers, BERT)
    assert error.field == "attentions[1]"
    assert "(2, 6, 6) but layer 0 has (3, 6, 6)" in error.reason
    assert "same number of heads and tokens" in error.expected
    layers[1] = attentions(layers=1, tokens=5)[0]
    assert "(3, 5, 5) but layer 0 has (3, 6, 6)" in _error(layers, BERT).reason


def test_batch_size_one_and_square_matrices():
    batch = np.concatenate([attentions(layers=1)[0]] * 2)
    error = _error([batch], BERT)
    assert (error.field, error.reason) == ("attentions[0]", "batch size is 2")
    assert "batch size 1" in error.expected
    error = _error([np.ones((3, 6, 5), np.float32)], BERT)
    assert "has shape (3, 6, 5)" in error.reason and error.expected == "(1, H, T, T) or (H, T, T)"
    assert "has shape (6, 6)" in _error([np.ones((6, 6))], BERT).reason


def test_values_must_be_finite_numbers():
    layers = [layer.copy() for layer in attentions()]
    layers[1][0, 2, 4, 1] = np.nan
    error = _error(layers, BERT)
    assert error.field == "attentions[1]" and "(head, query, key) = (2, 4, 1) is nan" in error.reason
    assert error.expected == "finite attention weights"
    assert "has dtype <U1" in _error([np.full((1, 6, 6), "x")], BERT).reason


def test_bad_inputs():
    assert "attentions is an empty sequence" in str(_error((), BERT))
    assert "attentions is int" in str(_error(3, BERT))
    error = _error(attentions(), ["[CLS]", "the", 3, "##s", "sat", "[SEP]"])
    assert (error.field, error.reason) == ("tokens[2]", "token is int")
    assert _error(attentions(), BERT, special=[True]).field == "special"
    error = _error(attentions(), BERT, text="the cats sat", offsets=[(0, 3)] * 5 + [(10, 20)])
    assert error.field == "offsets[5]" and "(10, 20) is not a span" in error.reason
    assert _error(attentions(), BERT, offsets=[(0, 1)]).field == "offsets"


# -- the reader --------------------------------------------------------------------------------------
def test_reader_guess_can_open(tmp_path):
    reader = TensorsReader()
    layers = attentions()
    assert reader.guess_can_open((layers, BERT))
    assert reader.guess_can_open([list(layers), np.array(BERT)])
    assert reader.guess_can_open({"attentions": layers, "tokens": BERT})
    assert reader.guess_can_open(tmp_path / "x.npz")
    assert not reader.guess_can_open((layers, "the cat"))
    assert not reader.guess_can_open((BERT, BERT))
    assert not reader.guess_can_open(tmp_path / "x.json")
    assert not reader.guess_can_open(42)


def test_reader_reads_tuples_dicts_npz_and_safetensors(tmp_path):
    layers = attentions()
    stacked = np.stack([layer[0] for layer in layers])
    by_tuple = TensorsReader().read((layers, BERT), id="t")
    by_dict = read({"attentions": layers, "tokens": BERT, "text": "The cats sat"})
    assert by_tuple.ids == ["t"] and by_dict[0].text == "The cats sat"
    npz = tmp_path / "example.npz"
    np.savez(npz, attention=stacked, tokens=np.array(BERT), text=np.array("the cats sat"))
    from_npz = read(npz)
    assert from_npz.ids == ["example"] and from_npz.attrs["source_file"] == "example.npz"
    np.testing.assert_array_equal(from_npz[0].attention.values, stacked)
    assert from_npz[0].tokens == BERT and from_npz[0].text == "the cats sat"
    safetensors = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "example.safetensors"
    safetensors.save_file({"attention": stacked}, str(path), metadata={"tokens": json.dumps(BERT)})
    from_st = read(path)
    np.testing.assert_array_equal(from_st[0].attention.values, stacked)
    assert from_st[0].tokens == BERT


def test_reader_errors(tmp_path):
    reader = TensorsReader()
    objects = tmp_path / "objects.npz"
    np.savez(objects, attention=np.stack([a[0] for a in attentions()]), tokens=np.array(BERT, dtype=object))
    with pytest.raises(InputError, match="cannot be loaded without pickle") as info:
        reader.read(objects)
    assert info.value.file == str(objects) and info.value.field == "tokens"
    missing = tmp_path / "missing.npz"
    np.savez(missing, attention=np.stack([a[0] for a in attentions()]))
    with pytest.raises(InputError, match="array 'tokens' is missing"):
        reader.read(missing)
    short = tmp_path / "short.npz"
    np.savez(short, attention=np.stack([a[0] for a in attentions()]), tokens=np.array(BERT[:3]))
    with pytest.raises(InputError) as info:
        reader.read(short)
    assert info.value.file == str(short) and info.value.field == "tokens"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"junk\.npz: not an \.npz file"):
        reader.read(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(InputError, match="not a zip archive"):
        reader.read(tmp_path / "single.npz")
    with pytest.raises(InputError, match="cannot read a int"):
        reader.read(42)
