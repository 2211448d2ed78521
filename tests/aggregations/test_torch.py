"""apply_torch (on-device token-level aggregations) against apply, and worked by hand.

Hand values use the 2×2 matrix A = [[.75, .25], [.5, .5]] (exact in float16) with key 0 special:
ln 2 = .693147, −(.75 ln .75 + .25 ln .25) = .215762 + .346574 = .562335.
"""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from attviz import aggregations
from attviz.aggregations import ATTENTION_DIMS, DimsError, Pipeline
from attviz.aggregations.reductions import Mean
from attviz.corpus import attention_array, token_frame

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
TORCH_DTYPES = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64}
STATISTICS = ["entropy", "distance", "special", "previous", "next", "self"]
CONFIGS = [
    ("attention_received", {}),
    *(("attention_from", {"query": q}) for q in (0, 1, -1, -2, 4, -5)),
    ("diagonal", {}),
    *(
        (name, {"normalised": n, "causal": c})
        for name in ("entropy", "head_entropy")
        for n in (False, True)
        for c in (False, True)
    ),
    *(("head_summary", {"statistic": s}) for s in ["all", *STATISTICS]),
]
IMPLEMENTED = ["attention_received", "attention_from", "diagonal", "entropy", "head_entropy", "head_summary"]


def softmax_rows(rng, shape):
    x = np.exp(rng.normal(scale=2.0, size=shape))
    return x / x.sum(-1, keepdims=True)


def make_case(kind, rng):
    """(values float64 (layer, head, query, key), key special mask); 2 layers × 3 heads, 5 tokens."""
    n_query = n_key = 5
    if kind == "cross":
        n_query, n_key = 4, 6
    if kind == "one_token":
        n_query = n_key = 1
    a = softmax_rows(rng, (2, 3, n_query, n_key))
    if kind == "zeros":  # some zero weights and whole zero rows
        a[rng.random(a.shape) < 0.3] = 0
        a[0, 1, 2] = 0
        a[1, :, 0] = 0
    elif kind == "causal":  # decoder: lower-triangular rows summing to 1
        a = np.tril(a)
        a /= a.sum(-1, keepdims=True)
    elif kind == "unnormalised":  # rows not summing to 1 (e.g. special tokens dropped)
        a *= rng.uniform(0.2, 1.0, size=(*a.shape[:-1], 1))
    elif kind == "nan":
        a[0, 0, 1, 2] = np.nan
        a[1, 2, 3] = np.nan
    elif kind == "one_token":
        a *= 0.7  # a row of one weight below 1: re-normalised to 1 by entropy
    special = np.zeros(n_key, bool)
    special[[0, -1]] = True
    return a, special


CASES = ["softmax", "zeros", "causal", "unnormalised", "nan", "one_token", "cross"]


def as_array(a, special, dtype):
    """The labelled DataArray :meth:`apply` sees (query/key tokens, ``key_special``)."""
    n_query, n_key = a.shape[-2:]
    queries = token_frame([f"q{i}" for i in range(n_query)])
    keys = token_frame([f"k{i}" for i in range(n_key)], special=special)
    return attention_array(a.astype(dtype), queries, keys)


