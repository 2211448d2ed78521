"""The corpus table (:class:`DocumentBrowser`); one document's class probabilities are in
:mod:`attviz.views.predictions` (:class:`Predictions`, importable from here too).

Document text, ids and class names are untrusted: every string reaches the page either through a
plain-text formatter or escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models.widgets.tables import NumberFormatter

from attviz.views.base import View
from attviz.views.common import class_colour
from attviz.views.predictions import Predictions, class_probabilities, predicted_class, prediction_summary_html

__all__ = [
    "DocumentBrowser",
    "Predictions",
    "class_probabilities",
    "document_rows",
    "predicted_class",
    "prediction_summary_html",
    "snippet_html",
]

#: Characters of a document's text shown in the browser's snippet column.
SNIPPET_CHARS = 80
#: ``class_filter`` value meaning "every class".
ALL_CLASSES = ""
_COLUMNS = ("id", "snippet", "gold", "predicted", "confidence", "correct", "length")


def snippet_html(text: str, search: str = "", width: int = SNIPPET_CHARS) -> str:
    """Escaped HTML of a one-line snippet of ``text``: its start, or the part around the first match of
    ``search`` (case-insensitive, runs of white space as one space) with the match wrapped in ``<mark>``."""
    flat = " ".join(str(text).split())
    return _snippet(flat, flat.lower(), search_query(search), width)


def search_query(search: str) -> str:
    """The normalised search text: lower case, runs of white space as one space ("" means no search)."""
    return " ".join(search.split()).lower()


def _snippet(flat: str, lowered: str, query: str, width: int = SNIPPET_CHARS) -> str:
    at = lowered.find(query) if query else -1
    if at >= 0 and len(lowered) != len(flat):  # lower() changed the length: find the match in ``flat``
        match = re.search(re.escape(query), flat, re.IGNORECASE)
        at, length = (match.start(), len(match.group())) if match else (-1, 0)
    else:
        length = len(query)
    if at < 0:
        return html.escape(flat[:width]) + ("…" if len(flat) > width else "")
    start = max(0, at - max(0, (width - length) // 3))
    end = max(at + length, start + width)
    return "".join(
        [
            "…" if start > 0 else "",
            html.escape(flat[start:at]),
            "<mark>",
            html.escape(flat[at : at + length]),
            "</mark>",
            html.escape(flat[at + length : end]),
            "…" if end < len(flat) else "",
        ]
    )


def document_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The browser's rows of a corpus table (:attr:`attviz.corpus.Corpus.table`), with a fresh RangeIndex.

    ``snippet`` is escaped HTML; ``confidence`` stays a fraction (formatted as a percentage).
    """

    def column(name: str, default: Any = "") -> pd.Series:
        values = table[name] if name in table else pd.Series(default, index=table.index)
        return pd.Series(values.to_numpy(dtype=object), dtype=object)

    def text(name: str) -> list[str]:
        return ["" if value is None or value is pd.NA or value != value else str(value) for value in column(name)]

    correct = column("correct", None)
    confidence = pd.to_numeric(column("confidence", np.nan), errors="coerce")
    return pd.DataFrame(
        {
            "id": text("id"),
            "snippet": [snippet_html(value) for value in text("text")],
            "gold": text("label"),
            "predicted": text("prediction"),
            "confidence": confidence.astype(float).to_numpy(),
            "correct": ["" if pd.isna(value) else "✓" if value else "✗" for value in correct],
            "length": pd.to_numeric(column("n_tokens", 0), errors="coerce").fillna(0).astype(int).to_numpy(),
        },
        columns=list(_COLUMNS),
    )


def class_cell_style(name: str) -> str:
    """CSS of a gold or predicted cell: a bar in the class's colour (:func:`~attviz.views.common.class_colour`)."""
    return f"border-left: 6px solid {class_colour(name)}" if name else ""


