"""The capture plugin kind (``attviz.captures``) through the example plugin's ``value_norm`` capture.

attviz-valuenorm's capture records ||f(x_j)|| = ||W_O^h (W_V^h x_j + b_V^h)|| per (layer, head, key)
while attviz extracts. Checked here: against an independent computation from the value projection's
*input* (hooked directly, the rest by hand), through padded batches, the zarr store, ``save`` and
netCDF, the CLI, live input and the ``value_norm_bars`` view rendered to Bokeh; a model the capture
does not support, and a broken capture, never break extraction unless asked for by name.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json

import numpy as np
import panel as pn
import pytest
import torch
import xarray as xr
from bokeh.document import Document as BokehDocument
from bokeh.models import ColumnDataSource

import attviz
from attviz import captures, registry
from attviz.capture import Capture
from attviz.captures import CaptureBatch, ModelCapture
from attviz.errors import AttvizError
from attviz.models import prepare_model
from tests.conftest import TEXTS


# -- an independent computation ------------------------------------------------------------------
def independent_norms(model, tokenizer, text: str) -> np.ndarray:
    """||W_O^h (W_V^h x_j + b_V^h)|| (layer, head, key) for one unpadded text, from each layer's value
    projection input x (a forward hook) and the weights, one head at a time."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    inputs: dict[int, torch.Tensor] = {}
    layers = model.encoder.layer
    handles = [
        layer.attention.self.value.register_forward_hook(lambda _m, args, _o, i=i: inputs.__setitem__(i, args[0][0]))
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    heads = model.config.num_attention_heads
    size = model.config.hidden_size // heads
    out = np.zeros((len(layers), heads, ids.shape[1]))
    with torch.no_grad():
        for i, layer in enumerate(layers):
            value, dense = layer.attention.self.value, layer.attention.output.dense
            for h in range(heads):
                cols = slice(h * size, (h + 1) * size)
                v = inputs[i] @ value.weight[cols].T + value.bias[cols]  # W_V^h x_j + b_V^h: (T, d)
                f = v @ dense.weight[:, cols].T  # W_O^h (...): (T, hidden)
                out[i, h] = f.norm(dim=-1).numpy()
    return out


@pytest.fixture(scope="module")
def expected(tiny_bert):
    return [independent_norms(*tiny_bert, text) for text in TEXTS]


@pytest.fixture(scope="module")
def extracted(valuenorm_dist, tiny_bert):
    """TEXTS in padded batches of 3, with the value_norm capture, in memory."""
    model, tokenizer = tiny_bert
    return attviz.extract(
        TEXTS, model=model, tokenizer=tokenizer, batch_size=3, captures=["value_norm"], progress=False
    )


def test_the_plugin_registers_a_capture_found_through_its_entry_point(valuenorm_dist):
    assert ("attviz.captures", "value_norm") in {(ep.group, ep.name) for ep in valuenorm_dist.entry_points}
    info = next(i for i in registry.plugin_infos("captures") if i.name == "value_norm")
    assert (info.distribution, info.status) == ("attviz-valuenorm", "ok")
    assert info.plugin.__module__ == "attviz_valuenorm.capture"
    assert "value_norm" in captures.available()
    assert captures.get("value_norm").kind == "capture_value_norm"


def test_extraction_stores_value_norms_equal_to_the_independent_computation(extracted, expected, tiny_bert):
    assert extracted.attrs["captures"] == ["value_norm"] and extracted.attrs["captures_skipped"] == {}
    assert json.loads(extracted.attrs["settings"])["captures"] == ["value_norm"]
    for doc, want in zip(extracted, expected, strict=True):
        norms = doc.get("capture_value_norm")
        assert norms.dims == ("layer", "head", "key") and norms.dtype == np.float32
        assert norms.attrs["capture"] == "value_norm" and "Kobayashi" in norms.attrs["reference"]
        assert list(norms["key_text"].values) == doc.tokens  # the document's own tokens, no padding
        np.testing.assert_allclose(norms.values, want, rtol=1e-4, atol=1e-6)
        assert doc.captures == ["value_norm"]
        # the attention carries them as a coordinate, which follows the explorer's selections
        matrix = doc.attention.astype(np.float32).isel(layer=1).isel(head=2)
        assert matrix["value_norm"].dims == ("key",)
        np.testing.assert_allclose(matrix["value_norm"].values, want[1, 2], rtol=1e-4, atol=1e-6)
        assert "value_norm" not in doc.attention.mean("head").coords  # a combination of heads has none


def test_value_norms_survive_the_store_save_and_netcdf(tmp_path, valuenorm_dist, tiny_bert, extracted, expected):
    model, tokenizer = tiny_bert
    stored = attviz.extract(
        TEXTS, model=model, tokenizer=tokenizer, batch_size=3, captures=["value_norm"], progress=False,
        store=tmp_path / "norms.zarr",
    )  # fmt: skip
    assert isinstance(attviz.Corpus.open(tmp_path / "norms.zarr")[0].get("capture_value_norm"), xr.DataArray)
    saved = extracted.save(tmp_path / "saved.zarr")
    extracted.to_netcdf(tmp_path / "norms.nc")
    netcdf = attviz.open_corpus(tmp_path / "norms.nc")
    assert stored.attrs["captures"] == ["value_norm"]
    for corpus in (stored, saved, netcdf):
        for doc, memory, want in zip(corpus, extracted, expected, strict=True):
            norms = doc.get("capture_value_norm")
            np.testing.assert_array_equal(norms.values, memory.get("capture_value_norm").values)  # float32, exact
            assert norms.attrs["attach"] == "self" and list(norms["key_text"].values) == memory.tokens
            matrix = doc.attention.astype(np.float32).isel(layer=0, head=1)
            np.testing.assert_allclose(matrix["value_norm"].values, want[0, 1], rtol=1e-4, atol=1e-6)
    # stored once: the capture's own array, not again as a coordinate of the matrices
    with xr.open_dataset(tmp_path / "norms.nc", group="docs/d000000/self", engine="h5netcdf") as group:
        assert "value_norm" not in group.variables


def test_a_policy_keeping_some_layers_gets_their_norms(tmp_path, valuenorm_dist, tiny_bert, expected):
    model, tokenizer = tiny_bert
    corpus = attviz.extract(
        TEXTS[:2], model=model, tokenizer=tokenizer, captures=["value_norm"], progress=False,
        policy=attviz.StoragePolicy(layers=(1,), heads=(0, 2)), store=tmp_path / "some.zarr",
    )  # fmt: skip
    attention = corpus[0].attention
    assert attention["value_norm"].dims == ("layer", "head", "key")
    np.testing.assert_allclose(attention["value_norm"].values, expected[0][[1]][:, [0, 2]], rtol=1e-4, atol=1e-6)
    assert corpus[0].get("capture_value_norm").sizes == {"layer": 2, "head": 3, "key": len(corpus[0].tokens)}


def test_cli_extract_with_capture(tmp_path, valuenorm_dist, tiny_bert, expected, capsys):
    from attviz import cli

    model, tokenizer = tiny_bert
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS[:2]) + "\n")
    out = tmp_path / "cli.zarr"
    args = ["extract", str(tmp_path / "texts.txt"), "-o", str(out), "--model", str(tmp_path / "model")]
    assert cli.main([*args, "--capture", "value_norm", "--quiet"]) == 0
    corpus = attviz.Corpus.open(out)
    np.testing.assert_allclose(corpus[1].get("capture_value_norm").values, expected[1], rtol=1e-4, atol=1e-6)
    assert cli.main([*args[:3], str(tmp_path / "x.zarr"), *args[4:], "--capture", "nope", "--quiet"]) == 1
    assert "no capture plugin 'nope'" in capsys.readouterr().err