def check_same(agg, a, special, dtype, device, pass_special=True):
    """apply_torch on the tensor equals apply on the DataArray (or both raise the same error)."""
    array = as_array(a, special if pass_special else np.zeros_like(special), dtype)
    tensor = torch.from_numpy(a.astype(dtype)).to(device)
    before = tensor.clone()
    try:
        expected = agg.apply(array)
    except (IndexError, ValueError) as exc:
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            agg.apply_torch(tensor, special=torch.from_numpy(special).to(device))
        return None
    mask = torch.from_numpy(special).to(device) if pass_special else None
    out = agg.apply_torch(tensor, special=mask)
    assert out.dtype == torch.float32
    assert out.device == tensor.device
    assert expected.dims == agg.output_dims(ATTENTION_DIMS)
    assert tuple(out.shape) == expected.shape  # sizes differ per dim (2, 3, n): the order is checked
    np.testing.assert_allclose(out.cpu().numpy(), expected.values, rtol=1e-5, atol=1e-6)
    assert torch.equal(tensor.isnan(), before.isnan())
    assert torch.equal(tensor.nan_to_num(), before.nan_to_num())  # the input is left alone
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name, params", CONFIGS, ids=[f"{n}-{p}" for n, p in CONFIGS])
def test_apply_torch_matches_apply(name, params, case, dtype, device):
    agg = aggregations.get(name, **params)
    a, special = make_case(case, np.random.default_rng(CASES.index(case)))
    out = check_same(agg, a, special, dtype, device)
    if name == "head_summary" and out is not None:  # special=None means no special tokens
        check_same(agg, a, special, dtype, device, pass_special=False)


def test_errors_match_apply():
    a, _ = make_case("cross", np.random.default_rng(0))
    with pytest.raises(ValueError, match="got 4 queries, 6 keys"):
        aggregations.get("diagonal").apply_torch(torch.from_numpy(a))
    with pytest.raises(IndexError, match="query 4 is out of range for 4 query tokens"):
        aggregations.get("attention_from", query=4).apply_torch(torch.from_numpy(a))
    with pytest.raises(IndexError, match="query -5 is out of range for 4"):
        aggregations.get("attention_from", query=-5).apply_torch(torch.from_numpy(a))


# -- by hand ------------------------------------------------------------------------------------
@pytest.fixture(params=DEVICES)
def hand(request):
    """A = [[.75, .25], [.5, .5]] as a (1, 1, 2, 2) float16 tensor."""
    return torch.tensor([[[[0.75, 0.25], [0.5, 0.5]]]], dtype=torch.float16, device=request.param)


def run(hand, name, special=None, **params):
    out = aggregations.get(name, **params).apply_torch(hand, special=special)
    assert out.dtype == torch.float32 and out.device == hand.device
    return out.cpu().numpy()


def test_vectors_by_hand(hand):
    # column means (.75 + .5)/2, (.25 + .5)/2; rows; the diagonal
    np.testing.assert_allclose(run(hand, "attention_received")[0, 0], [0.625, 0.375])
    np.testing.assert_allclose(run(hand, "attention_from", query=0)[0, 0], [0.75, 0.25])
    np.testing.assert_allclose(run(hand, "attention_from", query=-1)[0, 0], [0.5, 0.5])
    np.testing.assert_allclose(run(hand, "diagonal")[0, 0], [0.75, 0.5])


def test_entropy_by_hand(hand):
    np.testing.assert_allclose(run(hand, "entropy")[0, 0], [0.562335, 0.693147], atol=1e-6)
    # / ln 2: .562335 / .693147 = .811278, 1
    np.testing.assert_allclose(run(hand, "entropy", normalised=True)[0, 0], [0.811278, 1.0], atol=1e-6)
    # causal: row 0 sees 1 key (ln 1 = 0 → 0), row 1 sees 2 (/ ln 2 → 1)
    np.testing.assert_allclose(run(hand, "entropy", normalised=True, causal=True)[0, 0], [0.0, 1.0], atol=1e-6)
    # mean over queries: (.562335 + .693147)/2 = .627741; normalised (.811278 + 1)/2 = .905639
    np.testing.assert_allclose(run(hand, "head_entropy"), [[0.627741]], atol=1e-6)
    np.testing.assert_allclose(run(hand, "head_entropy", normalised=True), [[0.905639]], atol=1e-6)


def test_entropy_zero_row_and_renormalised_row_by_hand():
    # row [0, 0]: H = 0 (0 ln 0 = 0); row [.25, .25] is [.5, .5]: H = ln 2
    values = torch.tensor([[[[0.0, 0.0], [0.25, 0.25]]]])
    out = aggregations.get("entropy").apply_torch(values)
    np.testing.assert_allclose(out[0, 0].numpy(), [0.0, 0.693147], atol=1e-6)


