"""head_summary block by block (issue #11): the same numbers as the whole-array formulas, bit for bit,
on float16, float32 and lazy (dask, store) input, with temporaries bounded by the block size."""

from __future__ import annotations

import tracemalloc

import dask.array as da
import numpy as np
import pytest
import scipy.stats
import torch

from attviz import Corpus, Document, aggregations, attention_array, token_frame
from attviz.aggregations.heads import STATISTICS, head_statistics, head_statistics_torch
from benchmarks.long_document import old_head_statistics as reference  # the whole-array formulas before issue #11


def reference_torch(a, special):
    """The whole-tensor torch formulas before issue #11 (positions 0..n-1)."""
    from attviz.aggregations.entropy import entropy_torch

    out = {"entropy": entropy_torch(a).mean(-1)}
    n_query, n_key = a.shape[-2:]
    distance = (torch.arange(n_query)[:, None] - torch.arange(n_key)[None, :]).abs().to(a.dtype)
    out["distance"] = (a * distance).sum(-1).mean(-1)
    out["special"] = (a * special.to(a.dtype)).sum(-1).mean(-1)
    for name, offset in (("previous", -1), ("next", 1), ("self", 0)):
        if n_query == n_key and n_key > abs(offset):
            out[name] = torch.diagonal(a, offset=offset, dim1=-2, dim2=-1).mean(-1)
        else:
            out[name] = torch.full(a.shape[:-2], float("nan"))
    return out


def random_case(rng, kind):
    """(float16 values (layer, head, query, key), query positions, key positions, special mask)."""
    layers, heads = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    n_query = int(rng.integers(1, 60))
    n_key = int(rng.integers(1, 60)) if kind == "cross" else n_query
    a = np.exp(rng.normal(scale=2.0, size=(layers, heads, n_query, n_key)))
    a /= a.sum(-1, keepdims=True)
    if kind == "zeros":
        a[rng.random(a.shape) < 0.3] = 0
        a[0, 0, 0] = 0
    elif kind == "unnormalised":
        a *= rng.uniform(0.2, 1.0, size=(*a.shape[:-1], 1))
    elif kind == "nan":
        a[0, 0, 0, 0] = np.nan
    qpos = np.sort(rng.choice(200, n_query, replace=False))  # gaps, as after drop_special
    kpos = qpos if n_key == n_query else np.sort(rng.choice(200, n_key, replace=False))
    return a.astype(np.float16), qpos, kpos, rng.random(n_key) < 0.2


KINDS = ["softmax", "zeros", "unnormalised", "nan", "cross"]


def assert_same(got, expected, where=""):
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == np.float32 and got[name].shape == expected[name].shape, (name, where)
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{name} {where}")  # NaN == NaN here


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(6))
def test_blocks_give_the_whole_array_numbers_bit_for_bit(kind, seed):
    rng = np.random.default_rng(seed)
    a, qpos, kpos, special = random_case(rng, kind)
    expected = reference(a.astype(np.float32), qpos, kpos, special)
    n_key = a.shape[-1]
    blocks = [1, n_key, 3 * n_key + 1, int(rng.integers(1, a.size + 2)), 1 << 20]
    inputs = {
        "float16": a,
        "float32": a.astype(np.float32),
        "dask per layer": da.from_array(a, chunks=(1, -1, -1, -1)),
        "dask per head": da.from_array(a, chunks=(1, 1, -1, -1)),
    }
    for label, values in inputs.items():
        for block in blocks:
            for workers in (1, 3):
                got = head_statistics(values, qpos, kpos, special, block=block, workers=workers)
                assert_same(got, expected, f"{label}, block {block}, {workers} workers")


def test_input_is_left_alone_and_not_upcast():
    a, qpos, kpos, special = random_case(np.random.default_rng(1), "zeros")
    before = a.copy()
    head_statistics(a, qpos, kpos, special, block=7)
    np.testing.assert_array_equal(a, before)
    float32 = a.astype(np.float32)
    head_statistics(float32, qpos, kpos, special, block=7)
    np.testing.assert_array_equal(float32, before.astype(np.float32))