# -- live input and the view -----------------------------------------------------------------------
def _bars(view) -> dict[str, np.ndarray]:
    """The data of the view's bars, from the Bokeh models it renders (in a document of its own)."""
    root = pn.panel(view).get_root(BokehDocument())
    data = {}
    for source in root.select({"type": ColumnDataSource}):
        for column in ("alpha", "weighted", "position"):
            if column in source.data and len(source.data[column]):
                data[column] = np.asarray(source.data[column])
    return data


def test_live_input_records_value_norms_and_the_view_shows_them(valuenorm_dist, tiny_bert):
    from attviz.live import LiveModel

    model, tokenizer = tiny_bert
    live = LiveModel(loader=lambda: prepare_model(model, tokenizer, device="cpu"))
    assert live.captures == "auto"
    corpus = live(["The cat sat on the mat."], ["live-1"])
    doc = corpus[0]
    assert corpus.attrs["captures"] == ["value_norm"] and doc.captures == ["value_norm"]
    want = independent_norms(model, tokenizer, doc.text)

    # what the explorer gives the view under "selected head": .isel(layer).isel(head) of the float32 attention
    matrix = doc.attention.astype(np.float32).isel(layer=1).isel(head=0)
    view = registry.get("views", "value_norm_bars")(data=matrix, selected_token=2)
    assert view.message() == ""
    bars = _bars(view)
    alpha = matrix.isel(query=2).values.astype(np.float64)
    weighted = alpha * want[1, 0]
    np.testing.assert_allclose(bars["alpha"], alpha / alpha.sum(), rtol=1e-5)
    np.testing.assert_allclose(bars["weighted"], weighted / weighted.sum(), rtol=1e-4)
    np.testing.assert_array_equal(bars["position"], np.arange(len(doc.tokens)))

    # under a mean over heads the matrix has no norms: the explorer then gives the document, and
    # the view says what to choose
    view_class = registry.plugins("views")["value_norm_bars"]
    assert not view_class.can_show(doc.attention.astype(np.float32).isel(layer=1).mean("head"))
    assert view_class.can_show(doc)
    view.data = doc
    assert "selected head" in view.message()
    assert _bars(view) == {}
    assert pn.panel(view).get_root(BokehDocument()) is not None


