"""The attviz zarr store: incremental, resumable, atomic writes and lazy reads.

Layout (zarr format 3)::

    STORE/                      root attrs["attviz"]: format, model, kinds, settings, ...
      table/                    corpus table, an xarray Dataset along ``doc``
      tokens/                   every token of every document, an xarray Dataset along ``row``
      docs/d000000/self         float16 (layer, head, query, key), one chunk per layer
      docs/d000000/vectors      float32 (vector, token) for vector-only (legacy) data

While a store is being written it lives in ``STORE.partial/`` next to a ``progress.jsonl`` that lists
finished documents; an interrupted extraction resumes from there. Only a complete store is renamed
to ``STORE``, so a crash never leaves something that opens as a valid store.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

from attviz.corpus import (
    KIND_STREAMS,
    TOKEN_FIELDS,
    Corpus,
    Document,
    attention_array,
    document_from_table,
    table_from_rows,
    table_row,
    token_frame,
    tokens_of,
    vector_array,
)
from attviz.errors import StoreError

FORMAT_VERSION = 1
PROGRESS = "progress.jsonl"
COMPRESSION = ("zstd", "none")
SETTINGS = "settings.json"

# zarr 3 warns that consolidated metadata and variable-length strings are not yet in the v3 spec.
warnings.filterwarnings("ignore", message=".*Consolidated metadata.*", category=UserWarning)
warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")


def partial_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def group_name(index: int) -> str:
    return f"d{index:06d}"


class StoreWriter:
    """Write documents one by one into ``PATH.partial`` and rename it to ``PATH`` when complete.

    ``fingerprint`` identifies the job (model, settings, inputs); a later writer with the same
    fingerprint resumes (``done`` lists finished document indices), a different one is refused.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fingerprint: str = "",
        overwrite: bool = False,
        resume: bool = True,
        compression: str = "zstd",
    ):
        if compression not in COMPRESSION:
            raise StoreError(f"compression must be one of {COMPRESSION}, not {compression!r}")
        self.compressors = [ZstdCodec(level=1)] if compression == "zstd" else []
        self.path = Path(path)
        self.partial = partial_path(self.path)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; pass overwrite=True (--overwrite) to replace it")
        self.overwrite = overwrite
        self.records: dict[int, dict[str, Any]] = {}
        settings_file = self.partial / SETTINGS
        if self.partial.exists() and resume and not overwrite and settings_file.exists():
            previous = json.loads(settings_file.read_text())
            if previous.get("fingerprint") != fingerprint:
                raise StoreError(
                    f"{self.partial} holds an unfinished job with different settings or inputs; "
                    "delete it or pass overwrite=True (--overwrite) to start again"
                )
            self.records = _read_progress(self.partial / PROGRESS)
        else:
            if self.partial.exists():
                shutil.rmtree(self.partial)
            self.partial.mkdir(parents=True)
            zarr.open_group(self.partial, mode="w", zarr_format=3)
            settings_file.write_text(json.dumps({"fingerprint": fingerprint}))
        self._root = zarr.open_group(self.partial, mode="r+")
        self._progress = open(self.partial / PROGRESS, "a", encoding="utf-8")  # noqa: SIM115

    @property
    def done(self) -> set[int]:
        return set(self.records)

    def write(
        self,
        index: int,
        row: Mapping[str, Any],
        tokens: Mapping[str, pd.DataFrame],
        arrays: Mapping[str, np.ndarray],
        array_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Write one document: its table row, token tables per stream and arrays per kind."""
        name = group_name(index)
        group = self._root.require_group(f"docs/{name}")
        for kind, values in arrays.items():
            values = np.asarray(values)
            is_matrix = kind in KIND_STREAMS
            dtype = np.float16 if is_matrix else np.float32
            dims = ("layer", "head", "query", "key") if is_matrix else ("vector", "token")
            chunks = (1, *values.shape[1:]) if is_matrix else values.shape
            array = group.create_array(
                kind,
                shape=values.shape,
                dtype=dtype,
                chunks=tuple(max(1, c) for c in chunks),
                dimension_names=dims,
                attributes=dict((array_attrs or {}).get(kind, {})),
                compressors=self.compressors,
                overwrite=True,
            )
            array[...] = values.astype(dtype, copy=False)
        record = {
            "index": index,
            "group": name,
            "row": dict(row),
            "kinds": list(arrays),
            "tokens": {
                stream: {f: _jsonable(frame[f].tolist()) for f in TOKEN_FIELDS} for stream, frame in tokens.items()
            },
        }
        self._progress.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records[index] = record

    def flush(self) -> None:
        """Make the progress of finished documents durable (called once per batch)."""
        self._progress.flush()
        os.fsync(self._progress.fileno())

    def close(self) -> None:
        if not self._progress.closed:
            self.flush()
            self._progress.close()

    def finalize(self, attrs: Mapping[str, Any], label_names: Sequence[str] | None = None) -> Path:
        """Write the table, tokens and attributes, then move the store into place atomically."""
        self.close()
        indices = sorted(self.records)
        if indices != list(range(len(indices))):
            raise StoreError(f"cannot finalize {self.path}: documents missing from the sequence")
        rows = [self.records[i]["row"] for i in indices]
        table = table_from_rows(rows, label_names)
        table["group"] = ("doc", np.array([self.records[i]["group"] for i in indices], dtype=object))
        table["kinds"] = ("doc", np.array([",".join(self.records[i]["kinds"]) for i in indices], dtype=object))
        tokens, offsets, counts, streams = _token_dataset([self.records[i]["tokens"] for i in indices])
        table["token_offset"] = (("doc", "stream"), offsets)
        table["token_count"] = (("doc", "stream"), counts)
        table = table.assign_coords(stream=np.array(streams, dtype=object))
        table.to_zarr(self.partial, group="table", mode="w", consolidated=False, zarr_format=3)
        tokens.to_zarr(self.partial, group="tokens", mode="w", consolidated=False, zarr_format=3)
        root = zarr.open_group(self.partial, mode="r+")
        root.attrs["attviz"] = {
            **_jsonable(dict(attrs)),
            "format_version": FORMAT_VERSION,
            "documents": len(indices),
            "complete": True,
        }
        (self.partial / PROGRESS).unlink()
        (self.partial / SETTINGS).unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(self.partial)
        _replace_dir(self.partial, self.path)
        return self.path


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
    os.replace(source, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_corpus(corpus: Corpus, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an in-memory (or any) corpus as a store, atomically."""
    writer = StoreWriter(path, overwrite=overwrite, resume=False)
    try:
        for index, doc in enumerate(corpus):
            arrays, attrs, tokens = document_payload(doc)
            writer.write(index, table_row(doc), tokens, arrays, attrs)
        return writer.finalize(corpus.attrs, corpus.label_names)
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
        if kind == "vectors":
            attrs[kind] = {"vector": [str(v) for v in array["vector"].values]}
            tokens["source"] = tokens_of(array, "token")
        else:
            attrs[kind] = {
                "layer": [int(v) for v in array["layer"].values],
                "head": [int(v) for v in array["head"].values],
            }
            query_stream, key_stream = KIND_STREAMS[kind]
            tokens[query_stream] = tokens_of(array, "query")
            tokens[key_stream] = tokens_of(array, "key")
    return arrays, attrs, tokens


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
            raise StoreError(
                f"{path} is not finished ({partial_path(path).name} holds an interrupted extraction); "
                "run the same `attviz extract` command again to resume it"
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
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(f"{path} was written by a newer attviz (format {info['format_version']}); upgrade attviz")
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
        return document_from_table(self.table, i, {kind: self._lazy(i, group, kind) for kind in kinds if kind})

    def _lazy(self, i: int, group: str, kind: str):
        def load() -> xr.DataArray:
            array = self.root[f"docs/{group}/{kind}"]
            values = da.from_zarr(array)
            attrs = dict(array.attrs)
            if kind == "vectors":
                return vector_array(values, self.token_table(i, "source"), attrs.get("vector", []))
            query_stream, key_stream = KIND_STREAMS[kind]
            return attention_array(
                values,
                self.token_table(i, query_stream),
                self.token_table(i, key_stream),
                layers=attrs.get("layer"),
                heads=attrs.get("head"),
                name=kind if kind != "self" else "attention",
            )

        return load
