"""Open a file uploaded to the app: bytes in, a :class:`~attviz.corpus.Corpus` out.

Uploads are untrusted. The file name is checked (no ``..``, no absolute path, no NUL or control
characters, at most 255 bytes) and the size bounded by :class:`~attviz.limits.Limits`. A zipped
store is checked from its central directory before anything is unpacked (number of files, total
expanded size, names that would escape the folder, symbolic links), then unpacked member by member
with a running byte count that stops at the limit whatever the directory claimed. The file is then
read by :func:`attviz.readers.read`, which opens a netCDF file or a store in a worker process with a
timeout first. Every failure is one :class:`~attviz.errors.InputError` naming the uploaded file.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from attviz.corpus import Corpus
from attviz.errors import AttvizError, InputError
from attviz.limits import Limits, default_limits, size_text

MAX_NAME_BYTES = 255
_CHUNK = 1 << 20


def safe_name(filename: str, *, what: str = "file name") -> str:
    """The base name of an uploaded file, or InputError when the name is unsafe or unusable."""
    if not isinstance(filename, str):
        raise InputError(f"the {what} is not text", expected="a file name")
    shown = filename if len(filename) <= 80 else filename[:77] + "..."
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise InputError(f"the {what} {shown!r} holds a NUL or control character", expected="a plain file name")
    try:
        encoded = filename.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the {what} {shown!r} is not valid Unicode", expected="a plain file name") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InputError(
            f"the {what} is {len(encoded)} bytes long, over {MAX_NAME_BYTES}", expected="a shorter file name"
        )
    parts = filename.replace("\\", "/").split("/")
    if filename.startswith(("/", "\\")) or (len(filename) > 1 and filename[1] == ":"):
        raise InputError(f"the {what} {shown!r} is an absolute path", expected="a plain file name")
    if ".." in parts:
        raise InputError(f"the {what} {shown!r} holds '..'", expected="a plain file name")
    name = parts[-1].strip()
    if not name or name in (".", ".."):
        name = "upload"
    return name


def open_upload(filename: str, data: bytes, directory: str | os.PathLike, *, limits: Limits | None = None) -> Corpus:
    """Read an uploaded file (store archive, netCDF, AttViz JSON, tensors) saved under ``directory``."""
    from attviz.readers import read

    limits = limits or default_limits()
    name = safe_name(filename)
    try:
        size = len(data)
    except TypeError:
        raise InputError("the upload holds no bytes", file=name) from None
    if not size:
        raise InputError("the file is empty", file=name)
    if size > limits.max_bytes:
        raise InputError(
            f"the file is {size_text(size)}, over the upload limit of {size_text(limits.max_bytes)}",
            file=name,
            expected="a smaller file (the server's ATTVIZ_MAX_BYTES)",
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    folder = directory / f"{len(list(directory.iterdir()))}"
    while folder.exists():
        folder = folder.with_name(folder.name + "_")
    folder.mkdir(parents=True)
    try:
        path = folder / name
        path.write_bytes(data)
        if (bytes(data[:4]) == b"PK\x03\x04" or _is_zip(path)) and not name.lower().endswith((".npz",)):
            path = _unpack_store(path, folder / "unpacked", limits, name)
        try:
            return read(str(path), limits=limits)
        except InputError as exc:  # name the uploaded file, not the temporary path
            raise InputError(exc.reason, file=name, field=exc.field, expected=exc.expected) from exc
        except AttvizError as exc:
            raise InputError(str(exc), file=name) from exc
    except AttvizError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except Exception as exc:  # a reader's own failure becomes a readable message
        shutil.rmtree(folder, ignore_errors=True)
        from attviz.sandbox import describe

        raise InputError(describe(exc), file=name) from exc


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def check_zip_directory(zf: zipfile.ZipFile, limits: Limits, file: str) -> list[zipfile.ZipInfo]:
    """The members of a zip, after checking its central directory against ``limits`` (before unpacking)."""
    members = zf.infolist()
    if len(members) > limits.max_archive_files:
        raise InputError(
            f"the archive holds {len(members):,} files, over the limit of {limits.max_archive_files:,}",
            file=file,
            expected="a zip of one attviz store",
        )
    total = sum(info.file_size for info in members)
    if total > limits.max_expanded_bytes:
        raise InputError(
            f"the archive unpacks to {size_text(total)}, over the limit of {size_text(limits.max_expanded_bytes)}",
            file=file,
        )
    for info in members:
        name = info.filename
        shown = name if len(name) <= 80 else name[:77] + "..."
        if "\x00" in name or any(ord(c) < 32 for c in name):
            raise InputError(f"a member name holds a NUL or control character: {shown!r}", file=file)
        posix = PurePosixPath(name.replace("\\", "/"))
        if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise InputError(f"the archive holds an absolute path: {shown!r}", file=file)
        if ".." in posix.parts:
            raise InputError(f"the archive holds a path outside its folder: {shown!r}", file=file)
        if len(name.encode("utf-8", "surrogatepass")) > 4096 or any(
            len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in posix.parts
        ):
            raise InputError(f"the archive holds a name over {MAX_NAME_BYTES} bytes: {shown!r}", file=file)
        mode = info.external_attr >> 16
        if mode and stat.S_ISLNK(mode):
            raise InputError(f"the archive holds a symbolic link: {shown!r}", file=file)
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise InputError(f"the archive holds a special file: {shown!r}", file=file)
    return members


def _unpack_store(archive: Path, target: Path, limits: Limits, name: str) -> Path:
    """Unpack a zipped attviz store safely (bounded, member by member) and return the store folder."""
    from attviz.store import is_store

    try:
        with zipfile.ZipFile(archive) as zf:
            members = check_zip_directory(zf, limits, name)
            root = target.resolve()
            written = 0
            for info in members:
                destination = (target / info.filename).resolve()
                if destination != root and root not in destination.parents:
                    raise InputError(f"the archive holds a path outside its folder: {info.filename!r}", file=name)
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                declared = info.file_size
                count = 0
                with zf.open(info) as source, open(destination, "wb") as out:
                    while chunk := source.read(_CHUNK):
                        count += len(chunk)
                        written += len(chunk)
                        if count > declared:
                            raise InputError(
                                f"member {info.filename!r} unpacks to more than the {declared:,} bytes it declares",
                                file=name,
                            )
                        if written > limits.max_expanded_bytes:
                            raise InputError(
                                f"the archive unpacks to more than {size_text(limits.max_expanded_bytes)}", file=name
                            )
                        out.write(chunk)
    except AttvizError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        from attviz.sandbox import describe

        reason = describe(exc).replace("could not be read", "the archive could not be unpacked", 1)
        raise InputError(reason, file=name, expected="a zip of a folder written by `attviz extract`") from exc
    archive.unlink(missing_ok=True)  # the unpacked copy is all that is read from now on
    candidates = [target, *sorted(p for p in target.rglob("*") if p.is_dir())]
    for candidate in candidates:
        if is_store(candidate):
            return candidate
    raise InputError(
        "the archive holds no attviz store",
        file=name,
        expected="a zip of a folder written by `attviz extract` (with zarr.json and table/)",
    )
