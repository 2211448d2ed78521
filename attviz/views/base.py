"""The View plugin kind: a :class:`panel.viewable.Viewer` that shows one kind of data.

A view is one small class (entry-point group ``attviz.views``): a ``description``, the kinds of
input it can show (:attr:`View.requires`, from :data:`REQUIREMENTS`), its parameters, and
``__panel__`` returning its layout. The explorer sets :attr:`View.data` and offers a view only where
:meth:`View.can_show` is true. Views build HoloViews elements from the DataArray and never import
the explorer.

Linking: a view that declares a parameter named in :data:`LINKED` is kept in sync with the
explorer's parameter of the same name, both ways: the explorer sets it when the state changes, and
when the view sets it (a click on a token, a cell of the head grid) every other view follows. A
view that declares a parameter named in :data:`INPUTS` receives that extra input (one way).
"""

from __future__ import annotations

from typing import Any, ClassVar

import holoviews as hv
import holoviews.plotting.bokeh  # registers the Bokeh backend, so views can set its options
import pandas as pd
import panel as pn
import param
import xarray as xr

from attviz.registry import check_plugin_class, register_validator

if set(hv.Store.renderers) == {"bokeh"}:  # no other backend chosen by the user
    hv.Store.set_current_backend("bokeh")  # builds the hv.opts.<Element> helpers without hv.extension()

#: What a view can take as :attr:`View.data`.
REQUIREMENTS: dict[str, str] = {
    "matrix": "a DataArray with dims (query, key), e.g. one layer and head after aggregation",
    "token_vector": "a DataArray with the dim token (one value per token), e.g. attention received",
    "token_vectors": "a DataArray with dims (head, token) or (vector, token): one token vector per head",
    "head_matrices": "a DataArray with dims (head, query, key): every head of one layer",
    "head_summary": "a DataArray with dims (layer, head) and no token dims, e.g. head entropy",
    "corpus": "the corpus table (a pandas DataFrame, one row per document)",
    "document": "an attviz Document (text, tokens, labels, class probabilities)",
    "corpus_statistics": "the statistics of the whole corpus (an attviz.analysis.engine.CorpusStatistics)",
}

#: Explorer parameters a view may declare to be kept in sync both ways.
LINKED: dict[str, str] = {
    "selected_token": "position of the selected (query) token, or None",
    "layer": "the selected layer (int)",
    "head": "the selected head (int)",
    "doc_id": "the id of the current document",
    "store_source": "the corpus whose statistics the view asks for as `other_corpus_statistics` (store A vs store B "
    "over the same texts); None: none",
}

#: Extra inputs the explorer gives a view that declares a parameter of this name (one way).
INPUTS: dict[str, str] = {
    "aggregate": "the current token vector (dims (token,)): the head reduction or the selected head",
    "heads": "the heads selected for multi-head displays (list of int; empty: all)",
    "other": "for comparisons: the same input for the second document/corpus (or None)",
    "other_label": "for comparisons: a short label of the second document/corpus",
    "label": "a short label of the current document/corpus",
    "text": "the document's original text (token offsets index into it)",
    "title": "what is shown: document, layer/head, aggregation, as one short line (the title of the view's plots)",
    "current_corpus": "the corpus explored (an attviz Corpus), for views that compute over its documents on request",
    "corpus_status": "why the corpus statistics are not shown yet: being computed (with the progress), or why they "
    "cannot be ('' when shown)",
    "other_corpus_statistics": "the corpus statistics of the corpus named by the linked `store_source` (a "
    "CorpusStatistics), or None while they are computed or when none is asked for",
    "other_corpus_status": "why `other_corpus_statistics` are not shown yet: being computed, or why they cannot be",
    "other_sources": "the names of the loaded corpora other than the explored one (list of str)",
    "compare_source": "the corpus of the comparison (the Compare tab's), or None",
}

_TOKEN_DIMS = {"query", "key", "token"}


def fits(requirement: str, data: Any) -> bool:
    """Whether ``data`` is the kind of input named ``requirement`` (a key of :data:`REQUIREMENTS`)."""
    if requirement == "corpus":
        return isinstance(data, pd.DataFrame)
    if requirement == "corpus_statistics":
        from attviz.analysis.engine import CorpusStatistics

        return isinstance(data, CorpusStatistics)
    if requirement == "document":
        from attviz.corpus import Document

        return isinstance(data, Document)
    if not isinstance(data, xr.DataArray):
        return False
    dims = set(data.dims)
    if requirement == "matrix":
        return dims == {"query", "key"}
    if requirement == "token_vector":
        return dims == {"token"}
    if requirement == "token_vectors":
        return len(dims) == 2 and "token" in dims and bool(dims & {"head", "vector"})
    if requirement == "head_matrices":
        return dims == {"head", "query", "key"}
    if requirement == "head_summary":
        return {"layer", "head"} <= dims and not dims & _TOKEN_DIMS
    raise ValueError(f"unknown view requirement {requirement!r} (expected one of {sorted(REQUIREMENTS)})")


class View(pn.viewable.Viewer):
    """Base class of views (entry-point group ``attviz.views``).

    Subclasses set :attr:`description` and :attr:`requires`, add their own parameters (each with
    ``doc=``; the app builds widgets from them) and implement ``__panel__``, depending on the
    parameters they use (``@param.depends("data", "selected_token")``) so only they re-render.
    Override :meth:`can_show` when a view needs more than the shape (e.g. an extra coordinate).
    """

    description: ClassVar[str] = ""
    #: The kinds of :attr:`data` the view can show (any one of them); keys of :data:`REQUIREMENTS`.
    requires: ClassVar[tuple[str, ...]] = ()

    data = param.Parameter(default=None, doc="What the view shows: one of the kinds in `requires`.")
    selected_token = param.Integer(
        default=None, allow_None=True, doc="Position of the selected (query) token; None: no selection."
    )

    __abstract = True

    @classmethod
    def can_show(cls, data: Any) -> bool:
        """Whether this view can show ``data`` (it fits one of :attr:`requires`)."""
        return any(fits(requirement, data) for requirement in cls.requires)

    def __panel__(self) -> Any:
        raise NotImplementedError


def _validate_view(cls: Any) -> None:
    check_plugin_class(cls, View, "attviz.views.View", "__panel__")
    unknown = [r for r in cls.requires if r not in REQUIREMENTS]
    if not cls.requires or unknown:
        raise TypeError(f"{cls.__name__}.requires must name some of {sorted(REQUIREMENTS)} (got {cls.requires!r})")


register_validator("attviz.views", _validate_view)
