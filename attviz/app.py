"""The served explorer: a Panel template around :class:`~attviz.layout.ExplorerLayout`.

Corpora and the live model are loaded once per server process (``pn.state.as_cached``) and shared
by every browser session; each session gets its own :class:`~attviz.explorer.Explorer`, so one
user's selection, live documents and uploads never reach another's.

``attviz serve [INPUT ...] [--model M]`` and ``panel serve apps/explorer.py`` both end up in
:func:`create_app`.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import holoviews as hv
import panel as pn
from panel.theme.fast import Fast
from tornado.routing import AnyMatches, Matcher, Rule
from tornado.web import RequestHandler

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
    _local_stylesheets(pn.state.curdoc)
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
        pn.state.on_session_destroyed(lambda _context: explorer.remove_uploads())  # its uploaded files
    return template


def _local_stylesheets(doc: Any) -> None:
    """Make every stylesheet of this session's document point at this server, from its first model on.

    Panel (1.9) points a model's stylesheets at the document's ``dist_url``, which it sets only when it
    renders the HTML page, and at its CDN while that is unset. Bokeh drops a session whose page has not
    connected its websocket within 15 s and makes it again, from the token, when the websocket comes:
    that document never gets a page, so every stylesheet (and Font Awesome, notyf, the Fast theme) came
    from cdn.holoviz.org. Under load (20 sessions at once on 2 cores) every page connected that late.
    Setting ``dist_url`` (to what Panel would set) before the app builds anything keeps them local.
    """
    if doc is None or doc.session_context is None:
        return
    from panel.io.resources import LOCAL_DIST

    rel_path = pn.state.rel_path  # (pn.state.curdoc is doc here)
    doc._template_variables.setdefault("dist_url", f"{rel_path}/{LOCAL_DIST}" if rel_path else LOCAL_DIST)


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


#: Where ``attviz serve`` listens unless told otherwise: this machine only.
DEFAULT_ADDRESS = "localhost"
_WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (a host name or IP) only reaches this machine (``None``: the default, yes)."""
    if address is None or address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(address: str | None, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``host:port`` values a request's Host header and a websocket's Origin may name.

    Always this machine's own names for ``port``; the listening address when it is one address; and
    ``extra`` (``--allow-websocket-origin``; a value without a port gets ``port``; ``*`` patterns as in
    Bokeh).
    """
    hosts = [f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"]
    if address is not None and address not in _WILDCARDS and not is_loopback(address):
        hosts.append(f"{_bracketed(address)}:{port}")
    for host in extra:
        host = host.strip().lower()
        if "://" in host:  # an origin written as a URL
            host = host.split("://", 1)[1].split("/", 1)[0]
        if _is_ip(host):  # a bare address (an IPv6 one holds colons too)
            hosts.append(f"{_bracketed(host)}:{port}")
        elif host == "*" or re.search(r"(^[^:\[]+|\])(:(\d+|\*))$", host):
            hosts.append(host)
        elif host:
            hosts.append(f"{_bracketed(host)}:{port}")
    return list(dict.fromkeys(hosts))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    host = host.strip("[]") if _is_ip(host) else host
    return f"[{host}]" if ":" in host else host


class _AllowedRequest(Matcher):
    """Requests this server answers: a Host header it serves, and websockets only from a page (with an
    Origin header, which Bokeh then checks against the same list)."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)

    def match(self, request: Any) -> dict[str, Any] | None:
        from bokeh.server.util import check_allowlist

        host = (request.headers.get("Host") or "").strip().lower()
        if not host or not check_allowlist(host, self.hosts):
            return None
        if request.headers.get("Upgrade", "").lower() == "websocket" and not request.headers.get("Origin"):
            return None
        return {}


class _Refused(RequestHandler):
    """403 for a request another site's name or a non-browser websocket sent (DNS rebinding, CSWSH)."""

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("attviz: request refused: unknown Host, or a websocket without an Origin header\n")


def guard(tornado_app: Any, hosts: Sequence[str]) -> None:
    """Answer only requests that :class:`_AllowedRequest` accepts; any other gets a 403 (Bokeh checks
    a websocket's Origin when there is one, but lets one without Origin through and serves any Host)."""
    router = tornado_app.default_router
    first = router.rules[0]
    router.rules[0] = Rule(_AllowedRequest(hosts), first.target, first.target_kwargs, first.name)
    router.add_rules([Rule(AnyMatches(), _Refused)])


LOGIN_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>attviz: log in</title>
<style>
body { font-family: system-ui, sans-serif; background: #2F4858; margin: 0; display: flex; min-height: 100vh;
       align-items: center; justify-content: center; }
form { background: #fff; padding: 2em 2.5em; border-radius: 6px; display: flex; flex-direction: column; gap: .8em;
       min-width: 18em; }
h1 { margin: 0 0 .3em; color: #2F4858; font-size: 1.4em; }
input { font-size: 1em; padding: .4em; width: 100%; box-sizing: border-box; }
button { font-size: 1em; padding: .5em; background: #F9822C; border: 0; color: #fff; border-radius: 4px;
         cursor: pointer; }
.error { color: #b00020; margin: 0; }
</style></head>
<body><form action="{{ login_endpoint }}" method="post">
<h1>attviz</h1>
{% if errormessage %}<p class="error">{{ errormessage }}</p>{% endif %}
<label>User <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password" autofocus></label>
<button type="submit">Log in</button>
</form></body></html>
"""
LOGOUT_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attviz: logged out</title></head>
<body style="font-family: system-ui, sans-serif">
<p>Logged out. <a href="{{ LOGIN_ENDPOINT }}">Log in again</a></p></body></html>
"""


def _local_auth_pages() -> None:
    """Panel's login and logout pages fetch Panel's logo and icon from its CDN: use pages of our own."""
    import jinja2
    from panel.auth import BasicLoginHandler, LogoutHandler

    BasicLoginHandler._login_template = jinja2.Template(LOGIN_HTML, autoescape=True)
    LogoutHandler._logout_template = jinja2.Template(LOGOUT_HTML, autoescape=True)


def build_server(
    inputs: Sequence[str] = (),
    *,
    model: str | None = None,
    port: int = 5006,
    address: str | None = None,
    allow_websocket_origin: Sequence[str] = (),
    basic_auth: str | None = None,
    cookie_secret: str | None = None,
    oauth: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """The explorer's Bokeh server, not started: listening on ``address`` (default: loopback only),
    answering only the hosts of :func:`allowed_hosts`, behind Panel's basic auth (``basic_auth``: a
    password, or a JSON file of ``{user: password}``) or an OAuth provider (``oauth``: Panel's
    ``oauth_*`` arguments without the prefix, e.g. ``{"provider": "github", "key": ..., "secret": ...}``)."""
    from panel.io.server import get_server

    inputs = list(inputs)
    address = address or DEFAULT_ADDRESS

    def app() -> Any:  # a function, so that Panel makes one explorer per session
        return create_app(inputs, model)

    auth: dict[str, Any] = {}
    if basic_auth:
        auth["basic_auth"] = basic_auth
    for key, value in (oauth or {}).items():
        if value not in (None, ""):
            auth[f"oauth_{key}"] = value
    if auth:  # signed login cookies: a fresh secret per run unless one is given
        auth["cookie_secret"] = cookie_secret or pn.config.cookie_secret or secrets.token_urlsafe(32)
    server = get_server(
        {"/": app},
        port=port,
        address=address,
        websocket_origin=[f"localhost:{port}"],  # replaced below, once the port is known (port 0: a free one)
        show=False,
        start=False,
        title="attviz",
        verbose=False,
        liveness=True,  # GET /liveness: 200 while the server runs (for health checks; opens no session)
        websocket_max_message_size=MAX_MESSAGE_BYTES,
        http_server_kwargs={"max_buffer_size": MAX_MESSAGE_BYTES},
        **auth,
        **kwargs,
    )
    if auth:
        _local_auth_pages()  # after Panel has set its own on the handlers
    hosts = allowed_hosts(address, server.port, allow_websocket_origin)
    server._tornado._websocket_origins = set(hosts)
    guard(server._tornado, hosts)
    server.attviz_hosts = hosts
    return server


def serve(
    inputs: Sequence[str] = (),
    *,
    model: str | None = None,
    port: int = 5006,
    show: bool = False,
    address: str | None = None,
    allow_websocket_origin: Sequence[str] = (),
    basic_auth: str | None = None,
    cookie_secret: str | None = None,
    oauth: dict[str, Any] | None = None,
    threaded: bool = False,
    **kwargs: Any,
) -> Any:
    """Serve the explorer on ``port`` (``inputs``: stores or files; none: the demo corpus); see
    :func:`build_server`. Blocks until SIGINT or SIGTERM (``threaded``: returns a started thread with
    ``stop()``); uploaded files are removed when it stops, and those of dead servers when it starts."""
    from attviz.session import sweep_uploads

    sweep_uploads()
    warm(inputs, model)
    address = address or DEFAULT_ADDRESS
    secured = bool(basic_auth or (oauth or {}).get("provider"))
    options = dict(
        model=model, port=port, address=address, allow_websocket_origin=allow_websocket_origin,
        basic_auth=basic_auth, cookie_secret=cookie_secret, oauth=oauth, **kwargs,
    )  # fmt: skip
    if threaded:
        thread = _ServerThread(inputs, options)
        thread.start()
        thread.ready.wait(60)
        return thread
    server = build_server(inputs, **options)
    _announce(server, address, secured)
    atexit.register(sweep_uploads, own=True)
    loop = server.io_loop

    def stop(*_args: Any) -> None:
        loop.add_callback_from_signal(loop.stop)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.start()
    if show:
        loop.add_callback(server.show, "/login" if secured else "/")
    try:
        loop.start()
    finally:
        server.stop()
        removed = sweep_uploads(own=True)
        print(f"attviz serve: stopped{f'; removed {removed} upload folder(s)' if removed else ''}", file=sys.stderr)
    return 0


def _announce(server: Any, address: str, secured: bool) -> None:
    shown = "localhost" if is_loopback(address) else _bracketed(address)
    print(f"attviz: explorer at http://{shown}:{server.port}/", file=sys.stderr)
    if not is_loopback(address):
        others = ", ".join(server.attviz_hosts[3:]) or "none but localhost: pass --allow-websocket-origin HOST:PORT"
        print(
            f"attviz serve: WARNING: listening on {address}: other machines can reach this server "
            f"(pages open under: {others}). "
            + (
                "Logins travel unencrypted unless a TLS proxy is in front."
                if secured
                else "There is NO authentication: anyone who can reach it can read every corpus served and "
                "upload files (pass --basic-auth or --oauth-provider)."
            ),
            file=sys.stderr,
        )


class _ServerThread(threading.Thread):
    """:func:`serve` in a thread with its own event loop (for tests): ``.server``, ``.url``, ``.stop()``."""

    def __init__(self, inputs: Sequence[str], options: dict[str, Any]) -> None:
        super().__init__(daemon=True, name="attviz-serve")
        self.inputs, self.options = list(inputs), options
        self.ready = threading.Event()
        self.server: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        import asyncio

        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self.server = build_server(self.inputs, **self.options)
            self.server.start()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ready.set()
        self.server.io_loop.start()
        self.server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/"

    def stop(self) -> None:
        if self.server is not None:
            self.server.io_loop.add_callback(self.server.io_loop.stop)
        self.join(timeout=10)


__all__ = ["allowed_hosts", "build_server", "create_app", "guard", "is_loopback", "load_corpora", "serve", "warm"]
