"""Errors that attviz raises on purpose: each says which file, which field, and what was expected."""

from __future__ import annotations

import os


class AttvizError(Exception):
    """Base class of attviz's own errors (the CLI prints these as one line)."""


class InputError(AttvizError, ValueError):
    """Bad input data: names the file, the path of the field inside it, and what was expected."""

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        field: str | None = None,
        expected: str | None = None,
    ):
        self.file = None if file is None else os.fspath(file)
        self.field = field
        self.expected = expected
        self.reason = message
        parts = []
        if self.file:
            parts.append(self.file)
        if field:
            parts.append(field)
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if expected:
            text += f" (expected {expected})"
        super().__init__(text)


class StoreError(AttvizError):
    """A store on disk is missing, incomplete or of an unknown format."""


class AttentionUnavailableError(AttvizError):
    """A model did not return one attention matrix per layer."""
