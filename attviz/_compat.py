"""Workarounds for bugs in the libraries attviz serves its app with (each says which, and why).

Bokeh 3.9's ``bokeh.io.doc.patch_curdoc`` pushes a document on a process-wide stack and pops it
after the ``with`` body *without* ``try/finally``: a callback that raises inside it (any session's,
e.g. while a server shuts down) leaves its document on the stack for good, and from then on
``curdoc()`` in *every* thread returns that stale document. Later sessions then write their models
into a destroyed session's document ("_pending_writes should be non-None when we have a document
lock"). Every callback bokeh invokes goes through it (``invoke_with_curdoc``), so one error poisons
the whole server. :func:`safe_patch_curdoc` restores the stack on exit, removing its own entry (not
blindly the top one, which with several server threads may be another thread's).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def safe_patch_curdoc(doc: Any) -> Iterator[None]:
    """``bokeh.io.doc.patch_curdoc`` that always removes its entry, even when the body raises."""
    from bokeh.io import doc as bokeh_doc

    entry = weakref.ref(doc)
    stack = bokeh_doc._PATCHED_CURDOCS
    stack.append(entry)
    del doc
    try:
        yield
    finally:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is entry:
                del stack[i]
                break


def install() -> None:
    """Use :func:`safe_patch_curdoc` wherever bokeh and panel look ``patch_curdoc`` up (idempotent)."""
    from bokeh.io import doc as bokeh_doc

    if getattr(bokeh_doc, "_PATCHED_CURDOCS", None) is None:  # a bokeh without that stack: nothing to fix
        return
    bokeh_doc.patch_curdoc = safe_patch_curdoc  # bokeh.document.callbacks imports it at call time
    try:
        from bokeh.application.handlers import code
        from panel.io import handlers
    except ImportError:  # pragma: no cover - both are there with the pinned versions
        return
    code.patch_curdoc = safe_patch_curdoc
    handlers.patch_curdoc = safe_patch_curdoc
