"""Head-atlas metrics on attention built so the answer is known, and against a per-row loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attviz.analysis.atlas import (
    HEAD_METRICS,
    OFFSETS,
    PATTERNS,
    document_head_metrics,
    induction_scores,
    pattern_class,
    positional_offset,
    prefix_matching_score,
    repeated_sequences,
    sentence_segments,
)

T = 12


def previous_head(n: int = T) -> np.ndarray:
    """Row i puts all its weight on key i − 1 (row 0, which has none, on itself)."""
    a = np.zeros((n, n), np.float32)
    a[0, 0] = 1
    a[np.arange(1, n), np.arange(n - 1)] = 1
    return a


def sink_head(n: int = T) -> np.ndarray:
    a = np.zeros((n, n), np.float32)
    a[:, 0] = 1
    return a


def causal_uniform(n: int = T) -> np.ndarray:
    return (np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]).astype(np.float32)


def test_previous_token_head():
    m = document_head_metrics(previous_head()[None, None], np.zeros(T, bool))
    assert m["previous"][0, 0] == 1
    assert m["band"][0, 0] == 1
    assert m["distance"][0, 0] == pytest.approx((T - 1) / T)  # rows 1..T-1 at distance 1, row 0 at 0
    assert m["self"][0, 0] == pytest.approx(1 / T) and m["next"][0, 0] == 0
    assert m["entropy"][0, 0] == 0 and m["confidence"][0, 0] == 1
    profile = m["offset_profile"][0, 0]
    assert profile.shape == (2 * OFFSETS + 1,)
    assert profile[OFFSETS - 1] == 1 and profile[OFFSETS] == pytest.approx(1 / T)
    assert (np.delete(profile, [OFFSETS - 1, OFFSETS]) == 0).all()
    offset, weight = positional_offset(m["offset_profile"])
    assert offset[0, 0] == -1 and weight[0, 0] == 1
    assert pattern_class(m)[0, 0] == "diagonal"


def test_sink_head():
    special = np.zeros(T, bool)
    special[0] = True
    m = document_head_metrics(sink_head()[None, None], special)
    for name in ("sink", "first", "column_max", "confidence", "special"):
        assert m[name][0, 0] == 1, name
    assert m["entropy"][0, 0] == 0
    assert m["distance"][0, 0] == pytest.approx(np.arange(T).mean())
    assert pattern_class(m)[0, 0] == "vertical"
    offset, weight = positional_offset(m["offset_profile"])
    assert offset[0, 0] == -OFFSETS and weight[0, 0] == pytest.approx(1 / (T - OFFSETS))  # rows 8.. at offset -8


def test_uniform_rows_have_normalised_entropy_one():
    full = np.full((2, 3, T, T), 1 / T, np.float32)
    m = document_head_metrics(full, np.zeros(T, bool))
    np.testing.assert_allclose(m["entropy"], 1, atol=1e-6)
    np.testing.assert_allclose(m["column_max"], 1 / T, atol=1e-6)
    causal = np.broadcast_to(causal_uniform(), (2, 3, T, T))
    m = document_head_metrics(causal, np.zeros(T, bool))  # causal inferred: row i over its i + 1 keys
    np.testing.assert_allclose(m["entropy"], 1, atol=1e-6)
    m = document_head_metrics(causal, np.zeros(T, bool), causal=False)  # over all T keys: ln(i+1)/ln T
    expected = np.mean([math.log(i + 1) / math.log(T) for i in range(T)])
    np.testing.assert_allclose(m["entropy"], expected, atol=1e-6)


def test_cross_attention_leaves_positional_metrics_out():
    a = np.full((1, 2, 5, 7), 1 / 7, np.float32)
    m = document_head_metrics(a, np.zeros(7, bool))
    np.testing.assert_allclose(m["entropy"], 1, atol=1e-6)
    np.testing.assert_allclose(m["distance"], np.abs(np.arange(5)[:, None] - np.arange(7)).mean(), atol=1e-5)
    for name in ("previous", "next", "self", "band", "block"):
        assert np.isnan(m[name]).all(), name
    assert np.isnan(m["offset_profile"]).all()
    with pytest.raises(ValueError, match="causal"):
        document_head_metrics(a, np.zeros(7, bool), causal=True)


def reference(a, special, causal, epsilon, segments):
    """Every metric by a loop over heads and query rows, in float64."""
    a = np.asarray(a, np.float64)
    n_layer, n_head, n_query, n_key = a.shape
    out = {name: np.full((n_layer, n_head), np.nan) for name in HEAD_METRICS}
    out["offset_profile"] = np.full((n_layer, n_head, 2 * OFFSETS + 1), np.nan)
    n_segments = len(set(segments[segments >= 0].tolist()))
    for layer in range(n_layer):
        for head in range(n_head):
            rows = {name: [] for name in (*HEAD_METRICS, "offsets")}
            offsets = {d: [] for d in range(-OFFSETS, OFFSETS + 1)}
            for i in range(n_query):
                row = a[layer, head, i]
                n_i = i + 1 if causal else n_key
                if n_i > 1:
                    p = row / row.sum()
                    rows["entropy"].append(-sum(x * math.log(x) for x in p if x > 0) / math.log(n_i))
                rows["distance"].append(sum(row[j] * abs(i - j) for j in range(n_key)))
                rows["special"].append(row[special].sum())
                rows["first"].append(row[0])
                rows["sink"].append(float(row[0] > epsilon))
                rows["confidence"].append(row.max())
                rows["band"].append(sum(row[j] for j in range(max(0, i - 1), min(n_key, i + 2))))
                for name, d in (("previous", -1), ("next", 1), ("self", 0)):
                    if 0 <= i + d < n_key:
                        rows[name].append(row[i + d])
                for d in offsets:
                    if 0 <= i + d < n_key:
                        offsets[d].append(row[i + d])
                if segments[i] >= 0:
                    visible = range(i + 1) if causal else range(n_key)
                    mine = [j for j in visible if segments[j] == segments[i]]
                    rows["block"].append(sum(row[j] for j in mine) - len(mine) / n_i)
            for name in HEAD_METRICS:
                if rows[name] and (name != "block" or n_segments >= 2):
                    out[name][layer, head] = np.mean(rows[name])
            out["column_max"][layer, head] = max(a[layer, head, :, j].mean() for j in range(n_key))
            for d, values in offsets.items():
                if values:
                    out["offset_profile"][layer, head, OFFSETS + d] = np.mean(values)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_random_rows_equal_a_per_row_loop(causal):
    rng = np.random.default_rng(1 + causal)
    n = 21
    a = rng.dirichlet(np.full(n, 0.3), size=(2, 3, n)).astype(np.float32)
    if causal:
        a = np.tril(a)
        a /= a.sum(-1, keepdims=True)
    special = np.zeros(n, bool)
    special[[0, 9, n - 1]] = True
    segments = np.array([0] * 5 + [1] * 9 + [-1] + [2] * 6)
    m = document_head_metrics(a, special, segments=segments, epsilon=0.2)
    expected = reference(a, special, causal, 0.2, segments)
    for name in (*HEAD_METRICS, "offset_profile"):
        assert m[name].dtype == np.float32
        np.testing.assert_allclose(m[name], expected[name], atol=2e-6, rtol=1e-5, err_msg=name)


def test_block_by_construction():
    segments = np.repeat([0, 1], 8)
    own = (segments[:, None] == segments[None, :]) / 8  # uniform within the own segment
    m = document_head_metrics(own[None, None].astype(np.float32), np.zeros(16, bool), segments=segments)
    assert m["block"][0, 0] == pytest.approx(1 - 8 / 16)
    assert m["band"][0, 0] < 0.5
    assert pattern_class(m)[0, 0] == "block"
    causal = np.tril(own) / np.tril(own).sum(-1, keepdims=True)  # row i: uniform over its segment's keys ≤ i
    m = document_head_metrics(causal[None, None].astype(np.float32), np.zeros(16, bool), segments=segments)
    # uniform causal attention would give row i (i < 8) all of it, row 8 + r the share (r + 1) / (9 + r)
    expected = np.mean([1 - 1] * 8 + [1 - (r + 1) / (9 + r) for r in range(8)])
    assert m["block"][0, 0] == pytest.approx(expected, abs=1e-6)
    segments = np.array([0, 0, 0, 1, 1, 1])
    uniform = np.full((1, 1, 6, 6), 1 / 6, np.float32)
    flat = document_head_metrics(uniform, np.zeros(6, bool), segments=segments)
    assert flat["block"][0, 0] == pytest.approx(0, abs=1e-6)
    single = document_head_metrics(uniform, np.zeros(6, bool), segments=np.zeros(6, int))
    assert np.isnan(single["block"][0, 0])
    assert np.isnan(document_head_metrics(uniform, np.zeros(6, bool))["block"][0, 0])  # no special: one segment


def test_sentence_segments():
    tokens = ["[CLS]", "The", "cat", ".", "It", "sat", "!", "[SEP]"]
    special = np.array([1, 0, 0, 0, 0, 0, 0, 1], bool)
    assert sentence_segments(special, tokens).tolist() == [-1, 0, 0, 0, 1, 1, 1, -1]
    special = np.array([1, 0, 0, 1, 0, 0, 1], bool)  # [CLS] a b [SEP] c d [SEP]
    assert sentence_segments(special).tolist() == [-1, 0, 0, -1, 1, 1, -1]
    assert sentence_segments(np.zeros(3, bool), ["Ġa", "Ġ.", "Ġb"]).tolist() == [0, 0, 1]


def test_float16_gives_the_float32_answer():
    rng = np.random.default_rng(3)
    a32 = rng.dirichlet(np.full(40, 0.5), size=(2, 4, 40)).astype(np.float32)
    a16 = a32.astype(np.float16)
    special = np.zeros(40, bool)
    special[0] = True
    m16 = document_head_metrics(a16, special)
    same = document_head_metrics(a16.astype(np.float32), special)
    m32 = document_head_metrics(a32, special)
    for name in (*HEAD_METRICS, "offset_profile"):
        np.testing.assert_allclose(m16[name], same[name], atol=1e-6, err_msg=name)
        if name == "distance":
            np.testing.assert_allclose(m16[name], m32[name], rtol=1e-3, err_msg=name)
        elif name != "sink":  # a threshold: a weight next to epsilon may round across it
            np.testing.assert_allclose(m16[name], m32[name], atol=1e-3, err_msg=name)


def test_pattern_rules_and_precedence():
    metrics = {
        "column_max": np.array([0.6, 0.1, 0.6, 0.1, 0.1, np.nan]),
        "special": np.array([0.0, 0.55, 0.0, 0.0, 0.0, np.nan]),
        "band": np.array([0.9, 0.0, 0.0, 0.7, 0.1, np.nan]),
        "block": np.array([0.0, 0.0, 0.5, 0.5, 0.1, np.nan]),
    }
    assert pattern_class(metrics).tolist() == [
        "vertical",  # column_max ≥ 0.5 wins over band ≥ 0.5
        "vertical",  # special ≥ 0.5
        "vertical",
        "diagonal",  # band wins over block
        "heterogeneous",
        "heterogeneous",  # NaN everywhere
    ]
    assert pattern_class(metrics, thresholds={"vertical": 0.95})[0] == "diagonal"
    assert set(pattern_class(metrics).tolist()) <= set(PATTERNS)
    assert pattern_class({"band": np.array([[0.6]])}).tolist() == [["diagonal"]]  # missing metrics are NaN
    with pytest.raises(ValueError, match="unknown"):
        pattern_class(metrics, thresholds={"stripes": 0.1})


def test_positional_offset_nan_profile():
    profile = np.full((1, 2, 2 * OFFSETS + 1), np.nan, np.float32)
    profile[0, 1, OFFSETS + 3] = 0.4
    offset, weight = positional_offset(profile)
    assert np.isnan(offset[0, 0]) and np.isnan(weight[0, 0])
    assert offset[0, 1] == 3 and weight[0, 1] == pytest.approx(0.4)


def induction_attention(length: int, offset: int, copies: int = 2) -> np.ndarray:
    """(layer 1, head 3, T, T): an induction head, a previous-token head, and half of each."""
    n = offset + copies * length
    base = causal_uniform(n)
    induction = base.copy()
    for i in range(offset + length, n):  # the token after the earlier occurrence(s) of token i
        induction[i] = 0
        earlier = [i - m * length + 1 for m in range(1, copies) if i - m * length >= offset]
        induction[i, earlier] = 1 / len(earlier)
    previous = previous_head(n)
    return np.stack([induction, previous, (induction + previous) / 2])[None]


@pytest.mark.parametrize(("offset", "copies"), [(0, 2), (1, 2), (1, 3)])
def test_prefix_matching_score_by_construction(offset, copies):
    length = 6
    score = prefix_matching_score(induction_attention(length, offset, copies), length, offset=offset)
    np.testing.assert_allclose(score, [[1.0, 0.0, 0.5]], atol=1e-7)
    f16 = prefix_matching_score(induction_attention(length, offset, copies).astype(np.float16), length, offset=offset)
    np.testing.assert_allclose(f16, score, atol=1e-3)


def test_prefix_matching_score_rejects_short_sequences():
    with pytest.raises(ValueError):
        prefix_matching_score(np.zeros((1, 1, 5, 5)), 5)


def test_repeated_sequences():
    ids = repeated_sequences(30, length=7, n_sequences=4, seed=2, bos_token_id=3)
    assert ids.shape == (4, 15)
    assert (ids[:, 0] == 3).all() and (ids[:, 1:8] == ids[:, 8:]).all()
    assert not (ids[:, 1:] == 3).any() and ids.max() < 30
    assert (ids == repeated_sequences(30, length=7, n_sequences=4, seed=2, bos_token_id=3)).all()


def test_induction_scores_on_a_tiny_gpt2():
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=128))
    model.train()  # induction_scores runs in eval mode and restores this
    before = model.config._attn_implementation
    scores = induction_scores(model, length=10, n_sequences=3, seed=5)
    assert scores.shape == (2, 2) and scores.dtype == np.float32
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    assert model.training and model.config._attn_implementation == before

    ids = repeated_sequences(50, length=10, n_sequences=3, seed=5)
    model.eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model(torch.as_tensor(ids), output_attentions=True).attentions
    a = torch.stack(attentions, 1).numpy()  # (sequence, layer, head, T, T)
    expected = np.zeros((2, 2))
    for s in range(3):
        for layer in range(2):
            for head in range(2):
                expected[layer, head] += np.mean([a[s, layer, head, i, i - 9] for i in range(10, 20)]) / 3
    np.testing.assert_allclose(scores, expected, atol=1e-6)
