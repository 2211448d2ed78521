"""Open untrusted files in a worker process first, so that a hang or a crash in a C library (HDF5,
zarr's codecs) costs that file, never the server.

:func:`validate_in_worker` opens a netCDF file or a store in a separate process (the ``forkserver``
start method where there is one, else ``spawn``: never a fork of a threaded server), reads its
table, every document's metadata and a bounded sample of its arrays, and reports back. A worker
that runs past :attr:`Limits.timeout_s` is killed; one that dies (a segmentation fault) or fails is
reported as one :class:`~attviz.errors.InputError`. Only a file that passed is opened in the server.

:func:`guard_corpus` makes the documents of a corpus read later (lazily) fail the same way: an
:class:`InputError` naming the file, never a raw codec message.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attviz.errors import AttvizError, InputError
from attviz.limits import Limits

_context_lock = threading.Lock()
_context: Any = None
#: Imported in the fork server once, so that each worker it forks starts with them (nothing is opened).
SANDBOX_PRELOAD = ["attviz.sandbox", "attviz.readers", "attviz.readers.netcdf", "attviz.readers.store", "attviz.store"]


def _mp_context() -> Any:
    """A start method that does not fork the (threaded) server: forkserver, else spawn."""
    global _context
    with _context_lock:
        if _context is None:
            methods = multiprocessing.get_all_start_methods()
            if "forkserver" in methods:
                _context = multiprocessing.get_context("forkserver")
                # what every check needs, imported once in the fork server instead of in every worker (0.8 s)
                _context.set_forkserver_preload(SANDBOX_PRELOAD)
            else:  # pragma: no cover - Windows
                _context = multiprocessing.get_context("spawn")
        return _context


def describe(exc: BaseException) -> str:
    """One line for an exception from a reader or a library it calls."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    if isinstance(exc, MemoryError):
        return "too large to read into memory"
    if len(text) > 300:
        text = text[:300] + "…"
    return f"could not be read ({type(exc).__name__}: {text})" if text else f"could not be read ({type(exc).__name__})"


def as_input_error(exc: BaseException, file: str | os.PathLike | None, *, field: str | None = None) -> AttvizError:
    """``exc`` as one :class:`InputError` naming ``file`` (an AttvizError is returned as it is)."""
    if isinstance(exc, AttvizError):
        return exc
    error = InputError(describe(exc), file=file, field=field)
    error.__cause__ = exc
    return error


# -- the worker ------------------------------------------------------------------------------------


_MAX_CHECKED_DOCUMENTS = 10_000


def _check_corpus(corpus: Any, limits: Limits, file: str) -> dict[str, Any]:
    """Read the table, each document's metadata and a bounded sample of arrays (raises on trouble)."""
    import numpy as np

    n = len(corpus)
    if n > limits.max_documents:
        raise InputError(f"has {n:,} documents, over the limit of {limits.max_documents:,}", file=file)
    table = corpus.table
    if "n_tokens" in table and len(table):
        most = int(np.nanmax(np.asarray(table["n_tokens"], dtype=float)))
        if most > limits.max_tokens:
            raise InputError(
                f"a document has {most:,} tokens, over the limit of {limits.max_tokens:,}", file=file, field="n_tokens"
            )
    sampled = 0
    arrays = 0
    # every document's metadata (evenly spaced ones in a very large corpus), arrays until sample_bytes
    step = max(1, -(-n // _MAX_CHECKED_DOCUMENTS))
    for i in range(0, n, step):
        where = f"document {i}"
        doc = corpus[i]
        _ = (doc.id, doc.text, doc.label, doc.prediction, doc.probabilities, doc.meta)
        for kind in doc.kinds:
            if sampled >= limits.sample_bytes:
                break
            try:
                array = doc.get(kind)
                values = np.asarray(array.values)
                for coord in array.coords.values():
                    np.asarray(coord.values)
            except AttvizError:
                raise
            except Exception as exc:
                raise as_input_error(exc, file, field=f"{where} ({doc.id}), array {kind!r}") from exc
            sampled += values.nbytes
            arrays += 1
    return {"documents": n, "arrays_checked": arrays, "bytes_checked": sampled}


def _worker(conn: Any, path: str, reader: str | None, limits: Limits, kwargs: dict[str, Any]) -> None:
    try:
        _quiet()
        from attviz.readers import read

        try:
            corpus = read(path, reader=reader, limits=limits, sandbox=False, **kwargs)
            result = ("ok", _check_corpus(corpus, limits, path))
        except InputError as exc:
            result = ("error", exc.reason, exc.field, exc.expected)
        except BaseException as exc:
            error = as_input_error(exc, path)
            result = ("error", getattr(error, "reason", str(error)), getattr(error, "field", None), None)
        conn.send(result)
    finally:
        conn.close()


def _quiet() -> None:
    """A hostile file makes C libraries print (HDF5's error stack, ``Exception ignored in __del__``):
    keep that off the server's log; the outcome comes back as one message."""
    if os.environ.get("ATTVIZ_SANDBOX_STDERR"):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:  # pragma: no cover
        pass


def validate_in_worker(
    path: str | os.PathLike,
    *,
    reader: str | None = None,
    limits: Limits,
    name: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Open and check ``path`` in a worker process within ``limits.timeout_s``; raise InputError if it fails.

    ``name`` is the file name to put in messages (an upload's own name rather than its temporary path).
    """
    path = os.fspath(path)
    shown = name or path
    ctx = _mp_context()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_worker, args=(send, path, reader, limits, kwargs), daemon=True)
    process.start()
    send.close()
    try:
        ready = receive.poll(limits.timeout_s)
        if not ready:
            process.kill()
            process.join(5)
            raise InputError(
                f"timed out after {limits.timeout_s:g} s while reading {Path(path).name!r} (a damaged or hostile "
                "file; nothing of it was opened)",
                file=shown,
            )
        try:
            result = receive.recv()
        except (EOFError, OSError):
            process.join(5)
            code = process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            raise InputError(
                f"the reader crashed ({how}) while reading {Path(path).name!r}; nothing of it was opened", file=shown
            ) from None
    finally:
        receive.close()
        if process.is_alive():
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
    if result[0] == "ok":
        return result[1]
    _, reason, field, expected = result
    raise InputError(reason, file=shown, field=field, expected=expected)


# -- lazy reads in the server ----------------------------------------------------------------------


def _guard(function: Callable[..., Any], file: str, what: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (AttvizError, KeyError, IndexError) as exc:
            if isinstance(exc, AttvizError):
                raise
            if isinstance(exc, KeyError | IndexError) and what == "document":
                raise  # a wrong id or index is the caller's error, not the file's
            raise as_input_error(exc, file, field=what) from exc
        except Exception as exc:
            raise as_input_error(exc, file, field=what) from exc

    return guarded


def guard_corpus(corpus: Any, file: str | os.PathLike) -> Any:
    """Make the lazy reads of ``corpus`` raise InputError naming ``file`` (not a codec's own error)."""
    loader = getattr(corpus, "_loader", None)
    if loader is None or getattr(loader, "_attviz_guarded", False):
        return corpus
    file = os.fspath(file)

    def load(i: int) -> Any:
        try:
            doc = loader(i)
        except AttvizError:
            raise
        except Exception as exc:
            raise as_input_error(exc, file, field=f"document {i}") from exc
        for kind, value in list(doc.arrays.items()):
            if callable(value):
                doc.arrays[kind] = _guard(value, file, f"document {i} ({doc.id}), array {kind!r}")
        return doc

    load._attviz_guarded = True  # type: ignore[attr-defined]
    corpus._loader = load
    return corpus
