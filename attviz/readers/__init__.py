"""Readers: plugins that turn files or objects into a :class:`~attviz.Corpus`.

:func:`read` picks a reader by name or asks every installed reader whether it can open the source.
It is the boundary for untrusted files: a file over a :class:`~attviz.limits.Limits` bound is
refused, a netCDF file or a store is first opened in a worker process with a timeout
(:mod:`attviz.sandbox`), and whatever goes wrong comes out as one
:class:`~attviz.errors.InputError` naming the file (the original exception as its ``__cause__``).
"""

from __future__ import annotations

import os
from typing import Any

from attviz import registry
from attviz.corpus import Corpus
from attviz.errors import AttvizError, InputError
from attviz.limits import Limits, default_limits, size_text
from attviz.readers.base import Reader

__all__ = ["Reader", "read"]

#: Readers whose files are opened in a worker process first (C libraries that can hang or crash).
SANDBOXED = frozenset({"netcdf", "zarr"})


def _pick(source: Any, reader: str | None) -> tuple[str | None, type[Reader]]:
    if reader is not None:
        return reader, registry.get("readers", reader)
    for name, cls in registry.plugins("readers").items():
        if cls().guess_can_open(source):
            return name, cls
    names = ", ".join(
        f"{name} ({', '.join(cls.extensions) or 'objects'})" for name, cls in registry.plugins("readers").items()
    )
    raise InputError("no reader can open this input", file=str(source), expected=f"one of: {names}")


def read(
    source: Any,
    *,
    reader: str | None = None,
    limits: Limits | None = None,
    sandbox: bool | None = None,
    **kwargs: Any,
) -> Corpus:
    """Read ``source`` (a path, or an object such as a tuple of tensors) into a Corpus.

    ``limits`` bounds what the file may cost (default: :func:`~attviz.limits.default_limits`, the
    ``ATTVIZ_*`` environment variables); ``sandbox`` opens a netCDF file or a store in a worker
    process first (default: yes for those formats; pass False for files you trust).
    """
    limits = limits or default_limits()
    is_path = isinstance(source, str | os.PathLike)
    file = os.fspath(source) if is_path else None
    if is_path:
        if not os.path.exists(source):
            raise InputError("no such file or directory", file=source)
        if os.path.isfile(source):
            size = os.path.getsize(source)
            if size > limits.max_bytes:
                raise InputError(
                    f"the file is {size_text(size)}, over the limit of {size_text(limits.max_bytes)}",
                    file=source,
                    expected="a smaller file (or raise ATTVIZ_MAX_BYTES)",
                )
    name, cls = _pick(source, reader)
    if getattr(cls, "accepts_limits", False):
        kwargs["limits"] = limits
    if sandbox is None:
        sandbox = is_path and name in SANDBOXED
    if sandbox and is_path:
        from attviz.sandbox import validate_in_worker

        passed = {k: v for k, v in kwargs.items() if k != "limits"}
        validate_in_worker(file, reader=name, limits=limits, **passed)
    try:
        corpus = cls().read(source, **kwargs)
    except AttvizError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a library's own failure becomes one message naming the file
        from attviz.sandbox import as_input_error

        raise as_input_error(exc, file) from exc
    if isinstance(corpus, Corpus) and len(corpus) > limits.max_documents:
        raise InputError(
            f"has {len(corpus):,} documents, over the limit of {limits.max_documents:,}",
            file=file,
            expected="fewer documents (or raise ATTVIZ_MAX_DOCUMENTS)",
        )
    if is_path and isinstance(corpus, Corpus):
        from attviz.sandbox import guard_corpus

        guard_corpus(corpus, file)
    return corpus