def test_head_entropy_skips_nan_rows_like_xarray():
    # xarray's mean skips NaN: rows [nan, nan] and [.5, .5] → ln 2
    values = torch.tensor([[[[float("nan"), float("nan")], [0.5, 0.5]]]])
    assert aggregations.get("head_entropy").apply_torch(values).item() == pytest.approx(0.693147, abs=1e-6)


def test_head_summary_by_hand(hand):
    special = torch.tensor([True, False])
    # entropy .627741; distance (.25·1 + .5·1)/2 = .375; special (.75 + .5)/2 = .625;
    # previous A[1,0] = .5; next A[0,1] = .25; self (.75 + .5)/2 = .625
    expected = [0.627741, 0.375, 0.625, 0.5, 0.25, 0.625]
    np.testing.assert_allclose(run(hand, "head_summary", special=special)[0, 0], expected, atol=1e-6)
    for statistic, value in zip(STATISTICS, expected, strict=True):
        assert run(hand, "head_summary", special=special, statistic=statistic).shape == (1, 1)
        assert run(hand, "head_summary", special=special, statistic=statistic)[0, 0] == pytest.approx(value, abs=1e-6)
    assert run(hand, "head_summary", statistic="special")[0, 0] == 0  # special=None: no special tokens


def test_head_summary_one_token_has_no_neighbours():
    out = aggregations.get("head_summary").apply_torch(torch.ones(1, 1, 1, 1))
    np.testing.assert_array_equal(out[0, 0].numpy(), [0.0, 0.0, 0.0, np.nan, np.nan, 1.0])


def test_bfloat16_input():
    values = torch.tensor([[[[0.75, 0.25], [0.5, 0.5]]]], dtype=torch.bfloat16)
    out = aggregations.get("attention_received").apply_torch(values)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), [0.625, 0.375])


# -- the contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", IMPLEMENTED)
def test_supports_torch(name):
    assert aggregations.get(name).supports_torch


@pytest.mark.parametrize("agg", [Mean(), aggregations.get("rollout"), Pipeline([Mean(over="head")])], ids=repr)
def test_no_torch_version(agg):
    assert not agg.supports_torch
    with pytest.raises(NotImplementedError, match="has no torch version"):
        agg.apply_torch(torch.ones(1, 1, 2, 2))


def test_subclass_changing_apply_only_does_not_claim_torch():
    entropy = type(aggregations.get("entropy"))

    class Changed(entropy):
        description = "entropy, changed"

        def apply(self, array):
            return super().apply(array) * 2

    assert not Changed().supports_torch


def test_input_checks():
    agg = aggregations.get("head_summary")
    with pytest.raises(DimsError, match="needs a tensor with dims"):
        agg.apply_torch(torch.ones(2, 2, 2))
    with pytest.raises(TypeError, match="float tensor"):
        agg.apply_torch(torch.ones(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=re.escape("special must have shape (2,)")):
        agg.apply_torch(torch.ones(1, 1, 2, 2), special=torch.tensor([True]))
    # an int 0/1 mask is taken as bool
    share = aggregations.get("head_summary", statistic="special")
    out = share.apply_torch(torch.full((1, 1, 2, 2), 0.5), special=torch.tensor([1, 0]))
    assert out.item() == 0.5


@pytest.mark.parametrize("module", ["base", "vectors", "entropy", "heads"])
def test_torch_is_not_imported_at_module_level(module):
    source = Path(aggregations.__file__).with_name(f"{module}.py").read_text()
    for node in ast.parse(source).body:  # top level only; `if TYPE_CHECKING:` blocks are skipped
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        assert not any(n == "torch" or n.startswith("torch.") for n in names), module
