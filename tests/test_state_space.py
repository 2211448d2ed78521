"""The explorer's state space: every corpus kind × every control, valid state and views that render.

Corpus kinds: encoder (BERT classifier), decoder (byte-level GPT-2), encoder-decoder (T5), the
original AttViz JSON (legacy vectors), a store of token vectors only, an uploaded zipped store, an
uploaded AttViz JSON file, live input, and all of them in one session. Controls: corpus switch (every
ordered pair of kinds), document, attention kind, layer, head, every head combination, every token
colour, every transform, token selection, follow-the-selection, comparison, and the tabs.

Two loops. ``test_every_combination_is_valid`` runs the product of kind × transform × head
combination × token colour (× a selected token) on the state alone and checks its invariants.
``test_every_action_renders`` walks single actions with every view and control rendered into one
Bokeh document and fails on any exception or logged error. A failure names the sequence of actions
that led to it (replay it with ``replay(explorer, actions)``).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import panel as pn
import pytest
from bokeh.document import Document as BokehDocument

from attviz.explorer import Explorer
from attviz.layout import ExplorerLayout
from attviz.live import LiveModel
from tests import corpora

Action = tuple[str, Any]


@pytest.fixture(scope="module")
def kinds(tiny_bert_classifier, tiny_gpt2, tiny_t5, tiny_bert, tmp_path_factory) -> dict[str, Any]:
    """``{corpus kind: Corpus}`` plus the uploads (bytes) and the live model."""
    from attviz.models import prepare_model

    folder = tmp_path_factory.mktemp("uploads")
    encoder = corpora.encoder_corpus(*tiny_bert_classifier)
    model, tokenizer = tiny_bert
    return {
        "encoder": encoder,
        "decoder": corpora.decoder_corpus(*tiny_gpt2),
        "encoder-decoder": corpora.encoder_decoder_corpus(*tiny_t5),
        "legacy": corpora.legacy_corpus(),
        "vectors-only": corpora.vectors_only_corpus(*tiny_bert),
        "q/k": corpora.qk_corpus(*tiny_gpt2),
        "uploaded store": ("store.zip", corpora.zipped_store(encoder, folder)),
        "uploaded legacy": ("public-example1.json", corpora.legacy_bytes()),
        "live": LiveModel("tiny", loader=lambda: prepare_model(model, tokenizer, device="cpu")),
    }


def session(kinds: dict[str, Any], which: str) -> Explorer:
    """An explorer showing a corpus of kind ``which``, opened the way a user opens it."""
    first = {"encoder": kinds["encoder"]}
    if which in ("uploaded store", "uploaded legacy"):
        explorer = Explorer(first)
        explorer.add_file(*kinds[which])
    elif which == "live":
        explorer = Explorer(first, live_model=kinds["live"])
        explorer.run_live("The live cat sat.")
    elif which == "long q/k":  # its longest document is explored a head and a tile at a time
        explorer = Explorer({"q/k": kinds["q/k"]}, layer_memory=corpora.LONG)
        explorer.doc_id = explorer.corpora["q/k"].ids[-1]
    elif which == "all":
        names = ("encoder", "decoder", "encoder-decoder", "legacy", "vectors-only", "q/k")
        explorer = Explorer({k: kinds[k] for k in names})
        explorer.add_file(*kinds["uploaded legacy"])
    else:
        explorer = Explorer({which: kinds[which]})
    return explorer


KINDS = [
    "encoder", "decoder", "encoder-decoder", "legacy", "vectors-only", "q/k", "long q/k", "uploaded store",
    "uploaded legacy", "live",
]  # fmt: skip


def menu(explorer: Explorer, name: str) -> list[Any]:
    objects = explorer.param[name].objects
    return list(objects.values()) if isinstance(objects, dict) else list(objects)


def check(explorer: Explorer, done: list[Action]) -> None:
    """The invariants of a valid state; the message names the actions that broke them."""
    e = explorer
    where = f"after {done}"
    assert e.message == "", f"{e.message!r} {where}"
    assert e.source in e.corpora and e.doc_id in e.corpora[e.source].ids, where
    assert e.document is not None and e.document.id == e.doc_id, where
    for name in ("kind", "head_reduction", "vector", "transform"):
        assert getattr(e, name) in menu(e, name), f"{name}={getattr(e, name)!r} not offered {where}"
    assert e.param.layer.bounds[0] <= e.layer <= e.param.layer.bounds[1], where
    assert e.param.head.bounds[0] <= e.head <= e.param.head.bounds[1], where
    attention = e.attention
    if attention is not None:
        assert e.has_layers == ("layer" in attention.dims), where
        if "layer" in attention.dims:
            assert e.param.layer.bounds[1] == attention.sizes["layer"] - 1, where
        n_heads = attention.sizes.get("head", 1)
        assert e.param.head.bounds[1] == n_heads - 1, where
    n_tokens = None
    if e.matrix is not None:
        assert set(e.matrix.dims) == {"query", "key"}, where
        assert np.isfinite(e.matrix.values).all(), where
        n_tokens = e.matrix.sizes["query"]
    if e.token_vector is not None:
        assert e.token_vector.dims == ("token",), where
        if n_tokens is not None and e.kind != "cross":
            assert e.token_vector.sizes["token"] == n_tokens, where
    else:
        assert e.notice, f"no token colour and no notice saying why {where}"
    if e.selected_token is not None:
        assert 0 <= e.selected_token < n_positions(e), where
    assert e.title.startswith(f"{e.source}: {e.doc_id}"), where


def n_positions(e: Explorer) -> int:
    """How many tokens the current token axis has."""
    if e.attention is not None:
        return e.attention.sizes["query"]
    if e.head_vectors is not None:
        return e.head_vectors.sizes["token"]
    return len(e.document.tokens)


def last_token(e: Explorer) -> int:
    return n_positions(e) - 1


@pytest.mark.parametrize("which", [*KINDS, "all"])
def test_every_combination_is_valid(kinds, which):
    explorer = session(kinds, which)
    done: list[Action] = [("open", which)]
    check(explorer, done)
    sources = list(explorer.corpora)
    count = 0
    for source in sources:
        explorer.source = source
        for kind in menu(explorer, "kind"):
            explorer.kind = kind
            product = itertools.product(
                menu(explorer, "transform"), menu(explorer, "head_reduction"), menu(explorer, "vector")
            )
            for transform, reduction, vector in product:
                steps = [("source", source), ("kind", kind), ("transform", transform)]
                steps += [("head_reduction", reduction), ("vector", vector)]
                explorer.param.update(transform=transform, head_reduction=reduction, vector=vector)
                check(explorer, [*done, *steps])
                explorer.selected_token = last_token(explorer)
                check(explorer, [*done, *steps, ("selected_token", "last")])
                explorer.selected_token = None
                count += 1
    assert count >= 1


# -- every action with every view and control rendered ---------------------------------------------------


class Errors(logging.Handler):
    """Collects every log record at WARNING or above that carries an exception or says error."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info or "Traceback" in text or "rror" in text:
            self.records.append(f"{record.name}: {text[:500]}")


