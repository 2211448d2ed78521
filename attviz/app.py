"""The served explorer: a Panel template around :class:`~attviz.layout.ExplorerLayout`.

Corpora and the live model are loaded once per server process (``pn.state.as_cached``) and shared
by every browser session; each session gets its own :class:`~attviz.explorer.Explorer`, so one
user's selection, live documents and uploads never reach another's.

``attviz serve [INPUT ...] [--model M]`` and ``panel serve apps/explorer.py`` both end up in
:func:`create_app`.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import holoviews as hv
import panel as pn
from panel.theme.fast import Fast

from attviz import _compat
from attviz.corpus import Corpus
from attviz.explorer import Explorer, as_corpora
from attviz.layout import ExplorerLayout
from attviz.live import LiveModel

#: Panel extensions the built-in views need.
EXTENSIONS = ("tabulator",)
#: Uploads are sent over the websocket: allow stores of a few hundred MB.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


def load_corpora(inputs: Sequence[str] = ()) -> dict[str, Corpus]:
    """The corpora to explore, read once per process: ``inputs``, or the demo corpus."""
    key = "attviz-corpora:" + "\x00".join(os.path.abspath(i) for i in inputs)
    return pn.state.as_cached(key, _read_corpora, inputs=tuple(inputs))


def _read_corpora(inputs: tuple[str, ...]) -> dict[str, Corpus]:
    if not inputs:
        from attviz.demo import demo_corpus

        return {"demo": demo_corpus()}
    return as_corpora(list(inputs))


def live_model(corpora: dict[str, Corpus], model: str | None = None) -> LiveModel | None:
    """The process-wide live model: ``model`` (``--model``), else the model that made the first corpus
    that records one; ``None`` when none does (legacy files, tensors): no model is loaded unasked.

    Its extraction settings (zero-shot labels, max length) come from that corpus; with ``model``, from
    the first corpus that ``model`` made, else the first corpus.
    """
    from attviz.models import same_model

    recorded = [c for c in corpora.values() if c.attrs.get("model") or c.attrs.get("model_path")]
    if model is not None:
        recorded = [c for c in recorded if same_model(c.attrs.get("model"), model)]
    first = recorded[0] if recorded else next(iter(corpora.values()), None)
    if model is None and not recorded:
        return None
    key = f"attviz-live:{model}:{id(first)}"

    def make() -> LiveModel:
        if first is not None:
            return LiveModel.for_corpus(first, model)
        return LiveModel(model)

    return pn.state.as_cached(key, make)


ACTIVE_BUTTON_CSS = """
.bk-btn-group .bk-btn.bk-active {
  background-color: #2F4858 !important; color: #fff !important; border-color: #2F4858; font-weight: 600;
}
.bk-btn-group .bk-btn:not(.bk-active) { background-color: #fff; color: #2F4858; }
"""


class OfflineFast(Fast):
    """Panel's Fast design without its Google web font: the app makes no request outside its server.

    (Named ``Fast`` below because Panel resolves a design's bundled files by its class name.)
    """

    _resources: ClassVar[dict[str, Any]] = {**Fast._resources, "font": {}}
    #: The chosen button of a toggle group is filled, so it reads as chosen (Fast draws both alike).
    modifiers: ClassVar[dict[Any, Any]] = {
        **Fast.modifiers,
        pn.widgets.RadioButtonGroup: {"stylesheets": [ACTIVE_BUTTON_CSS]},
        pn.widgets.CheckButtonGroup: {"stylesheets": [ACTIVE_BUTTON_CSS]},
    }


OfflineFast.__name__ = "Fast"


_compat.install()  # bokeh's patch_curdoc leaks a document when a callback raises (see attviz._compat)


def create_app(inputs: Sequence[str] = (), model: str | None = None, *, live: bool = True) -> Any:
    """One session's explorer in a FastListTemplate."""
    pn.extension(*EXTENSIONS, notifications=True)
    hv.extension("bokeh", logo=False)
    corpora = load_corpora(inputs)
    explorer = Explorer(dict(corpora), live_model=live_model(corpora, model) if live else None)
    layout = ExplorerLayout(explorer)
    template = pn.template.FastListTemplate(
        title="attviz",
        sidebar=[layout.controls],
        main=[layout.main],
        sidebar_width=340,
        accent="#F9822C",
        header_background="#2F4858",
        design=OfflineFast,
    )
    template.explorer = explorer  # for tests and --setup scripts
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        indicator = template.busy_indicator
        pn.state.on_session_destroyed(lambda _context: _forget_indicator(indicator))
    return template


def _forget_indicator(indicator: Any) -> None:
    """Panel keeps every session's busy indicator in one process-wide list and sets them all whenever
    any session is busy (panel 1.9): a closed session's indicator then writes into a document nobody
    holds ('_pending_writes should be non-None'). Drop it when its session ends."""
    indicators = getattr(pn.state, "_indicators", None)
    if indicators is not None and indicator in indicators:
        indicators.remove(indicator)


def warm(inputs: Sequence[str] = (), model: str | None = None) -> None:
    """Read the corpora now and load the live model in the background, before the first visitor."""
    corpora = load_corpora(inputs)
    live = live_model(corpora, model)
    if live is None:
        print("attviz serve: no corpus records its model: live input is off (pass --model to use one)", file=sys.stderr)
    else:
        threading.Thread(target=_try_load, args=(live,), daemon=True, name="attviz-model").start()
    threading.Thread(target=warm_rasterizer, daemon=True, name="attviz-datashader").start()


def warm_rasterizer() -> None:
    """Render one rasterised matrix, so that datashader compiles (~2 s) before a visitor needs it."""
    try:
        import numpy as np
        from bokeh.document import Document as BokehDocument

        from attviz.corpus import attention_array, token_frame
        from attviz.views.matrix import MatrixView

        n = 300
        matrix = attention_array(np.full((1, 1, n, n), 1.0 / n, np.float32), token_frame([str(i) for i in range(n)]))
        pn.panel(MatrixView(data=matrix.isel(layer=0, head=0))).get_root(BokehDocument())
    except Exception as exc:  # only a speed-up
        print(f"attviz serve: datashader warm-up failed: {exc}", file=sys.stderr)


def _try_load(live: LiveModel) -> None:
    try:
        live.loaded()
    except Exception as exc:  # the app says so when live input is used
        print(f"attviz serve: live model {live.name!r} could not be loaded: {exc}", file=sys.stderr)


def serve(
    inputs: Sequence[str] = (),
    *,
    model: str | None = None,
    port: int = 5006,
    show: bool = False,
    address: str | None = None,
    threaded: bool = False,
    **kwargs: Any,
) -> Any:
    """Serve the explorer on ``port`` (``inputs``: stores or files; none: the demo corpus)."""
    warm(inputs, model)
    print(f"attviz: explorer at http://{address or 'localhost'}:{port}/", file=sys.stderr)
    inputs = list(inputs)

    def app() -> Any:  # a function, so that Panel makes one explorer per session
        return create_app(inputs, model)

    server = pn.serve(
        {"/": app},
        port=port,
        address=address,
        show=show,
        title="attviz",
        threaded=threaded,
        websocket_max_message_size=MAX_MESSAGE_BYTES,
        http_server_kwargs={"max_buffer_size": MAX_MESSAGE_BYTES},
        **kwargs,
    )
    return server if threaded else 0


__all__ = ["create_app", "load_corpora", "serve", "warm"]
