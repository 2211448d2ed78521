"""The README's Jupyter recipe in a real JupyterLab, offline: it renders, and it is interactive.

A JupyterLab server (this interpreter, so the kernel is this environment's ipykernel) serves a
temporary folder holding a small store ``corpus.zarr`` (6 layers x 12 heads, like MiniLM, so the
recipe's ``layer=3, head=7`` exist) and notebooks whose cells are the recipe read from README.md.
Chromium opens them with every request to anything but this machine aborted (and recorded), runs
the cells (Ctrl+Enter cell by cell, or Run > Run All Cells), and the test reads the rendered
explorer through its shadow roots. Without jupyterlab (the ``test`` extra) or Chromium the tests
skip, unless ``ATTVIZ_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from tests.browser import conftest
from tests.browser.conftest import LOCAL_HOSTS, PageLog, free_port

README = Path(__file__).resolve().parents[2] / "README.md"
# 6 layers x 12 heads over one short sentence: "[CLS] the cat sat on the mat . [SEP]".
TEXT = "The cat sat on the mat."
WORDS = [(0, 3), (4, 7), (8, 11), (12, 14), (15, 18), (19, 22), (22, 23)]
# The README's recipe before attviz.extension(): Panel's default, JavaScript from CDNs.
OLD_RECIPE = 'import panel as pn, attviz\npn.extension("tabulator")\nexplorer = attviz.explore("corpus.zarr")\nexplorer'
KERNEL_CHECK = "import sys\nprint('kernel:', sys.executable)"
# Every element of the page, looking into shadow roots (Bokeh and Panel render in them).
FIND_JS = """const find = (root) => [...root.querySelectorAll("*")].flatMap(
  (e) => [e, ...(e.shadowRoot ? find(e.shadowRoot) : [])]);"""
# The token spans of the text view (in shadow roots): [text, inline background colour]; and the
# text inside all shadow roots of the page (widget labels, titles).
TOKENS_JS = f"""() => {{
  {FIND_JS}
  return find(document).filter((e) => e.classList && e.classList.contains("attviz-token"))
    .map((e) => [e.textContent, e.style.backgroundColor]);
}}"""
SHADOW_TEXT_JS = f"""() => {{
  {FIND_JS}
  return find(document).filter((e) => e.shadowRoot).map((e) => e.shadowRoot.textContent).join(" ");
}}"""


def _require(what: str) -> None:
    if os.environ.get("ATTVIZ_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what}; ATTVIZ_REQUIRE_BROWSER=1 requires the browser tests to run")
    pytest.skip(what)


def readme_recipe() -> list[str]:
    """The README's Jupyter recipe as notebook cells: split after the line that displays the explorer."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"In Jupyter:\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md has no ```python block after 'In Jupyter:'"
    lines = match.group(1).rstrip("\n").splitlines()
    shown = next(i for i, line in enumerate(lines) if line.split("#")[0].strip() == "explorer")
    return ["\n".join(lines[: shown + 1]), "\n".join(lines[shown + 1 :])]


def write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def write_corpus(path: Path) -> Any:
    from attviz.corpus import Corpus, Document, attention_array, token_frame

    pieces = ["[CLS]", *(TEXT[a:b].lower() for a, b in WORDS), "[SEP]"]
    n = len(pieces)
    tokens = token_frame(
        pieces,
        word=[-1, *range(len(WORDS)), -1],
        start=[0, *(a for a, _ in WORDS), len(TEXT)],
        end=[0, *(b for _, b in WORDS), len(TEXT)],
        special=[1, *[0] * len(WORDS), 1],
    )
    rng = np.random.default_rng(7)
    values = rng.dirichlet(np.full(n, 0.3), size=(6, 12, n)).astype(np.float32)
    doc = Document(id="cat", text=TEXT, arrays={"self": attention_array(values, tokens)}, label="animals")
    return Corpus([doc], attrs={"name": "jupyter-test"}).save(path)


