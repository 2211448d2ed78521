"""The attviz zarr store: incremental, resumable, atomic writes and lazy reads.

Layout (zarr format 3)::

    STORE/                      root attrs["attviz"]: format, model, kinds, encoding, settings, ...
      table/                    corpus table, an xarray Dataset along ``doc``
      tokens/                   every token of every document, an xarray Dataset along ``row``
      docs/d000000/self         float16 (layer, head, query, key), one chunk per layer
      docs/d000000/vectors      float32 (vector, token) for vector-only (legacy) data
      docs/d000000/capture_ID   float32, what capture plugin ID recorded (dims in its attrs["dims"])

With ``compression="uint8"`` a matrix is stored as uint8 ``self`` plus float32 ``self_scale``
(layer, head, query): value ≈ q × scale, scale = row max / 255 (max abs error scale / 2 ≤ 1/510 for
rows of attention); the reader decodes it to float32 transparently.

Documents are written straight to disk as zarr v3 metadata (``zarr.json``) and chunk files (the zarr
v3 core spec: ``bytes`` codec, then ``blosc`` lz4 + bitshuffle by default), which costs a fraction
of zarr-python's per-array path; the result is an ordinary zarr store that ``zarr.open_group`` and
``xarray.open_zarr`` read.
While a store is being written it lives in ``STORE.partial/`` next to a ``progress.jsonl`` that lists
finished documents; an interrupted extraction resumes from there. Only a complete store is renamed
to ``STORE``, so a crash never leaves something that opens as a valid store.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from attviz.checks import check_arrays, compute_dtype
from attviz.checks import summarize as summarize_checks
from attviz.corpus import (
    KIND_STREAMS,
    SUMMARY_DIMS,
    TOKEN_DIMS,
    TOKEN_FIELDS,
    VECTOR_DIMS,
    Corpus,
    Document,
    attention_array,
    capture_array,
    document_from_table,
    kind_role,
    summary_array,
    table_from_rows,
    table_row,
    token_frame,
    token_vectors_array,
    tokens_of,
    vector_array,
)
from attviz.errors import StoreError
from attviz.faults import fault_point
from attviz.qk import QK_ARRAY, QK_BIAS_ARRAY, QKAttention, pack, unpack
from attviz.quantize import (  # noqa: F401  (re-exported: the store's quantisation lives there)
    QuantizationError,
    Quantized,
    dequantize_rows,
    error_bound,
    quantize_rows,
    quantize_rows_torch,
)
from attviz.zarr3 import (
    BLOSC_LEVEL,
    ZSTD_LEVEL,
    consolidate,
    group_meta,
    json_default,
    jsonable,
    read_dataset,
    write_array,
    write_dataset,
    write_json,
)

FORMAT_VERSION = 1  # float16 stores
QUANTIZED_FORMAT_VERSION = 2  # uint8 stores: an attviz that reads only format 1 must refuse them
QK_FORMAT_VERSION = 3  # stores with documents kept as queries and keys (attviz.qk)
READABLE_VERSION = 3
PROGRESS = "progress.jsonl"
#: Where writers in other processes (:meth:`StoreWriter.attach`) build a document before moving it into ``docs/``.
STAGING = ".staging"
COMPRESSION = ("lz4", "zstd", "none", "uint8")
DEFAULT_COMPRESSION = "lz4"
SETTINGS = "settings.json"
#: What a job remembers between its runs (:meth:`StoreWriter.remember`), e.g. the result of a check made once.
JOB = "job.json"
UINT8 = "uint8-row-scale"  # the name of the quantised encoding, in attrs
MATRIX_DIMS = ("layer", "head", "query", "key")
_DIMS = {"legacy": ("vector", "token"), "vectors": VECTOR_DIMS, "summary": SUMMARY_DIMS}

# zarr 3 warns that consolidated metadata and variable-length strings are not yet in the v3 spec.
warnings.filterwarnings("ignore", message=".*Consolidated metadata.*", category=UserWarning)
warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def group_name(index: int) -> str:
    return f"d{index:06d}"


# -- quantisation: attviz.quantize (re-exported here) ----------------------------------------------
def describe_encoding(attrs: Mapping[str, Any]) -> str | None:
    """One line on how a store keeps its matrices (for ``attviz info``); None when it does not say."""
    encoding = attrs.get("matrix_encoding")
    if not encoding:
        return None
    compression = attrs.get("matrix_compression", "")
    error = float(attrs.get("max_abs_error") or 0.0)
    what = "uint8 per row × float32 scale" if encoding == UINT8 else str(encoding)
    exact = f"max abs error {error:.6f}" if error else "lossless"
    return f"{what}, {compression or 'no compression'} ({exact})"


class StoreWriter:
    """Write documents one by one into ``PATH.partial`` and rename it to ``PATH`` when complete.

    ``fingerprint`` identifies the job (model, settings, inputs); a later writer with the same
    fingerprint and compression resumes (``done`` lists finished document indices), another is refused.
    ``compression``: ``"lz4"`` (float16, lossless blosc lz4 with bitshuffle: the default, as small as
    zstd for float16 attention at half its CPU), ``"zstd"`` (float16, zstd level 1), ``"none"`` (raw
    float16) or ``"uint8"`` (uint8 per row with a float32 scale, zstd; max abs error row max / 510).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: str = "",
        overwrite: bool = False,
        resume: bool = True,
        compression: str = DEFAULT_COMPRESSION,
    ):
        if compression not in COMPRESSION:
            raise StoreError(f"compression must be one of {COMPRESSION}, not {compression!r}")
        self.compression = compression
        self._codec = "zstd" if compression == "uint8" else compression
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.overwrite = overwrite
        self.records: dict[int, dict[str, Any]] = {}
        self._written: dict[str, Any] = {}  # metadata written by this writer, by path
        self._staging: Path | None = None
        self.finished = False
        self.remembered: dict[str, Any] = {}
        settings = {"fingerprint": fingerprint, "compression": compression}
        if self.path.exists():
            if fingerprint and resume and _read_settings(self.path / SETTINGS) == settings:
                # this very job was killed after its store took its place, before it removed its job files
                self.finished = True
                self.records = _read_progress(self.path / PROGRESS) or _finished_records(self.path)
                self.remembered = _read_settings(self.path / JOB) or {}
                self._progress = None
                return
            if not overwrite:
                raise StoreError(f"{self.path} already exists; pass overwrite=True (--overwrite) to replace it")
        settings_file = self.partial / SETTINGS
        previous = _read_settings(settings_file) if resume and self.partial.exists() else None
        same = previous is not None and previous.get("fingerprint") == fingerprint
        if same and previous.get("compression", compression) != compression:
            if not overwrite:
                raise StoreError(
                    f"{self.partial} holds an unfinished job with compression {previous['compression']!r}, "
                    f"not {compression!r}; rerun with the same compression, or pass overwrite=True (--overwrite)"
                )
            same = False
        if previous is not None and not same and not overwrite:
            raise StoreError(
                f"{self.partial} holds an unfinished job with different settings or inputs; "
                "delete it or pass overwrite=True (--overwrite) to start again"
            )
        if same:  # the same job (with --overwrite too: it replaces the old store once it is complete)
            _repair_progress(self.partial / PROGRESS)
            self.records = _read_progress(self.partial / PROGRESS)
            self.remembered = _read_settings(self.partial / JOB) or {}
        else:
            if self.partial.exists():
                shutil.rmtree(self.partial)
            (self.partial / "docs").mkdir(parents=True)
            write_json(self.partial / "zarr.json", group_meta())
            write_json(self.partial / "docs" / "zarr.json", group_meta())
            settings_file.write_text(json.dumps(settings))  # last: a job without it starts afresh
        self._progress = open(self.partial / PROGRESS, "a", encoding="utf-8")  # noqa: SIM115

    @classmethod
    def attach(cls, path: str | os.PathLike, *, compression: str = DEFAULT_COMPRESSION, name: str = "") -> StoreWriter:
        """A writer of documents only, into the ``PATH.partial`` another :class:`StoreWriter` created and
        finalizes (a worker process of a distributed extraction).

        It touches nothing shared: each document is built under ``.staging/NAME-PID/`` and moved into
        ``docs/`` whole, and its progress record is not written but returned by :meth:`write`, for the
        owning writer's :meth:`add_record`.
        """
        if compression not in COMPRESSION:
            raise StoreError(f"compression must be one of {COMPRESSION}, not {compression!r}")
        self = cls.__new__(cls)
        self.compression = compression
        self._codec = "zstd" if compression == "uint8" else compression
        self.path = Path(path)
        self.partial = partial_path(self.path)
        if not (self.partial / "docs").is_dir():
            raise StoreError(f"{self.partial} is not an unfinished store being written (no docs/ in it)")
        self.overwrite = False
        self.records = {}
        self._written = {}
        self._progress = None
        self.finished = False
        self.remembered = {}
        self._staging = self.partial / STAGING / f"{name or 'writer'}-{os.getpid()}"
        self._staging.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def done(self) -> set[int]:
        return set(self.records)

    def add_record(self, record: Mapping[str, Any]) -> None:
        """Count a document another process wrote (the record its :meth:`write` returned) as finished."""
        record = dict(record)
        self._progress.write(json.dumps(record, ensure_ascii=False, default=json_default) + "\n")
        self.records[int(record["index"])] = record

    def write(
        self,
        index: int,
        row: Mapping[str, Any],
        tokens: Mapping[str, pd.DataFrame],
        arrays: Mapping[str, np.ndarray | Quantized],
        array_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Write one document: its table row, token tables per stream and arrays per kind; return its
        progress record.

        A matrix may come already quantised (:class:`Quantized`, e.g. from the device) when the
        writer's compression is ``"uint8"``.
        """
        name = group_name(index)
        directory = (self._staging or self.partial / "docs") / name
        if directory.exists():  # left by a crash in the middle of this document
            shutil.rmtree(directory)
        directory.mkdir()
        write_json(directory / "zarr.json", group_meta(), self._written)
        error = 0.0
        qk_kinds = []
        for kind, values in arrays.items():
            attrs = dict((array_attrs or {}).get(kind, {}))
            role, _ = kind_role(kind)
            if isinstance(values, QKAttention):
                self._qk(directory, kind, values)
                qk_kinds.append(kind)
                continue
            if role != "matrix":
                values = np.asarray(values, dtype=np.float32)
                dims = _DIMS.get(role) or tuple(attrs["dims"])  # a capture's dims are the plugin's
                self._array(directory / kind, values, dims, attrs, per_first=False)
                continue
            if self.compression == "uint8":
                quantized = values if isinstance(values, Quantized) else quantize_rows(values)
                error = max(error, error_bound(quantized.scale))
                attrs["attviz_encoding"] = {"name": UINT8, "scale": f"{kind}_scale", "dtype": "float32"}
                self._array(directory / kind, quantized.q, MATRIX_DIMS, attrs)
                self._array(directory / f"{kind}_scale", quantized.scale, MATRIX_DIMS[:3], {})
            else:
                if isinstance(values, Quantized):
                    values = dequantize_rows(values.q, values.scale)
                self._array(directory / kind, np.asarray(values), MATRIX_DIMS, attrs, dtype=np.float16)
        record = {
            "index": index,
            "group": name,
            "row": _checked_row(row, arrays, self.compression, error),
            "kinds": list(arrays),
            "tokens": {stream: {f: frame[f].tolist() for f in TOKEN_FIELDS} for stream, frame in tokens.items()},
        }
        if self.compression == "uint8":
            record["error"] = error
        if qk_kinds:
            record["qk"] = qk_kinds
        fault_point("document")  # its files are written, its progress record is not
        if self._staging is not None:  # another process's writer owns the progress file
            _publish(directory, self.partial / "docs" / name)
            return record
        self._progress.write(json.dumps(record, ensure_ascii=False, default=json_default) + "\n")
        self.records[index] = record
        return record

    def remember(self, key: str, value: Any) -> None:
        """Keep ``value`` for the runs of this job that resume it (in ``remembered``; not in the store)."""
        self.remembered[key] = value
        if self._progress is not None:
            temporary = self.partial / (JOB + ".tmp")
            temporary.write_text(json.dumps(self.remembered, default=json_default))
            os.replace(temporary, self.partial / JOB)

    def _qk(self, directory: Path, kind: str, values: QKAttention) -> None:
        """One kind kept as queries and keys: ``{kind}_qk``, one int16 shard with an inner chunk per layer
        packing q, k, their scales and the row log-sum-exp (:func:`attviz.qk.pack`; the rebuild's attrs and
        the layout in its attrs), written raw (int16 q/k are nearly incompressible), and ``{kind}_qk_bias``
        where the model adds a relative bias."""
        packed, layout = pack(values)
        attrs = {**values.stored_attrs(), "layout": layout}
        write_array(
            directory / (kind + QK_ARRAY), packed, ("layer", "packed"), attrs, "none", True, None, self._written
        )
        if values.bias is not None:
            bias = np.asarray(values.bias, dtype=np.float32)
            self._array(directory / (kind + QK_BIAS_ARRAY), bias, ("layer", "head", "offset"), {}, dtype=np.float32)

    def _array(self, directory: Path, values: np.ndarray, dims, attrs, per_first=True, dtype=None) -> None:
        write_array(directory, values, dims, attrs, self._codec, per_first, dtype, self._written)

    def flush(self, durable: bool = True) -> None:
        """Make the progress of finished documents durable (called once per batch); ``durable=False``
        only hands it to the operating system (enough to survive the process being killed)."""
        if self._progress is None:
            return
        self._progress.flush()
        if durable:
            os.fsync(self._progress.fileno())
        fault_point("progress")

    def close(self) -> None:
        if self._progress is None:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            return
        if not self._progress.closed:  # after a failure (a full disk): what did not reach the file is redone
            with contextlib.suppress(OSError):
                self.flush()
            with contextlib.suppress(OSError):
                self._progress.close()

    def encoding_attrs(self, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the store says about its matrices: encoding, compression and the max abs error.

        ``previous`` (the attrs of a corpus being re-saved) adds the error it already carried.
        """
        error = max((float(r.get("error", 0.0)) for r in self.records.values()), default=0.0)
        error += float((previous or {}).get("max_abs_error") or 0.0)
        encoding = UINT8 if self.compression == "uint8" else "float16"
        return {
            "matrix_encoding": encoding,
            "matrix_compression": {"none": "none", "lz4": f"blosc-lz4-{BLOSC_LEVEL}-bitshuffle"}.get(
                self._codec, f"zstd-{ZSTD_LEVEL}"
            ),
            "max_abs_error": round(error, 7),
        }

    def finalize(self, attrs: Mapping[str, Any], label_names: Sequence[str] | None = None) -> Path:
        """Write the table, tokens and attributes, then move the store into place atomically.

        Every step may be interrupted: the progress and settings files stay in ``PATH.partial`` until the
        store has taken its place, so a rerun of the same job redoes only what is left of this (the
        table, tokens and consolidated metadata are written again), never a document.
        """
        self.flush()
        self.close()
        if self.finished:  # killed after the rename last time: only the job files are left to remove
            self._remove_job_files(self.path)
            return self.path
        indices = sorted(self.records)
        if indices != list(range(len(indices))):
            raise StoreError(f"cannot finalize {self.path}: documents missing from the sequence")
        rows = [self.records[i]["row"] for i in indices]
        table = table_from_rows(rows, label_names)
        table["group"] = ("doc", np.array([self.records[i]["group"] for i in indices], dtype=object))
        table["kinds"] = ("doc", np.array([",".join(self.records[i]["kinds"]) for i in indices], dtype=object))
        qk = [",".join(self.records[i].get("qk", ())) for i in indices]
        if any(qk):
            table["qk"] = ("doc", np.array(qk, dtype=object))
        tokens, offsets, counts, streams = _token_dataset([self.records[i]["tokens"] for i in indices])
        table["token_offset"] = (("doc", "stream"), offsets)
        table["token_count"] = (("doc", "stream"), counts)
        table = table.assign_coords(stream=np.array(streams, dtype=object))
        for name, dataset in (("table", table), ("tokens", tokens)):
            shutil.rmtree(self.partial / name, ignore_errors=True)  # left by an interrupted finalize
            write_dataset(self.partial / name, dataset, self._written)
            fault_point(name)
        version = QUANTIZED_FORMAT_VERSION if self.compression == "uint8" else FORMAT_VERSION
        checks = [(str(row["doc_id"]), _row_check(row)) for row in rows]
        info = {
            **jsonable(dict(attrs)),
            **self.encoding_attrs(attrs),
            "qk_documents": sum(1 for text in qk if text),
            "format_version": QK_FORMAT_VERSION if any(qk) else version,
            "documents": len(indices),
            "complete": True,
            "attention_check": summarize_checks(checks, compute_dtype(attrs)),
        }
        shutil.rmtree(self.partial / STAGING, ignore_errors=True)  # what attached writers left
        consolidate(self.partial, {"attviz": info}, self._written)
        fault_point("consolidate")
        _replace_dir(self.partial, self.path)
        try:  # the store is complete and in place: what is left to tidy up cannot fail the job
            fault_point("renamed")
            self._remove_job_files(self.path)
        except OSError as exc:
            warnings.warn(f"{self.path} is complete, but its job files are left in it ({exc})", stacklevel=2)
        return self.path

    def _remove_job_files(self, where: Path) -> None:
        """Remove the job files from a store that took its place, and what an interrupted rename left."""
        for name in (PROGRESS, JOB, SETTINGS):  # settings last: they mark the job
            (where / name).unlink(missing_ok=True)
        for backup in where.parent.glob(f"{glob.escape(where.name)}.old-*"):
            shutil.rmtree(backup, ignore_errors=True)


def resume_hint(path: str | os.PathLike, done: int | None = None) -> str:
    """What to tell someone whose job writing the store ``path`` failed: where the finished work is kept,
    how to resume it and how to give up."""
    partial = partial_path(path)
    kept = f"the {done} finished documents are kept in {partial}" if done is not None else f"{partial} keeps the work"
    return (
        f"{kept}; nothing was written to {Path(path).name}; free some disk space if it is full and run the same "
        f"command again to resume (or delete {partial} to give up)"
    )


def _token_dataset(per_doc: Sequence[Mapping[str, Mapping[str, list]]]):
    streams = sorted({s for doc in per_doc for s in doc}, key=lambda s: (s != "source", s))
    offsets = np.zeros((len(per_doc), len(streams)), dtype=np.int64)
    counts = np.zeros_like(offsets)
    columns: dict[str, list] = {f: [] for f in TOKEN_FIELDS}
    total = 0
    for i, doc in enumerate(per_doc):
        for j, stream in enumerate(streams):
            fields = doc.get(stream)
            n = len(fields["text"]) if fields else 0
            offsets[i, j], counts[i, j] = total, n
            total += n
            for f in TOKEN_FIELDS:
                columns[f].extend(fields[f] if fields else [])
    ds = xr.Dataset(
        {
            "text": ("row", np.array(columns["text"], dtype=object)),
            "word": ("row", np.array(columns["word"], dtype=np.int32)),
            "start": ("row", np.array(columns["start"], dtype=np.int32)),
            "end": ("row", np.array(columns["end"], dtype=np.int32)),
            "special": ("row", np.array(columns["special"], dtype=bool)),
        }
    )
    return ds, offsets, counts, streams


def _replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``; an existing target is only removed once the move succeeded."""
    backup = None
    if target.exists():
        backup = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    try:
        fault_point("rename")
        os.replace(source, target)
    except BaseException:
        if backup is not None:  # the old store goes back where it was
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _publish(staged: Path, target: Path) -> None:
    """Move a document built in a staging directory to ``docs/`` in one rename. A copy already there
    (a task that ran twice, or a crash before its record reached the progress file) is replaced; if
    another writer publishes the same document meanwhile, its copy (the same document) stays."""
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(staged, target)
    except OSError:
        if not (target / "zarr.json").exists():
            raise
        shutil.rmtree(staged, ignore_errors=True)


def _checked_row(row: Mapping[str, Any], arrays: Mapping[str, Any], compression: str, error: float) -> dict[str, Any]:
    """``row`` with the check of the document's attention as written (:mod:`attviz.checks`) in its meta."""
    values = {k: dequantize_rows(v.q, v.scale) if isinstance(v, Quantized) else v for k, v in arrays.items()}
    stored = np.float32 if compression == "uint8" else np.float16
    check = check_arrays(values, dtypes=dict.fromkeys(values, stored), error_bounds=dict.fromkeys(values, error))
    return {**row, "meta": json.dumps({**_row_meta(row), "attention_check": check}, default=str)}


def _row_meta(row: Mapping[str, Any]) -> dict[str, Any]:
    """A table row's ``meta`` (a JSON string or a mapping) as a dict."""
    meta = row.get("meta") or "{}"
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def _row_check(row: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        return _row_meta(row).get("attention_check")
    except (TypeError, ValueError):
        return None


def _finished_records(path: Path) -> dict[int, dict[str, Any]]:
    """Placeholder records for the documents of a finished store (its progress file is gone already)."""
    try:
        documents = int(json.loads((path / "zarr.json").read_text())["attributes"]["attviz"]["documents"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {index: {} for index in range(documents)}


def _read_settings(path: Path) -> dict[str, Any] | None:
    """A job's settings file, or None where there is none (or a crash cut it short)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _repair_progress(path: Path) -> None:
    """Cut a progress file back to its last complete line (a crash or a full disk cut the last one short),
    so that the next record starts on a line of its own."""
    try:
        with open(path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _read_progress(path: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return records
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash: that document is redone
                continue
            records[int(record["index"])] = record
    return records


def write_corpus(
    corpus: Corpus,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compression: str = DEFAULT_COMPRESSION,
    fingerprint: str | None = None,
    keep_partial: bool = True,
) -> Path:
    """Write an in-memory (or any) corpus as a store, atomically (``compression`` as in :class:`StoreWriter`).

    With a ``fingerprint`` (what identifies the source, e.g. ``attviz convert``'s input) a write that was
    killed resumes where it stopped; ``keep_partial=False`` removes ``PATH.partial`` when the write fails
    with an error (nothing is left under the target's name).
    """
    job = {"fingerprint": fingerprint or "", "resume": fingerprint is not None}
    writer = StoreWriter(path, overwrite=overwrite, compression=compression, **job)
    try:
        for index, doc in enumerate(corpus):
            if index in writer.done:
                continue
            arrays, attrs, tokens = document_payload(doc)
            writer.write(index, table_row(doc), tokens, arrays, attrs)
            writer.flush(durable=index % 64 == 63)
        return writer.finalize(corpus.attrs, corpus.label_names)
    except BaseException:
        writer.close()
        if not keep_partial and not writer.finished:
            shutil.rmtree(writer.partial, ignore_errors=True)
        raise
    finally:
        writer.close()


def document_payload(doc: Document):
    """Split a document into (arrays per kind, array attrs per kind, token tables per stream)."""
    arrays: dict[str, np.ndarray] = {}
    attrs: dict[str, dict[str, Any]] = {}
    tokens: dict[str, pd.DataFrame] = {}
    for kind in doc.kinds:
        array = doc.get(kind)
        arrays[kind] = np.asarray(array.values)
        role, base = kind_role(kind)
        if role == "legacy":
            attrs[kind] = {"vector": [str(v) for v in array["vector"].values]}
            tokens["source"] = tokens_of(array, "token")
        elif role in ("vectors", "summary", "capture"):
            attrs[kind] = stored_attrs(array)
            if role == "vectors":
                tokens[KIND_STREAMS[base][0]] = tokens_of(array, "token")
            elif role == "capture":  # its token dims index the source tokens
                for dim in (d for d in array.dims if d in TOKEN_DIMS):
                    tokens.setdefault("source", tokens_of(array, dim))
        else:
            attrs[kind] = {
                "layer": [int(v) for v in array["layer"].values],
                "head": [int(v) for v in array["head"].values],
            }
            kept = doc.qk(kind)
            if kept is not None:  # stays queries and keys
                arrays[kind] = kept.loaded()
            query_stream, key_stream = KIND_STREAMS[kind]
            tokens[query_stream] = tokens_of(array, "query")
            tokens[key_stream] = tokens_of(array, "key")
    return arrays, attrs, tokens


def stored_attrs(array: xr.DataArray) -> dict[str, Any]:
    """The attrs a store keeps for a policy's ``<kind>_vectors`` / ``<kind>_summary`` array (its labels),
    or a capture plugin's ``capture_<id>`` array (its dims and every attr)."""
    names = ("vector", "vector_long_name", "vector_units", "statistic", "statistic_units", "layer", "head")
    out: dict[str, Any] = {n: array[n].values.tolist() for n in names if n in array.coords}
    captured = "capture" in array.attrs
    if captured:
        out["dims"] = [str(d) for d in array.dims]
    for key in array.attrs if captured else ("long_name", "units"):
        if key in array.attrs:
            out[f"array_{key}"] = array.attrs[key]
    return out


def stored_array(
    kind: str, values: Any, attrs: Mapping[str, Any], tokens: Callable[[str], pd.DataFrame]
) -> xr.DataArray:
    """A document's array of ``kind`` rebuilt from its stored values and attrs (any role: matrix,
    a policy's vectors or summary, legacy vectors); ``tokens(stream)`` gives a stream's token table.
    Used by the store reader and the in-memory sink alike."""
    role, base = kind_role(kind)
    if isinstance(values, QKAttention):  # Document.get turns it into the (layer, head, query, key) DataArray
        query_stream, key_stream = KIND_STREAMS[kind]
        return values.with_tokens(tokens(query_stream), tokens(key_stream), kind if kind != "self" else "attention")
    if isinstance(values, Quantized):
        values = dequantize_rows(values.q, values.scale)
    where = {"layers": attrs.get("layer"), "heads": attrs.get("head")}
    if role == "legacy":
        return vector_array(values, tokens("source"), attrs.get("vector", []))
    if role == "matrix":
        query_stream, key_stream = KIND_STREAMS[kind]
        name = kind if kind != "self" else "attention"
        return attention_array(values, tokens(query_stream), tokens(key_stream), name=name, **where)
    if role == "capture":
        dims = attrs["dims"]
        source = tokens("source") if set(dims) & set(TOKEN_DIMS) else None
        array = capture_array(values, dims, source, name=kind, **where)
    elif role == "vectors":
        array = token_vectors_array(
            values,
            tokens(KIND_STREAMS[base][0]),
            attrs["vector"],
            long_names=attrs.get("vector_long_name"),
            units=attrs.get("vector_units"),
            name=kind,
            **where,
        )
    else:
        array = summary_array(values, attrs["statistic"], attrs["statistic_units"], name=kind, **where)
    array.attrs.update({k[len("array_") :]: v for k, v in attrs.items() if k.startswith("array_")})
    return array


# -- reading -------------------------------------------------------------------------------------
def is_store(path: str | os.PathLike) -> bool:
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return False
    try:
        return "attviz" in json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def open_store(path: str | os.PathLike) -> Corpus:
    """Open a complete attviz store lazily."""
    path = Path(path)
    if not path.exists():
        if partial_path(path).exists():
            backups = sorted(path.parent.glob(f"{glob.escape(path.name)}.old-*"))
            previous = f"; until then the store it replaces is in {backups[0].name}" if backups else ""
            raise StoreError(
                f"{path} is not finished ({partial_path(path).name} holds an interrupted extraction); "
                f"run the same command again to resume it{previous}"
            )
        raise StoreError(f"{path}: no such store")
    if path.name.endswith(".partial"):
        raise StoreError(f"{path} is an unfinished extraction; rerun it to complete and open {path.stem}")
    try:
        root = zarr.open_group(path, mode="r")
        info = dict(root.attrs.get("attviz", {}))
    except Exception as exc:
        raise StoreError(f"{path} is not an attviz store ({exc})") from exc
    if not info.get("complete"):
        raise StoreError(f"{path} is not an attviz store (missing the 'attviz' attributes)")
    if int(info.get("format_version", 0)) > READABLE_VERSION:
        raise StoreError(f"{path} was written by a newer attviz (format {info['format_version']}); upgrade attviz")
    table = read_dataset(path / "table")
    if table is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = xr.open_zarr(path, group="table", consolidated=True).load()
    for name in table.variables:
        if table[name].dtype.kind in "OUT":
            table[name] = table[name].astype(object)
    tokens_group = root["tokens"]
    loader = _StoreLoader(path, root, table, tokens_group)
    return Corpus(loader=loader, attrs=info, table=table, path=path)


class _StoreLoader:
    def __init__(self, path: Path, root: zarr.Group, table: xr.Dataset, tokens: zarr.Group):
        self.path, self.root, self.table, self.tokens = path, root, table, tokens
        self.streams = [str(s) for s in table["stream"].values]

    def token_table(self, i: int, stream: str) -> pd.DataFrame:
        j = self.streams.index(stream)
        start = int(self.table["token_offset"].values[i, j])
        stop = start + int(self.table["token_count"].values[i, j])
        values = [np.asarray(self.tokens[f][start:stop]) for f in TOKEN_FIELDS]
        values[0] = values[0].astype(object)
        return token_frame(*values)

    def __call__(self, i: int) -> Document:
        group = str(self.table["group"].values[i])
        kinds = str(self.table["kinds"].values[i]).split(",")
        qk = set(str(self.table["qk"].values[i]).split(",")) if "qk" in self.table else set()
        arrays = {kind: (self._qk if kind in qk else self._lazy)(i, group, kind) for kind in kinds if kind}
        return document_from_table(self.table, i, arrays)

    def _qk(self, i: int, group: str, kind: str):
        def load() -> QKAttention:
            name = f"docs/{group}/{kind}{QK_ARRAY}"
            if name not in self.root:
                raise StoreError(
                    f"{self.path}: document {group} keeps its {kind!r} attention as queries and keys, but {name} is "
                    "missing (a store from a development version of attviz?); extract it again"
                )
            packed = self.root[name]
            attrs = dict(packed.attrs)
            arrays: dict[str, Any] = dict(unpack(packed, attrs["layout"]))  # read a layer at a time
            bias = f"docs/{group}/{kind}{QK_BIAS_ARRAY}"
            if bias in self.root:
                arrays["bias"] = self.root[bias]
            query_stream, key_stream = KIND_STREAMS[kind]
            return QKAttention.from_stored(
                arrays,
                attrs,
                self.token_table(i, query_stream),
                self.token_table(i, key_stream),
                name=kind if kind != "self" else "attention",
            )

        return load

    def _lazy(self, i: int, group: str, kind: str):
        def load() -> xr.DataArray:
            array = self.root[f"docs/{group}/{kind}"]
            values = da.from_zarr(array)
            attrs = dict(array.attrs)
            encoding = attrs.get("attviz_encoding")
            if encoding:
                if encoding.get("name") != UINT8:
                    raise StoreError(f"{self.path}: unknown matrix encoding {encoding.get('name')!r}; upgrade attviz")
                values = dequantize_rows(values, da.from_zarr(self.root[f"docs/{group}/{encoding['scale']}"]))
            if kind_role(kind)[0] in ("vectors", "summary", "capture"):  # small: read at once
                values = np.asarray(array[...])
            return stored_array(kind, values, attrs, lambda stream: self.token_table(i, stream))

        return load
