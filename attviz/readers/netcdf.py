"""netCDF export and reader: a whole corpus in one netCDF4 (HDF5) file, written with h5netcdf.

Layout::

    FILE.nc                  root: the corpus table along ``doc`` (and ``class``), every token of
                             every document along ``row`` (``token_text``, ``token_word``, ...,
                             located by ``token_offset``/``token_count`` per ``(doc, stream)``);
                             attrs ``attviz`` (corpus attrs as a JSON string), ``attviz_format``
      docs/d000000/self      one group per document and kind, holding that kind's DataArray
      docs/d000000/vectors   with all its coords (``query_text``, ``key_start``, ...)

Matrices keep their dtype (float16 stays float16). netCDF has no booleans, so boolean coords are
stored as int8 0/1 with the attribute ``attviz_dtype = "bool"`` and restored on read. Attributes
are netCDF-safe: strings and numbers only (anything else is stored as a JSON string).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import h5netcdf
import numpy as np
import xarray as xr
from xarray.backends import H5NetCDFStore

from attviz.corpus import (
    KIND_STREAMS,
    TOKEN_DIMS,
    TOKEN_FIELDS,
    Corpus,
    Document,
    attention_array,
    document_from_table,
    kind_role,
    table_from_rows,
    table_row,
    token_frame,
    vector_array,
)
from attviz.errors import InputError, StoreError
from attviz.faults import fault_point
from attviz.readers.base import Reader
from attviz.store import group_name, stored_array, stored_attrs

FORMAT = "attviz-netcdf"
FORMAT_VERSION = 1
_EXPECTED = "a netCDF file written by attviz (Corpus.to_netcdf)"


def _safe_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """netCDF-safe attributes: strings and numbers; bools as 0/1; others as JSON; no None."""
    safe: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, bool | np.bool_):
            value = int(value)
        elif not isinstance(value, str | int | float | np.number):
            value = json.dumps(value, ensure_ascii=False, default=str)
        safe[str(key)] = value
    return safe


def _encode(array: xr.DataArray, kind: str) -> xr.Dataset:
    """A document's DataArray as a netCDF-ready Dataset (loaded, booleans as int8)."""
    coords = {}
    for name, coord in array.coords.items():
        if "attviz_capture" in coord.attrs:  # a capture attached to a matrix: written once, as its own group
            continue
        values = np.asarray(coord.values)
        attrs = dict(coord.attrs)
        if values.dtype == bool:
            values, attrs["attviz_dtype"] = values.astype(np.int8), "bool"
        elif values.dtype.kind in "OU":
            values = np.array([str(v) for v in values.ravel()], dtype=object).reshape(values.shape)
        coords[name] = (coord.dims, values, _safe_attrs(attrs))
    data = xr.DataArray(np.asarray(array.values), dims=array.dims, coords=coords)
    data.attrs = _safe_attrs(dict(array.attrs))
    attrs = {"attviz_kind": kind, "attviz_name": str(array.name or kind)}
    return data.to_dataset(name=kind).assign_attrs(attrs)


def _token_tables(doc: Document) -> dict[str, Any]:
    streams = set()
    for kind in doc.kinds:
        role, base = kind_role(kind)
        if role not in ("summary", "capture"):  # a capture's tokens are the source tokens of another kind
            streams.update(("source",) if role == "legacy" else KIND_STREAMS[base])
    return {stream: doc.token_table(stream) for stream in streams}