@dataclass
class Lab:
    url: str
    root: Path
    log: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab server on a free port over a temporary folder (with corpus.zarr); stopped after."""
    if importlib.util.find_spec("jupyterlab") is None:
        _require("jupyterlab is not installed (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("lab-home")
    write_corpus(root / "corpus.zarr")
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # private config, runtime and IPython folders: no user settings, extensions or old workspaces
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    env.pop("JUPYTER_DATA_DIR", None)
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        f"--LabApp.user_settings_dir={home / 'settings'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    # no "get notified about official Jupyter news?" toast over the explorer
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')
    log = home / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        conftest.wait_for_http(f"{url}/api/status", 60, what="jupyter lab", process=server, log=log)
        yield Lab(url, root, log)
    finally:
        stop_lab(server, url)


def api(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


def stop_lab(server: subprocess.Popen, url: str) -> None:
    """Shut the kernels down through the API (they run in sessions of their own), then the server."""
    with contextlib.suppress(OSError, ValueError):
        for kernel in api(f"{url}/api/kernels"):
            api(f"{url}/api/kernels/{kernel['id']}", "DELETE")
    server.terminate()  # SIGTERM: the server stops its remaining kernels and exits
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):  # anything else it started in its process group
        os.killpg(server.pid, signal.SIGKILL)


def offline_page(chromium: Any, log: PageLog) -> Any:
    """A page in a fresh context that aborts (and records) every request not to this machine."""
    return conftest.offline_page(chromium, log, viewport=(1400, 1100), timeout_ms=30_000)


def poll(page: Any, condition: Any, timeout: float = 30.0, what: str = "") -> Any:
    """Wait until ``condition()`` is truthy; return it. Waits inside Playwright (``wait_for_timeout``),
    so that the page's routed requests are served meanwhile (a ``time.sleep`` would stall them)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or getattr(condition, '__name__', condition)}")
        page.wait_for_timeout(100)
    return value


def open_notebook(page: Any, lab: Lab, name: str, cells: list[str]) -> None:
    """Write ``name`` with ``cells``, open it in JupyterLab and wait until its kernel is up."""
    write_notebook(lab.root / name, cells)
    # a workspace of its own: JupyterLab would otherwise reopen the notebooks of earlier pages too
    page.goto(f"{lab.url}/lab/workspaces/{Path(name).stem}/tree/{name}")
    page.locator(".jp-Notebook .jp-Cell").nth(len(cells) - 1).wait_for()
    poll(page, lambda: kernel_ready(lab, name), 60, "the notebook's kernel is idle and connected")


def run_all_cells(page: Any) -> None:
    """JupyterLab's Run menu, Run All Cells."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()


def run_cell(page: Any, index: int) -> None:
    """Select code cell ``index`` and run it with Ctrl+Enter (as a user would); wait for its ``[n]:``."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    cell.locator(".jp-InputPrompt").click()  # selects the cell, command mode
    page.keyboard.press("Control+Enter")
    prompt = cell.locator(".jp-InputArea-prompt")
    poll(page, lambda: re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()), 90, f"cell {index} ran")


def kernel_ready(lab: Lab, name: str) -> bool:
    """Whether the server has started the notebook's kernel, idle, with the page connected to it."""
    sessions = api(f"{lab.url}/api/sessions")
    return any(
        s["path"] == name and s["kernel"]["execution_state"] == "idle" and s["kernel"]["connections"] > 0
        for s in sessions
    )


def wait_executed(page: Any, count: int, timeout: float = 90.0) -> None:
    """Wait until every code cell shows its execution count ``[n]:`` (none still ``[*]``)."""

    def prompts() -> list[str]:
        return [p.strip() for p in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]

    deadline = time.monotonic() + timeout
    while not (len(shown := prompts()) == count and all(re.fullmatch(r"\[\d+\]:", p) for p in shown)):
        if time.monotonic() > deadline:
            outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
            raise AssertionError(f"cells not all executed within {timeout} s: prompts {shown}, outputs {outputs}")
        page.wait_for_timeout(250)


def kernel_executable(page: Any) -> str:
    """What the notebook's ``KERNEL_CHECK`` cell printed."""
    lines = [line for text in page.locator(".jp-OutputArea-output").all_inner_texts() for line in text.splitlines()]
    return next(line.split("kernel:", 1)[1].strip() for line in lines if line.startswith("kernel:"))


def token_colors(page: Any) -> list[str]:
    return [color for _, color in page.evaluate(TOKENS_JS)]


def alpha(color: str) -> float:
    parts = re.findall(r"[\d.]+", color)
    return float(parts[3]) if len(parts) == 4 else 1.0


def expected_vector(root: Path, **params: Any) -> np.ndarray:
    """The explorer's token vector for ``params``, computed here from the same store."""
    import attviz

    explorer = attviz.explore(str(root / "corpus.zarr"))
    explorer.param.update(**params)  # as the recipe does: the bounds of layer and head follow the corpus
    return explorer.token_vector.values