def rendered(explorer: Explorer) -> ExplorerLayout:
    """The explorer's layout with every view and control rendered into one Bokeh document."""
    from attviz.app import OfflineFast

    layout = ExplorerLayout(explorer)
    document = BokehDocument()
    # With the served app's design: Panel then applies its stylesheets to every model (showing or hiding a
    # HoloViews pane under a design once failed every later patch of the session: no view updated).
    views = pn.Column(*(pn.panel(view) for view in layout.views.values()))  # every tab's views at once
    template = pn.template.FastListTemplate(sidebar=[layout.controls], main=[layout.main, views], design=OfflineFast)
    template.server_doc(document)
    explorer.needed = None  # every view is on screen
    return layout


def actions(explorer: Explorer) -> list[Action]:
    """One action per value of every control, from the state's own menus."""
    e = explorer
    docs = menu(e, "doc_id")
    out: list[Action] = [("doc_id", d) for d in [*docs[-2:][::-1], docs[0]]]  # the first, and back from the end
    out += [("kind", k) for k in menu(e, "kind")]
    out += [("layer", e.param.layer.bounds[1]), ("layer", 0), ("head", e.param.head.bounds[1]), ("head", 0)]
    out += [("head_reduction", r) for r in menu(e, "head_reduction")]
    out += [("vector", v) for v in menu(e, "vector")]
    out += [("selected_token", "last"), ("follow_selection", False), ("follow_selection", True)]
    out += [("transform", t) for t in menu(e, "transform")]
    out += [("selected_token", 0), ("selected_token", None), ("transform", "none")]
    out += [("compare", (s, e.corpora[s].ids[-1])) for s in e.corpora]
    out += [("step", 1), ("step", -1), ("tab", None)]
    return out


