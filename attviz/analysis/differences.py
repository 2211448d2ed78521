"""Contrasts over a corpus: class vs class, correct vs wrong, store A vs store B (issue #13).

Every test takes one value per document (:mod:`attviz.analysis.engine` aggregates per document × head ×
token type first) and reports, per head and per metric or token type: the Mann–Whitney U test and the
two-sample Kolmogorov–Smirnov test with Cliff's δ (= the rank-biserial correlation) and its percentile
bootstrap interval, Benjamini–Hochberg q-values across the whole family (see
:mod:`attviz.analysis.contrasts` for the references). Store A vs store B pairs the same texts and adds
the Wilcoxon signed-rank test. Tokens that separate two groups are ranked by the weighted log-odds
with an informative Dirichlet prior (Monroe et al. 2008). The original AttViz's per-class token ranking
(mean ± std, max behind), log-value distributions and QQ plots are here too, each class on its own data
(the original plotted the pooled data for every class).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from attviz.analysis.contrasts import (
    benjamini_hochberg,
    bootstrap_delta,
    cliffs_delta,
    ks_test,
    mann_whitney,
    weighted_log_odds,
    wilcoxon_paired,
)
from attviz.analysis.engine import CorpusStatistics, group_of
from attviz.errors import InputError

REST = "rest"  # the second group when only one class is named: every other document
STAT_COLUMNS = (
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "U",
    "p_mannwhitney",
    "ks",
    "p_ks",
    "delta",
    "delta_low",
    "delta_high",
)


def groups(
    stats: CorpusStatistics, by: str, a: str | None = None, b: str | None = None
) -> tuple[str, str, np.ndarray, np.ndarray]:
    """``(name_a, name_b, mask_a, mask_b)``: the two groups of documents of a contrast. ``by``: ``label``
    (or ``gold``), ``prediction`` (``predicted``) or ``correct``; ``a``/``b``: the groups' values (default:
    the first two classes, or a class against the :data:`REST`)."""
    values = group_of(stats.documents, by)
    present = sorted({str(v) for v in values.dropna()})
    if by == "correct":
        present = [v for v in ("correct", "wrong") if v in present]
    if a is None:
        if len(present) < 2:
            raise InputError(f"contrast by {by!r} needs two groups of documents; the corpus has {present or 'none'}")
        a, b = present[0], present[1] if b is None else b
    if b is None:
        others = [v for v in present if v != a]
        b = others[0] if len(others) == 1 else REST
    for name in (a, b):
        if name != REST and name not in present:
            raise InputError(f"no documents with {by} = {name!r} (the corpus has {', '.join(present)})")
    text = values.map(lambda v: None if v is None else str(v)).to_numpy(dtype=object)
    mask_a = text == a
    mask_b = (text != None) & (text != a) if b == REST else text == b  # noqa: E711 (elementwise)
    return str(a), str(b), mask_a.astype(bool), mask_b.astype(bool)


def test_family(values_a: np.ndarray, values_b: np.ndarray, *, paired: bool = False) -> dict[str, np.ndarray]:
    """Every statistic of :data:`STAT_COLUMNS` for a family ``(tests, n_a)`` vs ``(tests, n_b)``."""
    u, p = mann_whitney(values_a, values_b)
    ks, p_ks = ks_test(values_a, values_b)
    out = {
        "n_a": np.full(len(u), values_a.shape[1]),
        "n_b": np.full(len(u), values_b.shape[1]),
        "mean_a": values_a.mean(axis=1),
        "mean_b": values_b.mean(axis=1),
        "U": u,
        "p_mannwhitney": p,
        "ks": ks,
        "p_ks": p_ks,
        "delta": cliffs_delta(values_a, values_b),
    }
    if paired:
        out["p_wilcoxon"] = wilcoxon_paired(values_a, values_b)
    return out


def _finish(
    frame: pd.DataFrame, samples: list[tuple[np.ndarray, np.ndarray]], *, resamples: int, ci_rows: int | None, seed: int
) -> pd.DataFrame:
    """q-values across the family, bootstrap intervals for the ``ci_rows`` smallest p (all: None), sorted."""
    if frame.empty:
        return frame
    for column in [c for c in frame.columns if c.startswith("p_")]:
        frame["q_" + column[2:]] = benjamini_hochberg(frame[column].to_numpy())
    frame["delta_low"], frame["delta_high"] = np.nan, np.nan
    order = np.argsort(frame["p_mannwhitney"].to_numpy(), kind="stable")
    chosen = order if ci_rows is None else order[:ci_rows]
    for row in chosen:
        a, b = samples[row]
        low, high = bootstrap_delta(a, b, resamples=resamples, seed=seed)
        frame.iloc[row, frame.columns.get_loc("delta_low")] = low[0]
        frame.iloc[row, frame.columns.get_loc("delta_high")] = high[0]
    return frame.iloc[order].reset_index(drop=True)


def contrast(
    stats: CorpusStatistics,
    by: str = "label",
    a: str | None = None,
    b: str | None = None,
    *,
    on: str = "heads",
    metrics: Sequence[str] | None = None,
    min_documents: int = 3,
    resamples: int = 1000,
    ci_rows: int | None = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Group ``a`` vs group ``b`` per head: on each head-atlas metric (``on="heads"``) or on each token
    type's per-document value (``on="tokens"``; types in at least ``min_documents`` documents of each
    group). One row per test, sorted by p; ``q_*``: Benjamini–Hochberg across all the rows."""
    name_a, name_b, mask_a, mask_b = groups(stats, by, a, b)
    frame, samples = _family(stats, mask_a, mask_b, on=on, metrics=metrics, min_documents=min_documents)
    frame = _finish(frame, samples, resamples=resamples, ci_rows=ci_rows, seed=seed)
    frame.attrs.update(by=by, a=name_a, b=name_b, on=on)
    return frame


