"""The View plugin base: the input vocabulary, can_show, and the validator the registry uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import param
import pytest
import xarray as xr

from attviz.analysis.engine import CorpusStatistics, Settings
from attviz.corpus import Document
from attviz.views import REQUIREMENTS, View, fits
from attviz.views.base import _validate_view

MATRIX = xr.DataArray(np.eye(2), dims=("query", "key"))
VECTOR = xr.DataArray(np.ones(3), dims=("token",))
HEADS = xr.DataArray(np.ones((2, 3)), dims=("layer", "head"))
TABLE = pd.DataFrame({"id": ["a"], "text": ["x"]})
HEAD_VECTORS = xr.DataArray(np.ones((2, 3)), dims=("head", "token"))
HEAD_MATRICES = xr.DataArray(np.ones((2, 3, 3)), dims=("head", "query", "key"))
DOCUMENT = Document(id="d", text="x")
STATISTICS = CorpusStatistics(xr.Dataset(), xr.Dataset(), None, TABLE, Settings())
KINDS = {
    "matrix": MATRIX,
    "token_vector": VECTOR,
    "token_vectors": HEAD_VECTORS,
    "head_matrices": HEAD_MATRICES,
    "head_summary": HEADS,
    "corpus": TABLE,
    "document": DOCUMENT,
    "corpus_statistics": STATISTICS,
}


@pytest.mark.parametrize(("requirement", "fitting"), list(KINDS.items()))
def test_each_requirement_fits_only_its_kind(requirement, fitting):
    assert set(REQUIREMENTS) == set(KINDS)
    for data in [*KINDS.values(), None]:
        assert fits(requirement, data) is (data is fitting)
    assert not fits("matrix", xr.DataArray(np.ones((1, 2, 2)), dims=("head", "query", "key")))
    assert fits("token_vectors", xr.DataArray(np.ones((2, 3)), dims=("vector", "token")))


class TokenText(View):
    """A complete small view: the value of the selected token."""

    description = "Value of the selected token"
    requires = ("token_vector",)
    digits = param.Integer(default=2, bounds=(0, 6), doc="Decimals shown.")

    @param.depends("data", "selected_token", "digits")
    def __panel__(self):
        value = self.data.isel(token=self.selected_token or 0).item()
        return pn.pane.Markdown(f"{value:.{self.digits}f}")


def test_a_view_renders_and_says_what_it_can_show():
    assert TokenText.can_show(VECTOR) and not TokenText.can_show(MATRIX)
    view = TokenText(data=VECTOR * 0.5, selected_token=1)
    assert pn.panel(view).get_root() is not None
    _validate_view(TokenText)


class NoPanel(View):
    description = "nothing"
    requires = ("matrix",)


class Unknown(TokenText):
    requires = ("picture",)


class Undescribed(TokenText):
    description = ""


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (dict, "not a subclass"),
        (NoPanel, "does not implement __panel__"),
        (Unknown, "requires must name"),
        (Undescribed, "no description"),
    ],
)
def test_the_validator_rejects_malformed_views(cls, message):
    with pytest.raises(TypeError, match=message):
        _validate_view(cls)
