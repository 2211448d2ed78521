"""Limits on untrusted input: what an upload (or ``attviz info``/``convert``) may cost the server.

Every limit is checked before the work it bounds is done (an archive's central directory before
anything is unpacked, a running byte count while it is), and a file over a limit is refused with one
:class:`~attviz.errors.InputError` that names the limit. Defaults suit a shared server; each can be
set by an environment variable (``ATTVIZ_MAX_BYTES=2e9``, ``ATTVIZ_TIMEOUT_S=60``, ...) or passed
explicitly (``Limits(max_bytes=...)``, ``Limits.from_env(timeout_s=5)``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from attviz.errors import InputError

_ENV_PREFIX = "ATTVIZ_"


@dataclass(frozen=True)
class Limits:
    """Bounds on one untrusted input (sizes in bytes, time in seconds)."""

    #: size of the uploaded file (or of a file given to ``attviz info``/``convert``)
    max_bytes: int = 1 << 30
    #: files (members) in a zipped store
    max_archive_files: int = 20_000
    #: bytes a zipped store may unpack to
    max_expanded_bytes: int = 2 << 30
    #: documents in one corpus
    max_documents: int = 1_000_000
    #: tokens in one document
    max_tokens: int = 1 << 20
    #: nesting depth of JSON
    max_depth: int = 64
    #: seconds a worker process may take to open and validate a netCDF file or store
    timeout_s: float = 60.0
    #: bytes of arrays the worker reads back to check them (a bounded sample of the documents)
    sample_bytes: int = 64 << 20

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Limits:
        """Defaults, then ``ATTVIZ_<FIELD>`` environment variables, then ``overrides``."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = environ.get(_ENV_PREFIX + f.name.upper())
            if text is None or not text.strip():
                continue
            try:
                number = float(text)
            except ValueError as exc:
                raise InputError(
                    f"{text!r} is not a number", field=_ENV_PREFIX + f.name.upper(), expected="a positive number"
                ) from exc
            values[f.name] = number if f.name == "timeout_s" else int(number)
        values.update({k: v for k, v in overrides.items() if v is not None})
        limits = cls(**values)
        limits.check()
        return limits

    def check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise InputError(f"limit {f.name} is {value}", field=f.name, expected="a positive number")

    def replace(self, **changes: Any) -> Limits:
        return dataclasses.replace(self, **changes)


def default_limits() -> Limits:
    """The limits in force: defaults overridden by ``ATTVIZ_*`` environment variables."""
    return Limits.from_env()


def size_text(n: float) -> str:
    """``n`` bytes for a message (``3.9 GiB``, ``512 KiB``)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"