def _family(stats, mask_a, mask_b, *, on, metrics, min_documents, other=None):
    layers, heads = stats.heads["layer"].values, stats.heads["head"].values
    lh = {"layer": np.repeat(layers, len(heads)), "head": np.tile(heads, len(layers))}
    parts, samples = [], []
    paired = other is not None
    if on == "heads":
        for metric in metrics or stats.metrics:
            va = stats.heads[metric].values[mask_a].reshape(int(mask_a.sum()), -1)
            source_b = other.heads[metric].values if paired else stats.heads[metric].values
            vb = source_b[mask_b].reshape(int(mask_b.sum()), -1)
            keep = np.isfinite(va).all(axis=1) & (np.isfinite(vb).all(axis=1) if paired else True)
            keep_b = keep if paired else np.isfinite(vb).all(axis=1)
            va, vb = va[keep].T, vb[keep_b].T
            if va.shape[1] < min_documents or vb.shape[1] < min_documents:
                continue
            parts.append(pd.DataFrame({**lh, "metric": metric, **test_family(va, vb, paired=paired)}))
            samples.extend(zip(va[:, None, :], vb[:, None, :], strict=True))
    elif on == "tokens":
        ta, tb = _type_matrix(stats, mask_a), _type_matrix(other if paired else stats, mask_b)
        for token in sorted(set(ta) & set(tb)):
            (docs_a, va), (docs_b, vb) = ta[token], tb[token]
            if paired:
                common = np.intersect1d(docs_a, docs_b)
                va, vb = va[np.isin(docs_a, common)], vb[np.isin(docs_b, common)]
            if len(va) < min_documents or len(vb) < min_documents:
                continue
            va, vb = va.reshape(len(va), -1).T, vb.reshape(len(vb), -1).T
            parts.append(pd.DataFrame({**lh, "type": token, **test_family(va, vb, paired=paired)}))
            samples.extend(zip(va[:, None, :], vb[:, None, :], strict=True))
    else:
        raise InputError(f"contrast on {on!r}: choose 'heads' or 'tokens'")
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*lh, *STAT_COLUMNS])
    return frame, samples


