"""uint8 rows with a float32 scale: the one quantisation of the store (``compression="uint8"``), the
on-device capture and the exported page (``quantization="row"|"matrix"``).

A value is ``q × scale`` of its row, ``q = round(value × 255 / peak)`` (half up) and
``scale = peak / 255``, where ``peak`` is the row's maximum (``per="row"``) or the maximum of the
row's matrix, the last two axes (``per="matrix"``). So ``|q × scale − value| ≤ scale / 2``: at most
row max / 510 (matrix max / 510), ≤ 1/510 for attention.

The rules, the same for numpy and torch:

- values must be non-negative (attention is): a negative value raises :class:`QuantizationError`;
- a row holding NaN or ±inf cannot be kept in 256 levels: it is marked, not hidden, with
  ``scale = NaN`` and ``q = 0``, so it decodes to a row of NaN (never to zeros that look like real
  attention); with ``per="matrix"`` the matrix's scale is taken over its finite rows only;
- an all-zero row has ``scale = 0`` and ``q = 0`` and decodes to zeros exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from attviz.errors import StoreError

LEVELS = 255
QUANTIZATIONS = ("row", "matrix")
BLOCK = 1 << 20  # values converted to float32 at a time (4 MB: stays in cache, little memory)


class QuantizationError(StoreError, ValueError):
    """Values uint8 rows cannot keep (negative ones): a :class:`StoreError` for the store's callers,
    a ``ValueError`` for everyone else."""


class Quantized(NamedTuple):
    """A matrix as uint8 per row with a float32 scale per row: value ≈ ``q * scale[..., None]``."""

    q: np.ndarray
    scale: np.ndarray


NEGATIVE = "uint8 quantisation needs non-negative values (attention); keep float16 (compression='lz4') for other data"
_F16_TO_F32: np.ndarray | None = None


def as_float32(block: np.ndarray) -> np.ndarray:
    """A float32 copy; float16 goes through a 65,536-entry table (several times faster than astype)."""
    global _F16_TO_F32
    if block.dtype != np.float16:
        return np.array(block, dtype=np.float32)
    if _F16_TO_F32 is None:
        _F16_TO_F32 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return np.take(_F16_TO_F32, np.ascontiguousarray(block).view(np.uint16))


def quantize_rows(values: Any, block: int = BLOCK, per: str = "row") -> Quantized:
    """Quantise the last axis of ``values`` to uint8 (see the module docstring for the rules).

    Works through ``block`` values at a time, converted to float32 (float16 input is never copied
    whole). Returns :class:`Quantized` ``(q, scale)``, which unpacks like a tuple.
    """
    if per not in QUANTIZATIONS:
        raise ValueError(f"unknown quantisation {per!r} (expected one of {QUANTIZATIONS})")
    values = np.asarray(values)
    q = np.empty(values.shape, dtype=np.uint8)
    scale = np.empty(values.shape[:-1], dtype=np.float32)
    if values.size == 0:
        scale[...] = 0
        return Quantized(q, scale)
    n_key = values.shape[-1]
    flat = values.reshape(-1, n_key)
    q_flat, scale_flat = q.reshape(-1, n_key), scale.reshape(-1)
    matrix_peak = None
    if per == "matrix":  # first the peak of every row (exact in the input's dtype), then per matrix
        rows = values.shape[-2] if values.ndim > 1 else 1
        row_peak = np.empty(flat.shape[0], dtype=np.float32)
        step = max(1, block // n_key)
        for start in range(0, flat.shape[0], step):
            row_peak[start : start + step] = flat[start : start + step].max(axis=1)
        finite = np.where(np.isfinite(row_peak), row_peak, np.float32(0))
        matrix_peak = np.repeat(finite.reshape(-1, rows).max(axis=1, initial=np.float32(0)), rows)
        matrix_peak = np.where(np.isfinite(row_peak), matrix_peak, row_peak)  # non-finite rows stay marked
    step = max(1, block // n_key)
    for start in range(0, flat.shape[0], step):
        stop = min(start + step, flat.shape[0])
        x = as_float32(flat[start:stop])
        if np.fmin.reduce(x, axis=None) < 0:  # fmin: a NaN elsewhere does not hide a negative value
            raise QuantizationError(NEGATIVE)
        peak = x.max(axis=1) if matrix_peak is None else matrix_peak[start:stop]
        scale_flat[start:stop] = _scale_and_rows(x, peak)
        np.copyto(q_flat[start:stop], x, casting="unsafe")
    return Quantized(q, scale)


def _scale_and_rows(x: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Turn ``x`` (float32 rows, in place) into ``q + 0.5`` for truncation; return the rows' scale."""
    finite = np.isfinite(peak)
    inv = np.divide(np.float32(LEVELS), peak, out=np.zeros_like(peak), where=finite & (peak > 0))
    with np.errstate(invalid="ignore"):  # inf × 0 in a non-finite row, zeroed next
        x *= inv[:, None]
    if not finite.all():
        x[~finite] = 0
    x += np.float32(0.5)  # then truncation: round half up; x <= 255.5 so 255 at most
    return np.where(finite, peak / np.float32(LEVELS), np.float32(np.nan))


def quantize_rows_torch(values: Any, host: bool = True) -> Quantized:
    """:func:`quantize_rows` (``per="row"``) for a torch tensor (any device, e.g. before the copy to
    the host); the same formula and rules, so the same bytes for the same values. ``host=False``
    keeps the result as tensors on the device and never waits for the device (no check for negative
    values there: softmax attention has none)."""
    x = values.float()
    peak = x.amax(dim=-1)
    if host and bool((x < 0).any()):  # not amin: its NaN would hide a negative value
        raise QuantizationError(NEGATIVE)
    finite = peak.isfinite()
    # 255 / peak would multiply by a reciprocal: a different rounding than numpy's division
    inv = peak.new_full(peak.shape, float(LEVELS)).div_(peak).masked_fill_(~finite | (peak <= 0), 0)
    y = (x * inv.unsqueeze(-1)).masked_fill_(~finite.unsqueeze(-1), 0)  # x may be the input itself
    scale = (peak / LEVELS).masked_fill_(~finite, float("nan"))
    q = y.add_(0.5).byte()
    return Quantized(q.cpu().numpy(), scale.cpu().numpy()) if host else Quantized(q, scale)


def dequantize_rows(q: Any, scale: Any) -> Any:
    """float32 ``q × scale`` (numpy or dask): a NaN-marked row decodes to NaN."""
    return q.astype(np.float32) * scale[..., None]


def error_bound(scale: np.ndarray) -> float:
    """The largest quantisation error of a :func:`quantize_rows` result: max scale / 2 (NaN-marked
    rows carry no error: they decode to NaN, not to a value)."""
    scale = np.asarray(scale)
    finite = scale[np.isfinite(scale)]
    return float(finite.max(initial=0.0)) / 2