def test_an_unsupported_model_says_so(valuenorm_dist, tiny_gpt2):
    from attviz.live import LiveModel

    model, tokenizer = tiny_gpt2
    with pytest.raises(AttvizError, match=r"capture 'value_norm' cannot run on .*BERT-family"):
        attviz.extract(["Hi there."], model=model, tokenizer=tokenizer, captures=["value_norm"], progress=False)
    assert "value_norm" not in captures.available(prepare_model(model, tokenizer, device="cpu"))

    # live input goes on without the norms, and says why
    corpus = LiveModel(loader=lambda: prepare_model(model, tokenizer, device="cpu"))(["Hi there."], ["live-1"])
    assert "value_norm" not in corpus.attrs["captures"]
    assert "BERT-family" in corpus.attrs["captures_skipped"]["value_norm"]
    doc = corpus[0]
    assert doc.captures == [] and "value_norm" not in doc.attention.coords
    view = registry.get("views", "value_norm_bars")(data=doc)
    assert "has no value norms" in view.message() and "BERT-family" in view.message()
    assert pn.panel(view).get_root(BokehDocument()) is not None


# -- the plugin kind itself: validation and isolation ----------------------------------------------
class Broken(ModelCapture):
    """A capture whose collect fails."""

    description = "fails"
    dims = ("key",)

    def collect(self, batch: CaptureBatch):
        raise RuntimeError("boom")


class Positions(ModelCapture):
    """Each token's position (a capture without hooks), to check cutting and storing."""

    description = "token positions"
    dims = ("token", "slot")

    def collect(self, batch: CaptureBatch):
        width = batch.input_ids.shape[1]
        return torch.arange(width, dtype=torch.float32)[None, :, None].repeat(len(batch.lengths), 1, 2)


def test_a_capture_without_hooks_is_cut_per_document_and_stored(tmp_path, tiny_bert):
    model, tokenizer = tiny_bert
    corpus = attviz.extract(
        TEXTS[:3], model=model, tokenizer=tokenizer, batch_size=3, captures=[Positions()], progress=False,
        store=tmp_path / "positions.zarr",
    )  # fmt: skip
    for doc in corpus:
        positions = doc.get("capture_Positions")
        assert positions.dims == ("token", "slot") and positions.sizes["token"] == len(doc.tokens)
        np.testing.assert_array_equal(positions.values[:, 0], np.arange(len(doc.tokens)))
        assert "Positions" not in doc.attention.coords  # ("token", "slot") are not among its dims


def test_a_failing_capture_stops_only_when_asked_for(tiny_bert):
    from attviz.extract import run_batch
    from attviz.registry import PluginWarning
    from attviz.tokenization import make_batches, tokenize

    model, tokenizer = tiny_bert
    with pytest.raises(AttvizError, match="capture 'Broken': collect failed: RuntimeError: boom"):
        attviz.extract(TEXTS[:2], model=model, tokenizer=tokenizer, captures=[Broken()], progress=False)
    loaded = prepare_model(model, tokenizer, device="cpu")
    units = tokenize(loaded, TEXTS[:2], ["a", "b"], None, max_length=64)
    capture = Capture(plugins={"Broken": Broken()}, strict=False)  # as captures="auto" runs them
    with pytest.warns(PluginWarning, match="Broken"):
        results = run_batch(loaded, make_batches(units, 2)[0], None, capture)
    assert all(set(arrays) == {"self"} for _, arrays, _ in results)
    assert capture.plugins == {} and "boom" in capture.skipped["Broken"]
    assert not any(m.attention.self.value._forward_hooks for m in model.encoder.layer)  # hooks removed


def test_malformed_capture_plugins_are_listed_with_their_error():
    eps = [
        metadata.EntryPoint("not_a_capture", "attviz.aggregations.reductions:Mean", "attviz.captures"),
        metadata.EntryPoint("no_collect", "attviz.captures.base:ModelCapture", "attviz.captures"),
        metadata.EntryPoint("ok", "tests.plugins.test_valuenorm_capture:Positions", "attviz.captures"),
    ]
    with pytest.warns(registry.PluginWarning):
        infos = registry.load_plugins("attviz.captures", eps)
    assert infos["not_a_capture"].status == "error" and "ModelCapture" in infos["not_a_capture"].error
    assert infos["no_collect"].status == "error"
    assert infos["ok"].status == "ok"


@pytest.mark.slow
def test_live_minilm_input_gets_the_bars(valuenorm_dist, minilm):
    """The bundled MiniLM, as the explorer runs it for live input: the norms equal the plugin's own
    single-text hooks, and the view shows one head's bars."""
    from attviz_valuenorm import attention_with_value_norms

    from attviz.live import LiveModel

    doc = LiveModel(loader=lambda: minilm)(["The cat sat on the mat."], ["live-1"])[0]
    direct = attention_with_value_norms(minilm, None, doc.text)
    assert doc.attention["value_norm"].sizes == {"layer": 6, "head": 12, "key": 9}
    np.testing.assert_allclose(doc.attention["value_norm"].values, direct["value_norm"].values, rtol=1e-4)
    view = registry.get("views", "value_norm_bars")(data=doc.attention.astype(np.float32).isel(layer=2).isel(head=5))
    bars = _bars(view)
    assert len(bars["weighted"]) == 9 and np.isclose(bars["weighted"].sum(), 1)