def _document(values: np.ndarray) -> Document:
    n = values.shape[-1]
    words = [f"w{i}" for i in range(n - 2)]
    tokens = token_frame(["[CLS]", *words, "[SEP]"], special=[True, *[False] * (n - 2), True])
    return Document(id="d", text=" ".join(words), arrays={"self": attention_array(values, tokens)})


def test_aggregation_on_a_store_matches_in_memory_and_the_reference(tmp_path):
    a = np.exp(np.random.default_rng(3).normal(scale=2.0, size=(3, 4, 37, 37)))
    a = (a / a.sum(-1, keepdims=True)).astype(np.float16)
    doc = _document(a)
    lazy = Corpus([doc]).save(tmp_path / "s.zarr")[0].attention
    assert lazy.chunks is not None  # read layer by layer
    agg = aggregations.get("head_summary")
    in_memory, from_store = agg(doc.attention), agg(lazy)
    np.testing.assert_array_equal(from_store.values, in_memory.values)
    n = a.shape[-1]
    special = np.zeros(n, bool)
    special[[0, -1]] = True
    expected = reference(a.astype(np.float32), np.arange(n), np.arange(n), special)
    np.testing.assert_array_equal(in_memory.values, np.stack([expected[s] for s in STATISTICS], axis=-1))


def test_entropy_agrees_with_scipy():
    rng = np.random.default_rng(5)
    a, qpos, kpos, special = random_case(rng, "zeros")
    a[:, :, :, 0] = np.float16(0.01)  # no all-zero row: scipy gives NaN (0/0) for those, attviz 0
    got = head_statistics(a, qpos, kpos, special, block=5)["entropy"]
    rows = scipy.stats.entropy(a.astype(np.float64), axis=-1)  # natural log, rows normalised, 0 ln 0 = 0
    np.testing.assert_allclose(got, rows.mean(-1), rtol=2e-6, atol=1e-7)


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_memory_of_a_1024_token_head_summary():
    # one layer of 12 heads × 1,024 tokens in float16: 24 MiB (the whole-array code's float32
    # temporaries: ~190 MiB); block by block the temporaries are a few 512 KB blocks per thread
    n = 1024
    a = (np.random.default_rng(0).random((1, 12, n, n), dtype=np.float32) / n).astype(np.float16)
    pos, special = np.arange(n), np.zeros(n, bool)
    bound = 32
    assert _peak_mib(lambda: head_statistics(a, pos, pos, special, workers=4)) < bound
    assert _peak_mib(lambda: reference(a.astype(np.float32), pos, pos, special)) > bound


def test_memory_of_a_lazy_array_is_one_chunk_at_a_time():
    # 8 layers of 6 MiB (float16) read one at a time; all of them in float32 would be 96 MiB
    a = (np.random.default_rng(1).random((8, 12, 512, 512), dtype=np.float32) / 512).astype(np.float16)
    lazy = da.from_array(a, chunks=(1, -1, -1, -1))
    pos, special = np.arange(512), np.zeros(512, bool)
    peak = _peak_mib(lambda: head_statistics(lazy, pos, pos, special, workers=2))
    assert peak < a[0].nbytes / 2**20 + 16


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_torch_blocks_match_the_whole_tensor(kind, dtype):
    rng = np.random.default_rng(KINDS.index(kind))
    a, _, _, special = random_case(rng, kind)
    tensor, mask = torch.from_numpy(a).to(dtype), torch.from_numpy(special)
    expected = reference_torch(tensor.float(), mask)
    n_key = a.shape[-1]
    for block in (1, n_key, 5 * n_key + 3, 1 << 26):
        got = head_statistics_torch(tensor, mask, block=block)
        for name in STATISTICS:
            assert got[name].dtype == torch.float32 and got[name].shape == expected[name].shape
            np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
        one = head_statistics_torch(tensor, mask, names=["previous"], block=block)
        assert list(one) == ["previous"]
        np.testing.assert_allclose(one["previous"].numpy(), expected["previous"].numpy(), rtol=1e-6, atol=1e-7)
