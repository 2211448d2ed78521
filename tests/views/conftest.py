"""View tests render Bokeh models outside any server session."""

from __future__ import annotations

import panel as pn
import pytest


@pytest.fixture(autouse=True)
def no_stale_busy_indicators():
    """Forget busy indicators of templates from earlier tests (served or rendered, now gone).

    Panel keeps them in a process-wide list and updates them on every simulated browser event;
    updating the model of a finished server session raises in Bokeh.
    """
    pn.state._indicators.clear()
    yield