def apply(explorer: Explorer, layout: ExplorerLayout, action: Action) -> None:
    name, value = action
    if name == "selected_token" and value == "last":
        value = last_token(explorer)
    if name == "compare":
        explorer.param.update(compare_source=value[0], compare_doc_id=value[1])
    elif name == "step":
        explorer.step(value)
    elif name == "tab":
        for tab in range(len(layout.tabs)):
            layout.tabs.active = tab
        layout.tabs.active = 0
        explorer.needed = None
    else:
        setattr(explorer, name, value)


@pytest.mark.parametrize("which", KINDS)  # (all kinds at once: test_switching_between_every_pair_of_corpus_kinds)
def test_every_action_renders(kinds, which):
    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        explorer = session(kinds, which)
        layout = rendered(explorer)
        done: list[Action] = [("open", which)]
        for source in list(explorer.corpora):
            done.append(("source", source))
            explorer.source = source
            check(explorer, done)
            for action in actions(explorer):
                done.append(action)
                apply(explorer, layout, action)
                check(explorer, done)
                assert not errors.records, f"{errors.records} after {done}"
    finally:
        logging.getLogger().removeHandler(errors)


def test_switching_between_every_pair_of_corpus_kinds(kinds):
    """GPT-2 -> T5 and every other ordered pair, in one session, with every view rendered."""
    explorer = session(kinds, "all")
    layout = rendered(explorer)
    names = list(explorer.corpora)
    for before, after in itertools.permutations(names, 2):
        done = [("source", before), ("layer", "max"), ("head", "max"), ("source", after)]
        explorer.source = before
        explorer.param.update(layer=explorer.param.layer.bounds[1], head=explorer.param.head.bounds[1])
        explorer.source = after
        check(explorer, done)
        kinds_offered = menu(explorer, "kind")
        assert explorer.kind in kinds_offered
        if after == "encoder-decoder":
            assert kinds_offered == ["encoder", "decoder", "cross"], done
            assert layout.controls.objects[2].visible, "the encoder/decoder/cross choice is shown"
        assert explorer.document.id in explorer.corpora[after].ids


def test_the_legacy_upload_opens_with_its_own_controls(kinds):
    """Issue #11 (1): the original AttViz JSON through 'Open a file' opened doc-0000 but every view kept
    the previous document ('Explorer.kind does not accept None', recursion)."""
    explorer = session(kinds, "encoder")
    layout = rendered(explorer)
    name = explorer.add_file(*kinds["uploaded legacy"])
    assert explorer.source == name and explorer.kind == "vectors" and explorer.message == ""
    legacy = explorer.corpora[name]
    assert explorer.doc_id == legacy.ids[0] and explorer.document is legacy[legacy.ids[0]]
    assert explorer.token_vector.sizes["token"] == len(legacy[0].tokens)
    controls = {type(w).__name__ + ":" + str(getattr(w, "label", "")): w for w in layout.controls.objects}
    layer = next(w for k, w in controls.items() if k.endswith("Layer"))
    assert not layer.visible, "no layer slider for legacy vectors"


def test_every_head_combination_on_every_extracted_corpus(kinds):
    """Issue #11 (3): 'AttViz entropy (head disagreement)' raised a DimsError on every extracted corpus."""
    for which in ("encoder", "decoder", "encoder-decoder"):
        explorer = session(kinds, which)
        for reduction in menu(explorer, "head_reduction"):
            explorer.head_reduction = reduction
            assert explorer.message == "" and explorer.token_vector is not None, (which, reduction)
        explorer.head_reduction = "attviz_entropy"
        assert explorer.matrix is None and "token colours only" in explorer.notice


def test_flow_and_rollout_are_offered_and_say_what_they_show(kinds):
    """Issue #11 (5): flow was not offered; rollout silently reset Head and kept 'mean over heads'."""
    explorer = session(kinds, "encoder")
    assert "flow" in menu(explorer, "vector") and "rollout" in menu(explorer, "transform")
    explorer.param.update(head_reduction="head", head=1)
    explorer.transform = "rollout"
    assert not explorer.has_heads and "rollout" in explorer.title and "over heads" not in explorer.title
    explorer.param.update(transform="none", vector="flow")
    assert explorer.token_vector.dims == ("token",) and explorer.message == ""
    assert "flow" in explorer.title.lower()