def _type_matrix(stats: CorpusStatistics, mask: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per token type: the documents of ``mask`` that hold it and their values ``(docs, layer, head)``."""
    docs = stats.tokens["entry_doc"].values
    chosen = np.flatnonzero(mask[docs])
    types = pd.Series(stats.tokens["entry_type"].values[chosen])
    values = stats.tokens["value"].values
    out = {}
    for token, rows in types.groupby(types).groups.items():
        entries = chosen[np.asarray(rows)]
        out[str(token)] = (docs[entries], values[entries])
    return out


def compare_stores(
    stats_a: CorpusStatistics,
    stats_b: CorpusStatistics,
    *,
    on: str = "heads",
    match: str = "text",
    metrics: Sequence[str] | None = None,
    min_documents: int = 3,
    resamples: int = 1000,
    ci_rows: int | None = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Store A vs store B over the same texts (two checkpoints or models with the same heads): the
    documents are paired by ``match`` (``text`` or ``id``); the unpaired tests plus Wilcoxon's."""
    key_a, key_b = (s.documents[match].astype(str).to_numpy() for s in (stats_a, stats_b))
    common = [k for k in dict.fromkeys(key_a) if k in set(key_b)]
    if len(common) < min_documents:
        raise InputError(f"the two stores share {len(common)} documents by {match}; need at least {min_documents}")
    shapes = [(s.heads.sizes["layer"], s.heads.sizes["head"]) for s in (stats_a, stats_b)]
    if shapes[0] != shapes[1]:
        raise InputError(f"the stores' models have different heads ({shapes[0]} vs {shapes[1]} layers × heads)")
    first_a = {k: i for i, k in reversed(list(enumerate(key_a)))}
    first_b = {k: i for i, k in reversed(list(enumerate(key_b)))}
    index_a = np.array([first_a[k] for k in common])
    index_b = np.array([first_b[k] for k in common])
    aligned_a = _subset(stats_a, index_a)
    aligned_b = _subset(stats_b, index_b)
    everything = np.ones(len(common), bool)
    frame, samples = _family(
        aligned_a, everything, everything, on=on, metrics=metrics, min_documents=min_documents, other=aligned_b
    )
    frame = _finish(frame, samples, resamples=resamples, ci_rows=ci_rows, seed=seed)
    frame.attrs.update(on=on, match=match, documents=len(common))
    return frame


def _subset(stats: CorpusStatistics, index: np.ndarray) -> CorpusStatistics:
    """The statistics of the documents ``index`` (in that order), renumbered 0..n-1."""
    heads = stats.heads.isel(doc=index).assign_coords(doc=np.arange(len(index)))
    position = np.full(len(stats.documents), -1)
    position[index] = np.arange(len(index))
    entry_doc = stats.tokens["entry_doc"].values
    keep = np.flatnonzero(position[entry_doc] >= 0)
    tokens = stats.tokens.isel(entry=keep)
    tokens["entry_doc"] = ("entry", position[entry_doc[keep]].astype(np.int32))
    return CorpusStatistics(heads, tokens, None, stats.documents.iloc[index], stats.settings)


# -- tokens that separate classes --------------------------------------------------------------
def token_log_odds(
    stats: CorpusStatistics,
    by: str = "label",
    a: str | None = None,
    b: str | None = None,
    *,
    weight: str = "count",
    layer: int | None = None,
    head: int | None = None,
    min_documents: int = 3,
) -> pd.DataFrame:
    """Token types that separate group ``a`` from ``b`` by the weighted log-odds with an informative
    Dirichlet prior (Monroe et al. 2008; prior: the counts over the whole corpus). ``weight="count"``
    counts occurrences; ``"attention"`` counts each occurrence by the attention it receives × the
    document's length (one head, or the mean over heads), which equals the count under uniform attention.
    Types in fewer than ``min_documents`` documents are left out. Sorted by z (``a``'s first)."""
    name_a, name_b, mask_a, mask_b = groups(stats, by, a, b)
    frame = stats.token_values(layer, head)
    if weight == "attention":
        lengths = stats.documents["n_tokens"].to_numpy(dtype=np.float64)
        frame["weight"] = frame["value"] * frame["count"] * lengths[frame["doc"].to_numpy()]
    elif weight == "count":
        frame["weight"] = frame["count"].astype(np.float64)
    else:
        raise InputError(f"weight {weight!r}: choose 'count' or 'attention'")
    documents = frame.groupby("type")["doc"].nunique()
    kept = documents.index[documents >= min_documents]
    if len(kept) == 0:
        raise InputError(f"no token type is in {min_documents} or more documents")
    doc_group = np.where(mask_a, "a", np.where(mask_b, "b", ""))
    frame["group"] = doc_group[frame["doc"].to_numpy()]
    table = frame[frame["type"].isin(kept)].pivot_table(
        index="type", columns="group", values="weight", aggfunc="sum", fill_value=0.0
    )
    prior = frame[frame["type"].isin(kept)].groupby("type")["weight"].sum().reindex(table.index)
    ya = table["a"] if "a" in table else pd.Series(0.0, index=table.index)
    yb = table["b"] if "b" in table else pd.Series(0.0, index=table.index)
    positive = prior > 0
    delta, z = weighted_log_odds(ya[positive], yb[positive], prior[positive])
    out = pd.DataFrame(
        {
            "type": table.index[positive],
            "count_a": ya[positive].to_numpy(),
            "count_b": yb[positive].to_numpy(),
            "documents": documents.reindex(table.index[positive]).to_numpy(),
            "log_odds": delta,
            "z": z,
        }
    )
    out = out.sort_values("z", ascending=False).reset_index(drop=True)
    out.attrs.update(by=by, a=name_a, b=name_b, weight=weight)
    return out


# -- the original AttViz's per-class analyses, each class on its own data ----------------------
def class_ranking(
    stats: CorpusStatistics,
    by: str = "label",
    *,
    layer: int | None = None,
    head: int | None = None,
    k: int = 25,
    min_documents: int = 2,
) -> pd.DataFrame:
    """Per class, its top ``k`` token types by the mean over its documents of the per-document value
    (with std and max; the original's "mean attention value, max in the background" chart)."""
    values = group_of(stats.documents, by).to_numpy(dtype=object)
    frame = stats.token_values(layer, head)
    frame["class"] = values[frame["doc"].to_numpy()]
    frame = frame[frame["class"].notna()]
    parts = []
    for name, part in frame.groupby("class"):
        summary = (
            part.groupby("type")["value"].agg(["mean", "std", "max", "count"]).rename(columns={"count": "documents"})
        )
        summary = summary[summary["documents"] >= min_documents].sort_values("mean", ascending=False).head(k)
        parts.append(summary.reset_index().assign(**{"class": str(name)}))
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["type", "mean", "std", "max", "documents", "class"])
    )


