"""benchmarks/run.py and its BertViz baseline: conversion, URL rewriting, serving, page-ready timing, the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from attviz.corpus import attention_array, token_frame
from benchmarks import bertviz_baseline as bv
from benchmarks import pages, run

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def tiny_attention():
    """2 layers × 3 heads × 4 tokens; value = layer*1000 + head*100 + query*10 + key (float16-exact)."""
    layer, head, query, key = np.meshgrid(range(2), range(3), range(4), range(4), indexing="ij")
    values = (layer * 1000 + head * 100 + query * 10 + key).astype(np.float16)
    return attention_array(values, token_frame(["[CLS]", XSS, "&amp;", "[SEP]"]))


def test_to_bertviz_gives_one_tensor_per_layer(tiny_attention):
    tensors, tokens = bv.to_bertviz(tiny_attention)
    assert isinstance(tensors, tuple) and len(tensors) == 2
    assert all(tuple(t.shape) == (1, 3, 4, 4) for t in tensors)
    assert tensors[1][0, 2, 3, 1].item() == 1000 + 200 + 30 + 1
    assert tensors[0][0, 1, 0, 3].item() == 103
    assert tokens == ["[CLS]", XSS, "&amp;", "[SEP]"]


def test_to_bertviz_follows_dims_not_order(tiny_attention):
    tensors, _ = bv.to_bertviz(tiny_attention.transpose("query", "key", "head", "layer"))
    assert tensors[1][0, 2, 3, 1].item() == 1231


def test_localize_points_every_cdn_url_at_the_local_server():
    html = (
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js"></script>'
        "d3: 'https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min', "
        "jquery: 'https://cdnjs.cloudflare.com/ajax/libs/jquery/2.0.0/jquery.min',"
    )
    out = bv.localize(html, "http://127.0.0.1:9")
    assert "cdnjs" not in out
    assert 'src="http://127.0.0.1:9/requirejs.js"' in out
    # require.js paths take no extension: it appends ".js" itself.
    assert "d3: 'http://127.0.0.1:9/d3'" in out
    assert "jquery: 'http://127.0.0.1:9/jquery'" in out


def test_bertviz_page_on_identical_attention(tiny_attention):
    pytest.importorskip("bertviz")
    html, seconds = bv.head_view_html(tiny_attention)
    assert seconds >= 0
    for url in bv.SCRIPTS:
        assert url in html  # the URLs localize() rewrites are the ones BertViz writes
    params = json.loads(html.split("const params = ")[1].split("; // HACK")[0])
    attn = params["attention"][0]["attn"]
    assert np.array(attn).shape == (2, 3, 4, 4)
    assert attn[1][2][3][1] == 1231.0
    assert params["attention"][0]["left_text"][1] == XSS  # BertViz's own escaping is not ours to test


def test_static_server_serves_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pages.StaticServer(tmp_path) as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{server.url}/a.txt", timeout=5) as response:
            assert response.read() == b"hello"


def test_fraction_and_table():
    assert run.fraction(None) == "—"
    assert run.fraction(0.01) == "1/100"
    assert run.fraction(1 / 50) == "1/50"
    assert run.fraction(2.5) == "2.50×"
    rows = [
        run.row("export", "file size, 512 tokens", "5.00 MB", "870 MB", "1/174", "≤ 1/50", True),
        run.row("export", "generation", "1.00 s", "48.00 s", "1/48", "≤ 1/20", False),
        run.row("page", "ready", "1.00 s"),
    ]
    text = run.render_table(rows)
    assert "[export]" in text and "[page]" in text
    assert " met" in text and "MISSED" in text
    assert run.markdown_table(rows).count("\n") == 4
    assert run.mb(5e6) == "5.00 MB" and run.mb(8.7e8) == "870 MB"
    assert run.secs(0.047) == "47 ms" and run.secs(2.345) == "2.35 s"


def test_quick_plan_uses_small_sizes():
    quick = run.plan(run.argparse.Namespace(quick=True, export_tokens=None, page_tokens=None,
                                            bertviz_page_tokens=None, explorer_tokens=512))  # fmt: skip
    assert quick["export_sizes"] == [64] and quick["page_attviz"] == [128] and quick["page_bertviz"] == [64]
    full = run.plan(run.argparse.Namespace(quick=False, export_tokens=None, page_tokens=None,
                                           bertviz_page_tokens=None, explorer_tokens=512))  # fmt: skip
    assert full["export_sizes"] == [64, 128, 256, 512] and full["page_attviz"] == [128, 512, 2048]


def _chromium_or_skip() -> None:
    if not os.path.isfile(pages.CHROMIUM):
        if os.environ.get("ATTVIZ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no Chromium at {pages.CHROMIUM}; ATTVIZ_REQUIRE_BROWSER=1")
        pytest.skip(f"no Chromium at {pages.CHROMIUM}")
    pytest.importorskip("playwright")


@pytest.mark.browser
@pytest.mark.slow
def test_export_section_runs_on_a_short_document(tmp_path):
    pytest.importorskip("attviz.export")
    out = tmp_path / "bench.json"
    assert run.main(["--only", "export", "--export-tokens", "24", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    entry = results["export"][0]
    assert entry["tokens"] == 24 and entry["attviz_bytes"] > 0 and entry["attviz_s"] > 0
    if bv.available():
        assert entry["bertviz_bytes"] > 0 and entry["size_ratio"] == entry["attviz_bytes"] / entry["bertviz_bytes"]
    assert 0 < entry["attviz_matrix_bytes"] <= entry["attviz_bytes"]  # one scale per matrix: never larger
    assert [r["section"] for r in results["rows"]] == ["export"] * 3  # size, time, size with per-matrix scales


def test_long_document_quick_mode_runs(tmp_path):
    """benchmarks/long_document.py --quick (CI: 1,024 tokens, 1 round), here on a 96-token document."""
    import argparse

    from benchmarks import long_document

    quick = argparse.Namespace(quick=True, tokens=None, rounds=None)
    assert long_document.plan(quick) == ([1024], 1)
    out = tmp_path / "long.json"
    argv = ["--quick", "--tokens", "96", "--store-dir", str(tmp_path), "--json", str(out)]
    results = long_document.main(argv)
    assert json.loads(out.read_text())["rows"] == results["rows"]
    size = results["sizes"]["96"]
    assert size["built_s"] > 0 and not size["baseline_skipped"] and size["same_summary"]  # bit for bit
    assert [r["figure"] for r in results["rows"]] == [f[0] for f in long_document.FIGURES]
    new, old = size["runs"]
    assert not new["baseline"] and old["baseline"]
    assert new["matrix_shape"] == [96, 96] and new["token_vector_shape"] == [96] and new["summary_shape"] == [6, 12, 6]
    assert all(r["new"] > 0 and r["baseline"] > 0 and r["ratio"] > 0 for r in results["rows"])
    assert len(results["targets"]) == 2
    again = long_document.main([*argv, "--no-baseline"])  # the store is reused
    assert again["sizes"]["96"]["built_s"] is None and "ratio" not in again["rows"][0]


# -- benchmarks/explorer.py ----------------------------------------------------------------------------
def _steps(*ms, changed=True):
    return [{"ms": m, "server_ms": m - 10, "changed": changed, "bytes": 1000, "frames": 3} for m in ms]


def test_explorer_verdict_needs_every_round_on_one_side():
    from benchmarks import explorer

    assert explorer.verdict([100, 200, 240], 250) == "met"
    assert explorer.verdict([260, 300], 250) == "missed"
    assert explorer.verdict([240, 260], 250) == "unclear"
    assert explorer.verdict([float("nan")], 250) == "no data"


def test_explorer_summary_ratios_per_round_and_table():
    from benchmarks import explorer

    raw = {
        "new": [{"head/Text": _steps(100, 110, 120)}, {"head/Text": _steps(90, 100, 300)}],
        "baseline": [{"head/Text": _steps(200, 200, 210)}, {"head/Text": _steps(260, 270, 240)}],
    }
    (row,) = explorer.summarise(raw)
    assert row["action"] == "head" and row["tab"] == "Text" and row["target_ms"] == 250
    assert row["new"]["round_medians_ms"] == [110, 100] and row["new"]["median_ms"] == 105
    assert row["new"]["target"] == "met" and row["baseline"]["target"] == "unclear"
    assert row["ratio"]["min"] == pytest.approx(100 / 260) and row["ratio"]["max"] == pytest.approx(0.55)
    assert row["ratio"]["verdict"] == "faster"
    table = explorer.markdown([row])
    assert "0.47 (0.38–0.55), faster" in table and "| met |" in table
    (alone,) = explorer.summarise({"new": raw["new"]})
    assert "ratio" not in alone and "baseline" not in explorer.markdown([alone])
    (once,) = explorer.summarise({label: rounds[:1] for label, rounds in raw.items()})
    assert once["ratio"]["verdict"] == "one round: no spread" and once["new"]["target"] == "met (1 round)"


def test_explorer_quick_plan_and_documents():
    import argparse

    from benchmarks import explorer

    quick = explorer.plan(argparse.Namespace(quick=True, tokens=None, rounds=None, steps=None, switches=None))
    assert quick == {"tokens": 128, "rounds": 1, "steps": 2, "switches": 1}
    full = explorer.plan(argparse.Namespace(quick=False, tokens=None, rounds=None, steps=None, switches=None))
    assert full == {"tokens": 512, "rounds": 3, "steps": 6, "switches": 4}
    first, second = explorer.long_texts(2)
    assert first != second and sorted(first.split()) == sorted(second.split())  # the same texts, reversed


@pytest.mark.browser
@pytest.mark.slow
def test_explorer_end_to_end_in_chromium():
    """The current app served by a subprocess, driven in Chromium: every tab and action measured."""
    _chromium_or_skip()
    from benchmarks import explorer

    # In a process of its own: Playwright's sync API refuses to start while another test's Playwright
    # (the browser tests' session-wide Chromium) runs in this one.
    code = (
        "import json; from benchmarks import explorer; print(json.dumps(explorer.end_to_end("
        "48, rounds=1, steps=1, switches=1, baseline_dir=None, log=lambda _: None)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=explorer.ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results["apps"]["new"]["attviz"] == str(explorer.ROOT / "attviz" / "__init__.py")
    rows = {(r["action"], r["tab"]): r for r in results["summary"]}
    assert set(rows) == {("head", t) for t in explorer.HEAD_TABS} | {("document", t) for t in explorer.SWITCH_TABS}
    for (action, tab), row in rows.items():
        new = row["new"]
        assert new["steps"] == 1 and new["median_ms"] > 0 and new["server_ms"] > 0, (action, tab, new)
        if tab != "Heads":  # the head view draws every head: a head change changes no view there
            assert new["unchanged_steps"] == 0 and new["bytes_per_step"] > 0, (action, tab, new)


# -- benchmarks/corpus_stats.py ------------------------------------------------------------------------
def test_corpus_stats_verdicts_and_plan():
    import argparse

    from benchmarks import corpus_stats

    assert corpus_stats.verdict([1.0, 1.5], 2.0) == "met"
    assert corpus_stats.verdict([2.5, 3.0], 2.0) == "missed"
    assert corpus_stats.verdict([1.5, 2.5], 2.0) == "within noise"
    assert corpus_stats.verdict([1.0], 2.0) == "met (1 round)"
    blank = argparse.Namespace(quick=True, docs=None, rounds=None)
    assert corpus_stats.plan(blank) == {"docs": 60, "rounds": 2}
    assert corpus_stats.plan(argparse.Namespace(quick=False, docs=None, rounds=None)) == {"docs": 5000, "rounds": 3}
    records = corpus_stats.documents(40)
    assert len({r["id"] for r in records}) == 40 and records == corpus_stats.documents(40)  # seeded
    pool = {sentence for sentence, _ in corpus_stats.sentences()}
    assert len(pool) > 200 and all(sum(s in r["text"] for s in pool) >= 3 for r in records[:5])


@pytest.mark.slow
def test_corpus_stats_quick_mode_runs(tmp_path):
    """benchmarks/corpus_stats.py --quick (CI: 60 documents, 2 rounds), here on 8 documents, 1 round."""
    from benchmarks import corpus_stats

    out = tmp_path / "stats.json"
    argv = ["--quick", "--docs", "8", "--rounds", "1", "--store-dir", str(tmp_path), "--json", str(out)]
    result = corpus_stats.main(argv)
    assert json.loads(out.read_text())["summary"] == result["summary"]
    summary = result["summary"]
    assert result["extract_seconds"] > 0 and result["attention_bytes"] > result["tokens"] > 8 * 30
    assert "atlas.csv" in result["tables"] and "similarity.csv" in result["tables"]
    assert all(s > 0 for s in summary["read_seconds"] + summary["cold_seconds"] + summary["cached_seconds"])
    assert 50e6 < summary["cold_rss"][0] < 4e9  # this child's own peak, not the parent's (the model)
    assert len(summary["verdicts"]) == 3
    again = corpus_stats.main(argv)  # the store is reused
    assert again["extract_seconds"] is None
