"""The attviz command line, run in-process and once as the installed script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from attviz.cli import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_bert):
    model, tok = tiny_bert
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_extract_txt_and_info_json(tmp_path, tiny_model_dir, bert_tokenizer, capsys):
    lines = [f"Line {i}: the {'quick ' * (i % 5)}brown fox number {i} jumps." for i in range(100)]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(lines[:50]) + "\n\n" + "\n".join(lines[50:]) + "\n", encoding="utf-8")
    code, _, err = _run(
        capsys, "extract", source, "-o", tmp_path / "out.zarr", "--model", tiny_model_dir, "--quiet", "--device", "cpu"
    )
    assert code == 0, err
    code, out, _ = _run(capsys, "info", tmp_path / "out.zarr", "--json")
    info = json.loads(out)
    assert info["documents"] == 100  # the blank line is not a document
    assert (info["layers"], info["heads"], info["model"]) == (2, 3, "tiny-bert")
    assert info["tokens"] == sum(len(bert_tokenizer(line)["input_ids"]) for line in lines)
    assert info["kinds"] == ["self"] and info["accuracy"] is None
    code, out, _ = _run(capsys, "info", tmp_path / "out.zarr")
    assert "documents   100" in out and "2 layers x 3 heads" in out


def test_extract_csv_with_labels_and_ids(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "in.csv"
    source.write_text('id,body,topic\na1,"First, with a comma",x\nb2,Second text,y\n', encoding="utf-8")
    code, _, err = _run(
        capsys,
        "extract",
        source,
        "-o",
        tmp_path / "o.zarr",
        "--model",
        tiny_model_dir,
        "--text-column",
        "body",
        "--label-column",
        "topic",
        "--quiet",
        "--device",
        "cpu",
    )
    assert code == 0, err
    from attviz import Corpus

    corpus = Corpus.open(tmp_path / "o.zarr")
    assert corpus.ids == ["a1", "b2"] and corpus["a1"].text == "First, with a comma"
    assert corpus.table["label"].tolist() == ["x", "y"]


def test_jsonl_input(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "n1", "text": "hello there", "label": "greet"}\n\n{"id": "n2", "text": "bye"}\n')
    code, _, err = _run(
        capsys, "extract", source, "-o", tmp_path / "o.zarr", "--model", tiny_model_dir, "--quiet", "--device", "cpu"
    )
    assert code == 0, err
    code, out, _ = _run(capsys, "info", tmp_path / "o.zarr", "--json")
    assert json.loads(out)["gold_labels"] == 1


@pytest.mark.parametrize(
    ("content", "suffix", "extra", "message"),
    [
        ("a,b\n1,2\n", ".csv", [], "in.csv: no column 'text' (expected one of ['a', 'b'] (use --text-column))"),
        ("text\nfine\n", ".csv", ["--label-column", "topic"], "in.csv: no column 'topic'"),
        ('{"text": "ok"}\n{"text": \n', ".jsonl", [], "in.jsonl: line 2: invalid JSON"),
        ('{"text": ""}\n', ".jsonl", [], "in.jsonl: line 1, column 'text': empty or missing text"),
        ("hello", ".docx", [], "in.docx: unknown input type '.docx'"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, tiny_model_dir, capsys, content, suffix, extra, message):
    source = tmp_path / f"in{suffix}"
    source.write_text(content)
    code, _out, err = _run(
        capsys, "extract", source, "-o", tmp_path / "o.zarr", "--model", tiny_model_dir, "--quiet", *extra
    )
    assert code == 1
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("attviz extract: error: ")


def test_existing_output_is_refused(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    args = ["extract", source, "-o", tmp_path / "o.zarr", "--model", tiny_model_dir, "--quiet", "--device", "cpu"]
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 1 and "already exists; pass overwrite=True (--overwrite)" in err
    assert _run(capsys, *args, "--overwrite")[0] == 0


def test_info_on_missing_store(tmp_path, capsys):
    code, _, err = _run(capsys, "info", tmp_path / "nothing.zarr")
    assert code == 1 and "no such file or directory" in err


def test_installed_script_help_for_every_command():
    for command in ("extract", "info", "convert", "export", "plugins", "demo", "serve"):
        result = subprocess.run(
            [sys.executable, "-m", "attviz.cli", command, "--help"], capture_output=True, text=True, check=True
        )
        assert f"usage: attviz {command}" in result.stdout


def test_plugins_json_lists_builtin_readers(capsys):
    _code, out, _ = _run(capsys, "plugins", "--json")
    rows = json.loads(out)
    readers = {r["name"]: r for r in rows if r["group"] == "attviz.readers"}
    assert readers["zarr"]["status"] == "ok" and readers["zarr"]["distribution"] == "attviz"


def test_convert_legacy_json_to_store_netcdf_and_back(tmp_path, capsys):
    from pathlib import Path

    from attviz import Corpus, read

    source = Path(__file__).parent / "readers" / "data" / "string_numbers.json"
    original = read(source)
    assert _run(capsys, "convert", source, "-o", tmp_path / "legacy.zarr")[0] == 0
    store = Corpus.open(tmp_path / "legacy.zarr")
    assert store.ids == original.ids
    for a, b in zip(original, store, strict=True):
        np.testing.assert_array_equal(a.vectors.values, b.vectors.values)
        check = b.meta.pop("attention_check")  # the store adds its self-check: legacy values are only checked finite
        assert check["kinds"]["vectors"]["counts"] == {"nonfinite": 0}
        assert a.meta == b.meta  # colours, visibility, highlight survive the store
    assert _run(capsys, "convert", tmp_path / "legacy.zarr", "-o", tmp_path / "legacy.nc")[0] == 0
    code, out, _ = _run(capsys, "info", tmp_path / "legacy.nc", "--json")
    assert code == 0 and json.loads(out)["documents"] == len(original)
    assert _run(capsys, "convert", tmp_path / "legacy.nc", "-o", tmp_path / "back.json")[0] == 0
    again = read(tmp_path / "back.json")
    for a, b in zip(original, again, strict=True):
        np.testing.assert_array_equal(a.vectors.values, b.vectors.values)
        assert a.tokens == b.tokens and b.probabilities == pytest.approx(a.probabilities)  # float32 table
    code, _, err = _run(capsys, "convert", source, "-o", tmp_path / "legacy.zarr")
    assert code == 1 and "already exists" in err


def test_export_writes_one_offline_page_of_the_chosen_documents(tmp_path, capsys):
    from tests.test_explorer import corpus_of

    corpus_of().save(tmp_path / "tiny.zarr")
    page = tmp_path / "page.html"
    code, _, err = _run(capsys, "export", tmp_path / "tiny.zarr", "-o", page, "--doc", "d1", "--heads", "0")
    assert code == 0 and "wrote" in err
    text = page.read_text(encoding="utf-8")
    assert '"d1"' in text and '"d0"' not in text and "<script src=" not in text
    code, _, err = _run(capsys, "export", tmp_path / "tiny.zarr", "-o", page)
    assert code == 1 and "already exists" in err
    code, _, err = _run(capsys, "export", tmp_path / "tiny.zarr", "-o", page, "--overwrite", "--layers", "x")
    assert code == 1 and "--layers takes comma-separated integers" in err
    code, _, err = _run(capsys, "export", tmp_path / "tiny.zarr", "-o", page, "--overwrite", "--quantization", "matrix")
    from tests.test_export import parse_page

    assert code == 0 and parse_page(page.read_text(encoding="utf-8"))[0]["quantization"] == "matrix"


def test_extract_with_a_storage_policy_and_info(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "in.txt"
    source.write_text("The cat sat on the mat.\nMarkets rally as rates fall.\n", encoding="utf-8")
    out = tmp_path / "v.zarr"
    argv = ["extract", source, "-o", out, "--model", tiny_model_dir, "--quiet", "--device", "cpu", "--no-matrices"]
    code, _, err = _run(capsys, *argv, "--vectors", "attention_received,attention_from:query=-1,entropy", "--summary")
    assert code == 0, err
    code, text, _ = _run(capsys, "info", out)
    assert "keeps       vectors attention_received, attention_from:query=-1, entropy + head summary" in text
    from attviz.corpus import Corpus

    doc = Corpus.open(out)[0]
    assert doc.kinds == ["self_vectors", "self_summary"]
    assert doc.get("self_vectors")["vector"].values.tolist() == [
        "attention_received",
        "attention_from:query=-1",
        "entropy",
    ]
    code, _, err = _run(capsys, *argv[:-1], "--layers", "7", "--overwrite")
    assert code == 1 and "layer 7 does not exist: the model has 2 layers" in err
    code, _, err = _run(capsys, *argv, "--overwrite")
    assert code == 1 and "keeps nothing" in err


def test_info_says_larger_when_the_store_is_larger_than_raw_float16(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "in.txt"
    source.write_text("Hi.\nThe cat sat.\n", encoding="utf-8")  # tiny matrices: the metadata outweighs them
    code, _, err = _run(capsys, "extract", source, "-o", tmp_path / "s.zarr", "--model", tiny_model_dir, "--quiet")
    assert code == 0, err
    code, out, _ = _run(capsys, "info", tmp_path / "s.zarr", "--json")
    ratio = json.loads(out)["compression_ratio"]
    assert 0 < ratio < 1
    code, out, _ = _run(capsys, "info", tmp_path / "s.zarr")
    assert f"({1 / ratio:.2f}x larger than raw float16)" in out and "smaller" not in out


@pytest.mark.parametrize(
    ("ratio", "line"),
    [
        (2.5, "on disk     2.0 MB (2.50x smaller than raw float16)"),
        (0.79, "on disk     2.0 MB (1.27x larger than raw float16)"),
        (0.25, "on disk     2.0 MB (4.00x larger than raw float16)"),
        (1.0, "on disk     2.0 MB (about the size of raw float16)"),
        (None, "on disk     2.0 MB"),
    ],
)
def test_info_compares_the_size_with_raw_float16_honestly(ratio, line):
    from attviz.info import format_summary

    info = {
        "documents": 1,
        "tokens": 4,
        "tokens_per_document": {"min": 4, "mean": 4.0, "max": 4},
        "model": None,
        "layers": 1,
        "heads": 1,
        "kinds": ["self"],
        "labels": [],
        "gold_labels": 0,
        "predictions": 0,
        "accuracy": None,
        "bytes_on_disk": 2_000_000,
        "compression_ratio": ratio,
    }
    assert line in format_summary(info).splitlines()


@pytest.mark.parametrize("mode", ["qk", "matrices", "auto"])
def test_extract_attention_modes_and_info(tmp_path, tiny_model_dir, capsys, mode):
    """--attention qk keeps every document as queries and keys, matrices none, auto the long ones (head dim 8:
    q/k are smaller from ~24 tokens); info says so, with the rebuild error measured against eager attention."""
    source = tmp_path / "in.txt"
    long_line = " ".join(f"word{i} and more text" for i in range(20))
    source.write_text(f"Hi.\n{long_line}\n", encoding="utf-8")
    out = tmp_path / "a.zarr"
    code, _, err = _run(
        capsys, "extract", source, "-o", out, "--model", tiny_model_dir, "--device", "cpu", "--attention", mode
    )
    assert code == 0, err
    code, text, _ = _run(capsys, "info", out, "--json")
    info = json.loads(text)
    kept = {"qk": 2, "matrices": 0, "auto": 1}[mode]
    if mode == "matrices":
        assert info["attention_encoding"] == "mode matrices"
    else:
        assert f"queries/keys (qk-int16-vector-scale) for {kept} of 2 documents" in info["attention_encoding"]
        error = float(info["attention_encoding"].split("max abs error ")[1].split(" ")[0])
        assert 0 <= error <= 1e-4
    from attviz.corpus import Corpus

    assert [doc.qk() is not None for doc in Corpus.open(out)].count(True) == kept
    code, text, _ = _run(capsys, "info", out)
    assert "kept as     mode " + mode in text


def test_export_a_store_of_queries_and_keys_states_its_errors(tmp_path, tiny_model_dir, capsys):
    """--payload qk carries q/k and the command says how far a weight the page computes may be from the
    store's; --payload matrix keeps uint8 matrices for the same store."""
    source = tmp_path / "in.txt"
    source.write_text(" ".join(f"word{i} and more" for i in range(30)) + "\n", encoding="utf-8")
    store = tmp_path / "qk.zarr"
    code, _, err = _run(
        capsys, "extract", source, "-o", store, "--model", tiny_model_dir, "--device", "cpu", "--attention", "qk"
    )
    assert code == 0, err
    from attviz.export import read_manifest

    for payload, line in (("qk", "as queries and keys: max abs error"), ("matrix", "as uint8 matrices: max abs error")):
        page = tmp_path / f"{payload}.html"
        code, _, err = _run(capsys, "export", store, "-o", page, "--payload", payload)
        assert code == 0 and "1 document(s) " + line in err, err
        manifest = read_manifest(page.read_text(encoding="utf-8"))
        stated = float(err.split("max abs error of a weight ")[1].split()[0])
        assert stated == pytest.approx(manifest["qk_error" if payload == "qk" else "matrix_error"], rel=1e-2)
        assert stated < 2e-3


