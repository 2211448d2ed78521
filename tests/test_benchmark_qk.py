"""benchmarks/qk.py (issue #12: attention kept as queries and keys): its quick mode on tiny inputs."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import qk


def test_verdict_needs_every_round_on_one_side():
    assert qk.verdict([0.95, 1.1, 0.91], 0.9) == "met"
    assert qk.verdict([0.5, 0.89], 0.9) == "missed"
    assert qk.verdict([0.85, 0.95], 0.9) == "within noise"
    assert qk.verdict([0.95], 0.9) == "met (1 round)"
    assert qk.verdict([float("nan")], 0.9) == "no data"


def test_quick_plan():
    blank = {"rounds": None, "documents": None, "long_documents": None, "random_tokens": None}
    quick = qk.plan(argparse.Namespace(quick=True, **blank))
    assert quick == {"rounds": 1, "demo_texts": 16, "long_documents": 4, "long_tokens": 512,
                     "size_tokens": [128, 512], "random_tokens": 1024}  # fmt: skip
    full = qk.plan(argparse.Namespace(quick=False, **blank))
    assert full["rounds"] == 5 and full["demo_texts"] == 128 and full["long_documents"] == 32
    assert full["random_tokens"] == 4096


def test_long_texts_are_cut_at_exactly_512_tokens():
    loaded = qk.minilm()
    texts = qk.long_texts(3)
    assert len(set(texts)) == 3
    assert qk.token_counts(loaded.tokenizer, texts, 512) == [512] * 3


@pytest.mark.slow
def test_quick_mode_on_tiny_inputs(tmp_path, capsys):
    """The whole script, --quick, on 4 demo texts, one 512-token document and a 128-token random BERT."""
    out = tmp_path / "qk.json"
    argv = ["--quick", "--documents", "4", "--long-documents", "1", "--random-tokens", "128"]
    results = qk.main([*argv, "--workdir", str(tmp_path), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["settings"] == results["settings"] and saved["settings"]["rounds"] == 1
    assert list(tmp_path.iterdir()) == [out]  # every store removed

    # speed: both baselines and every mode, on both text sets, with the target's verdict for qk
    assert list(results["speed"]) == ["demo texts", "512-token documents"]
    for entry in results["speed"].values():
        assert list(entry["modes"]) == [*qk.BASELINES, "qk store", "matrices store", "auto store"]
        for row in entry["modes"].values():
            assert row["seconds"] > 0 and row["docs_per_s"] > 0 and len(row["rounds_s"]) == 1
            assert row["vs_sdpa"]["min"] == row["vs_sdpa"]["median"] == row["vs_sdpa"]["max"] > 0
        assert entry["modes"]["SDPA forward"]["vs_sdpa"]["median"] == 1
        assert entry["modes"]["qk store"]["verdict"] in ("met (1 round)", "missed (1 round)")
        assert entry["checks"]["qk"]["kept"] == {"qk": entry["documents"]}
        assert entry["checks"]["matrices"]["kept"] == {"matrices": entry["documents"]}
        assert sum(entry["checks"]["auto"]["kept"].values()) == entry["documents"]
        assert entry["checks"]["qk"]["qk_check"]["error"] <= entry["checks"]["qk"]["qk_check"]["tolerance"]
    assert results["speed"]["512-token documents"]["tokens"] == 512

    # bytes per document: q/k far smaller than the float16 matrices from 512 tokens on
    sizes = {(row["model"], row["tokens"]): row for row in results["sizes"]}
    assert list(sizes) == [("all-MiniLM-L6-v2", 128), ("all-MiniLM-L6-v2", 512), (qk.RANDOM_BERT, 128)]
    real = sizes["all-MiniLM-L6-v2", 512]
    assert real["raw_float16"] == 6 * 12 * 512 * 512 * 2
    assert 0 < real["qk"] < real["matrices"] <= real["raw_float16"] * 1.01
    assert real["matrices_over_qk"] >= qk.SIZE_TARGET and real["verdict"] == "met"
    random = results["random_bert"]["size"]
    assert random is sizes[qk.RANDOM_BERT, 128] and 0 < random["qk"] < random["matrices"]

    # rebuild error at 512 tokens
    error = results["error"]
    assert error["tokens"] == 512 and error["shape"] == [6, 12, 512, 512] and error["stored_as"] == "qk"
    assert 0 < error["max_abs_error"] <= qk.ERROR_TARGET and error["verdict"] == "met"
    assert error["qk_check"]["error"] <= error["qk_check"]["tolerance"]

    # peak RSS, a fresh process per mode
    runs = results["random_bert"]["runs"]
    assert set(runs) == {"qk", "matrices"}
    for mode, run in runs.items():
        assert run["stored_as"] == mode and run["tokens"] == 128
        assert 0 < run["peak_before_extract_bytes"] <= run["peak_rss_bytes"] < 8e9

    table = capsys.readouterr().out
    assert "| demo texts (4 docs," in table and "≥ 5×: **met**" in table and "target ≤ 0.001: **met**" in table
