"""attviz.notebook without a browser: the extension embeds the JavaScript, the output carries the notice.

The browser test (tests/browser/test_jupyter.py) shows both in JupyterLab; these check the pieces
quickly: what ``attviz.extension()`` sets, and the mimebundle around Panel's own output.
"""

from __future__ import annotations

import re

import panel as pn
import pytest
from panel.config import panel_extension

import attviz
from attviz import notebook


@pytest.fixture
def restore_inline():
    inline = pn.config.inline
    yield
    pn.config.inline = inline


def view() -> pn.Column:
    return pn.Column(pn.widgets.IntSlider(label="Head", start=0, end=11), pn.pane.Markdown("tokens"))


def test_extension_embeds_the_javascript(restore_inline):
    pn.config.inline = False
    attviz.extension()
    assert pn.config.inline is True  # Bokeh and Panel's JavaScript go into the notebook: no CDN
    assert "tabulator" in panel_extension._loaded_extensions  # the document table needs it
    pn.config.inline = False
    attviz.extension(inline=False)  # an explicit choice is kept
    assert pn.config.inline is False


def test_notice_in_front_of_panels_output(monkeypatch, restore_inline):
    monkeypatch.setattr(panel_extension, "_loaded", True)
    pn.config.inline = True
    data, metadata = notebook.repr_mimebundle(view())
    html = data["text/html"]
    ((mime, meta),) = metadata.items()
    assert mime in data and set(data) == {"text/html", mime}  # still Panel's bundle, for the pyviz renderer
    notice = re.match(r'<div id="(attviz-notice-[0-9a-f]+)" class="attviz-notebook-notice"[^>]*>(.*?)</div>', html)
    assert notice, html[:300]
    assert "attviz.extension()" in notice.group(2) and "pn.config.inline" not in notice.group(2)
    # the script hides this notice (by id) once Panel's JavaScript is there or the root has rendered
    script = html[notice.end() : html.index("</script>", notice.end())]
    assert f'getElementById("{notice.group(1)}")' in script and f'getElementById("{meta["id"]}")' in script
    assert "docs_json" in html[notice.end() :] and f"id='{meta['id']}'" in html  # Panel's output follows


def test_notice_names_the_cdn_setting(monkeypatch, restore_inline):
    monkeypatch.setattr(panel_extension, "_loaded", True)
    pn.config.inline = False
    data, _ = notebook.repr_mimebundle(view())
    assert "CDN" in data["text/html"] and "<code>pn.config.inline</code> is False" in data["text/html"]


def test_without_panels_extension_the_notice_is_the_output(monkeypatch):
    monkeypatch.setattr(panel_extension, "_loaded", False)
    import holoviews as hv

    monkeypatch.setattr(hv.extension, "_loaded", False)
    data, metadata = notebook.repr_mimebundle(view())  # Panel itself would return None: a bare repr
    assert metadata == {} and data["text/plain"] == "<Column: run attviz.extension() first>"
    assert "extension is not loaded" in data["text/html"] and "attviz.extension()" in data["text/html"]
    assert "<script" not in data["text/html"]  # nothing hides it


def test_with_notice_leaves_other_bundles_alone():
    assert notebook.with_notice(None) is None
    widget = ({"text/plain": "IntSlider", "application/vnd.jupyter.widget-view+json": {}}, {})
    assert notebook.with_notice(widget) is widget
    data = notebook.with_notice({"text/html": "<p>x</p>"})
    assert data["text/html"].endswith("<p>x</p>") and "attviz-notebook-notice" in data["text/html"]
    assert "<script" not in data["text/html"]  # no root id to watch: the notice stays
