"""`attviz stats`: the CSV tables, the offline HTML report and the cache, on corpora with known answers."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attviz.analysis import engine, report
from attviz.analysis.engine import corpus_statistics
from attviz.analysis.report import compute_tables, write_report, write_tables
from attviz.cli import main
from attviz.corpus import Corpus, Document, attention_array
from tests.analysis.synthetic import synthetic_corpus

TAG = "<b>x</b>"  # a token whose text is markup: it must reach the page as text


def _relabelled(corpus: Corpus, *, prefix: str = "", good: str = "good", uniform: bool = False) -> Corpus:
    """The same documents with the "good" token renamed and, with ``uniform``, head (1, 2) uniform."""
    docs = []
    for doc in corpus:
        a = doc.attention.values.copy()
        if uniform:
            a[1, 2] = 1 / a.shape[-1]
        tokens = doc.token_table()
        tokens["text"] = tokens["text"].replace("good", good)
        docs.append(
            Document(
                id=prefix + doc.id,
                text=doc.text.replace("good", good),
                arrays={"self": attention_array(a, tokens)},
                label=doc.label,
                prediction=doc.prediction,
            )
        )
    return Corpus(docs, attrs={"model": "synthetic <model>"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_corpus().save(tmp_path_factory.mktemp("report") / "synthetic.zarr")


@pytest.fixture(scope="module")
def other_store(tmp_path_factory):
    """Store B: the same texts, head (1, 2) uniform everywhere (a checkpoint that lost the effect)."""
    return _relabelled(synthetic_corpus(), prefix="b-", uniform=True).save(tmp_path_factory.mktemp("b") / "b.zarr")


@pytest.fixture(scope="module")
def stats(store):
    return corpus_statistics(store)


@pytest.fixture(scope="module")
def other_stats(other_store):
    return corpus_statistics(other_store)


class _Resources(HTMLParser):
    """Every src/href of <script> and <link> tags, and the Content-Security-Policy."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self.csp = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag in ("script", "link", "img", "iframe"):
            self.links += [(tag, values[name] or "") for name in ("src", "href") if name in values]
        if tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content") or ""


def test_tables_have_the_columns_and_the_values_built_in(stats, tmp_path):
    written = write_tables(stats, tmp_path / "tables")
    assert set(written) == {"atlas", "similarity", "contrast_heads", "contrast_tokens", "log_odds", "class_ranking"}
    assert all(path.is_file() and path.suffix == ".csv" for path in written.values())

    atlas = pd.read_csv(written["atlas"]).set_index(["layer", "head"])
    assert {"entropy", "previous", "sink", "pattern", "offset"} <= set(atlas.columns)
    assert atlas.loc[(0, 0), "previous"] == pytest.approx(1.0)
    assert atlas.loc[(0, 1), "sink"] == pytest.approx(1.0)
    assert atlas.loc[(0, 1), "pattern"] == "vertical"

    similarity = pd.read_csv(written["similarity"], index_col=0)
    labels = ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert list(similarity.index) == labels and list(similarity.columns) == labels
    np.testing.assert_allclose(similarity.to_numpy(), stats.similarity.values, rtol=1e-12)

    tokens = pd.read_csv(written["contrast_tokens"])
    top = tokens.iloc[0]
    assert (top["type"], top["layer"], top["head"]) == ("good", 1, 2)
    assert abs(top["delta"]) == pytest.approx(1.0)
    assert {"p_mannwhitney", "q_mannwhitney", "p_ks", "delta_low", "delta_high", "n_a", "n_b"} <= set(tokens.columns)
    heads = pd.read_csv(written["contrast_heads"])
    assert {"metric", "layer", "head", "p_mannwhitney", "q_mannwhitney", "delta"} <= set(heads.columns)
    odds = pd.read_csv(written["log_odds"])
    assert list(odds.columns) == ["type", "count_a", "count_b", "documents", "log_odds", "z"]
    ranking = pd.read_csv(written["class_ranking"])
    assert set(ranking.columns) == {"type", "mean", "std", "max", "documents", "class"}
    assert set(ranking["class"]) == {"pos", "neg"}


def test_tables_by_prediction_and_by_correctness(stats):
    tables = compute_tables(stats, by="correct")
    assert tables.groups == ("correct", "wrong")
    wrong = int((~stats.documents["correct"].astype(bool)).sum())
    assert set(tables.frames["contrast_heads"]["n_b"]) == {wrong}
    assert compute_tables(stats, by="predicted").groups == ("neg", "pos")
    with pytest.raises(Exception, match="choose gold"):
        compute_tables(stats, by="nothing")


def test_store_a_vs_store_b_tables(stats, other_stats, tmp_path):
    written = write_tables(stats, tmp_path, compare=other_stats)
    assert {"compare_heads", "compare_tokens"} <= set(written)
    table = pd.read_csv(written["compare_tokens"])
    good = table[(table["type"] == "good") & (table["layer"] == 1) & (table["head"] == 2)].iloc[0]
    assert good["p_wilcoxon"] < 0.01
    assert (table[(table["layer"] == 0) & (table["head"] == 0)]["p_wilcoxon"] == 1).all()
    heads = pd.read_csv(written["compare_heads"])
    assert "p_wilcoxon" in heads and heads.iloc[0]["layer"] == 1 and heads.iloc[0]["head"] == 2