def test_limit_flag_sets_the_limits(capsys, monkeypatch):
    import os
    from pathlib import Path

    source = Path(__file__).parent / "readers" / "data" / "string_numbers.json"
    for name in ("ATTVIZ_MAX_BYTES", "ATTVIZ_TIMEOUT_S"):  # "" is no limit; the teardown restores them as they were
        monkeypatch.setenv(name, "")
    code, _, err = _run(capsys, "--limit", "max_bytes=100", "info", source)
    assert code == 1 and f"{source}: the file is 1.3 KiB, over the limit of 100 bytes" in err
    assert os.environ["ATTVIZ_MAX_BYTES"] == "100"  # what --limit does: sessions and workers inherit it
    os.environ["ATTVIZ_MAX_BYTES"] = ""
    code, _, err = _run(capsys, "--limit", "max_byte=100", "info", source)
    assert code == 1 and "expected NAME=VALUE with NAME one of max_archive_files, max_bytes" in err
    code, _, err = _run(capsys, "--limit", "timeout_s=0", "info", source)
    assert code == 1 and "limit timeout_s is 0.0 (expected a positive number)" in err
    assert os.environ["ATTVIZ_TIMEOUT_S"] == ""  # a refused limit sets nothing
    assert _run(capsys, "--limit", "max-bytes=1e6", "info", source)[0] == 0


def test_limit_flag_leaves_no_limit_behind():
    import os

    assert not os.environ.get("ATTVIZ_MAX_BYTES") and not os.environ.get("ATTVIZ_TIMEOUT_S")
