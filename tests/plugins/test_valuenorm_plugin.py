"""The external plugin attviz-valuenorm (plugins/attviz-valuenorm), found only through entry points.

Kobayashi et al. 2020: ||α_ij f(x_j)||, f(x) = (x W_V + b_V) W_O^h. The norms are checked against a
hand computation on a tiny random BERT; the aggregation and the view against hand-worked numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import holoviews as hv
import numpy as np
import panel as pn
import pytest
import torch
import xarray as xr

from attviz import registry
from attviz.aggregations import from_spec

DISCOVER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import attviz
    from attviz import registry
    from attviz.corpus import attention_array, token_frame

    before = "attviz_valuenorm" in sys.modules
    aggregation = registry.plugins("aggregations")["value_norm"]
    view = registry.plugins("views")["value_norm_bars"]
    alpha = np.array([[[[0.5, 0.5], [0.25, 0.75]]]])
    array = attention_array(alpha, token_frame(["a", "b"]))
    array = array.assign_coords(value_norm=(("layer", "head", "key"), np.array([[[2.0, 4.0]]])))
    print(json.dumps({
        "imported_before_discovery": before,
        "classes": [f"{c.__module__}:{c.__qualname__}" for c in (aggregation, view)],
        "distributions": {i.name: i.distribution for i in registry.plugin_infos()
                          if i.name in ("value_norm", "value_norm_bars")},
        "statuses": {i.name: i.status for i in registry.plugin_infos()
                     if i.name in ("value_norm", "value_norm_bars")},
        "weighted": aggregation()(array).values.tolist(),
        "view_can_show": view.can_show(array.isel(layer=0, head=0)),
    }))
    """
)


def test_attviz_discovers_and_runs_the_plugin_only_through_its_entry_points(valuenorm_dist):
    assert valuenorm_dist.metadata["Name"] == "attviz-valuenorm"
    names = {(ep.group, ep.name) for ep in valuenorm_dist.entry_points}
    assert names == {
        ("attviz.aggregations", "value_norm"),
        ("attviz.views", "value_norm_bars"),
        ("attviz.captures", "value_norm"),
    }
    run = subprocess.run([sys.executable, "-c", DISCOVER], capture_output=True, text=True, check=True)
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["imported_before_discovery"] is False  # attviz never imports the plugin itself
    assert found["classes"] == ["attviz_valuenorm.aggregation:ValueNorm", "attviz_valuenorm.view:ValueNormBars"]
    assert found["distributions"] == {"value_norm": "attviz-valuenorm", "value_norm_bars": "attviz-valuenorm"}
    assert found["statuses"] == {"value_norm": "ok", "value_norm_bars": "ok"}
    assert found["weighted"] == [[[[1.0, 2.0], [0.5, 3.0]]]]  # α_ij · ||f(x_j)||, by hand
    assert found["view_can_show"] is True


