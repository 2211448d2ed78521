"""Fixtures for the external-plugin tests: the installed attviz-valuenorm distribution."""

from __future__ import annotations

import importlib.metadata as metadata

import numpy as np
import pytest
import xarray as xr

from attviz.corpus import attention_array, token_frame

INSTALL = "pip install ./plugins/attviz-valuenorm"


@pytest.fixture(scope="session")
def valuenorm_dist() -> metadata.Distribution:
    """The installed plugin distribution; the test command installs it (see README)."""
    try:
        return metadata.distribution("attviz-valuenorm")
    except metadata.PackageNotFoundError:
        pytest.fail(f"the plugin distribution attviz-valuenorm is not installed: run `{INSTALL}`")


@pytest.fixture
def three_tokens() -> xr.DataArray:
    """One layer, one head, tokens [CLS] the the; rows worked out by hand in the tests.

    Query 1 attends [0.5, 0.25, 0.25]; the value norms ||f(x)|| are [2, 4, 0].
    """
    alpha = np.array([[[[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.2, 0.4, 0.4]]]])
    tokens = token_frame(["[CLS]", "the", "the"], word=[-1, 0, 1], special=[True, False, False])
    array = attention_array(alpha.astype(np.float16), tokens)
    return array.assign_coords(value_norm=(("layer", "head", "key"), np.array([[[2.0, 4.0, 0.0]]])))
