"""Every built-in aggregation on a real MiniLM document, and the AttViz ones on legacy JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attviz import aggregations, read, registry

LEGACY = Path(__file__).parents[1] / "readers" / "data" / "string_numbers.json"


@pytest.fixture(scope="module")
def minilm_document(minilm):
    from attviz.demo import demo_records
    from attviz.extract import extract

    record = next(r for r in demo_records() if r["id"] == "sports-05")
    return extract([record["text"]], model=minilm, progress=False)[0]


@pytest.mark.slow
def test_every_aggregation_runs_on_a_real_document(minilm_document):
    attention = minilm_document.attention
    n = attention.sizes["query"]
    assert n < 256  # flow's default limit
    ran = []
    for name in aggregations.available():
        aggregation = aggregations.get(name)
        if "vector" in aggregation.needs() or not type(aggregation).__module__.startswith("attviz."):
            continue  # legacy vectors are checked below; third-party plugins have their own tests
        out = aggregation(attention)
        ran.append(name)
        assert out.name and out.attrs.get("long_name"), name
        assert set(out.dims) == set(aggregation.output_dims(attention.dims)), name
        values = np.asarray(out.values, dtype=np.float64)
        assert np.isfinite(values).all(), name
        for dim in ("token", "query", "key"):
            if dim in out.dims and name not in ("merge_words", "drop_special"):
                assert out[f"{dim}_text"].values.tolist() == minilm_document.tokens, name
    assert {"mean", "rollout", "flow", "entropy", "head_summary", "attention_received", "merge_words"} <= set(ran)
    # spot checks against independent numpy on the same matrix
    a = attention.values.astype(np.float64)
    np.testing.assert_allclose(aggregations.get("mean")(attention).values, a.mean(axis=1), atol=1e-6)
    received = aggregations.get("attention_received")(attention).values
    np.testing.assert_allclose(received, a.mean(axis=2), atol=1e-6)
    entropy = aggregations.get("entropy")(attention).values
    p = a / a.sum(-1, keepdims=True)  # float16 rows sum to 1 only within 1e-3: entropy renormalises
    np.testing.assert_allclose(entropy, -(p * np.log(np.where(p > 0, p, 1))).sum(-1), atol=1e-5)


def test_attviz_aggregates_run_on_legacy_json():
    doc = read(LEGACY)[0]
    vectors = doc.vectors.values.astype(np.float64)
    legacy = {name for name in registry.plugins("aggregations") if name.startswith("attviz_")}
    assert legacy == {"attviz_mean", "attviz_std", "attviz_max", "attviz_min", "attviz_max_min", "attviz_entropy"}
    expected = {
        "attviz_mean": vectors.mean(0),
        "attviz_std": vectors.std(0),
        "attviz_max": vectors.max(0),
        "attviz_min": vectors.min(0),
        "attviz_max_min": vectors.max(0) - vectors.min(0),
    }
    for name, values in expected.items():
        out = aggregations.get(name)(doc.vectors)
        assert out.dims == ("token",)
        np.testing.assert_allclose(out.values, values, atol=1e-6)
    assert aggregations.get("attviz_entropy")(doc.vectors).dims == ("token",)
