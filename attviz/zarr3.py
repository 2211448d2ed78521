"""Just enough zarr v3 to write and read attviz's own arrays fast.

zarr-python 3.1 spends milliseconds of asyncio per array and per chunk; an extraction writes several
arrays per document, so attviz writes the ``zarr.json`` metadata and the chunk files itself,
following the zarr v3 core spec (https://zarr-specs.readthedocs.io/en/latest/v3/core/v3.0.html): a
regular chunk grid, the default chunk key encoding with "." separators, the ``bytes`` codec (little-
endian) or ``vlen-utf8`` for strings, then ``blosc`` (lz4 + bitshuffle) or ``zstd``. The result is
an ordinary store that ``zarr.open_group`` and ``xarray.open_zarr`` read; :func:`consolidate` writes
the same consolidated metadata as ``zarr.consolidate_metadata``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import xarray as xr

ZSTD_LEVEL = 1
BLOSC_LEVEL = 5
CODECS = ("lz4", "zstd", "none")  # lz4: blosc lz4 with bitshuffle; zstd: level 1; none: raw bytes


def codec_meta(codec: str, itemsize: int) -> list[dict[str, Any]]:
    """The zarr v3 codecs after ``bytes`` for ``codec`` (one of :data:`CODECS`)."""
    if codec == "lz4":
        configuration = {"typesize": itemsize, "cname": "lz4", "clevel": BLOSC_LEVEL, "blocksize": 0}
        return [{"name": "blosc", "configuration": {**configuration, "shuffle": "bitshuffle"}}]
    if codec == "zstd":
        return [{"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}]
    if codec == "none":
        return []
    raise ValueError(f"codec must be one of {CODECS}, not {codec!r}")


def encoder(codec: str) -> Any:
    """A numcodecs codec writing what :func:`codec_meta` describes (None for raw bytes).

    Blosc runs single-threaded off the main thread (numcodecs' default), so a writer thread does not
    compete with the forward pass for every core.
    """
    if codec == "lz4":
        return numcodecs.Blosc(cname="lz4", clevel=BLOSC_LEVEL, shuffle=numcodecs.Blosc.BITSHUFFLE)
    if codec == "zstd":
        return numcodecs.Zstd(level=ZSTD_LEVEL)
    codec_meta(codec, 1)  # raises for an unknown codec
    return None


_CF_ENCODED = ("scale_factor", "add_offset", "calendar")


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def group_meta(attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"attributes": dict(attributes or {}), "zarr_format": 3, "node_type": "group"}


def array_meta(shape, dtype: np.dtype | None, chunks, dims, attributes, codec: str = "zstd") -> dict[str, Any]:
    """zarr v3 array metadata; ``dtype=None`` for variable-length UTF-8 strings; ``codec`` from :data:`CODECS`."""
    if dtype is None:
        first, data_type, fill = {"name": "vlen-utf8", "configuration": {}}, "string", ""
    else:
        first = {"name": "bytes", "configuration": {"endian": "little"}} if dtype.itemsize > 1 else {"name": "bytes"}
        data_type, fill = dtype.name, False if dtype.kind == "b" else 0 if dtype.kind in "iu" else 0.0
    if dtype is None:  # strings: always zstd
        codec = "zstd"
    codecs = [first, *codec_meta(codec, 1 if dtype is None else dtype.itemsize)]
    return {
        "shape": [int(s) for s in shape],
        "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [max(1, int(c)) for c in chunks]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
        "fill_value": fill,
        "codecs": codecs,
        "attributes": jsonable(dict(attributes)),
        "dimension_names": list(dims),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def write_json(path: Path, value: Mapping[str, Any], written: dict[str, Any] | None = None) -> None:
    """Write ``value`` to ``path``; remember it in ``written`` (so consolidating needs no read back)."""
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    if written is not None:
        written[str(path)] = value


def write_array(
    directory: Path,
    values: np.ndarray,
    dims: Sequence[str],
    attrs: Mapping[str, Any],
    codec: str = "zstd",
    per_first: bool = True,
    dtype: Any = None,
    written: dict[str, Any] | None = None,
) -> None:
    """One array as ``directory/zarr.json`` plus its chunk file.

    ``per_first``: one shard file (the v3 ``sharding_indexed`` codec) whose inner chunks are the
    indices of the first axis, e.g. one per layer, so a layer still reads alone while a document costs
    one file, not one per layer (file creation dominates writing on some file systems). Otherwise a
    single plain chunk.
    """
    dtype = np.dtype(dtype or values.dtype).newbyteorder("<")
    shape = values.shape
    meta = array_meta(shape, dtype, shape, dims, attrs, codec)
    if per_first and shape:
        inner = {"chunk_shape": [1, *(max(1, int(n)) for n in shape[1:])], "codecs": meta["codecs"]}
        index = {"index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}
        sharding = {"name": "sharding_indexed", "configuration": {**inner, **index, "index_location": "end"}}
        meta["codecs"] = [sharding]
    directory.mkdir()
    write_json(directory / "zarr.json", meta, written)
    if values.size == 0:
        return
    compress = encoder(codec)

    def encode(block: np.ndarray) -> Any:
        data = np.ascontiguousarray(block, dtype=dtype)
        return compress.encode(data) if compress is not None else memoryview(data).cast("B")

    name = "c" + ".0" * len(shape)
    with open(directory / name, "wb") as handle:
        if not (per_first and shape):
            handle.write(encode(values))
            return
        offsets = np.empty((shape[0], 2), dtype="<u8")
        position = 0
        for i, block in enumerate(values):
            payload = encode(block)
            handle.write(payload)
            offsets[i] = position, len(payload)
            position += len(payload)
        index = offsets.tobytes()
        handle.write(bytes(_CRC32C.encode(np.frombuffer(index, dtype=np.uint8))))  # the index, then its crc32c


_CRC32C = numcodecs.CRC32C()


def consolidate(path: Path, attributes: Mapping[str, Any], written: Mapping[str, Any] | None = None) -> None:
    """Write the root ``zarr.json`` with ``attributes`` and every node's metadata inlined.

    The same document as ``zarr.consolidate_metadata`` writes, without its per-node async reads;
    metadata in ``written`` (path -> dict) is not read back from the disk.
    """
    written = written or {}
    nodes: dict[str, Any] = {}

    def walk(directory: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            meta_file = os.path.join(entry.path, "zarr.json")
            if not entry.is_dir() or not os.path.isfile(meta_file):
                continue
            if meta_file in written:
                meta = dict(written[meta_file])
            else:
                with open(meta_file, encoding="utf-8") as handle:
                    meta = json.load(handle)
            key = prefix + entry.name
            if meta.get("node_type") == "group":
                meta.setdefault("consolidated_metadata", {"kind": "inline", "must_understand": False, "metadata": {}})
                walk(Path(entry.path), key + "/")
            nodes[key] = meta

    walk(path, "")
    root = group_meta(attributes)
    root["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": nodes}
    write_json(path / "zarr.json", root)


def write_dataset(directory: Path, ds: xr.Dataset, written: dict[str, Any] | None = None) -> None:
    """A small Dataset as a zarr group, one zstd chunk per variable (``to_zarr`` without its overhead)."""
    if any(name not in ds.dims for name in ds.coords):  # non-index coords: let xarray record them
        ds.to_zarr(directory, mode="w", consolidated=False, zarr_format=3)
        return
    directory.mkdir()
    write_json(directory / "zarr.json", group_meta(ds.attrs), written)
    zstd = numcodecs.Zstd(level=ZSTD_LEVEL)
    for name, variable in ds.variables.items():
        values = np.asarray(variable.values)
        text = values.dtype.kind in "OUS"
        dtype = None if text else values.dtype.newbyteorder("<")
        (directory / str(name)).mkdir()
        meta = array_meta(values.shape, dtype, values.shape, variable.dims, variable.attrs)
        write_json(directory / str(name) / "zarr.json", meta, written)
        if values.size:
            if text:
                flat = np.array(["" if v is None else str(v) for v in values.ravel()], dtype=object)
                data = numcodecs.VLenUTF8().encode(flat)
            else:
                data = np.ascontiguousarray(values, dtype=dtype)
            (directory / str(name) / ("c" + ".0" * values.ndim)).write_bytes(zstd.encode(data))


def _plain_array(meta: Mapping[str, Any]) -> bool:
    """Whether ``meta`` describes what :func:`read_dataset` decodes: one chunk, bytes/vlen-utf8 + zstd,
    no CF encoding beyond a NaN fill."""
    codecs = [c["name"] for c in meta.get("codecs", [])]
    shape = meta.get("shape", [])
    attrs = meta.get("attributes", {})
    return (
        meta.get("node_type") == "array"
        and meta["chunk_grid"]["configuration"]["chunk_shape"] == [max(1, n) for n in shape]
        and meta["chunk_key_encoding"]["name"] == "default"
        and codecs[:1] in (["bytes"], ["vlen-utf8"])
        and codecs[1:] in ([], ["zstd"])
        and meta["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
        and len(meta.get("dimension_names") or ()) == len(shape)
        and (meta["data_type"] == "string" or np.dtype(meta["data_type"]).kind in "biuf")
        and not any(k in attrs for k in (*_CF_ENCODED, "coordinates"))
        and "since" not in str(attrs.get("units", ""))
        and ("_FillValue" not in attrs or np.dtype(meta["data_type"]).kind == "f")
    )


def read_dataset(directory: Path) -> xr.Dataset | None:
    """Read a group of small single-chunk arrays (as :func:`write_dataset`, or ``to_zarr``, writes
    them) eagerly; ``None`` when it holds anything else (the caller then asks xarray)."""
    variables, coords = {}, {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        meta_file = Path(entry.path) / "zarr.json"
        if not entry.is_dir() or not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        try:
            if not _plain_array(meta):
                return None
        except (KeyError, TypeError):
            return None
        shape, dims = tuple(meta["shape"]), tuple(meta["dimension_names"])
        separator = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        chunk = Path(entry.path) / ("c" + (separator + "0") * len(shape))
        text = meta["data_type"] == "string"
        dtype = object if text else np.dtype(meta["data_type"]).newbyteorder("<")
        if not chunk.is_file():  # zarr does not write a chunk that holds only the fill value
            fill = meta["fill_value"]
            if isinstance(fill, str) and not text and fill not in ("NaN", "Infinity", "-Infinity"):
                return None  # a fill given as raw bits
            values = np.full(shape, float(fill) if isinstance(fill, str) and not text else fill, dtype=dtype)
        else:
            data = chunk.read_bytes()
            if len(meta["codecs"]) > 1:
                data = numcodecs.Zstd().decode(data)
            flat = numcodecs.VLenUTF8().decode(data) if text else np.frombuffer(data, dtype=dtype).copy()
            values = flat.reshape(shape)
        attrs = {k: v for k, v in meta.get("attributes", {}).items() if not k.startswith("_")}
        (coords if dims == (entry.name,) else variables)[entry.name] = xr.Variable(dims, values, attrs)
    return xr.Dataset(variables, coords=coords)
