"""One uint8 row quantisation (attviz.quantize) for the store, the device capture and the export page:
NaN rows, all-zero rows and the error bound row max / 510, through both callers and in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attviz.export
import attviz.store
from attviz import Corpus, Document, StoreError, attention_array, token_frame
from attviz.export import decode_layer, export_html
from attviz.quantize import QuantizationError, Quantized, error_bound, quantize_rows, quantize_rows_torch
from attviz.store import write_corpus
from tests.test_export import parse_page


def softmax(shape, seed=0):
    logits = np.random.default_rng(seed).standard_normal(shape) * 3
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def awkward_layer(n=6, heads=2, seed=0):
    """One layer of attention (heads, n, n) with a NaN row, an inf row and an all-zero row in head 0."""
    values = softmax((heads, n, n), seed) * np.random.default_rng(seed + 1).uniform(0.1, 1, (heads, n, 1))
    values[0, 1, 2] = np.nan  # one NaN: the whole row is marked
    values[0, 2] = 0.0  # all zero
    values[0, 3, 0] = np.inf
    return values


def check_rows(decoded, values, per="row"):
    """NaN/inf rows decode to NaN, zero rows to zeros, others within max / 510 of their row (matrix)."""
    marked = ~np.isfinite(values).all(-1)
    assert np.isnan(decoded[marked]).all()
    assert np.isfinite(decoded[~marked]).all()
    finite = np.where(marked[..., None], 0, values)
    top = finite.max(-1, keepdims=True) if per == "row" else finite.max((-2, -1), keepdims=True)
    error = np.abs(decoded - finite)
    assert (error[~marked] <= np.broadcast_to(top / 510, error.shape)[~marked] * (1 + 1e-6) + 1e-12).all()
    zero = ~marked & (values == 0).all(-1)
    assert (decoded[zero] == 0).all()


def test_one_implementation_for_both_callers():
    assert attviz.store.quantize_rows is quantize_rows
    assert attviz.export.quantize_rows is quantize_rows
    assert attviz.store.quantize_rows_torch is quantize_rows_torch
    assert attviz.store.Quantized is Quantized


def test_rules_by_hand():
    values = np.array(
        [
            [0.2, 0.05, 0.0],  # 0.05 / 0.2 × 255 = 63.75 → 64
            [0.0, 0.0, 0.0],  # all zero: scale 0, q 0, decodes to 0
            [0.5, np.nan, 0.5],  # NaN: marked, scale NaN, q 0, decodes to NaN
            [np.inf, 1.0, 0.0],  # inf: marked the same way
            [0.0, 1.0, 0.5],  # 127.5 → 128 (half up)
        ],
        dtype=np.float32,
    )
    q, scale = quantize_rows(values)
    assert q.dtype == np.uint8 and scale.dtype == np.float32
    assert q.tolist() == [[255, 64, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 255, 128]]
    np.testing.assert_allclose(scale[[0, 1, 4]], [0.2 / 255, 0, 1 / 255], rtol=1e-7)
    assert np.isnan(scale[[2, 3]]).all()
    decoded = q * scale[:, None]
    assert np.isnan(decoded[2:4]).all() and (decoded[1] == 0).all()
    assert error_bound(scale) == pytest.approx(1 / 510)  # NaN-marked rows carry no error


def test_negative_values_are_refused_even_next_to_nan():
    for values in ([[0.5, -0.1]], [[np.nan, 0.5], [0.5, -0.1]]):
        with pytest.raises(QuantizationError, match="non-negative"):
            quantize_rows(np.array(values, dtype=np.float32))
        with pytest.raises(QuantizationError, match="non-negative"):
            quantize_rows_torch(torch.tensor(values))
    assert issubclass(QuantizationError, StoreError) and issubclass(QuantizationError, ValueError)


@pytest.mark.parametrize("per", ["row", "matrix"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_blocks_and_dtypes_give_the_same_bytes(per, dtype):
    values = awkward_layer(9, 3).astype(dtype)
    q, scale = quantize_rows(values, per=per)
    for block in (1, 9, 10, 50, 10_000):
        q2, scale2 = quantize_rows(values, block=block, per=per)
        np.testing.assert_array_equal(q2, q)
        np.testing.assert_array_equal(scale2, scale)
    check_rows(q * scale[..., None], values.astype(np.float64), per)


def test_matrix_scale_is_taken_over_the_finite_rows():
    values = awkward_layer(6, 2)
    q, scale = quantize_rows(values, per="matrix")
    finite_rows = np.isfinite(values).all(-1)
    for h in range(2):
        top = values[h][finite_rows[h]].max()
        np.testing.assert_allclose(scale[h][finite_rows[h]], np.float32(top) / np.float32(255), rtol=1e-7)
        assert np.isnan(scale[h][~finite_rows[h]]).all()
    check_rows(q * scale[..., None], values, "matrix")


def test_torch_gives_the_same_bytes():
    for values in (awkward_layer(7, 3).astype(np.float32), softmax((2, 3, 11, 11), 4).astype(np.float16)):
        expected = quantize_rows(values)
        got = quantize_rows_torch(torch.from_numpy(values))
        np.testing.assert_array_equal(got.q, expected.q)
        np.testing.assert_array_equal(got.scale, expected.scale)
        on_device = quantize_rows_torch(torch.from_numpy(values), host=False)
        np.testing.assert_array_equal(on_device.q.numpy(), expected.q)


def _doc(values: np.ndarray) -> Document:
    n = values.shape[-1]
    words = [f"w{i}" for i in range(n - 2)]
    tokens = token_frame(["[CLS]", *words, "[SEP]"], special=[True, *[False] * (n - 2), True])
    return Document(id="a", text=" ".join(words), arrays={"self": attention_array(values, tokens)})


def test_store_round_trip(tmp_path):
    values = np.stack([awkward_layer(6, 2, seed=s) for s in range(2)]).astype(np.float32)  # (2, 2, 6, 6)
    path = write_corpus(Corpus([_doc(values)]), tmp_path / "q.zarr", compression="uint8")
    opened = Corpus.open(path)
    check_rows(opened[0].attention.values, values)
    stated = opened.attrs["max_abs_error"]
    assert np.isfinite(stated) and 0 < stated <= 1 / 510 + 1e-7


def test_export_round_trip():
    values = np.stack([awkward_layer(6, 2, seed=s) for s in range(2)]).astype(np.float32)
    for per in ("row", "matrix"):
        manifest, blobs = parse_page(export_html(_doc(values), quantization=per))
        assert np.isfinite(manifest["max_error"]) and 0 < manifest["max_error"] <= 1 / 510  # valid JSON, no NaN
        entry = manifest["docs"][0]
        for layer in range(2):
            decoded = decode_layer(blobs[entry["blobs"][layer]], 2, 6, 6, manifest["encoding"])
            check_rows(decoded, values[layer], per)


def test_bound_on_real_sized_rows_for_both_callers(tmp_path):
    values = softmax((2, 4, 64, 64), seed=3).astype(np.float16)
    source = values.astype(np.float64)
    opened = Corpus.open(write_corpus(Corpus([_doc(values)]), tmp_path / "b.zarr", compression="uint8"))
    check_rows(opened[0].attention.values.astype(np.float64), source)
    manifest, blobs = parse_page(export_html(_doc(values)))
    for layer in range(2):
        check_rows(decode_layer(blobs[manifest["docs"][0]["blobs"][layer]], 4, 64, 64, "deflate"), source[layer])