class DocumentBrowser(View):
    """The corpus table: search, filter by class or errors, and pick a document (sets ``doc_id``)."""

    description: ClassVar[str] = "Corpus table: search and filter the documents, click one to open it"
    requires: ClassVar[tuple[str, ...]] = ("corpus",)

    class_filter = param.Selector(
        default=ALL_CLASSES,
        objects={"all classes": ALL_CLASSES},
        doc="Show only documents whose gold or predicted class is this one.",
    )
    doc_id = param.String(default=None, allow_None=True, doc="The id of the current document.")
    misclassified_only = param.Boolean(default=False, doc="Show only documents whose prediction is wrong.")
    page_size = param.Integer(default=15, bounds=(5, 200), doc="Rows per page of the table.")
    search = param.String(default="", doc="Case-insensitive text to find in document ids and texts.")

    def __init__(self, **params: Any):
        self._syncing = False
        self._ids: list[str] = []
        self._positions: dict[str, int] = {}
        self._texts: list[str] = []  # one-line texts
        self._haystack: list[str] = []  # the same, lower case, for the search
        self._mask_cache: tuple[Any, pd.Series] = (None, pd.Series(dtype=bool))
        self._rows = document_rows(pd.DataFrame())
        super().__init__(**params)
        self._table = pn.widgets.Tabulator(
            self._rows,
            disabled=True,
            selectable=1,
            show_index=False,
            pagination="remote",
            page_size=self.page_size,
            layout="fit_columns",
            sizing_mode="stretch_width",
            widths={name: f"{share}%" for name, share in zip(_COLUMNS, (13, 41, 10, 10, 10, 8, 8), strict=True)},
            titles={"snippet": "text", "length": "tokens"},
            formatters={
                "id": "plaintext",
                "snippet": "html",  # escaped by snippet_html
                "gold": "plaintext",
                "predicted": "plaintext",
                "confidence": NumberFormatter(format="0.0%", nan_format="", null_format="", text_align="right"),
                "correct": {"type": "plaintext", "hozAlign": "center"},
                "length": "plaintext",
            },
        )
        self._table.style.map(class_cell_style, subset=["gold", "predicted"])  # the class colours, by name
        self._table.add_filter(
            pn.bind(
                self._filter_rows,
                search=self.param.search,
                class_filter=self.param.class_filter,
                misclassified_only=self.param.misclassified_only,
            )
        )
        self._table.param.watch(self._on_selection, "selection")
        self._count = pn.pane.HTML("", margin=(5, 10))
        controls = pn.Row(
            pn.widgets.TextInput.from_param(
                self.param.search, onkeyup=True, name="", placeholder="Search id or text…", width=260
            ),
            pn.widgets.Select.from_param(self.param.class_filter, name="", width=160),
            pn.widgets.Checkbox.from_param(self.param.misclassified_only, name="misclassified only", margin=(12, 10)),
            self._count,
        )
        self._layout = pn.Column(controls, self._table, sizing_mode="stretch_width")
        self._load()

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    # -- state ---------------------------------------------------------------------------------
    @param.depends("data", watch=True)
    def _load(self) -> None:
        """Show a new corpus table (the Tabulator is kept; only its value changes)."""
        source = self.data if isinstance(self.data, pd.DataFrame) else pd.DataFrame()
        self._rows = rows = document_rows(source)
        self._ids = list(rows["id"])
        self._positions = {doc_id: i for i, doc_id in enumerate(self._ids)}
        self._texts = [" ".join(str(t).split()) for t in (source["text"] if "text" in source else [""] * len(rows))]
        self._haystack = [text.lower() for text in self._texts]
        classes = sorted({c for c in (*rows["gold"], *rows["predicted"]) if c})
        self.param.class_filter.objects = {"all classes": ALL_CLASSES, **{c: c for c in classes}}
        if self.class_filter not in classes:
            self.class_filter = ALL_CLASSES
        with self._sync():
            # Clear first: Panel maps an old selection onto the new rows by position.
            self._table.selection = []
            self._table.param.update(value=rows, page=1)
        self._show_doc()
        self._update_count()

    @param.depends("search", "class_filter", "misclassified_only", watch=True)
    def _update_count(self) -> None:
        total = len(self._ids)
        if self.data is None:
            self._count.object = "no corpus"
            return
        shown = int(self.visible_mask().sum())
        self._count.object = f"{shown} of {total} document{'s' if total != 1 else ''}"

    @param.depends("doc_id", watch=True)
    def _show_doc(self) -> None:
        """Select the row of ``doc_id`` set from outside, turning to its page when it is visible."""
        selection = self._selection_for(self.doc_id)
        with self._sync():
            self._table.selection = selection
            if selection:
                view = self._table.current_view
                if view is not None and selection[0] in view.index:
                    page = int(view.index.get_loc(selection[0])) // self._table.page_size + 1
                    if page != self._table.page:
                        self._table.page = page

    @param.depends("page_size", watch=True)
    def _set_page_size(self) -> None:
        self._table.page_size = self.page_size

    def _on_selection(self, event: param.parameterized.Event) -> None:
        if self._syncing:
            return
        if event.new:
            self.doc_id = self._ids[event.new[-1]]
        elif self.doc_id in self._positions:
            # A click on the selected row deselects it; the current document stays current.
            with self._sync():
                self._table.selection = self._selection_for(self.doc_id)

    def _selection_for(self, doc_id: str | None) -> list[int]:
        position = self._positions.get(doc_id) if doc_id is not None else None
        return [] if position is None else [position]

    @contextmanager
    def _sync(self) -> Iterator[None]:
        """While active, the browser ignores its own selection events."""
        previous, self._syncing = self._syncing, True
        try:
            yield
        finally:
            self._syncing = previous

    # -- filtering -----------------------------------------------------------------------------
    def visible_mask(self) -> pd.Series:
        """Which rows (by position) pass the search, class and error filters."""
        key = (id(self._rows), self.search, self.class_filter, self.misclassified_only)
        if self._mask_cache[0] == key:
            return self._mask_cache[1]
        rows = self._rows
        mask = np.ones(len(rows), dtype=bool)
        query = search_query(self.search)
        if query:
            in_text = np.fromiter((query in text for text in self._haystack), dtype=bool, count=len(rows))
            in_id = np.fromiter((query in doc_id.lower() for doc_id in self._ids), dtype=bool, count=len(rows))
            mask &= in_text | in_id
        if self.class_filter:
            mask &= ((rows["gold"] == self.class_filter) | (rows["predicted"] == self.class_filter)).to_numpy()
        if self.misclassified_only:
            mask &= (rows["correct"] == "✗").to_numpy()
        self._mask_cache = (key, pd.Series(mask, index=rows.index))
        return self._mask_cache[1]

    def _filter_rows(
        self, rows: pd.DataFrame, search: str, class_filter: str, misclassified_only: bool
    ) -> pd.DataFrame:
        """Tabulator filter: the visible rows, their snippets centred on the search match."""
        if rows.empty or not rows.index.equals(self._rows.index):
            return rows  # a table being replaced: _load filters it again
        visible = rows[self.visible_mask().to_numpy()]
        query = search_query(search)
        if query:
            snippets = [_snippet(self._texts[i], self._haystack[i], query) for i in visible.index]
            visible = visible.assign(snippet=snippets)
        return visible