def log_values(
    stats: CorpusStatistics,
    by: str = "label",
    *,
    statistic: str = "max",
    layer: int | None = None,
    head: int | None = None,
) -> dict[str, np.ndarray]:
    """Per class, log10 of each token type's ``statistic`` (max, mean or min over the class's documents of
    the per-document value) — the original's log-value distributions, one sample per class."""
    if statistic not in ("max", "mean", "min"):
        raise InputError(f"statistic {statistic!r}: choose max, mean or min")
    values = group_of(stats.documents, by).to_numpy(dtype=object)
    frame = stats.token_values(layer, head)
    frame["class"] = values[frame["doc"].to_numpy()]
    out = {}
    for name, part in frame[frame["class"].notna()].groupby("class"):
        per_type = part.groupby("type")["value"].agg(statistic).to_numpy()
        per_type = per_type[per_type > 0]
        out[str(name)] = np.log10(per_type)
    return out


def qq_data(samples: dict[str, np.ndarray]) -> dict[str, pd.DataFrame]:
    """A normal QQ plot per class of its own sample (``scipy.stats.probplot``): theoretical vs ordered
    values and the least-squares line (the original plotted the pooled data for every class)."""
    out = {}
    for name, sample in samples.items():
        if len(sample) < 2:
            continue
        from scipy import stats as scipy_stats

        (theoretical, ordered), (slope, intercept, r) = scipy_stats.probplot(sample, dist="norm")
        frame = pd.DataFrame({"theoretical": theoretical, "observed": ordered, "fit": slope * theoretical + intercept})
        frame.attrs.update(slope=slope, intercept=intercept, r=r)
        out[name] = frame
    return out


def describe(frame: pd.DataFrame) -> str:
    """One line naming a contrast table's groups."""
    a, b = frame.attrs.get("a"), frame.attrs.get("b")
    return f"{frame.attrs.get('by', '')}: {a} vs {b}" if a else ""