def _root_dataset(corpus: Corpus, rows: list, extra: dict[str, list], tokens: list) -> xr.Dataset:
    table = table_from_rows(rows, corpus.label_names)
    for name, column in corpus.dataset.data_vars.items():  # keep extra per-document columns
        if column.dims == ("doc",) and name not in table and name not in extra and not str(name).startswith("token_"):
            table[name] = ("doc", np.asarray(column.values), _safe_attrs(dict(column.attrs)))
    for name, values in extra.items():
        table[name] = ("doc", np.array(values, dtype=object))
    streams = sorted({s for doc in tokens for s in doc}, key=lambda s: (s != "source", s))
    offsets = np.zeros((len(tokens), len(streams)), dtype=np.int64)
    counts = np.zeros_like(offsets)
    columns: dict[str, list] = {f: [] for f in TOKEN_FIELDS}
    for i, per_stream in enumerate(tokens):
        for j, stream in enumerate(streams):
            frame = per_stream.get(stream)
            offsets[i, j] = len(columns["text"])
            counts[i, j] = 0 if frame is None else len(frame)
            for f in TOKEN_FIELDS:
                columns[f].extend([] if frame is None else frame[f].tolist())
    table["token_offset"] = (("doc", "stream"), offsets)
    table["token_count"] = (("doc", "stream"), counts)
    table = table.assign_coords(stream=np.array(streams, dtype=object))
    dtypes = {
        "text": object,
        "word": np.int32,
        "start": np.int32,
        "end": np.int32,
        "special": np.int8,
    }
    for f, dtype in dtypes.items():
        attrs = {"attviz_dtype": "bool"} if f == "special" else {}
        table[f"token_{f}"] = ("row", np.array(columns[f], dtype=dtype), attrs)
    table.attrs = {
        "attviz": json.dumps(corpus.attrs, ensure_ascii=False, default=str),
        "attviz_format": FORMAT,
        "attviz_format_version": FORMAT_VERSION,
        "documents": len(rows),
    }
    return table


#: A corpus whose arrays take at most this many bytes is written to netCDF in memory first (HDF5 never
#: touches the disk), larger ones straight to the partial file.
IN_MEMORY_BYTES = 256 << 20


def write_netcdf(corpus: Corpus, path: str | os.PathLike) -> Path:
    """Write ``corpus`` to one netCDF4 file, atomically: into ``PATH.partial`` beside it, then a rename.

    A failure removes the partial file and leaves an existing ``PATH`` as it was; an error of the file
    system (a full disk) is a :class:`StoreError`. HDF5 can crash the process when a write fails half-way
    (h5netcdf's cleanup then segfaults inside h5py), so a corpus of at most :data:`IN_MEMORY_BYTES` is
    built in memory (:func:`netcdf_bytes`) and written with Python's file I/O, where a full disk is an
    ``OSError``; a larger one is written by HDF5 itself: :func:`write_netcdf_isolated` does that in a
    child process, which ``attviz convert`` uses.
    """
    path = Path(path)
    with _atomic_netcdf(path) as temporary:
        if _array_bytes(corpus) <= IN_MEMORY_BYTES:
            data = netcdf_bytes(corpus)
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            _write_netcdf(corpus, temporary)
    return path


def netcdf_bytes(corpus: Corpus) -> bytes:
    """``corpus`` as the bytes of a netCDF4 file, built in memory (no file is written; the explorer's
    download)."""
    import io

    buffer = io.BytesIO()
    _write_netcdf(corpus, buffer)
    return buffer.getvalue()


