"""attviz._compat: bokeh's curdoc stack survives a callback that raises."""

from __future__ import annotations

import pytest
from bokeh.document import Document
from bokeh.io import curdoc
from bokeh.io import doc as bokeh_doc

from attviz import _compat


def test_a_raising_callback_leaves_no_document_behind():
    from bokeh.document.callbacks import invoke_with_curdoc

    import attviz.app  # noqa: F401 - serving attviz installs the fix

    before = list(bokeh_doc._PATCHED_CURDOCS)
    session_doc = Document()

    def callback():
        assert curdoc() is session_doc  # inside: the session's document
        raise RuntimeError("a session callback failed")

    with pytest.raises(RuntimeError, match="failed"):
        invoke_with_curdoc(session_doc, callback)
    assert before == bokeh_doc._PATCHED_CURDOCS  # bokeh alone would keep session_doc here
    assert curdoc() is not session_doc


def test_entries_are_removed_by_identity_when_threads_interleave():
    a, b = Document(), Document()
    first, second = _compat.safe_patch_curdoc(a), _compat.safe_patch_curdoc(b)
    first.__enter__()
    second.__enter__()
    assert curdoc() is b
    first.__exit__(None, None, None)  # another thread's context ends first: b stays current
    assert curdoc() is b
    second.__exit__(None, None, None)
    assert all(ref() not in (a, b) for ref in bokeh_doc._PATCHED_CURDOCS)
