"""The notebooks in notebooks/ run top to bottom (their own asserts check the numbers) and render.

Each notebook is executed in memory with nbclient in a fresh ``python3`` kernel started from this
interpreter (jupyter_client swaps the kernelspec's ``python`` for ``sys.executable``; a cell appended
in memory checks it), with a temporary working directory. The stored notebooks have no outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import nbclient  # nbclient, nbformat and ipykernel are in the `test` extra
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHECK_MARK = "attviz-test-check"


@pytest.fixture(autouse=True)
def _offline_kernel(monkeypatch):
    """The kernel inherits the environment: no Hub access, quiet tokenizers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def run_notebook(name: str, tmp_path: Path, checks: str = "") -> dict[str, dict]:
    """Execute ``notebooks/name`` (plus ``checks``, whose stdout must be a JSON line); cells by id."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is stored with outputs"
    source = f"import json, sys\nprint({CHECK_MARK!r}, json.dumps({{'executable': sys.executable{checks}}}))"
    nb.cells.append(nbformat.v4.new_code_cell(source))
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell (an assert in the notebook)
    cells = {c.get("id", str(i)): c for i, c in enumerate(nb.cells)}
    check = stdout(nb.cells[-1])
    assert check.startswith(CHECK_MARK), check
    values = json.loads(check[len(CHECK_MARK) :])
    assert os.path.realpath(values["executable"]) == os.path.realpath(sys.executable)
    cells["_checks"] = values
    return cells


def stdout(cell: dict) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def rich(cell: dict, mime: str) -> str:
    """The ``mime`` data of a cell's display outputs, joined."""
    return "".join(str(o.get("data", {}).get(mime, "")) for o in cell.get("outputs", []))


def test_notebooks_are_stored_clean():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def test_quick_tour(tmp_path):
    cells = run_notebook("quick-tour.ipynb", tmp_path, ", 'message': explorer.message, 'folder': str(folder)")
    checks = cells["_checks"]

    assert "'layer': 6, 'head': 12" in stdout(cells["attention"])  # MiniLM: 6 layers x 12 heads
    assert "attention received by [CLS] in layer 5, head 3: 0." in stdout(cells["check-aggregations"])
    assert "strongest previous-token head: layer" in stdout(cells["head-summary"])
    # the explorer rendered inline as a Bokeh document holding the first document's tokens and the controls
    explorer_html = rich(cells["explorer-display"], "text/html")
    assert any("application/vnd.holoviews_exec.v0+json" in o.get("data", {}) for o in cells["explorer-display"].outputs)
    assert "docs_json" in explorer_html and "striker" in explorer_html and "Layer" in explorer_html
    assert checks["message"] == "", checks["message"]  # no view failed
    assert "('query', 'key') (14, 14)" in stdout(cells["drive-explorer"])
    assert "'striker' attends most to" in stdout(cells["select-token"])
    # exports went to the notebook's temporary folder, never into the repository
    folder = Path(checks["folder"])
    try:
        assert not folder.is_relative_to(NOTEBOOKS.parent)
        assert {"tour.zarr", "tour.nc", "matrix.html", "document.nc"} <= {p.name for p in folder.iterdir()}
        html = (folder / "matrix.html").read_text()
        assert "<html" in html.lower() and "cdn.bokeh.org" not in html  # standalone: resources inline
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_write_a_plugin(tmp_path):
    cells = run_notebook(
        "write-a-plugin.ipynb", tmp_path, ", 'left': 'previous_tokens' in registry.plugins('aggregations')"
    )

    assert "('layer', 'head', 'token') [0.  0.5 0.6 0.5]" in stdout(cells["test-aggregation"])
    assert "strongest previous-token head: layer" in stdout(cells["pipeline"])
    assert "step 2 (__main__:PreviousTokens) needs dims (query, key)" in stdout(cells["bad-pipeline"])
    lines = stdout(cells["load-plugins"]).splitlines()
    assert any("previous_tokens" in line and " ok " in line for line in lines)
    assert any("not_installed" in line and "ModuleNotFoundError" in line for line in lines)
    assert "previous_tokens" in stdout(cells["discover"])
    for cell in ("show-view", "explorer"):  # the view rendered as a Bokeh document
        assert "docs_json" in rich(cells[cell], "text/html")
    assert "my-attviz-plugin" in rich(cells["discover"], "text/plain")
    if importlib.util.find_spec("attviz_valuenorm") is not None:  # the installed example plugin is discovered
        assert "value_norm_bars" in rich(cells["installed"], "text/plain")
    assert cells["_checks"]["left"] is False  # the notebook cleaned up its hand-made plugin metadata
