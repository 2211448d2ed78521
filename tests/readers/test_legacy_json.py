"""The original AttViz JSON reader and writer: fixtures, validation errors, the real example file."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from attviz import Corpus, InputError
from attviz.readers import read
from attviz.readers.legacy import (
    AttVizJSONReader,
    align_tokens,
    parse_attviz_json,
    write_attviz_json,
)

DATA = Path(__file__).parent / "data"
REAL = Path(__file__).parents[2] / ".." / "shared" / "reference" / "original-examples" / "public-example1.json"
BBC = {"business", "entertainment", "politics", "sport"}


def load(name: str, **kwargs) -> Corpus:
    return AttVizJSONReader().read(DATA / name, **kwargs)


# -- fixtures ----------------------------------------------------------------------------------------
def test_string_numbers():
    corpus = load("string_numbers.json")
    assert corpus.ids == ["markets-1", "sport-1"]
    doc = corpus["markets-1"]
    assert doc.kinds == ["vectors"]
    vectors = doc.vectors
    assert vectors.dims == ("vector", "token") and vectors.dtype == np.float32
    assert list(vectors["vector"].values) == ["0", "1", "0_mean"]
    np.testing.assert_array_equal(
        vectors.values[0], np.array([0.5, 0.31, 0.07, 0.02, 0.11, 0.09, 0.25, 0.75], dtype=np.float32)
    )
    assert vectors.values[1, -1] == np.float32(1e-3)
    assert doc.tokens == ["[CLS]", "markets", "rally", "on", "rate", "cut", "##s", "[SEP]"]
    table = doc.token_table()
    assert table["special"].tolist() == [True, False, False, False, False, False, False, True]
    assert table["word"].tolist() == [-1, 0, 1, 2, 3, 4, 4, -1]
    # "[CLS]" is in this text, so the original's search finds it
    assert [doc.text[s:e] for s, e in zip(table["start"], table["end"], strict=True)] == [
        "[CLS]", "markets", "rally", "on", "rate", "cut", "s", "[SEP]"
    ]  # fmt: skip
    assert doc.prediction == "business"
    assert doc.probabilities == pytest.approx({"business": 0.93, "sport": 0.07})
    assert doc.meta["vector_colors"] == {"0": "#1f77b4"}
    assert doc.meta["vector_visible"] == {"1": False}
    assert doc.meta["hilight"] == {"block": 0, "vectors": 1}
    assert doc.meta["set_name"] == "Set 0" and doc.meta["set_visible"] is True
    other = corpus["sport-1"]
    assert other.tokens == ["hé", "##llo", "wörld", "wins"]
    assert other.token_table()["end"].tolist() == [2, 5, 11, 16]
    assert other.prediction == "sport"
    assert corpus.attrs["source_format"] == "attviz-json" and corpus.attrs["notes"] == []
    assert corpus.table["prediction"].tolist() == ["business", "sport"]


def test_plain_numbers_and_nan():
    corpus = load("plain_numbers.json")
    assert corpus.ids == ["doc-0000", "doc-0001"]
    np.testing.assert_array_equal(corpus[0].vectors.values[1], [1.0, 0.0, 0.0625])
    values = corpus[1].vectors.values
    assert np.isnan(values[0, 2]) and np.isnan(values[1, 3])
    assert np.isfinite(values[0, [0, 1, 3]]).all()
    assert corpus[1].prediction == "no"


def test_legacy_dict_keyed_form_sorted_numerically_with_default_class_names():
    corpus = load("legacy_dict.json")
    assert [doc.text for doc in corpus] == ["first one", "second one", "third one"]
    assert corpus.ids == ["doc-0000", "doc-0001", "doc-0002"]
    assert corpus[0].probabilities == pytest.approx({"Class 0": 0.6, "Class 1": 0.4})
    assert [doc.prediction for doc in corpus] == ["Class 0", "Class 1", "Class 1"]


def test_missing_optional_fields():
    corpus = load("missing_optional.json")
    first = corpus[0]
    assert list(first.vectors["vector"].values) == ["attention_vectors_0", "attention_vectors_1"]
    assert first.probabilities == pytest.approx({"first": 0.25, "Class 1": 0.75})
    assert first.prediction == "Class 1"
    # "missing" is not in the text: start == end == the previous token's end, and the walk goes on
    table = first.token_table()
    assert list(zip(table["start"], table["end"], strict=True)) == [(0, 2), (3, 8), (8, 8), (9, 13)]
    # no output_activations, or an empty list: no prediction
    assert corpus[1].prediction is None and corpus[1].probabilities is None
    assert corpus[2].prediction is None
    # a name used twice is no id; both keep it in meta
    assert corpus.ids == ["doc-0000", "doc-0001", "doc-0002"]
    assert corpus[1].meta["name"] == corpus[2].meta["name"] == "same"


def test_multiple_sets_note_and_set_index():
    corpus = load("multi_set.json")
    assert corpus[0].tokens == ["un", "##believ", "##able", "news"]
    assert corpus[0].token_table()["word"].tolist() == [0, 0, 0, 1]
    (note,) = corpus.attrs["notes"]
    assert "more than one set" in note and "[0]" in note and "set_index" in note
    second = load("multi_set.json", set_index=1)
    assert second[0].tokens == ["unbelievable", "news"]
    assert list(second[0].vectors["vector"].values) == ["a", "b"]
    assert second[0].meta["set_name"] == "words"
    with pytest.raises(InputError) as info:
        load("multi_set.json", set_index=2)
    assert info.value.field == "[0].sets" and "cannot import set 2" in info.value.reason


def test_align_tokens_like_the_original():
    text = "co ##rma ##c murphy"
    starts, ends = align_tokens(["co", "##rma", "##c", "murphy", "gone", "."], text)
    assert [text[s:e] for s, e in zip(starts, ends, strict=True)][:4] == ["co", "rma", "c", "murphy"]
    assert (starts[4], ends[4]) == (ends[3], ends[3]) == (starts[5], ends[5])


def test_guess_can_open(tmp_path):
    reader = AttVizJSONReader()
    assert reader.guess_can_open(DATA / "string_numbers.json")
    assert reader.guess_can_open(DATA / "legacy_dict.json")
    other = tmp_path / "other.json"
    other.write_text('{"model": "x", "layers": 3}')
    assert not reader.guess_can_open(other)
    assert not reader.guess_can_open(tmp_path / "missing.json")
    assert not reader.guess_can_open(DATA)
    assert not reader.guess_can_open(("not", "a", "path"))


def test_read_picks_the_reader_and_accepts_parsed_data():
    corpus = read(DATA / "plain_numbers.json")
    assert len(corpus) == 2 and corpus.attrs["source_format"] == "attviz-json"
    data = json.loads((DATA / "plain_numbers.json").read_text())
    assert parse_attviz_json(data).ids == corpus.ids
    assert AttVizJSONReader().read(data).ids == corpus.ids


# -- validation --------------------------------------------------------------------------------------
BROKEN = [
    # file, field, part of the message, part of "expected"
    ("not_json.json", None, "not valid JSON: Expecting value at line 3, column 13", "AttViz JSON"),
    ("empty.json", None, "not valid JSON: Expecting value at line 1, column 1", "AttViz JSON"),
    ("top_level_string.json", None, "the top level is a string", "an array of"),
    ("single_instance.json", None, "the top level is a single instance", "wrap it in [ ]"),
    ("instance_not_object.json", "[1]", "instance is a number", "an object {text, sets"),
    ("missing_text.json", "[0].text", "required field is missing", "a string"),
    ("missing_sets.json", "[0].sets", "required field is missing", "an array of {tokens"),
    ("missing_tokens.json", "[0].sets[0].tokens", "required field is missing", "token strings"),
    ("missing_attention_vectors.json", "[0].sets[0].attention_vectors", "required field is missing",
     "an array of {name, vectors}"),
    ("missing_vectors.json", "[0].sets[0].attention_vectors[1].vectors", "required field is missing",
     "one per token"),
    ("tokens_not_strings.json", "[0].sets[0].tokens[2]", "token is a number", "a string"),
    ("wrong_length.json", "[0].sets[0].attention_vectors[0].vectors",
     "vector has 2 values but the set has 3 tokens", "3 values, one per token"),
    ("non_numeric.json", "[1].sets[0].attention_vectors[2].vectors[1]", "value 'abc' is not a number",
     '"NaN" for a missing value'),
    ("boolean_value.json", "[0].sets[0].attention_vectors[0].vectors[0]",
     "value is a boolean, not a number", "a number or a numeric string"),
    ("infinite_value.json", "[0].sets[0].attention_vectors[0].vectors[1]", "is not finite", "a number"),
    ("activations_not_array.json", "[0].output_activations", "output_activations is an object",
     "an array of {value, name}"),
    ("activation_missing_value.json", "[0].output_activations[1].value", "required field is missing",
     "a probability"),
    ("probability_out_of_range.json", "[0].output_activations[0].value",
     "probability 1.5 is outside [0, 1]", "a probability in [0, 1]"),
    ("probability_not_finite.json", "[0].output_activations[0].value", "is not finite", "finite number"),
    ("duplicate_class.json", "[0].output_activations[1].name", "class 'x' appears twice", "distinct"),
    ("dict_bad_key.json", '["first"]', "key is not an instance number", 'keys "0", "1"'),
    ("dict_instance_missing_sets.json", '["1"].sets', "required field is missing", "an array of"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "field", "message", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_files_raise_input_errors(name, field, message, expected):
    path = DATA / "broken" / name
    with pytest.raises(InputError) as info:
        AttVizJSONReader().read(path)
    error = info.value
    assert error.file == str(path)
    assert error.field == field
    assert message in error.reason
    assert expected in error.expected
    text = str(error)
    assert text.startswith(str(path)) and message in text and f"(expected {error.expected})" in text
    if field:
        assert f"{path}: {field}: " in text


def test_negative_probability_is_rejected():
    data = json.loads((DATA / "broken" / "probability_out_of_range.json").read_text())
    data[0]["output_activations"][0]["value"] = "0.5"
    with pytest.raises(InputError, match=r"\[0\]\.output_activations\[1\]\.value: probability -0.5"):
        parse_attviz_json(data)


# -- writing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["string_numbers.json", "plain_numbers.json", "missing_optional.json"])
def test_json_round_trip(tmp_path, name):
    original = json.loads((DATA / name).read_text())
    corpus = load(name)
    out = tmp_path / "out.json"
    write_attviz_json(corpus, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind
    written = json.loads(out.read_text(encoding="utf-8"))
    assert len(written) == len(original)
    for before, after in zip(original, written, strict=True):
        assert after["text"] == before["text"]
        set_before, set_after = before["sets"][0], after["sets"][0]
        assert set_after["tokens"] == set_before["tokens"]
        for vb, va in zip(set_before["attention_vectors"], set_after["attention_vectors"], strict=True):
            assert all(isinstance(v, str) for v in va["vectors"])
            np.testing.assert_array_equal(
                np.array([float(v) for v in va["vectors"]], dtype=np.float32),
                np.array([float(v) for v in vb["vectors"]], dtype=np.float32),
            )
            for key in ("name", "color", "visible"):
                assert va.get(key) == vb.get(key) or (key == "name" and "name" not in vb)
        probs = {
            a.get("name", f"Class {i}"): float(a["value"]) for i, a in enumerate(before.get("output_activations", []))
        }
        assert {a["name"]: float(a["value"]) for a in after["output_activations"]} == pytest.approx(probs)
        for key in ("name", "hilight"):
            assert after.get(key) == before.get(key)
    again = AttVizJSONReader().read(out)
    assert again.ids == corpus.ids
    assert [d.prediction for d in again] == [d.prediction for d in corpus]


def test_writing_needs_vectors(tmp_path):
    from attviz import Document, attention_array, token_frame

    tokens = token_frame(["a", "b"])
    doc = Document(id="m", text="a b", arrays={"self": attention_array(np.full((1, 1, 2, 2), 0.5), tokens)})
    with pytest.raises(ValueError, match="has no 'vectors' array"):
        write_attviz_json(Corpus([doc]), tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


# -- the real example file of the original -----------------------------------------------------------
@pytest.fixture(scope="module")
def real() -> Corpus:
    if not REAL.is_file():
        pytest.skip(f"{REAL} is not available")
    return AttVizJSONReader().read(REAL)


def test_real_file_contents(real):
    assert len(real) == 67
    for doc in real:
        values = np.asarray(doc.vectors.values)
        assert values.shape == (16, doc.n_tokens)
        assert list(doc.vectors["vector"].values) == [str(i) for i in range(16)]
        for k in range(12, 16):
            np.testing.assert_array_equal(values[k], values[11])
        table = doc.token_table()
        for token, start, end in zip(table["text"], table["start"], table["end"], strict=True):
            assert doc.text[start:end] == token.removeprefix("##")
        assert not table["special"].any()
        assert doc.prediction in BBC
        assert set(doc.probabilities) == BBC
        assert sum(doc.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert doc.prediction == max(doc.probabilities, key=doc.probabilities.get)


def test_real_file_store_round_trip_is_exact(real, tmp_path):
    stored = real.save(tmp_path / "real.zarr")
    assert stored.ids == real.ids
    for before, after in zip(real, stored, strict=True):
        assert after.vectors.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(after.vectors.values), before.vectors.values)
        assert after.tokens == before.tokens
        assert after.prediction == before.prediction
        assert after.probabilities == pytest.approx(before.probabilities)


def test_real_file_json_round_trip_keeps_the_number_strings(real, tmp_path):
    out = tmp_path / "again.json"
    write_attviz_json(real, out)
    original = json.loads(REAL.read_text())
    written = json.loads(out.read_text())
    assert written == original


def test_real_file_reads_fast(real):
    reader = AttVizJSONReader()
    started = time.perf_counter()
    corpus = reader.read(REAL)
    elapsed = time.perf_counter() - started
    assert len(corpus) == 67
    assert elapsed < 2.0, f"reading the 1.7 MB example took {elapsed:.2f} s"
    assert not math.isnan(elapsed)
