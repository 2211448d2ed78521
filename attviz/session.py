"""What a user does in an explorer session besides choosing: live input, opening files, exports.

:class:`SessionActions` is mixed into :class:`~attviz.explorer.Explorer`; each action changes the
state only through its parameters (``corpora``, ``source``, ``doc_id``), so the state keeps itself
valid exactly as for any other change. Live extraction is split in two: :meth:`extract_live` runs
the model and touches no state (safe in a worker thread), :meth:`add_live` adds the result.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from attviz.corpus import Corpus
from attviz.errors import AttvizError


class SessionActions:
    """Actions of one explorer session (mixed into the explorer's state)."""

    corpora: dict[str, Corpus]
    source: str | None
    doc_id: str | None
    document: Any
    live_model: Any
    param: Any
    _upload_dir: tempfile.TemporaryDirectory | None

    def add_corpus(self, name: str, corpus: Corpus, *, show: bool = True) -> str:
        """Add ``corpus`` under ``name`` (made unique) and switch to it when ``show``; returns the name."""
        unique = _unique(name, self.corpora)
        corpora = {**self.corpora, unique: corpus}
        if show:
            self.param.update(corpora=corpora, source=unique)
        else:
            self.corpora = corpora
        return unique

    def extract_live(self, text: str) -> Corpus:
        """Run the live model on ``text`` (thread-safe, changes no state; see :meth:`add_live`)."""
        if self.live_model is None:
            raise AttvizError("no model is loaded for live input (start attviz serve with --model)")
        if not text.strip():
            raise AttvizError("the text is empty")
        live = self.corpora.get("live")
        doc_id = f"live-{(len(live) if live is not None else 0) + 1}"
        return self.live_model([text], [doc_id])

    def add_live(self, extracted: Corpus) -> str:
        """Append the documents of ``extracted`` to the session's ``live`` corpus and open the last one."""
        live = self.corpora.get("live")
        documents = [*(live or []), *extracted]
        seen: set[str] = set()
        for doc in documents:  # two quick runs may pick the same id: keep ids unique
            while doc.id in seen:
                doc.id = f"{doc.id}b"
            seen.add(doc.id)
        corpus = Corpus(documents, attrs=extracted.attrs)
        self.param.update(corpora={**self.corpora, "live": corpus}, source="live", doc_id=documents[-1].id)
        return documents[-1].id

    def run_live(self, text: str) -> str:
        """Extract ``text`` with the live model and open it (synchronous); returns the document id."""
        return self.add_live(self.extract_live(text))

    def add_file(self, filename: str, data: bytes) -> str:
        """Open an uploaded file (store archive, netCDF, AttViz JSON, tensors) as a new corpus."""
        from attviz.uploads import open_upload

        if self._upload_dir is None:
            self._upload_dir = tempfile.TemporaryDirectory(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-")
        corpus = open_upload(filename, data, self._upload_dir.name)
        return self.add_corpus(os.path.splitext(os.path.basename(filename))[0] or "upload", corpus)

    def remove_uploads(self) -> None:
        """Delete the files this session uploaded (when the session ends; the corpora read from them go too)."""
        if self._upload_dir is not None:
            self._upload_dir.cleanup()
            self._upload_dir = None

    def step(self, offset: int) -> None:
        """Move ``offset`` documents forward (negative: back) in the current corpus."""
        ids = list(self.param.doc_id.objects)
        if ids:
            i = ids.index(self.doc_id) if self.doc_id in ids else 0
            self.doc_id = ids[(i + offset) % len(ids)]

    # -- exports ------------------------------------------------------------------------------------
    def export_document(self) -> bytes:
        """The current document as a netCDF file (bytes), built in memory: a full disk cannot crash HDF5 here."""
        from attviz.readers.netcdf import netcdf_bytes

        return netcdf_bytes(self._document_corpus())

    def export_page(self, quantization: str = "row") -> str:
        """The current document as a self-contained interactive HTML page (see :func:`attviz.export.export_html`;
        ``quantization``: one uint8 scale per ``"row"`` or per head's ``"matrix"``)."""
        from attviz.export import export_html

        return export_html(self._document_corpus(), title=f"attviz: {self.doc_id}", quantization=quantization)

    def export_corpus(self) -> bytes:
        """The current corpus (with any live documents) as a netCDF file (bytes), built in memory."""
        from attviz.readers.netcdf import netcdf_bytes

        corpus = self.corpora.get(self.source) if self.source is not None else None
        if corpus is None:
            raise AttvizError("no corpus is open")
        return netcdf_bytes(corpus)

    def _document_corpus(self) -> Corpus:
        """The current document alone, as a corpus with its corpus's attrs (for exports)."""
        if self.document is None:
            raise AttvizError("no document is open")
        return Corpus([self.document], attrs=self.corpora[self.source].attrs)


#: Uploaded files live in ``<temp>/attviz-upload-<pid>-<random>/`` (see :meth:`SessionActions.add_file`).
UPLOAD_PREFIX = "attviz-upload-"


def sweep_uploads(own: bool = False, root: str | os.PathLike | None = None) -> int:
    """Remove upload folders left by servers that are gone (killed, or stopped before they could clean
    up); with ``own``, this process's too (at shutdown). Returns how many folders were removed."""
    import re
    import shutil

    removed = 0
    folder = os.fspath(root) if root is not None else tempfile.gettempdir()
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = re.fullmatch(re.escape(UPLOAD_PREFIX) + r"(\d+)-\w+", name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() and not own:
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += not os.path.exists(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name} ({n})", n + 1
    return unique


def as_corpora(corpus: Any) -> dict[str, Corpus]:
    """``{name: Corpus}`` from a Corpus, a path (any readable input), a dict, or a list of those."""
    if isinstance(corpus, Corpus):
        return {corpus_name(corpus): corpus}
    if isinstance(corpus, Mapping):
        return dict(corpus)
    if isinstance(corpus, str | os.PathLike):
        from attviz.readers import read

        loaded = read(corpus)
        return {os.path.basename(os.fspath(corpus).rstrip("/")) or "corpus": loaded}
    if isinstance(corpus, list | tuple):
        out: dict[str, Corpus] = {}
        for item in corpus:
            for name, value in as_corpora(item).items():
                out[_unique(name, out)] = value
        return out
    raise TypeError(f"explore() takes a Corpus, a path or a dict of corpora, not {type(corpus).__name__}")


def corpus_name(corpus: Corpus) -> str:
    """A corpus's display name: its folder, else its ``name`` attr."""
    if corpus.path:
        return os.path.basename(corpus.path.rstrip("/"))
    return str(corpus.attrs.get("name") or "corpus")


__all__ = ["UPLOAD_PREFIX", "SessionActions", "as_corpora", "corpus_name", "sweep_uploads"]
