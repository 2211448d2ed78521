"""``attviz serve`` fit to share (issue #14, part 4): loopback by default, Host and Origin checks, a
warning when widened, optional login, uploads removed at shutdown and swept at start.

The server runs as ``python -m attviz.cli serve`` in a subprocess with its own ``TMPDIR`` (where its
upload folders go), as a user starts it.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from attviz import app
from attviz.session import UPLOAD_PREFIX, sweep_uploads

ROOT = Path(__file__).resolve().parent.parent
LEGACY_JSON = Path(__file__).parent / "readers" / "data" / "string_numbers.json"


# -- pure parts --------------------------------------------------------------------------------------------
def test_the_default_address_is_this_machine_only():
    assert app.DEFAULT_ADDRESS == "localhost"
    assert all(app.is_loopback(a) for a in (None, "localhost", "127.0.0.1", "127.0.0.2", "::1", "[::1]"))
    assert not any(app.is_loopback(a) for a in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_allowed_hosts():
    local = ["localhost:5006", "127.0.0.1:5006", "[::1]:5006"]
    assert app.allowed_hosts(None, 5006) == local
    assert app.allowed_hosts("0.0.0.0", 5006) == local  # a wildcard address names no host
    assert app.allowed_hosts("192.168.1.5", 5006) == [*local, "192.168.1.5:5006"]
    extra = ["Example.org", "10.0.0.2:8080", "https://proxy.example.org/attviz", "fe80::1", "*.lab:5006"]
    assert app.allowed_hosts("0.0.0.0", 5006, extra) == [
        *local,
        "example.org:5006",
        "10.0.0.2:8080",
        "proxy.example.org:5006",
        "[fe80::1]:5006",
        "*.lab:5006",
    ]


def _request(headers: dict[str, str]) -> object:
    from tornado.httputil import HTTPHeaders, HTTPServerRequest

    return HTTPServerRequest(method="GET", uri="/", headers=HTTPHeaders(headers))


def test_the_guard_accepts_only_served_hosts_and_websockets_with_an_origin():
    allowed = app._AllowedRequest(app.allowed_hosts(None, 5006))
    assert allowed.match(_request({"Host": "localhost:5006"})) == {}
    assert allowed.match(_request({"Host": "127.0.0.1:5006"})) == {}
    assert allowed.match(_request({"Host": "evil.example:5006"})) is None
    assert allowed.match(_request({"Host": "localhost:5007"})) is None
    assert allowed.match(_request({})) is None
    upgrade = {"Host": "localhost:5006", "Upgrade": "websocket", "Connection": "Upgrade"}
    assert allowed.match(_request(upgrade)) is None
    assert allowed.match(_request({**upgrade, "Origin": "http://localhost:5006"})) == {}


def test_stale_upload_folders_are_swept(tmp_path):
    dead = tmp_path / f"{UPLOAD_PREFIX}999999999-ab_c1"  # above any pid_max: no such process
    alive = tmp_path / f"{UPLOAD_PREFIX}{os.getppid()}-def"
    own = tmp_path / f"{UPLOAD_PREFIX}{os.getpid()}-ghi"
    unrelated = tmp_path / "attviz-upload-notapid"
    for folder in (dead, alive, own, unrelated):
        (folder / "0").mkdir(parents=True)
        (folder / "0" / "file.json").write_text("{}")
    assert sweep_uploads(root=tmp_path) == 1
    assert not dead.exists() and alive.exists() and own.exists() and unrelated.exists()
    assert sweep_uploads(own=True, root=tmp_path) == 1  # at shutdown: this process's own
    assert not own.exists() and alive.exists() and unrelated.exists()


def test_a_session_removes_its_uploads(tmp_path, monkeypatch):
    import panel as pn

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    try:
        explorer = app.create_app([str(LEGACY_JSON)], live=False).explorer
        explorer.add_file("mine.json", LEGACY_JSON.read_bytes())
        folders = [p for p in tmp_path.iterdir() if p.name.startswith(f"{UPLOAD_PREFIX}{os.getpid()}-")]
        assert len(folders) == 1 and any(folders[0].rglob("mine.json"))
        explorer.remove_uploads()
        assert not folders[0].exists()
        explorer.remove_uploads()  # twice: nothing left to do
    finally:
        pn.state.clear_caches()


# -- the server, as a user starts it -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """``attviz serve ARGS`` in a subprocess on a free port, with ``tmp`` as its TMPDIR."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "server.log"
        env = {**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "attviz.cli", "serve", "--port", str(self.port), *args]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.wait()

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"attviz serve exited with {self.process.returncode}:\n{self.text()[-3000:]}")
            try:
                if self.get("/liveness").status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"attviz serve did not answer within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: str | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.text = response.read().decode("utf-8", "replace")
        connection.close()
        return response

    def handshake(self, origin: str | None) -> int:
        """The status of a websocket handshake on /ws (with ``origin`` as its Origin header, or none)."""
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *([f"Origin: {origin}"] if origin else []),
        ]
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            status_line = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        return int(status_line.split()[1])

    def listening(self) -> list[str]:
        import psutil

        return sorted(
            {c.laddr.ip for c in psutil.Process(self.process.pid).net_connections("inet") if c.status == "LISTEN"}
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve-default")
    stale = tmp / f"{UPLOAD_PREFIX}999999999-killed"  # left by a server that was killed
    (stale / "0").mkdir(parents=True)
    (stale / "0" / "upload.nc").write_bytes(b"x" * 100)
    server = Served(tmp)
    server.stale = stale
    try:
        yield server
    finally:
        server.stop()


def test_it_listens_on_loopback_only(served):
    addresses = served.listening()
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses
    assert f"http://localhost:{served.port}/" in served.text()


def test_a_foreign_host_header_gets_no_page(served):
    assert served.get("/").status == 200
    assert served.get("/", {"Host": f"localhost:{served.port}"}).status == 200
    for host in ("evil.example", f"evil.example:{served.port}", f"127.0.0.1:{served.port + 1}", "192.168.1.99"):
        response = served.get("/", {"Host": host})
        assert response.status == 403, host
        assert "Bokeh" not in response.text and "attviz" in response.text
    assert served.get("/liveness", {"Host": "rebound.example"}).status == 403


def test_a_websocket_needs_an_origin_this_server_serves(served):
    assert served.handshake(None) == 403  # not from a page: refused (Bokeh let it through)
    assert served.handshake("http://evil.example") == 403
    assert served.handshake(f"http://evil.example:{served.port}") == 403


def test_stale_upload_folders_are_removed_at_start(served):
    assert not served.stale.exists()


def test_sigterm_stops_cleanly_and_removes_the_uploads(tmp_path):
    server = Served(tmp_path)
    upload = tmp_path / f"{UPLOAD_PREFIX}{server.process.pid}-session1"  # as a session's upload makes it
    (upload / "0" / "unpacked").mkdir(parents=True)
    (upload / "0" / "store.zip").write_bytes(b"PK")
    assert server.stop(signal.SIGTERM) == 0, server.text()[-2000:]
    assert not upload.exists()
    assert "stopped; removed 1 upload folder(s)" in server.text()


def test_a_wider_address_warns_when_nothing_guards_it(tmp_path):
    server = Served(tmp_path, "--address", "0.0.0.0")
    try:
        assert server.listening() == ["0.0.0.0"]
        text = server.text()
        assert "WARNING: listening on 0.0.0.0" in text and "There is NO authentication" in text
        assert server.get("/", {"Host": f"myhost.test:{server.port}"}).status == 403  # not named: refused
    finally:
        server.stop()


def test_basic_auth_guards_every_page_with_a_local_login(tmp_path):
    secret = tmp_path / "users.json"
    secret.write_text('{"ana": "s3cret-pw"}')
    server = Served(tmp_path, "--basic-auth", str(secret), "--allow-websocket-origin", "myhost.test")
    try:
        host = {"Host": f"myhost.test:{server.port}"}
        response = server.get("/", host)
        assert response.status == 302 and "login" in response.getheader("Location")
        login = server.get("/login", host)
        assert login.status == 200 and 'name="password"' in login.text
        assert "://" not in login.text  # nothing from a CDN: no logo, no icon, no fonts
        assert "<script" not in server.get("/login?error=%3Cscript%3Ex%3C/script%3E", host).text  # escaped

        def log_in(password: str):
            form = urllib.parse.urlencode({"username": "ana", "password": password})
            headers = {**host, "Content-Type": "application/x-www-form-urlencoded"}
            return server.get("/login", headers, method="POST", body=form)

        assert "error=" in log_in("wrong").getheader("Location")
        accepted = log_in("s3cret-pw")
        cookies = "; ".join(c.split(";", 1)[0] for c in accepted.headers.get_all("Set-Cookie"))
        assert accepted.status == 302 and "user=" in cookies
        page = server.get("/", {**host, "Cookie": cookies})
        assert page.status == 200 and "attviz" in page.text
        assert server.get("/", {"Host": f"other.test:{server.port}", "Cookie": cookies}).status == 403
    finally:
        server.stop()


def test_the_load_benchmark_plan_and_verdict():
    """benchmarks/load.py: CI size, full size, and what fails a run (the run itself: --quick in CI)."""
    import argparse

    from benchmarks import load

    blank = {"quick": True, "sessions": None, "rounds": None, "max_seconds": None}
    assert load.plan(argparse.Namespace(**blank)) == {"sessions": 4, "rounds": 2, "max_seconds": 20.0}
    full = load.plan(argparse.Namespace(**{**blank, "quick": False, "sessions": 30}))
    assert full == {"sessions": 30, "rounds": 4, "max_seconds": 300.0}
    assert load.percentile([1, 2, 3, 4], 0.5) == 2.5 and load.percentile([], 0.5) is None
    ok = {
        "errors": [], "leaks": [], "remote_requests": 0, "rss_mb": {"peak": 900.0}, "interactions": 10,
        "server_exit": 0, "upload_folders_left": [],
    }  # fmt: skip
    assert load.failures(ok, 6000) == []
    bad = {**ok, "leaks": ["session 1: head 3, but it chose 2"], "remote_requests": 2, "server_exit": -9}
    assert len(load.failures(bad, 6000)) == 3 and load.failures(ok, 800) == ["peak RSS 900 MB over 800 MB"]