def test_readme_recipe_renders_offline_and_is_interactive(chromium, lab, screenshot):
    log = PageLog()
    page = offline_page(chromium, log)
    try:
        cells = [*readme_recipe(), KERNEL_CHECK]
        assert "attviz.extension()" in cells[0] and "pn.extension(" not in "".join(cells)
        open_notebook(page, lab, "recipe.ipynb", cells)
        # Cell by cell, as a user runs it: the next cell once the explorer is on screen. (With Run All,
        # the update cell runs while the browser is still embedding the explorer, and in about 4 runs
        # of 10 the page then lost its sync with the kernel: "Expected text fragment but received
        # binary fragment" from Bokeh's receiver, updates lost both ways. Plain Panel and HoloViews
        # objects did not show that.)
        run_cell(page, 0)
        # The explorer rendered: Bokeh/Panel content in shadow roots, the document's tokens coloured.
        poll(page, lambda: len(page.evaluate(TOKENS_JS)) == 9, 30, "the explorer's 9 tokens rendered")
        for index in range(1, len(cells)):
            run_cell(page, index)
        assert os.path.realpath(kernel_executable(page)) == os.path.realpath(sys.executable)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert not [t for t in errors.all_inner_texts() if "Error" in t or "Traceback" in t], errors.all_inner_texts()

        shown = page.evaluate(TOKENS_JS)
        assert [text for text, _ in shown[1:-1]] == [TEXT[a:b] for a, b in WORDS]
        text = page.evaluate(SHADOW_TEXT_JS)
        for label in ("Layer", "Head", "Combine heads"):
            assert label in text, label
        # attviz's notice (for when Panel's JavaScript is missing) is in the output but hidden
        assert page.locator(".attviz-notebook-notice").count() == 1
        assert not page.locator(".attviz-notebook-notice:visible").count()
        combine = page.get_by_label("Combine heads")
        options = combine.locator("option").evaluate_all("os => os.map(o => [o.value, o.textContent])")
        only_head = next(label for value, label in options if value == "head" or label == "selected head")
        mean = next(label for value, label in options if value == "mean" or label.endswith("(mean)"))
        # the recipe's explorer.param.update(layer=3, head=7, head_reduction="head") reached the page
        poll(page, lambda: combine.input_value() in ("head", only_head))
        handle = page.locator(".bk-Slider").filter(has_text="Head:").locator(".noUi-handle")
        poll(page, lambda: (handle.get_attribute("aria-valuenow") or "").startswith("7"))
        screenshot(page, "jupyter-recipe")

        # Interactive: widgets in the page change the kernel's explorer, which recolours the tokens.
        head7 = token_colors(page)
        combine.select_option(label=mean)
        mean_colors = poll(page, lambda: (c := token_colors(page)) != head7 and c)
        combine.select_option(label=only_head)
        poll(page, lambda: token_colors(page) == head7)  # back to the selected head (7)
        handle.focus()
        handle.press("ArrowRight")
        poll(page, lambda: (handle.get_attribute("aria-valuenow") or "").startswith("8"))
        head8 = poll(page, lambda: (c := token_colors(page)) not in (head7, mean_colors) and c)
        # the strongest colour is where the kernel's vector for layer 3, head 8 peaks
        vector = expected_vector(lab.root, layer=3, head=8, head_reduction="head")
        assert len(head8) == len(vector)
        assert max(range(len(head8)), key=lambda i: alpha(head8[i])) == int(np.argmax(vector))
        screenshot(page, "jupyter-recipe-head8")
    finally:
        page.context.close()

    assert not log.errors, log.errors
    assert not log.blocked, f"requests left this machine: {log.blocked}"
    assert all(urlparse(url).hostname in LOCAL_HOSTS for url in log.requests if "://" in url)
    assert not [text for kind, text in log.console if kind == "error"], log.console


def test_old_recipe_offline_shows_what_to_do(chromium, lab, screenshot):
    """``pn.extension("tabulator")`` (CDN resources) offline: no explorer, but a notice, never a blank cell."""
    log = PageLog()
    page = offline_page(chromium, log)
    try:
        cells = [OLD_RECIPE]
        open_notebook(page, lab, "old-recipe.ipynb", cells)
        run_all_cells(page)
        wait_executed(page, len(cells))
        # Panel tried its CDN (the requests were aborted): this is the offline case.
        poll(page, lambda: any("cdn" in urlparse(url).hostname for url in log.blocked))
        page.wait_for_timeout(2_000)  # the failed loads have settled
        notice = page.locator(".attviz-notebook-notice")
        poll(page, notice.is_visible, 10, "attviz's notice is visible in the output")
        assert "attviz.extension()" in notice.inner_text()
        assert "CDN" in notice.inner_text()
        assert not page.evaluate(TOKENS_JS)  # nothing rendered: the notice is all there is
        screenshot(page, "jupyter-old-recipe-offline")
    finally:
        page.context.close()
    # the only requests that tried to leave were Panel's CDN resources (cdn.bokeh.org, cdn.holoviz.org)
    assert all(urlparse(url).hostname.startswith("cdn.") for url in log.blocked), log.blocked