def _array_bytes(corpus: Corpus) -> int:
    """What the corpus's arrays take as float16 matrices (an upper bound for q/k and vector documents)."""
    layers, heads = int(corpus.attrs.get("layers") or 1), int(corpus.attrs.get("heads") or 1)
    try:
        tokens = np.asarray(corpus.table["n_tokens"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        return IN_MEMORY_BYTES + 1
    kinds = max(1, len(corpus.attrs.get("kinds") or ()))
    return int((tokens.astype(np.float64) ** 2).sum() * layers * heads * 2 * kinds)


@contextlib.contextmanager
def _atomic_netcdf(path: Path) -> Iterator[Path]:
    """The partial file to write ``path`` through: renamed into place when the block ends, removed on any
    failure (an OSError becomes a :class:`StoreError` saying nothing was written)."""
    temporary = _partial_file(path)
    try:
        yield temporary
        _replace_file(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StoreError(f"could not write {path}: {exc}; {_NOTHING_WRITTEN}") from exc
        raise


_NOTHING_WRITTEN = "nothing was written (the partial file was removed)"
_CHILD = "import sys; from attviz.readers.netcdf import _write_child; sys.exit(_write_child(*sys.argv[1:]))"
_CHILD_ERROR = "attviz-netcdf-error: "


def write_netcdf_isolated(source: str | os.PathLike, path: str | os.PathLike, reader: str | None = None) -> Path:
    """Read ``source`` (with ``reader``, default: guessed) and write it to ``path`` as netCDF in a child
    process, atomically: a crash inside HDF5 (a full disk) costs the child, and any failure leaves neither
    ``PATH`` (an existing one stays as it was) nor a partial file, and raises a :class:`StoreError`."""
    path = Path(path)
    with _atomic_netcdf(path) as temporary:
        command = [sys.executable, "-c", _CHILD, os.fspath(source), os.fspath(temporary), reader or ""]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StoreError(f"could not write {path}: {_child_failure(result, path)}; {_NOTHING_WRITTEN}")
    return path


def _write_child(source: str, temporary: str, reader: str = "") -> int:
    """The child process of :func:`write_netcdf_isolated`: its error, if any, as one line on stdout."""
    import inspect

    from attviz.readers import read

    # the parent has read (and where read does, vetted) the source already
    trusted = {"sandbox": False} if "sandbox" in inspect.signature(read).parameters else {}
    try:
        _write_netcdf(read(source, reader=reader or None, **trusted), Path(temporary))
    except BaseException as exc:
        print(_CHILD_ERROR + (str(exc).splitlines() or [type(exc).__name__])[0], flush=True)
        return 1
    return 0


def _child_failure(result: subprocess.CompletedProcess, path: Path) -> str:
    """Why the child writing ``path`` failed: its own message, or the signal that ended it."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_CHILD_ERROR):
            return line[len(_CHILD_ERROR) :]
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        free = shutil.disk_usage(path.parent).free
        return (
            f"the netCDF writer crashed ({name}; HDF5 crashes when a write fails, e.g. on a full disk: "
            f"{free / 1e6:.1f} MB free in {path.parent})"
        )
    return f"the netCDF writer failed (exit status {result.returncode})"


def _partial_file(path: Path) -> Path:
    """Where ``path`` is written before it takes its place (what an interrupted write left is removed)."""
    temporary = path.with_name(path.name + ".partial")
    temporary.unlink(missing_ok=True)
    return temporary


def _replace_file(temporary: Path, path: Path) -> None:
    fault_point("netcdf-rename")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def _write_netcdf(corpus: Corpus, path: Path | Any) -> None:
    with h5netcdf.File(path, "w") as root:
        rows, tokens = [], []
        extra: dict[str, list] = {"group": [], "kinds": [], "meta": []}
        for index, doc in enumerate(corpus):
            name = group_name(index)
            group = root.create_group(f"docs/{name}")
            for kind in doc.kinds:
                _encode(doc.get(kind), kind).dump_to_store(H5NetCDFStore(group.create_group(kind)))
            rows.append(table_row(doc))
            tokens.append(_token_tables(doc))
            extra["group"].append(name)
            extra["kinds"].append(",".join(doc.kinds))
            extra["meta"].append(json.dumps(doc.meta, ensure_ascii=False, default=str))
            fault_point("netcdf-document")
        _root_dataset(corpus, rows, extra, tokens).dump_to_store(H5NetCDFStore(root))
        fault_point("netcdf-table")


def _frame(array: xr.DataArray, dim: str):
    text = [str(v) for v in array.coords[f"{dim}_text"].values]
    return token_frame(
        text,
        *(np.asarray(array.coords[f"{dim}_{f}"].values) for f in ("word", "start", "end")),
        np.asarray(array.coords[f"{dim}_special"].values).astype(bool),
    )


def _decode(dataset: xr.Dataset, kind: str) -> xr.DataArray:
    """Rebuild a document's DataArray (canonical coords, booleans restored) from its group."""
    array = dataset[kind]
    values = np.asarray(array.values)
    role, _ = kind_role(kind)
    if role == "legacy":
        names = [str(v) for v in array["vector"].values]
        result = vector_array(values, _frame(array, "token"), names)
    elif role == "capture":
        token_dims = [d for d in array.dims if d in TOKEN_DIMS]
        source = (lambda _: _frame(array, token_dims[0])) if token_dims else None
        result = stored_array(kind, values, stored_attrs(array), source)
    elif role != "matrix":
        result = stored_array(kind, values, stored_attrs(array), lambda _: _frame(array, "token"))
    else:
        result = attention_array(
            values,
            _frame(array, "query"),
            _frame(array, "key"),
            layers=[int(v) for v in array["layer"].values],
            heads=[int(v) for v in array["head"].values],
        )
    result.name = dataset.attrs.get("attviz_name", kind)
    result.attrs.update(array.attrs)
    return result


class _NetCDFLoader:
    def __init__(self, path: Path, table: xr.Dataset, meta: list[str]):
        self.path, self.table, self.meta = path, table, meta

    def __call__(self, i: int) -> Document:
        ds = self.table
        group = str(ds["group"].values[i])
        arrays = {kind: self._lazy(group, kind) for kind in str(ds["kinds"].values[i]).split(",") if kind}
        return document_from_table(ds, i, arrays, json.loads(self.meta[i]) if self.meta[i] else {})

    def _lazy(self, group: str, kind: str):
        def load() -> xr.DataArray:
            where = f"docs/{group}/{kind}"
            with xr.open_dataset(self.path, group=where, engine="h5netcdf") as dataset:
                return _decode(dataset.load(), kind)

        return load


def open_netcdf(path: str | os.PathLike) -> Corpus:
    """Open a file written by :func:`write_netcdf`; documents load one group at a time."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=path, expected=_EXPECTED)
    try:
        with xr.open_dataset(path, engine="h5netcdf") as dataset:
            table = dataset.load()
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"not a netCDF4/HDF5 file ({reason})", file=path, expected=_EXPECTED) from exc
    if table.attrs.get("attviz_format") != FORMAT:
        raise InputError("not an attviz netCDF file (no attviz_format attribute)", file=path, expected=_EXPECTED)
    version = int(table.attrs.get("attviz_format_version", 0))
    if version > FORMAT_VERSION:
        raise InputError(
            f"written by a newer attviz (format {version}); upgrade attviz",
            file=path,
            expected=_EXPECTED,
        )
    missing = {"doc_id", "group", "kinds", "probability"} - set(table.data_vars)
    if missing:
        raise InputError(f"the table lacks {sorted(missing)}", file=path, expected=_EXPECTED)
    try:
        attrs = json.loads(table.attrs.get("attviz", "{}"))
    except ValueError as exc:
        raise InputError("attribute 'attviz' is not JSON", file=path, field="attviz") from exc
    meta = [str(v) for v in table["meta"].values] if "meta" in table else [""] * table.sizes["doc"]
    tokens = [name for name in table.data_vars if str(name).startswith("token_")]
    table = table.drop_vars([*tokens, "meta"], errors="ignore")
    for name in table.variables:
        if name in ("class", "stream") or table[name].dtype.kind in "OUS":
            table[name] = table[name].astype(str).astype(object)
    table.attrs = {}
    return Corpus(loader=_NetCDFLoader(path, table, meta), attrs=attrs, table=table, path=path)


class NetCDFReader(Reader):
    """A corpus written to one netCDF4 file by :meth:`attviz.Corpus.to_netcdf`."""

    description: ClassVar[str] = "attviz netCDF4 file (one group per document, written by h5netcdf)"
    extensions: ClassVar[tuple[str, ...]] = (".nc", ".nc4", ".h5")

    def read(self, source: Any, **kwargs: Any) -> Corpus:
        if not isinstance(source, str | os.PathLike):
            raise InputError(f"cannot read a {type(source).__name__}", expected="a path to a .nc file")
        return open_netcdf(source)
