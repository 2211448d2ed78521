"""benchmarks/pages.py in the shared browser: page-ready timing of a real inline-Bokeh page."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks import pages


def test_page_ready_waits_for_a_bokeh_page_to_render(tmp_path, chromium):
    """The fallback readiness test (every Bokeh document idle) on a real inline-Bokeh page; no remote request."""
    from bokeh.embed import file_html
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    plot = figure(width=300, height=300)
    plot.image([np.eye(8)], x=0, y=0, dw=1, dh=1)
    html = file_html(plot, INLINE, "bench")
    assert pages.attviz_ready_js(html).startswith("() => window.Bokeh")
    assert "window.attviz.ready === true" in pages.attviz_ready_js(html + "const A = (window.attviz = {});")
    (tmp_path / "p.html").write_text(html)
    with pages.StaticServer(tmp_path) as server:
        result = pages.page_ready(chromium, f"{server.url}/p.html", pages.attviz_ready_js(html), timeout_s=60)
    assert 0 < result["ready_ms"] <= result["painted_ms"] < 60_000
    assert result["remote_requests"] == 0, result["remote_urls"]
    assert result["requests"] >= 1