def test_report_is_one_offline_file_and_token_text_stays_text(tmp_path):
    corpus = _relabelled(synthetic_corpus(), good=TAG)
    stats = corpus_statistics(corpus)
    path = write_report(stats, tmp_path / "report.html", title="<i>title</i>", corpus=corpus)
    page = path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left behind
    found = _Resources()
    found.feed(page)
    assert found.links == []  # Bokeh and everything else inline: no <script src>, no <link href>
    assert all(not re.match(r"https?:", url) for _, url in found.links)
    assert "default-src 'none'" in found.csp and "connect-src" not in found.csp
    assert "Bokeh" in page and 1_000_000 < len(page.encode()) < 3_000_000
    # the token is in the contrast tables (its row is the top one), escaped, and nowhere as markup
    assert TAG not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<i>title" not in page and "&lt;i&gt;title&lt;/i&gt;" in page
    assert "synthetic &lt;model&gt;" in page
    assert found.tags.count("b") == 0  # (the page itself uses no <b>; the metric note builds them in JS)
    for reference in ("Clark et al. 2019", "Gu et al. 2024", "Kovaleva et al. 2019", "Monroe"):
        assert reference in page
    for heading in ("Head atlas", "Head similarity", "Contrasts: label", "Per class"):
        assert heading in page


def test_report_with_a_second_store(stats, other_stats, tmp_path):
    page = write_report(stats, tmp_path / "ab.html", compare=other_stats).read_text(encoding="utf-8")
    assert "Store A vs store B" in page and "p_wilcoxon" in page


def test_cli_summary_tables_report_and_cache(store, other_store, tmp_path, capsys, monkeypatch):
    shutil.rmtree(Path(store.path) / "stats", ignore_errors=True)
    assert main(["stats", str(store.path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "top heads per metric" in out and "L0H0" in out and "'good'" in out
    assert "contrasts by label: neg vs pos" in out
    (key,) = list((Path(store.path) / "stats").iterdir())
    assert (key / "stats.json").is_file() and list(key.glob("tables-*"))

    def fail(*_, **__):
        raise AssertionError("recomputed although cached")

    # the second run: the statistics and the tables come from the store's stats/ group
    monkeypatch.setattr(engine, "document_statistics", fail)
    monkeypatch.setattr(report, "_compute", fail)
    assert main(["stats", str(store.path), "-o", str(tmp_path / "tables"), "--quiet"]) == 0
    assert pd.read_csv(tmp_path / "tables" / "contrast_tokens.csv").iloc[0]["type"] == "good"
    assert main(["stats", str(store.path), "-o", str(tmp_path / "r.html"), "--quiet"]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1_000_000
    # --no-cache computes again
    with pytest.raises(AssertionError, match="recomputed"):
        main(["--debug", "stats", str(store.path), "--no-cache", "--quiet"])
    monkeypatch.undo()

    assert main(["stats", str(store.path), "--compare", str(other_store.path), "-o", str(tmp_path / "ab")]) == 0
    assert (tmp_path / "ab" / "compare_tokens.csv").is_file()
    capsys.readouterr()
    assert main(["stats", str(store.path), "--compare", str(other_store.path), "--quiet"]) == 0
    assert "store A vs B" in capsys.readouterr().out


def test_cli_errors_are_clean(store, tmp_path, capsys):
    assert main(["stats", str(tmp_path / "missing.zarr")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("attviz stats: error:") and "Traceback" not in err
    assert main(["stats", str(store.path), "--aggregation", "no_such_aggregation", "--quiet"]) == 1
    assert "attviz stats: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_store_report_and_tables(tmp_path):
    from attviz.demo import demo_corpus

    source = demo_corpus(progress=False)
    copy = tmp_path / "demo.zarr"
    shutil.copytree(source.path, copy, ignore=shutil.ignore_patterns("stats"))
    assert main(["stats", str(copy), "-o", str(tmp_path / "demo.html"), "--quiet"]) == 0
    page = (tmp_path / "demo.html").read_text(encoding="utf-8")
    found = _Resources()
    found.feed(page)
    assert found.links == [] and len(page.encode()) < 3_000_000
    assert "all-MiniLM-L6-v2" in page and "6 layers × 12 heads" in page
    assert main(["stats", str(copy), "-o", str(tmp_path / "tables"), "--quiet"]) == 0
    atlas = pd.read_csv(tmp_path / "tables" / "atlas.csv")
    assert len(atlas) == 72 and atlas["entropy"].between(0, 1).all()
    similarity = pd.read_csv(tmp_path / "tables" / "similarity.csv", index_col=0)
    assert similarity.shape == (72, 72) and similarity.index[13] == "L1H1"
    ranking = pd.read_csv(tmp_path / "tables" / "class_ranking.csv")
    assert set(ranking["class"]) == {r["label"] for r in source.table.to_dict("records")}


def test_stats_help_names_every_option():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "attviz.cli", "stats", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: attviz stats" in result.stdout
    for option in ("--by", "--compare", "--output", "--aggregation", "--kind", "--scheduler", "--no-cache"):
        assert option in result.stdout


def test_cli_kind_picks_the_attention_of_an_encoder_decoder(tiny_t5, tmp_path, capsys, monkeypatch):
    """``--kind``: the encoder, decoder and cross attention of a T5 corpus each get their own atlas, equal to
    the engine's on that kind (and the cross attention's rows are decoder queries over encoder keys)."""
    from tests import corpora

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a random model's name is no hub id: no induction lookup
    store = tmp_path / "t5.zarr"
    corpora.encoder_decoder_corpus(*tiny_t5).save(store)
    opened = Corpus.open(store)
    for kind in ("encoder", "decoder", "cross"):
        out = tmp_path / kind
        assert main(["stats", str(store), "--kind", kind, "--quiet", "-o", str(out)]) == 0
        atlas = pd.read_csv(out / "atlas.csv")
        expected = corpus_statistics(opened, kind=kind, cache=False).atlas().reset_index()
        np.testing.assert_allclose(atlas["entropy"], expected["entropy"], rtol=1e-5)
    assert main(["stats", str(store), "--kind", "self", "--quiet"]) == 1
    assert "has no 'self' array" in capsys.readouterr().err