# -- value norms from hooks vs a hand computation ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert_8(bert_tokenizer):
    """2 layers, 2 heads, hidden 8: small enough to recompute f(x) by hand."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=bert_tokenizer.vocab_size,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return BertModel(config).eval(), bert_tokenizer


TEXT = "The cat sat on the mat."


def hand_norms(model, tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(attention (L, H, T, T), ||f(x)|| (L, H, T)) computed from the weights, without hooks."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
        norms = []
        for layer, x in zip(model.encoder.layer, out.hidden_states[:-1], strict=True):  # input of each layer
            self_attention, dense = layer.attention.self, layer.attention.output.dense
            v = x[0] @ self_attention.value.weight.T + self_attention.value.bias  # x W_V + b_V: (T, 8)
            per_head = []
            for h in range(2):
                cols = slice(4 * h, 4 * h + 4)
                f = v[:, cols] @ dense.weight[:, cols].T  # (x W_V + b_V)^h W_O^h: (T, 8)
                per_head.append(torch.sqrt((f**2).sum(-1)))
            norms.append(torch.stack(per_head))
    return torch.stack([a[0] for a in out.attentions]).numpy(), torch.stack(norms).numpy()


def test_value_norms_from_hooks_equal_the_hand_computation(valuenorm_dist, tiny_bert_8):
    from attviz_valuenorm import attention_with_value_norms, value_norms

    model, tokenizer = tiny_bert_8
    attention, expected = hand_norms(model, tokenizer, TEXT)
    norms = value_norms(model, tokenizer, TEXT)
    assert norms.dims == ("layer", "head", "key")
    assert list(norms["key_text"].values) == tokenizer.convert_ids_to_tokens(tokenizer(TEXT)["input_ids"])
    np.testing.assert_allclose(norms.values, expected, rtol=1e-5, atol=1e-6)

    with_norms = attention_with_value_norms(model, tokenizer, TEXT)
    np.testing.assert_allclose(with_norms.values, attention, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(with_norms["value_norm"].values, expected, rtol=1e-5, atol=1e-6)

    weighted = registry.get("aggregations", "value_norm")()(with_norms)
    assert weighted.dims == ("layer", "head", "query", "key")
    assert weighted.attrs["long_name"] == "norm-weighted attention ||αf(x)||"
    np.testing.assert_allclose(weighted.values, attention * expected[:, :, None, :], rtol=1e-5, atol=1e-7)


def test_value_norms_refuse_other_architectures(valuenorm_dist, tiny_gpt2):
    from attviz_valuenorm import UnsupportedModelError, value_norms

    with pytest.raises(UnsupportedModelError, match="BERT-family"):
        value_norms(*tiny_gpt2, "Hi there.")


# -- the aggregation ---------------------------------------------------------------------------
def test_value_norm_weights_rows_by_hand(valuenorm_dist, three_tokens):
    value_norm = registry.get("aggregations", "value_norm")
    out = value_norm()(three_tokens)
    np.testing.assert_allclose(out.isel(layer=0, head=0, query=1).values, [1.0, 1.0, 0.0])
    assert "value_norm" not in out.coords and list(out["key_text"].values) == ["[CLS]", "the", "the"]
    normalised = value_norm(normalize=True)(three_tokens)
    np.testing.assert_allclose(normalised.isel(layer=0, head=0).values, [[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.8, 0]])
    assert normalised.attrs["units"] == "1"
    # norms are data, not configuration: the spec stays JSON and rebuilds the aggregation
    assert json.loads(normalised.attrs["aggregation"]) == [{"aggregation": "value_norm", "normalize": True}]
    np.testing.assert_allclose(from_spec(normalised.attrs["aggregation"])(three_tokens), normalised)


def test_value_norm_takes_norms_as_a_parameter(valuenorm_dist, three_tokens):
    norms = xr.DataArray([[[2.0, 4.0, 0.0]]], dims=("layer", "head", "key"), coords={"key": [0, 1, 2]})
    norms = norms.assign_coords(layer=[0], head=[0])
    bare = three_tokens.drop_vars("value_norm").isel(key=[1, 2])  # e.g. after dropping [CLS]
    out = registry.get("aggregations", "value_norm")(norms=norms)(bare)
    np.testing.assert_allclose(out.isel(layer=0, head=0, query=1).values, [1.0, 0.0])


def test_value_norm_explains_missing_norms(valuenorm_dist, three_tokens):
    with pytest.raises(ValueError, match="value_norms"):
        registry.get("aggregations", "value_norm")()(three_tokens.drop_vars("value_norm"))


# -- the view ----------------------------------------------------------------------------------
def test_view_shows_alpha_against_norm_weighted_shares(valuenorm_dist, three_tokens):
    hv.extension("bokeh")
    view_class = registry.plugins("views")["value_norm_bars"]
    matrix = three_tokens.isel(layer=0, head=0)
    assert view_class.can_show(matrix)
    assert not view_class.can_show(matrix.drop_vars("value_norm"))
    assert not view_class.can_show(three_tokens)  # still (layer, head, query, key)

    view = view_class(data=matrix, selected_token=1)
    assert pn.panel(view).get_root() is not None
    alpha, weighted = view.plot()
    assert isinstance(alpha, hv.Bars) and isinstance(weighted, hv.Bars)
    np.testing.assert_allclose(alpha.dimension_values("alpha"), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(weighted.dimension_values("weighted"), [0.5, 0.5, 0.0])  # [1, 1, 0] / 2
    # positions, not token texts, on x: the two "the" tokens stay apart, labelled by their text
    assert list(weighted.dimension_values("position")) == [0, 1, 2]
    # its own Bokeh document: hv.render would use curdoc(), which a served app may have set in this thread
    from bokeh.document import Document

    plot = hv.renderer("bokeh").get_plot(view.plot(), doc=Document()).state
    assert plot.xaxis[0].major_label_overrides == {0: "[CLS]", 1: "the", 2: "the"}

    view.selected_token = 2  # [0.2, 0.4, 0.4] · [2, 4, 0] = [0.4, 1.6, 0] -> [0.2, 0.8, 0]
    np.testing.assert_allclose(view.frame()["weighted"], [0.2, 0.8, 0.0])


@pytest.mark.slow
def test_value_norms_on_the_bundled_minilm(valuenorm_dist, minilm):
    from attviz_valuenorm import attention_with_value_norms

    from attviz.extract import extract

    attention = attention_with_value_norms(minilm, None, TEXT)
    assert attention.sizes == {"layer": 6, "head": 12, "query": 9, "key": 9}
    assert np.isfinite(attention["value_norm"]).all() and (attention["value_norm"] > 0).all()
    stored = extract([TEXT], model=minilm, progress=False)[0].attention  # the same tokens as extraction
    np.testing.assert_allclose(stored.astype(np.float32), attention, atol=2e-3)
    assert list(stored["key_text"].values) == list(attention["key_text"].values)
    weighted = registry.get("aggregations", "value_norm")(normalize=True)(attention)
    np.testing.assert_allclose(weighted.sum("key"), 1, rtol=1e-5)
