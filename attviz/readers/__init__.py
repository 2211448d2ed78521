"""Readers: plugins that turn files or objects into a :class:`~attviz.Corpus`.

:func:`read` picks a reader by name or asks every installed reader whether it can open the source.
"""

from __future__ import annotations

import os
from typing import Any

from attviz import registry
from attviz.corpus import Corpus
from attviz.errors import InputError
from attviz.readers.base import Reader

__all__ = ["Reader", "read"]


def read(source: Any, *, reader: str | None = None, **kwargs: Any) -> Corpus:
    """Read ``source`` (a path, or an object such as a tuple of tensors) into a Corpus."""
    if reader is not None:
        return registry.get("readers", reader)().read(source, **kwargs)
    if isinstance(source, str | os.PathLike) and not os.path.exists(source):
        raise InputError("no such file or directory", file=source)
    for cls in registry.plugins("readers").values():
        instance = cls()
        if instance.guess_can_open(source):
            return instance.read(source, **kwargs)
    names = ", ".join(
        f"{name} ({', '.join(cls.extensions) or 'objects'})" for name, cls in registry.plugins("readers").items()
    )
    raise InputError("no reader can open this input", file=str(source), expected=f"one of: {names}")
