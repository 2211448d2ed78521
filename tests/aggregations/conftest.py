"""Tiny hand-made attention arrays for the aggregation tests."""

from __future__ import annotations

import numpy as np
import pytest

from attviz.corpus import attention_array, token_frame

# 2 layers × 2 heads × 2 tokens, every value exact in float16.
TWO_BY_TWO = np.array(
    [
        [[[1.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.0, 1.0]]],  # layer 0: head 0, head 1
        [[[0.25, 0.75], [1.0, 0.0]], [[0.75, 0.25], [0.5, 0.5]]],  # layer 1: head 0, head 1
    ]
)


def attention(values, texts, special=None, word=None, dtype=np.float16):
    """A (layer, head, query, key) DataArray; a 2-d matrix becomes 1 layer × 1 head."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2:
        values = values[None, None]
    return attention_array(values.astype(dtype), token_frame(texts, special=special, word=word))


@pytest.fixture
def make_attention():
    """The :func:`attention` builder (a fixture, so test modules need no imports from here)."""
    return attention


@pytest.fixture
def small():
    """TWO_BY_TWO as stored: float16, tokens [CLS] and 'hi'."""
    return attention(TWO_BY_TWO, ["[CLS]", "hi"], special=[True, False])
