"""Open a file uploaded to the app: bytes in, a :class:`~attviz.corpus.Corpus` out.

The bytes are written under a per-session temporary folder (a zipped store is unpacked there,
refusing paths that would escape it), then read by the reader plugins like any path. Every failure
is an :class:`~attviz.errors.InputError` that names the file and what was expected.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from attviz.corpus import Corpus
from attviz.errors import AttvizError, InputError

MAX_UNPACKED = 4 << 30  # refuse archives that unpack to more than 4 GiB


def open_upload(filename: str, data: bytes, directory: str | os.PathLike) -> Corpus:
    """Read an uploaded file (store archive, netCDF, AttViz JSON, tensors) saved under ``directory``."""
    from attviz.readers import read

    name = Path(filename).name or "upload"
    if not data:
        raise InputError("the file is empty", file=name)
    folder = Path(directory) / f"{len(list(Path(directory).iterdir()))}"
    folder.mkdir(parents=True)
    path = folder / name
    path.write_bytes(data)
    if zipfile.is_zipfile(path):
        path = _unpack_store(path, folder / "unpacked")
    try:
        return read(str(path))
    except InputError as exc:  # name the uploaded file, not the temporary path
        raise InputError(exc.reason, file=name, field=exc.field, expected=exc.expected) from exc
    except AttvizError:
        raise
    except Exception as exc:  # a reader's own failure becomes a readable message
        raise InputError(f"could not be read: {type(exc).__name__}: {exc}", file=name) from exc


def _unpack_store(archive: Path, target: Path) -> Path:
    """Unpack a zipped attviz store safely and return the store folder inside it."""
    from attviz.store import is_store

    with zipfile.ZipFile(archive) as zf:
        total = sum(info.file_size for info in zf.infolist())
        if total > MAX_UNPACKED:
            raise InputError(f"the archive unpacks to {total / 2**30:.1f} GiB, over the 4 GiB limit", file=archive.name)
        root = target.resolve()
        for info in zf.infolist():
            destination = (target / info.filename).resolve()
            if destination != root and root not in destination.parents:
                raise InputError(f"the archive holds a path outside its folder: {info.filename!r}", file=archive.name)
        zf.extractall(target)
    candidates = [target, *sorted(p for p in target.rglob("*") if p.is_dir())]
    for candidate in candidates:
        if is_store(candidate):
            return candidate
    raise InputError(
        "the archive holds no attviz store",
        file=archive.name,
        expected="a zip of a folder written by `attviz extract` (with zarr.json and table/)",
    )
